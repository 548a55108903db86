"""The training step (pyro_dvae.step): its loss against Pyro's ELBOs, its steps (eager,
compiled, captured) and how the loop around it reacts to its non-finite losses."""

import contextlib
import copy
import csv
import ctypes
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import AffineAutoregressive
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch.overrides import TorchFunctionMode

from benchmarks.train_step import build
from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import MODELS, build_model
from pyro_dvae.models.priors import StudentTTransition
from pyro_dvae.step import (
    ELBOS,
    PRECISIONS,
    ELBOLoss,
    capturable,
    choose_step,
    compile_networks,
    portable,
    set_lr,
    train_step,
)
from pyro_dvae.train import TrainConfig, Trainer, load_checkpoint, pad_steps
from tests.helpers import zero_noise

TINY = dict(z_dim=3, dense_x_gx=[8], dim_rnn_gx=6, dense_ztm1_g=[4], dense_g_z=[5], dense_z_x=[7])


def _quadratic(theta: torch.Tensor, phi: torch.Tensor):
    """A loss ``weight · mean((θ x − φ)²)`` over the valid frames of ``x (B, T, D)``."""

    def loss(x, mask, weight):
        error = (theta * x - phi) ** 2
        kept = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
        return weight * error[kept].mean()

    return loss


def test_a_step_is_the_scaled_clipped_update_of_the_loss():
    """float64, and the same operations as the hand-written step: equal to the last bit."""
    x = torch.rand(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    params = [torch.full((4,), 2.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64)]
    copies = [p.clone() for p in params]
    for p in params + copies:
        p.requires_grad_(True)
    opt, ref_opt = torch.optim.Adam(params, lr=0.1), torch.optim.Adam(copies, lr=0.1)

    value = train_step(_quadratic(*params), opt, x, mask, 0.5, scale=3.0, clip_norm=0.01)

    ref = _quadratic(*copies)(x, mask, 0.5)
    (3.0 * ref).backward()
    torch.nn.utils.clip_grad_norm_(copies, 0.01)
    ref_opt.step()
    assert not value.requires_grad and value.item() == ref.item()  # the loss before the update
    for p, q in zip(params, copies, strict=True):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
    assert not torch.equal(params[0], torch.full((4,), 2.0, dtype=torch.float64))


def test_frozen_parameters_get_no_update_and_no_share_of_the_clipped_norm():
    x = torch.rand(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theta, phi = torch.full((4,), 2.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    theta.requires_grad_(True)
    phi.requires_grad_(True)
    (g_theta,) = torch.autograd.grad(_quadratic(theta, phi)(x, None, 1.0), [theta])
    norm = torch.linalg.vector_norm(g_theta).item()
    opt = torch.optim.SGD([theta, phi], lr=1.0)
    train_step(_quadratic(theta, phi), opt, x, None, 1.0, frozen=[phi], clip_norm=1e-3)
    assert phi.grad is None and torch.equal(phi, torch.ones(4, dtype=torch.float64))
    # SGD with lr 1: θ moved by its gradient times clip_grad_norm_'s max / (‖g_θ‖ + 1e-6); a
    # norm counting φ's gradient too would move it less. float64: rounding ~1e-16 relative.
    moved = torch.linalg.vector_norm(theta.detach() - 2.0).item()
    assert moved == pytest.approx(1e-3 * norm / (norm + 1e-6), rel=1e-12)


def test_l2_is_added_to_the_gradient_before_clipping():
    """SGD with lr 1, float64: θ moves by g' = ∇L + λθ, then clipped to norm c: by
    c g' / (‖g'‖ + 1e-6) (clip_grad_norm_'s factor). λθ added after clipping, or not at all,
    moves it elsewhere."""
    x = torch.rand(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theta, phi = torch.full((4,), 2.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    start = [theta.clone(), phi.clone()]
    for p in (theta, phi):
        p.requires_grad_(True)
    grads = torch.autograd.grad(_quadratic(theta, phi)(x, None, 1.0), [theta, phi])
    l2, clip = 0.7, 1e-2
    g = torch.cat([gi + l2 * p for gi, p in zip(grads, start, strict=True)])
    expected = torch.cat(start) - clip * g / (torch.linalg.vector_norm(g) + 1e-6)
    opt = torch.optim.SGD([theta, phi], lr=1.0)
    train_step(_quadratic(theta, phi), opt, x, None, 1.0, clip_norm=clip, l2=l2)
    torch.testing.assert_close(torch.cat([theta, phi]).detach(), expected, rtol=1e-12, atol=0)


def _after_one_epoch(tmp_path, batch_size: int):
    """A tiny DKF trainer on 8 sequences after one epoch in ``tmp_path``, and its ``last.pt``."""
    torch.manual_seed(0)
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    data = list(torch.rand(8, 6, 10, generator=torch.Generator().manual_seed(0)) + 0.01)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, warmup_every=0, progress=False)
    trainer = Trainer(model, data, data, cfg, tmp_path, torch.device("cpu"))
    trainer.fit()
    return trainer, load_checkpoint(tmp_path / "last.pt")


def test_a_nan_loss_in_an_epochs_last_step_stops_before_its_checkpoint(tmp_path):
    """One batch per epoch: the non-finite loss is seen only at the epoch's all-reduce, which
    must stop the run before the epoch's writes."""
    trainer, before = _after_one_epoch(tmp_path, batch_size=8)
    loss = trainer.loss
    trainer.loss = lambda x, mask, weight: loss(x, mask, weight) * math.nan
    trainer.cfg.epochs = 2
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 1"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["state"] == before["state"]
    assert len(list(csv.DictReader(open(tmp_path / "metrics.csv")))) == 1


# --- the estimator, host reads and the step modes (issue 20 §1) ----------------------------


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Raise on every read of a tensor's value by Python (``.item()``, ``bool``, ``float``,
    ``.tolist()``, ``nonzero``, boolean-mask indexing): on CUDA each waits for the device, and
    none may happen inside a captured step."""

    class NoHostReads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            reads = name in (
                "item",
                "__bool__",
                "__float__",
                "__int__",
                "tolist",
                "nonzero",
                "equal",
            )
            if name == "__getitem__" and len(args) > 1:
                index = args[1] if isinstance(args[1], tuple) else (args[1],)
                reads = any(torch.is_tensor(i) and i.dtype == torch.bool for i in index)
            if reads:
                raise AssertionError(f"{name} reads a tensor back to the host inside a step")
            return func(*args, **(kwargs or {}))

    with NoHostReads():
        yield


def test_no_host_reads_catches_an_item():
    with pytest.raises(AssertionError, match="item reads"), no_host_reads():
        torch.ones(2).sum().item()


def _speech_model(name: str, x_dim: int = 7) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(name, "speech", x_dim, torch.device("cpu")).double()


def _batch(B: int = 3, T: int = 5, x_dim: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, T, x_dim, dtype=torch.float64, generator=g) + 0.01
    mask = torch.arange(T) < torch.tensor([T, T - 2, 1])[:B, None]
    return x, mask


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("elbo", sorted(ELBOS))
def test_the_loss_is_pyros_elbo(name, elbo):
    """ELBOLoss equals Pyro's own ``differentiable_loss`` (TraceMeanField_ELBO or Trace_ELBO)
    and so do its gradients, at a KL weight of 0.3, for the same draws (float64: the two sum
    the same terms in another order, a relative difference of a few 1e-16 per term). Ours
    leaves Pyro's param store empty (the optimiser holds the parameters); run by Pyro, model
    and guide register every parameter, as SVI needs."""
    model = _speech_model(name)
    x, _ = _batch()
    pyro_elbo = {"mean_field": TraceMeanField_ELBO, "trace": Trace_ELBO}[elbo]()
    torch.manual_seed(2)
    ours = ELBOLoss(model, elbo)(x, None, 0.3)
    ours_grads = torch.autograd.grad(ours, list(model.parameters()), allow_unused=True)
    assert len(pyro.get_param_store()) == 0
    torch.manual_seed(2)
    theirs = pyro_elbo.differentiable_loss(model.model, model.guide, x, 0.3)
    assert len(pyro.get_param_store()) == sum(1 for p in model.parameters() if p.requires_grad)
    their_grads = torch.autograd.grad(theirs, list(model.parameters()), allow_unused=True)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    for a, b in zip(ours_grads, their_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_step_reads_nothing_back_to_the_host(name):
    """Padded and unpadded batches, KL weight 0 (masked out), a float and a device tensor, with
    gradient clipping: nothing in the step reads a value back, so a CUDA graph can hold it.
    SGD stands in for Adam, whose non-capturable form reads its step count on the host (the
    graph step uses the capturable form, which torch runs only on CUDA)."""
    model = _speech_model(name)
    loss = ELBOLoss(model, "mean_field")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, mask = _batch()
    weights = (0.0, 0.5, torch.tensor(0.5, dtype=torch.float64))
    with pyro.validation_enabled(False), no_host_reads():  # as in training
        values = [
            train_step(loss, optimizer, x, m, w, clip_norm=1.0)
            for m in (None, mask)
            for w in weights
        ]
    assert all(torch.isfinite(v) for v in values)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_networks_give_the_eager_loss_and_gradients(name):
    """``train.step=compile``: the same loss and gradients as eager for the same draws, in
    float64 (inductor reorders the sums inside a layer: ~1e-16 relative per operation)."""
    eager = _speech_model(name)
    compiled = copy.deepcopy(eager)
    assert compile_networks(compiled) > 0
    x, mask = _batch()
    results = []
    for model in (eager, compiled):
        torch.manual_seed(3)
        value = ELBOLoss(model, "mean_field")(x, mask, 0.5)
        grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
        results.append((value, grads))
    (a, grads_a), (b, grads_b) = results
    assert b.item() == pytest.approx(a.item(), rel=1e-10)
    for g, h in zip(grads_a, grads_b, strict=True):
        if g is not None:
            torch.testing.assert_close(h, g, rtol=1e-8, atol=1e-10)


BF16_UNIT_ROUNDOFF = 2.0**-8
"""bfloat16 keeps 8 significant bits: rounding to it moves a value by at most 2^-8 of itself."""


COMPONENTS = {"dkf+iaf": dict(guide="iaf"), "dkf+student_t": dict(prior="student_t")}
"""DKF with the two components whose densities are not diagonal Gaussians."""


def _float32_speech_model(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, mask = _batch()
    if name in COMPONENTS:
        model = build_model("dkf", 7, ExponentialPower(), **COMPONENTS[name], **TINY)
    else:
        model = build(name, "speech", 7, torch.device("cpu"))
    return model, x.float(), mask


@pytest.mark.parametrize("name", sorted(MODELS) + sorted(COMPONENTS))
def test_bfloat16_runs_the_products_low_and_every_site_and_gradient_in_float32(name):
    """``train.precision=bfloat16``: the networks' linear layers give bfloat16 (so autocast is
    on), while every sample site's value and log-density, the loss and every gradient are
    float32 (distribution parameters, recurrent cells and the Kalman filter leave autocast)."""
    model, x, _ = _float32_speech_model(name)  # unpadded: the CPU's RNN scans run
    low_outputs = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: low_outputs.append(out.dtype))
        for layer in model.modules()
        if isinstance(layer, torch.nn.Linear)
    ]
    with torch.autocast("cpu", torch.bfloat16):
        guide = poutine.trace(model.guide).get_trace(x)
        joint = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x)
        joint.compute_log_prob()
        guide.compute_log_prob()
    for hook in hooks:
        hook.remove()
    assert torch.bfloat16 in low_outputs
    for trace in (guide, joint):
        for site_name, site in trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                assert site["value"].dtype == torch.float32, site_name
                assert site["log_prob"].dtype == torch.float32, site_name
    loss = ELBOLoss(model, "mean_field", "bfloat16")(x, None, 0.5)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(g.dtype == torch.float32 and g.isfinite().all() for g in grads if g is not None)


def test_bfloat16_keeps_the_student_t_and_iaf_parameters_float32():
    """The two non-Gaussian densities: the Student-t prior's location and scale, and the
    (shift, log-scale) of every IAF flow (its autoregressive network's outputs, which define
    log q), are float32 under autocast, although the networks computing them run in bfloat16."""
    student_t, _, _ = _float32_speech_model("dkf+student_t")
    iaf, x, _ = _float32_speech_model("dkf+iaf")
    prior = next(m for m in student_t.modules() if isinstance(m, StudentTTransition))
    flows = [m for m in iaf.modules() if isinstance(m, AffineAutoregressive)]
    seen = []  # registered after the model's own hook: sees what the transform gets
    hooks = [f.arn.register_forward_hook(lambda _m, _i, out: seen.extend(out)) for f in flows]
    with torch.autocast("cpu", torch.bfloat16):
        t = prior(torch.randn(4, 3)).base_dist
        iaf.guide(x)
    for hook in hooks:
        hook.remove()
    assert (t.loc.dtype, t.scale.dtype, t.df.dtype) == (torch.float32,) * 3
    assert len(seen) >= 2 * len(flows) > 0 and {s.dtype for s in seen} == {torch.float32}


@pytest.mark.parametrize("name", sorted(MODELS) + sorted(COMPONENTS))
def test_bfloat16_loss_and_gradients_are_the_float32_ones_to_bfloat16_rounding(name):
    """For the same draws, the bfloat16 step's loss and gradient vector on a padded batch are
    the float32 ones up to bfloat16's rounding, and not equal to them (the products did run in
    bfloat16).

    Bound: a product whose two operands are rounded to bfloat16 (relative error u = 2^-8 each)
    and accumulated in float32 is off by at most 2u relative to Σ|a||b|; a parameter's gradient
    goes through at most four such products in sequence (the layer input and the weight in the
    forward pass, the incoming gradient and the weight in the backward), so 8u for these small
    well-conditioned networks. Measured: the loss within 6e-4 relative, gradients 3e-3 to 6e-3
    (about u)."""
    model, x, mask = _float32_speech_model(name)
    results = {}
    for precision in PRECISIONS:
        torch.manual_seed(3)
        value = ELBOLoss(model, "mean_field", precision)(x, mask, 0.5)
        grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
        results[precision] = value, torch.cat([g.flatten() for g in grads if g is not None])
    (a, grad_a), (b, grad_b) = results["float32"], results["bfloat16"]
    tolerance = 8 * BF16_UNIT_ROUNDOFF
    assert a.item() != b.item()
    assert abs(b.item() - a.item()) <= tolerance * abs(a.item())
    assert (grad_b - grad_a).norm() <= tolerance * grad_a.norm()


def test_auto_is_eager_on_the_cpu_and_graph_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_step("auto", cpu, "adam", 1)[0] == "eager"
    assert choose_step("auto", cuda, "adam", 1) == (
        "graph",
        "train.step=auto on CUDA; train.step=eager to opt out",
    )
    kind, why = choose_step("auto", cuda, "clipped_adam", 1)
    assert kind == "eager" and "ClippedAdam is not capturable" in why
    assert choose_step("auto", cuda, "adam", 2)[0] == "eager"
    assert choose_step("compile", cpu, "adam", 1) == ("compile", "train.step=compile")
    with pytest.raises(ValueError, match="train.step=graph: it needs a CUDA device"):
        choose_step("graph", cpu, "adam", 1)
    with pytest.raises(ValueError, match="train.step='jit': expected one of"):
        TrainConfig(step="jit")


def test_the_trainer_says_which_step_runs(tmp_path, caplog):
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    data = list(torch.rand(4, 6, 10, generator=torch.Generator().manual_seed(0)) + 0.01)
    cfg = TrainConfig(epochs=1, batch_size=4, warmup_every=0, progress=False)
    with caplog.at_level(logging.INFO, logger="pyro_dvae.train"):
        cpu = torch.device("cpu")
        Trainer(model, data, data, cfg, tmp_path, cpu)
        Trainer(model, data, data, replace(cfg, cpu_allocator="system"), tmp_path, cpu)
    assert "training step: eager (train.step=auto on the CPU" in caplog.text
    kept = "CPU allocator: keep (freed memory stays for the next step" in caplog.text
    assert kept or "CPU allocator: system (the C library" in caplog.text
    assert "CPU allocator: system (train.cpu_allocator=system)" in caplog.text
    with pytest.raises(ValueError, match="train.cpu_allocator='jemalloc': expected one of"):
        TrainConfig(cpu_allocator="jemalloc")


def test_the_trainer_says_which_precision_runs_and_refuses_others(tmp_path, caplog):
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    data = list(torch.rand(4, 6, 10, generator=torch.Generator().manual_seed(0)) + 0.01)
    cfg = TrainConfig(epochs=1, batch_size=4, warmup_every=0, progress=False)
    with caplog.at_level(logging.INFO, logger="pyro_dvae.train"):
        Trainer(model, data, data, cfg, tmp_path, torch.device("cpu"))
        bf16 = replace(cfg, precision="bfloat16")
        low = Trainer(model, data, data, bf16, tmp_path / "b", torch.device("cpu"))
    assert "; precision float32: every operation in float32 (train.precision=bf" in caplog.text
    assert "; precision bfloat16: the networks' linear and RNN layers in bfloat16" in caplog.text
    assert low.loss.autocast
    with pytest.raises(ValueError, match="train.precision='float16': expected one of"):
        TrainConfig(precision="float16")


MALLINFO = """
import ctypes, sys
import torch
from pyro_dvae.step import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert keep_freed_memory() is None
before = libc.mallinfo2()
x = torch.ones(2**24)  # 64 MiB
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(during.hblkhd - before.hblkhd, after.fordblks - before.fordblks)
"""
"""Prints, in bytes, how much a 64 MiB tensor added to the mapped chunks, and to the heap's
free memory once freed (glibc's ``mallinfo2``, 2.33 and later)."""


def _mapped_and_kept(allocator: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's own
    out = subprocess.run([sys.executable, "-c", MALLINFO, allocator], capture_output=True,
                         text=True, check=True, env=env)  # fmt: skip
    mapped, kept = out.stdout.split()
    return int(mapped), int(kept)


def test_the_kept_allocator_serves_a_large_tensor_from_the_heap_and_keeps_it_freed():
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later")
    size = 2**26
    mapped, kept = _mapped_and_kept("system")  # glibc maps it and unmaps it at free
    assert mapped >= size and kept < size / 2
    mapped, kept = _mapped_and_kept("keep")  # from the heap, and kept there (less what small
    assert mapped < size / 2 and kept > size / 2  # allocations took from the heap's free memory)


def test_a_capturable_optimiser_keeps_its_lr_on_the_device_and_saves_it_portably():
    """The LR schedule of a captured step rewrites a device tensor in place (a new float would
    be baked into the graph at capture); checkpoints keep floats, loadable by any step."""
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    optimizer.step()
    capturable(optimizer)
    lr = optimizer.param_groups[0]["lr"]
    set_lr(optimizer, 0.05)
    lr_32 = torch.tensor(0.05).item()  # the LR tensor has the parameters' dtype
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == lr_32
    saved = portable(optimizer.state_dict())
    assert saved["param_groups"][0]["lr"] == lr_32 and not saved["param_groups"][0]["capturable"]
    fresh = torch.optim.Adam([p], lr=1.0)
    fresh.load_state_dict(saved)
    set_lr(fresh, 0.01)
    assert fresh.param_groups[0]["lr"] == 0.01


def test_a_nan_loss_early_in_an_epoch_stops_at_its_end_before_its_checkpoint(tmp_path):
    """The losses are read once an epoch: a NaN in the first of two steps still stops the run
    before the epoch's writes, and last.pt holds the previous epoch."""
    trainer, before = _after_one_epoch(tmp_path, batch_size=4)
    loss, calls = trainer.loss, []

    def first_step_nan(x, mask, weight):
        calls.append(1)
        # + NaN: a NaN value with finite gradients, so the second step's loss is finite
        return loss(x, mask, weight) + (math.nan if len(calls) == 1 else 0.0)

    trainer.loss = first_step_nan
    trainer.cfg.epochs = 2
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 1"):
        trainer.fit()
    assert len(calls) == 2
    assert load_checkpoint(tmp_path / "last.pt")["state"] == before["state"]


@pytest.mark.parametrize("name", ["dkf", "dsae", "rvae_noncausal"])
def test_padding_a_padded_batch_further_keeps_its_loss(name):
    """A captured step pads padded batches to a multiple of 16 steps (a few shapes to
    capture): the loss is unchanged (ε = 0, so no draw depends on T; float64)."""
    model = _speech_model(name)
    x, mask = _batch()
    x16, mask16 = pad_steps(x, mask, 16)
    assert x16.shape[1] == 16 and torch.equal(x16[:, :5], x) and not mask16[:, 5:].any()
    with zero_noise():
        losses = [
            ELBOLoss(model, "mean_field")(*batch, 0.5) for batch in ((x, mask), (x16, mask16))
        ]
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-12)
