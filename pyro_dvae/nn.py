"""Shared neural building blocks: MLPs, Gaussian heads and recurrent helpers.

Every network in the DVAE family is made of these pieces. Conventions (as in the original
implementation, see the spec §1): an ``MLP`` applies ``Linear`` + activation for every entry of
its hidden-size list, the activation included after the last entry; an empty list is the
identity. Heads are plain ``Linear`` layers. Sequences are batch-first ``(B, T, D)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps

import torch
from pyro.poutine.util import is_validation_enabled
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import functional as F

from pyro_dvae.scan import is_scannable, lstm_scan_pays, scan_rnn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
"""The hidden layers' nonlinearities."""


def activation_class(name: str, key: str = "model.<modality>.activation") -> type[nn.Module]:
    """The class of :data:`ACTIVATIONS` called ``name``; an unknown name is a ``ValueError``
    naming the config ``key``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{key}={name!r}: expected one of {list(ACTIVATIONS)}")
    return ACTIVATIONS[name]


LOGVAR_BOUND = 30.0
"""Log-variances are clamped to ``[-LOGVAR_BOUND, LOGVAR_BOUND]`` so ``exp`` never overflows."""


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 where autocast (``train.precision=bfloat16``) is on for its device and
    ``t`` has autocast's low-precision dtype, else ``t`` itself: networks run their products in
    bfloat16, but what becomes a distribution's parameter stays float32."""
    if t.dtype == torch.float32:  # the common case, without asking autocast
        return t
    device = t.device.type
    low = torch.is_autocast_enabled(device) and t.dtype == torch.get_autocast_dtype(device)
    return t.float() if low else t


def float32_math(method: Callable) -> Callable:
    """Decorator of a module's method whose first tensor argument is on the module's device: run
    it with autocast off and its low-precision tensor arguments in float32
    (:func:`full_precision`), for arithmetic that bfloat16 would break, such as a Kalman
    filter's covariances."""

    @wraps(method)
    def wrapper(self: nn.Module, *args, **kwargs):
        device = next(a for a in args if torch.is_tensor(a)).device.type
        if not torch.is_autocast_enabled(device):
            return method(self, *args, **kwargs)
        args = tuple(full_precision(a) if torch.is_tensor(a) else a for a in args)
        kwargs = {k: full_precision(a) if torch.is_tensor(a) else a for k, a in kwargs.items()}
        with torch.autocast(device, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper


class MLP(nn.Sequential):
    """``Linear(d_in→h_1)+act, …, Linear(h_{k−1}→h_k)+act``; identity for an empty list.

    Args:
        in_dim: input size.
        hidden: hidden sizes, in order.
        activation: ``"tanh"`` (every config of the paper) or ``"relu"``.
        dropout: dropout probability after every activation (0 in every config).
    """

    def __init__(
        self, in_dim: int, hidden: Sequence[int], activation: str = "tanh", dropout: float = 0.0
    ) -> None:
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        act = activation_class(activation)
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), act()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.out_dim = dims[-1]
        self.activation = activation


INITS = ("torch", "glorot", "dmm_authors")
"""Weight initialisations of :func:`initialise` (``model.init``)."""
DMM_AUTHORS_RANGE = 0.1
"""The DMM authors' ``init_weight``: weights and biases drawn from U(−0.1, 0.1)."""


