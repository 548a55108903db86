"""One training step: the part of training that a CUDA graph captures or ``torch.compile``
compiles, free of the epoch loop, the files and the cluster.

:class:`ELBOLoss` is the objective (the differentiable negative ELBO per valid frame, as a
module so that DistributedDataParallel can wrap it); :func:`train_step` evaluates it on one
batch and takes one optimiser step: loss, backward, gradient clipping, update. Nothing in it
reads a value back to the host (``tests/test_step.py`` checks it for every model); with several
processes the only communication inside it is DDP's own gradient all-reduce during ``backward``.
:func:`loss_terms` splits the same estimator into reconstruction and KL.

How a step runs is ``train.step`` (:func:`choose_step`): ``eager``; ``compile``, with the
pure-torch networks compiled (:func:`compile_networks`); or ``graph``, captured once per batch
shape as a CUDA graph and replayed (:class:`GraphStep`). Its arithmetic is ``train.precision``
(:data:`PRECISIONS`): float32, or the networks in bfloat16 under ``torch.autocast``. On the CPU,
``train.cpu_allocator`` (:func:`keep_freed_memory`) keeps the memory a step frees for the next
one.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from torch.distributions import kl_divergence

from pyro_dvae.models.base import DVAE
from pyro_dvae.nn import GaussianHead

log = logging.getLogger(__name__)

ELBOS = {
    "mean_field": "TraceMeanField_ELBO's: the analytic KL of every latent step that has one",
    "trace": "Trace_ELBO's: log q(z | x) - log p(z) at the sampled z",
}
"""``train.elbo``: which of Pyro's two ELBO estimators the loss computes (both equal Pyro's own
``differentiable_loss``, tested for every model in ``tests/test_step.py``)."""

PRECISIONS = {
    "float32": "every operation in float32",
    "bfloat16": (
        "the networks' linear and RNN layers in bfloat16 under torch.autocast; distribution "
        "parameters, losses, Kalman filters and the optimiser in float32"
    ),
}
"""``train.precision``: the arithmetic of a training step (:class:`ELBOLoss`). Evaluation always
runs in float32."""

STEPS = ("auto", "eager", "compile", "graph")
"""``train.step``: how a training step runs (:func:`choose_step`)."""

ALLOCATORS = ("keep", "system")
"""``train.cpu_allocator``: ``keep`` (:func:`keep_freed_memory`, the default on the CPU) or
``system`` (the C library's allocator as it is set)."""
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (``malloc.h``)."""
KEEP_BYTES = 1 << 30
"""Tensors up to this size come from the heap, and this much freed heap memory is kept."""

Loss = Callable[[torch.Tensor, "torch.Tensor | None", "float | torch.Tensor"], torch.Tensor]
"""``(x (B, T, D), mask (B, T) or None, KL weight) -> per-frame loss ()``: an :class:`ELBOLoss`,
possibly inside DistributedDataParallel."""


def loss_terms(
    model: DVAE, x: torch.Tensor, weight: float | torch.Tensor = 1.0, analytic: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame reconstruction NLL and KL (times the KL weight ``weight``) of one batch
    ``x (B, T, D)``, from one sample of q(z | x): with ``analytic``, TraceMeanField_ELBO's
    estimator (the analytic KL of a latent site where one is registered, else
    log q − log p); without, Trace_ELBO's (log q − log p at every latent site).

    Pyro's own ``differentiable_loss`` returns the same sum but reads the loss back to the host
    (``torch_item``) at every call, which a CUDA graph cannot capture; this reads nothing."""
    with model.without_param_sites():  # the optimiser holds the parameters, not Pyro's store
        guide_trace = poutine.trace(model.guide).get_trace(x, weight)
        replayed = poutine.replay(model.model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(x, weight)
    model_trace.compute_log_prob()
    recon = -model_trace.nodes["x"]["log_prob_sum"]
    kl = x.new_zeros(())
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        q = guide_trace.nodes[name]
        kl_q = _analytic_kl(q["fn"], site["fn"]) if analytic else None
        if kl_q is not None:
            kl = kl + scale_and_mask(kl_q, q["scale"], q["mask"]).sum()
        else:
            log_q = scale_and_mask(q["fn"].log_prob(q["value"]), q["scale"], q["mask"])
            kl = kl + log_q.sum() - site["log_prob_sum"]
    return recon, kl


def _analytic_kl(q, p) -> torch.Tensor | None:
    """KL(q ‖ p) per batch element where torch has a formula for the pair, else None."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


class ELBOLoss(torch.nn.Module):
    """The training objective as a module, so that DistributedDataParallel can wrap it: the
    differentiable negative ELBO per (valid) frame of a batch, at a KL weight (a float, or a
    0-dim device tensor that a captured step rewrites between replays).

    With ``precision="bfloat16"`` (:data:`PRECISIONS`) the loss is evaluated under
    ``torch.autocast``: products in bfloat16, the rest as :func:`~pyro_dvae.nn.full_precision`
    says; the loss and the gradients are float32."""

    def __init__(self, model: DVAE, elbo: str, precision: str = "float32") -> None:
        super().__init__()
        self.dvae = model
        self.analytic = elbo == "mean_field"
        self.autocast = precision == "bfloat16"

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, weight: float | torch.Tensor
    ) -> torch.Tensor:
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        with (
            self.dvae.step_mask(mask),
            torch.autocast(
                x.device.type, torch.bfloat16, enabled=self.autocast, cache_enabled=not capturing
            ),
        ):
            recon, kl = loss_terms(self.dvae, x, weight, self.analytic)
        return recon + kl


def train_step(
    loss: Loss,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    weight: float,
    scale: float = 1.0,
    frozen: Sequence[torch.nn.Parameter] = (),
    clip_norm: float | None = None,
    l2: float = 0.0,
) -> torch.Tensor:
    """One optimiser step on the batch ``x (B, T, D)`` (``mask (B, T)``: False on padding).

    Args:
        loss: the objective (:data:`Loss`), evaluated at KL weight ``weight``.
        optimizer: updates the parameters from their gradients.
        scale: the factor on the loss before ``backward`` (a rank's share of a global batch,
            :meth:`~pyro_dvae.distributed.Cluster.step_weight`; 1 in a single process).
        frozen: parameters that get no update and no part in the clipped norm (their gradients
            are dropped).
        clip_norm: clip the global norm of the optimiser's gradients to this (None: no clip).
        l2: add ``l2 · θ`` to every gradient before clipping: the gradient of ``l2/2 · ‖θ‖²`` in
            the loss (an optimiser's ``weight_decay`` adds it after clipping).

    Returns:
        The per-frame loss ``()``, detached, still on the device (non-finite values are the
        caller's to detect: the update has then been taken).
    """
    value = loss(x, mask, weight)
    optimizer.zero_grad(set_to_none=True)
    (value * scale).backward()
    for p in frozen:
        p.grad = None
    if l2 or clip_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if l2:
            for p in (p for p in params if p.grad is not None):
                p.grad.add_(p.detach(), alpha=l2)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    return value.detach()


def choose_step(
    requested: str, device: torch.device, optimizer: str, processes: int
) -> tuple[str, str]:
    """The step ``train.step=requested`` runs as, and why (for the log line at the start).

    ``auto`` is the fastest step that is correct on the device: ``graph`` on CUDA (with
    ``torch.optim.Adam`` in one process: ClippedAdam and DDP are not capturable), ``eager`` on
    the CPU, where ``torch.compile`` made no step faster (``benchmarks/README.md``).

    Raises:
        ValueError: naming ``train.step``, for ``graph`` where it cannot run.
    """
    graph_problem = (
        "it needs a CUDA device" if device.type != "cuda"
        else "it needs train.optimizer=adam (ClippedAdam is not capturable)" if optimizer != "adam"
        else "it runs in one process (DDP's all-reduce is not captured)" if processes > 1
        else None
    )  # fmt: skip
    if requested == "graph" and graph_problem:
        raise ValueError(f"train.step=graph: {graph_problem}; use train.step=eager or compile")
    if requested != "auto":
        return requested, f"train.step={requested}"
    if graph_problem is None:
        return "graph", "train.step=auto on CUDA; train.step=eager to opt out"
    if device.type == "cuda":
        return "eager", f"train.step=auto on CUDA, not graph: {graph_problem}"
    return "eager", (
        "train.step=auto on the CPU, where torch.compile was not faster "
        "(benchmarks/README.md); train.step=compile to try it"
    )


NETWORKS = (torch.nn.Sequential, GaussianHead)
"""What :func:`compile_networks` compiles: the pure-torch building blocks of ``pyro_dvae.nn``
(MLPs, decoders, Gaussian heads); the code around them (Pyro's tracing, distributions, the
sequential loops) stays eager."""


def compile_networks(model: torch.nn.Module) -> int:
    """Compile (``torch.compile``, in place) every outermost :data:`NETWORKS` module of ``model``;
    returns how many. Pyro's handlers are left out: compiling through them recompiles on
    their Python-float guards and runs slower than eager."""
    compiled = 0
    for child in model.children():
        if isinstance(child, NETWORKS):
            child.compile()
            compiled += 1
        else:
            compiled += compile_networks(child)
    return compiled


def keep_freed_memory() -> str | None:
    """Make glibc's ``malloc`` keep the memory that a training step frees for the next step.

    By default glibc maps every allocation above a threshold (at most 32 MB) afresh from the
    kernel and unmaps it when it is freed, and returns free heap memory above a trim threshold.
    A CPU step allocates and frees the same large activations every time (a (128, 50, 513)
    speech batch: 13 MB each), so every step faults all of their pages in again and has them
    zeroed. With both thresholds at :data:`KEEP_BYTES`, tensors up to 1 GiB come from the heap
    and freed memory stays there: a speech training step is ~10 % faster
    (``benchmarks/README.md``), and the process keeps its peak memory instead of returning it.
    Process-wide and lasting; ``tests/test_step.py`` checks both settings with ``mallinfo2``.

    Returns None where it took effect, else why not (not glibc: macOS, Windows, musl).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS); no CDLL(None) (Windows)
        return "the C library has no mallopt"
    if not (mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)):
        return "the C library's mallopt refused the thresholds"
    return None


def capturable(optimizer: torch.optim.Optimizer) -> None:
    """Make a ``torch.optim.Adam`` capturable in a CUDA graph: its step counts on the device and
    its learning rate a 0-dim device tensor that :func:`set_lr` rewrites in place, so that a
    new LR needs no new capture. Call again after ``load_state_dict``."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["capturable"] = True
        dtype = group["params"][0].dtype
        group["lr"] = torch.tensor(float(group["lr"]), device=device, dtype=dtype)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(device=device, dtype=torch.float32)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's learning rate (in place where it is a device tensor)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def reset_moments(optimizer: torch.optim.Optimizer) -> None:
    """Put the optimiser's state back to a fresh one's: Adam's step counts and moment estimates
    zero, written in place (so a captured CUDA graph keeps reading the same tensors). The next
    step is then the first step of a new Adam (bias correction included)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()
            else:
                state[key] = 0


def portable(optimizer_state: dict) -> dict:
    """An optimiser ``state_dict`` that loads into any step: learning rates as floats and
    ``capturable`` off (a ``graph`` step makes its optimiser capturable again)."""
    groups = [
        {**g, "lr": float(g["lr"]), **({"capturable": False} if "capturable" in g else {})}
        for g in optimizer_state["param_groups"]
    ]
    return {**optimizer_state, "param_groups": groups}


class GraphStep:
    """:func:`train_step` captured as a CUDA graph and replayed.

    One graph per batch shape, padding or not, KL weight zero or not (weight 0 masks the KL
    sites out), frozen parameters or not and feedback probability (scheduled sampling's p
    changes a few times in a run). Padded batches keep their lengths on the device
    (:func:`~pyro_dvae.nn.sequence_lengths`), so one graph serves every batch of one padded
    shape (the trainer pads them to a multiple of 16 steps: a few shapes). For a new one, the
    first
    ``warmup`` steps run eagerly on a side stream (real steps on real batches: they create the
    optimiser state and let the libraries choose their kernels); the next is captured and from
    then on replayed.

    Before a replay the batch is copied into the graph's input tensors and the KL weight into a
    0-dim device tensor; the optimiser must be :func:`capturable` (its LR a device tensor), so
    the warm-up's weights and the LR schedule need no new capture. Noise comes from torch's CUDA
    generator, whose offset advances at every replay.

    Args:
        loss: the objective (an :class:`ELBOLoss`, not wrapped in DDP).
        optimizer: a capturable ``torch.optim.Adam``.
        clip_norm, l2: as in :func:`train_step`.
        warmup: eager steps of a new shape before its capture.
    """

    def __init__(
        self,
        loss: ELBOLoss,
        optimizer: torch.optim.Optimizer,
        clip_norm: float | None = None,
        l2: float = 0.0,
        warmup: int = 3,
    ) -> None:
        self.loss, self.optimizer, self.clip_norm, self.warmup = loss, optimizer, clip_norm, warmup
        self.l2 = l2
        self.graphs: dict[tuple, tuple] = {}
        self.eager_steps: dict[tuple, int] = {}
        self.weight: torch.Tensor | None = None

    def key(self, x: torch.Tensor, mask: torch.Tensor | None, weight: float, frozen) -> tuple:
        feedback = self.loss.dvae.feedback
        p = None if feedback is None else feedback.p
        return tuple(x.shape), mask is not None, weight == 0, bool(frozen), p

    def __call__(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        weight: float,
        frozen: Sequence[torch.nn.Parameter] = (),
    ) -> torch.Tensor:
        """One step on the batch ``x (B, T, D)`` (``mask (B, T)`` or None); returns the loss
        ``()`` on the device, as :func:`train_step` does."""
        if self.weight is None:
            self.weight = torch.zeros((), device=x.device, dtype=x.dtype)
        key = self.key(x, mask, weight, frozen)
        w = 0.0 if weight == 0 else self.weight
        if weight != 0:
            self.weight.fill_(weight)
        if key not in self.graphs and self.eager_steps.get(key, 0) < self.warmup:
            self.eager_steps[key] = self.eager_steps.get(key, 0) + 1
            return self._on_side_stream(x, mask, w, frozen)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, mask, w, frozen)
        graph, inputs, value = self.graphs[key]
        for static, new in zip(inputs, (x, mask), strict=True):
            if new is not None:
                static.copy_(new)
        graph.replay()
        return value.clone()

    def _step(self, x, mask, weight, frozen) -> torch.Tensor:
        return train_step(
            self.loss,
            self.optimizer,
            x,
            mask,
            weight,
            frozen=frozen,
            clip_norm=self.clip_norm,
            l2=self.l2,
        )

    def _on_side_stream(self, x, mask, weight, frozen) -> torch.Tensor:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            value = self._step(x, mask, weight, frozen)
        torch.cuda.current_stream().wait_stream(stream)
        return value

    def _capture(self, x, mask, weight, frozen) -> tuple:
        inputs = (x.clone(), None if mask is None else mask.clone())
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            value = self._step(*inputs, weight, frozen)
        log.info("captured the training step for batches of shape %s", tuple(x.shape))
        return graph, inputs, value