def initialise(module: nn.Module, scheme: str) -> None:
    """Re-initialise the layers of ``module`` by ``scheme``:

    * ``torch`` keeps PyTorch's default (U(±1/√fan_in), as in the paper).
    * ``glorot`` draws the ``Linear`` layers of every :class:`MLP` Glorot-uniform with the gain
      of the MLP's activation and zero biases, which keeps the signal's scale through deep tanh
      stacks: over z ~ N(0, I), the output of the paper's DKF speech decoder (four tanh layers,
      then the output layer) varies by 0.04 (std, in log-variance units) under the default and
      by 0.32 under ``glorot``. Heads, output layers and RNNs keep their default.
    * ``dmm_authors`` is the DMM authors' scheme (clinicalml/theanomodels, ``_getWeight`` with
      its defaults ``init_scheme=uniform``, ``init_weight=0.1``): every ``Linear`` weight and
      bias from U(−0.1, 0.1); an LSTM's input weights the same, its recurrent weights one
      orthogonal H × H block per gate, its bias Laplace(0, 1) (``b_ih``; ``b_hh`` = 0, as their
      LSTM has one bias); any other RNN U(−0.1, 0.1) throughout.

    A layer whose initialisation is part of its model's definition (``layer.keeps_init =
    True``, e.g. the gated transition's W_μ = I) keeps it under every scheme.
    """
    if scheme not in INITS:
        raise ValueError(f"model.init={scheme!r} is not known; expected one of {list(INITS)}")
    if scheme == "glorot":
        for mlp in (m for m in module.modules() if isinstance(m, MLP)):
            gain = nn.init.calculate_gain(mlp.activation)
            for layer in (m for m in mlp if isinstance(m, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight, gain=gain)
                nn.init.zeros_(layer.bias)
    elif scheme == "dmm_authors":
        for layer in module.modules():
            if not getattr(layer, "keeps_init", False):
                _dmm_authors_init(layer)


def _dmm_authors_init(layer: nn.Module) -> None:
    """:func:`initialise`'s ``dmm_authors`` scheme on the parameters of ``layer`` itself."""
    if isinstance(layer, nn.Linear):
        for p in (layer.weight, layer.bias):
            if p is not None:
                nn.init.uniform_(p, -DMM_AUTHORS_RANGE, DMM_AUTHORS_RANGE)
    elif isinstance(layer, nn.RNNBase):
        for name, p in layer.named_parameters(recurse=False):
            if isinstance(layer, nn.LSTM) and name.startswith("weight_hh"):
                for block in p.data.chunk(4, dim=0):
                    nn.init.orthogonal_(block)
            elif isinstance(layer, nn.LSTM) and name.startswith("bias_ih"):
                p.data.copy_(torch.distributions.Laplace(0.0, 1.0).sample(p.shape))
            elif isinstance(layer, nn.LSTM) and name.startswith("bias_hh"):
                nn.init.zeros_(p)
            else:
                nn.init.uniform_(p, -DMM_AUTHORS_RANGE, DMM_AUTHORS_RANGE)


ROW_ALIGNMENT = 16
"""Floats per 64-byte cache line: the row stride :class:`OutputLinear` pads its output to."""
MIN_ROWS = 1024
"""Fewer rows (a single step's batch) take ``F.linear``: there the saving is below the extra
autograd node's overhead."""


class _PaddedRowsLinear(torch.autograd.Function):
    """``apply(h (N, K), weight (M, K), bias (M,)) -> h Wᵀ + b (N, M)``, a view of an
    ``(N, M')`` buffer with M' the next multiple of :data:`ROW_ALIGNMENT`; backward as
    ``F.linear``'s."""

    @staticmethod
    def forward(ctx: FunctionCtx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        rows, width = h.shape[0], weight.shape[0]
        buffer = h.new_empty(rows, -(-width // ROW_ALIGNMENT) * ROW_ALIGNMENT)
        ctx.save_for_backward(h, weight)
        return torch.addmm(bias, h, weight.t(), out=buffer[:, :width])

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor):
        h, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        return (
            grad @ weight if needs[0] else None,
            grad.t() @ h if needs[1] else None,
            grad.sum(0) if needs[2] else None,
        )


class OutputLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) for layers with a wide output of
    odd width, such as the 513 frequency bins of a speech decoder's last layer.

    On the CPU, MKL's product is ~1.6× slower when the output's rows are 513 floats apart than
    when they are 528 apart (6400 × 256 @ 256 × 513: 31 against 18 ms at one thread, 16
    against 10 at two; ``benchmarks/README.md``), so for at least :data:`MIN_ROWS` rows whose
    width is not a multiple of :data:`ROW_ALIGNMENT` the output is written into a buffer with
    padded rows and returned as a view of it: ``(..., in) -> (..., out)``, equal to
    ``F.linear`` up to the summation order of the product."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        rows = h.numel() // max(h.shape[-1], 1)
        padded = h.device.type == "cpu" and self.out_features % ROW_ALIGNMENT and rows >= MIN_ROWS
        if not padded or self.bias is None or torch.is_autocast_enabled("cpu"):
            return super().forward(h)
        y = _PaddedRowsLinear.apply(h.reshape(rows, h.shape[-1]), self.weight, self.bias)
        return y.view(*h.shape[:-1], self.out_features)


HEAD_SCALES = ("exp", "softplus", "sqrt_softplus")
"""How a :class:`GaussianHead` makes σ from its second half ``s``: ``exp`` (σ = exp(½ s), s the
log-variance, clamped to ±:data:`LOGVAR_BOUND`; the DVAE papers'), ``softplus`` (σ = softplus(s)
+ 1e-10; Pyro's DMM) or ``sqrt_softplus`` (σ² = softplus(s) + 1e-10, the variance; the DMM
authors' code)."""


class GaussianHead(nn.Module):
    """Affine map to the mean and scale of a diagonal Gaussian.

    One ``Linear(in_dim → 2·out_dim)``: the same parameters as the paper's two heads; σ from
    the second half as ``scale`` says (:data:`HEAD_SCALES`).
    ``forward(h (..., in_dim)) -> (loc (..., out_dim), scale (..., out_dim))``.
    """

    def __init__(self, in_dim: int, out_dim: int, scale: str = "exp") -> None:
        super().__init__()
        if scale not in HEAD_SCALES:
            raise ValueError(f"scale={scale!r}: expected one of {list(HEAD_SCALES)}")
        self.linear = OutputLinear(in_dim, 2 * out_dim)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.linear(h))

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` from the linear layer's output ``(..., 2·out_dim)``."""
        loc, s = out.chunk(2, dim=-1)
        if self.scale == "exp":
            return loc, scale_from_logvar(s)
        softplus = F.softplus(s) + 1e-10
        return loc, softplus if self.scale == "softplus" else softplus.sqrt()


def scale_from_logvar(logvar: torch.Tensor) -> torch.Tensor:
    """Standard deviation ``exp(½·logσ²)`` with the log-variance clamped to a safe range."""
    return torch.exp(0.5 * logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND))


def shift(z: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
    """The previous step of a sequence: ``(B, T, D) -> (B, T, D)`` holding ``z_{t−1}``, with
    z_0 = ``first`` ``(D,)`` (a learned initial state), or 0 where it is None."""
    start = torch.zeros_like(z[:, :1]) if first is None else first.expand_as(z[:, :1])
    return torch.cat([start, z[:, :-1]], dim=1)


_LENGTHS: ContextVar[tuple[torch.Tensor, int] | None] = ContextVar("sequence_lengths", default=None)
"""Lengths (B,) of the padded sequences of the batch in flight, on its device, and its number of
steps T (:func:`sequence_lengths`)."""


@contextmanager
def sequence_lengths(mask: torch.Tensor | None) -> Iterator[None]:
    """Within this block the batch is padded: ``mask (B, T)`` is True on the first L_b frames of
    sequence b and False after them. :func:`run_rnn` and :func:`final_state` then treat sequence
    b as ``x[b, :L_b]``: no output at a valid step depends on a padded frame, in either
    direction. None: unpadded. The lengths stay on the mask's device and nothing is read back
    to the host (so a CUDA graph can hold the step), except for the check of the mask's form,
    made while Pyro's validation is on (it is off during training).

    Raises:
        ValueError: a mask that is not valid frames followed by padding.
    """
    if mask is not None and is_validation_enabled():
        check_step_mask(mask)
    token = _LENGTHS.set(None if mask is None else (mask.sum(-1), mask.shape[-1]))
    try:
        yield
    finally:
        _LENGTHS.reset(token)


def check_step_mask(mask: torch.Tensor) -> None:
    """Raise ValueError unless ``mask (B, T)`` holds L_b >= 1 True values followed only by
    False in each row."""
    mask = mask.bool()
    lengths = mask.sum(-1)
    steps = torch.arange(mask.shape[-1], device=mask.device)
    if mask.dim() != 2 or not torch.equal(mask, steps < lengths[:, None]) or lengths.min() < 1:
        raise ValueError(
            "a step mask must be (B, T) with each row holding L_b >= 1 True values followed "
            f"only by False (padding at the end); got shape {tuple(mask.shape)}"
        )


def _active_lengths(x: torch.Tensor) -> torch.Tensor | None:
    """The lengths ``(B,)`` in force for the RNN input ``x (B, T, D)``; None when unpadded."""
    active = _LENGTHS.get()
    if active is None:
        return None
    lengths, steps = active
    if lengths.shape[0] != x.shape[0] or steps != x.shape[1]:
        raise ValueError(
            f"the step mask is for {lengths.shape[0]} sequences of up to {steps} steps, "
            f"but an RNN input has shape {tuple(x.shape)}"
        )
    return lengths


_COPIES: ContextVar[int] = ContextVar("identical_copies", default=1)
"""How many stacked copies of one batch the batch in flight may be (:func:`identical_copies`)."""


@contextmanager
def identical_copies(k: int) -> Iterator[None]:
    """Within this block the batch in flight may be ``k`` stacked copies of one batch of B
    sequences (``x.repeat(k, 1, 1)``, as the K draws of an importance-weighted bound are
    scored: :func:`~pyro_dvae.loglik.importance_log_weights`). With gradients off,
    :func:`run_rnn`, :func:`run_rnn_fast` and :func:`final_state` then run an RNN whose input
    (and step mask) is k such copies over its first B sequences only, and repeat the outputs:
    an RNN is a deterministic function of its input, so they are the same copies, computed
    once, not k times. An input that differs between the copies (it depends on a draw of z)
    runs as usual."""
    token = _COPIES.set(k)
    try:
        yield
    finally:
        _COPIES.reset(token)


def _is_stacked_copies(x: torch.Tensor, k: int) -> bool:
    """Whether ``x (k·B, …)`` is k stacked copies of ``x[:B]``."""
    B = x.shape[0] // k
    return torch.equal(x.reshape(k, B, *x.shape[1:]), x[:B].expand(k, B, *x.shape[1:]))


def _same_copies(lengths: torch.Tensor, x: torch.Tensor, k: int) -> bool:
    """Whether the step mask's ``lengths`` are for ``x``'s sequences and k copies as well (a
    mask for another batch is left to the RNN helpers' own error)."""
    return lengths.shape[0] == x.shape[0] and _is_stacked_copies(lengths, k)


def _once_for_copies(batch_dim: int) -> Callable[[Callable], Callable]:
    """Make ``fn(rnn, x (B, T, D), ...)``, whose output has the batch at ``batch_dim``, run
    once for the k stacked copies of :func:`identical_copies`, where its input and lengths are
    such copies, no gradient is recorded and ``rnn`` has no dropout in force."""

    def decorate(fn: Callable) -> Callable:
        @wraps(fn)
        def run(rnn: nn.RNNBase, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            k, active = _COPIES.get(), _LENGTHS.get()
            once = (
                k > 1
                and x.shape[0] % k == 0
                and not torch.is_grad_enabled()
                and not (rnn.training and rnn.dropout)
                and _is_stacked_copies(x, k)
                and (active is None or _same_copies(active[0], x, k))
            )
            if not once:
                return fn(rnn, x, *args, **kwargs)
            B = x.shape[0] // k
            copies = _COPIES.set(1)
            lengths = _LENGTHS.set(None if active is None else (active[0][:B], active[1]))
            try:
                out = fn(rnn, x[:B], *args, **kwargs)
            finally:
                _LENGTHS.reset(lengths)
                _COPIES.reset(copies)
            return out.repeat(*[k if d == batch_dim else 1 for d in range(out.dim())])

        return run

    return decorate


def reverse_within(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``x (B, T, ·)`` with each sequence's first ``lengths[b]`` steps in reverse order (padded
    steps stay in place); every step reversed when ``lengths`` is None. Its own inverse."""
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.shape[1], device=x.device)
    last = lengths.to(x.device)[:, None] - 1
    index = torch.where(steps <= last, last - steps, steps)
    return x.gather(1, index[..., None].expand_as(x))


def _direction(rnn: nn.RNNBase, x: torch.Tensor, direction: int) -> torch.Tensor:
    """Outputs ``(B, T, H)`` of one direction (0 forward, 1 backward) of a one-layer RNN run
    forward over ``x (B, T, D)`` from zero state, with that direction's weights."""
    suffix = "_reverse" if direction else ""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    params = [getattr(rnn, f"{name}_l0{suffix}") for name in names]
    h0 = x.new_zeros(1, x.shape[0], rnn.hidden_size)
    options = (True, 1, 0.0, rnn.training, False, True)  # biases, layers, dropout, train, bi, bf
    if isinstance(rnn, nn.LSTM):
        return torch.lstm(x, (h0, h0), params, *options)[0]
    step = torch.rnn_tanh if rnn.nonlinearity == "tanh" else torch.rnn_relu
    return step(x, h0, params, *options)[0]


def _last_valid(output: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``output[b, lengths[b] − 1]`` for every b: ``(B, T, H) -> (B, H)``."""
    return output[torch.arange(output.shape[0], device=output.device), lengths - 1]


@_once_for_copies(batch_dim=0)
def run_rnn(
    rnn: nn.RNNBase, x: torch.Tensor, backward: bool = False, h_0: torch.Tensor | None = None
) -> torch.Tensor:
    """Run a batch-first RNN over ``x (B, T, D)`` from zero state, or from the hidden state
    ``h_0 (H,)`` for every sequence (a learned initial state; an LSTM's cell state stays 0);
    ``backward`` runs it on the time-reversed input and re-reverses the output, so step t
    summarises ``x_{t:T}``.

    Under :func:`sequence_lengths`, sequence b ends at its length L_b: a backward run starts at
    x_{L_b} (from h_0), and a bidirectional one runs its backward direction over x_{L_b}, …, x_1
    (each sequence reversed within its length). Outputs at padded steps are unspecified
    (finite)."""
    if h_0 is not None and rnn.bidirectional:
        raise ValueError("a learned initial state h_0 is for one-directional RNNs")
    lengths = _active_lengths(x)
    if backward:
        x = reverse_within(x, lengths)
    if lengths is not None and rnn.bidirectional:
        ahead = reverse_within(_direction(rnn, reverse_within(x, lengths), 1), lengths)
        output = torch.cat([_direction(rnn, x, 0), ahead], dim=-1)
    else:  # a forward pass over valid steps never reads the padding after them
        output = _forward(rnn, x, h_0)
    return reverse_within(output, lengths) if backward else output


def _forward(rnn: nn.RNNBase, x: torch.Tensor, h_0: torch.Tensor | None) -> torch.Tensor:
    """Outputs ``(B, T, H or 2H)`` of ``rnn`` run over ``x (B, T, D)`` from ``h_0 (H,)`` (None:
    0). A one-directional Elman RNN on the CPU runs as one scan (:mod:`pyro_dvae.scan`: W_hh's
    gradient is one product, not one per step); an LSTM, or any RNN elsewhere, through torch's
    own kernel (oneDNN's LSTM is as fast as the scan when x needs its gradient)."""
    fused = isinstance(rnn, nn.LSTM) or rnn.bidirectional or x.device.type != "cpu"
    if fused or not is_scannable(rnn):
        return rnn(x, _initial_state(rnn, h_0, x.shape[0]))[0]
    return scan_rnn(rnn, x, h_0=None if h_0 is None else h_0.expand(x.shape[0], -1))


@_once_for_copies(batch_dim=0)
def run_rnn_fast(rnn: nn.RNNBase, x: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """:func:`run_rnn` with the scans of :mod:`pyro_dvae.scan` for LSTMs too, and for
    bidirectional RNNs: same outputs ``(B, T, ·)`` from ``x (B, T, D)``, faster where nothing
    upstream needs x's gradient. Padded batches, other RNN kinds and LSTMs over small steps
    (:func:`~pyro_dvae.scan.lstm_scan_pays`) go to ``run_rnn``."""
    small_lstm = isinstance(rnn, nn.LSTM) and not lstm_scan_pays(x)
    if small_lstm or not is_scannable(rnn) or _active_lengths(x) is not None:
        return run_rnn(rnn, x, backward)
    return scan_rnn(rnn, x, backward)


def _initial_state(rnn: nn.RNNBase, h_0: torch.Tensor | None, B: int):
    """``rnn``'s initial state with ``h_0 (H,)`` for every one of the B sequences (None: 0)."""
    if h_0 is None:
        return None
    h = h_0.expand(1, B, h_0.shape[-1]).contiguous()
    return (h, torch.zeros_like(h)) if isinstance(rnn, nn.LSTM) else h


@_once_for_copies(batch_dim=1)
def final_state(rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
    """The final hidden state ``h_n (directions, B, H)`` of a one-layer batch-first RNN over
    ``x (B, T, D)`` from zero state: the forward direction's after x_T, the backward one's
    after x_1. Under :func:`sequence_lengths`, the forward state is the one after x_{L_b}."""
    lengths = _active_lengths(x)
    if lengths is None:
        state = rnn(x)[1]
        return state[0] if isinstance(rnn, nn.LSTM) else state
    directions = range(2 if rnn.bidirectional else 1)
    inputs = [x, reverse_within(x, lengths)]
    return torch.stack([_last_valid(_direction(rnn, inputs[k], k), lengths) for k in directions])


def lstm(in_dim: int, hidden: int, bidirectional: bool = False) -> nn.LSTM:
    """A one-layer, batch-first ``nn.LSTM`` (every recurrent net of the family)."""
    return nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True, bidirectional=bidirectional)


RNNS = ("lstm", "relu", "tanh")
"""Kinds of :func:`recurrent` net: an LSTM, or an Elman RNN with that nonlinearity."""


def recurrent(kind: str, in_dim: int, hidden: int, bidirectional: bool = False) -> nn.RNNBase:
    """A one-layer, batch-first recurrent net: :func:`lstm` for ``lstm``, else an Elman
    ``nn.RNN`` with the nonlinearity ``kind`` (``relu``: Pyro's DMM guide). Either runs through
    :func:`run_rnn` and :func:`final_state`, padded batches included."""
    if kind not in RNNS:
        raise ValueError(f"model.<modality>.rnn={kind!r}: expected one of {list(RNNS)}")
    if kind == "lstm":
        return lstm(in_dim, hidden, bidirectional)
    return nn.RNN(in_dim, hidden, nonlinearity=kind, batch_first=True, bidirectional=bidirectional)


LSTMState = tuple[torch.Tensor, torch.Tensor]


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> LSTMState:
    """PyTorch's LSTM cell from its gates' pre-activations ``(B, 4H)`` (order i, f, g, o; input
    and recurrent products and both biases added) and c_{t−1} ``(B, H)``: ``(h_t, c_t)``, with
    c_t = σ(f)·c_{t−1} + σ(i)·tanh(g) and h_t = σ(o)·tanh(c_t), in float32 under autocast
    (:func:`full_precision`). Plain torch operations: on the CPU they make a z loop's training
    step faster than one autograd node with a hand-written backward (0.84–0.97× VRNN's and
    RVAE's steps, ``benchmarks/results/issue20_s18/lstm_cell_ab.py``)."""
    i, f, g, o = full_precision(gates).chunk(4, dim=-1)
    c = torch.sigmoid(f) * full_precision(c) + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_step(rnn: nn.LSTM, x_t: torch.Tensor, state: LSTMState | None) -> LSTMState:
    """One step of a one-layer ``nn.LSTM`` with its own weights: ``x_t (B, D) -> (h_t, c_t)``.

    On the CPU the gates are two products and the cell torch's operations (:func:`lstm_cell`);
    elsewhere torch's fused cell kernel. Either way a Python loop over time costs a few calls
    per step."""
    if x_t.device.type != "cpu":
        return torch_lstm_step(rnn, x_t, state)
    gates = torch.addmm(rnn.bias_ih_l0 + rnn.bias_hh_l0, x_t, rnn.weight_ih_l0.t())
    if state is None:
        return lstm_cell(gates, x_t.new_zeros(x_t.shape[0], rnn.hidden_size))
    return lstm_cell(torch.addmm(gates, state[0], rnn.weight_hh_l0.t()), state[1])


def torch_lstm_step(rnn: nn.LSTM, x_t: torch.Tensor, state: LSTMState | None) -> LSTMState:
    """:func:`lstm_step` through torch's own cell (``torch.lstm_cell``): the fused kernel on a
    GPU, and the original implementation's per-step LSTM (the benchmarks' reference step)."""
    if state is None:
        zeros = x_t.new_zeros(x_t.shape[0], rnn.hidden_size)
        state = (zeros, zeros)
    weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    return torch.lstm_cell(x_t, state, *weights)
