"""CUDA: every model runs there and agrees with the CPU. Skipped where there is no GPU (CI)."""

import copy

import pytest
import torch

from benchmarks.train_step import build
from pyro_dvae.models import MODELS
from pyro_dvae.step import ELBOLoss, GraphStep, capturable, set_lr, train_step
from pyro_dvae.train import loss_terms
from tests.helpers import zero_noise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_posterior_mean_reconstruction_on_cuda_equals_cpu(name):
    torch.manual_seed(0)
    cpu = build(name, "speech", 33, torch.device("cpu")).double().eval()
    cuda = copy.deepcopy(cpu).cuda()
    x = torch.rand(3, 12, 33, dtype=torch.float64) * 10
    with torch.no_grad():
        expected = cpu.estimate(x)
        got = cuda.estimate(x.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_training_step_on_cuda_gives_finite_gradients(name):
    torch.manual_seed(0)
    model = build(name, "speech", 33, torch.device("cuda"))
    x = torch.rand(4, 12, 33, device="cuda") * 10
    recon, kl = loss_terms(model, x)
    (recon + kl).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(recon) and torch.isfinite(kl) and kl >= 0
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(g.is_cuda for g in grads)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_graph_step_follows_the_eager_trajectory(name, padded):
    """20 steps from the same weights and batches (padded: lengths that change from batch to
    batch, one shape), with the KL weight (0, then rising) and the LR changing between steps:
    the captured step's losses are eager's. float64 and ε = 0
    (:func:`zero_noise`), so both run the same arithmetic; only the weight-0 graph and one
    other are captured (a new weight or LR is written into device tensors, not recaptured)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build(name, "speech", 33, device).double()
    batches = [torch.rand(4, 12, 33, dtype=torch.float64, device=device) * 10 for _ in range(20)]
    lengths = torch.tensor([12, 7, 3, 9], device=device)
    masks = [torch.arange(12, device=device) < lengths.roll(i)[:, None] for i in range(20)]
    if not padded:
        masks = [None] * 20
    trajectories, graph_step = [], None
    for captured in (False, True):
        net = copy.deepcopy(model)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss = ELBOLoss(net, "mean_field")
        if captured:
            capturable(optimizer)
            graph_step = GraphStep(loss, optimizer, clip_norm=1.0)
        values = []
        with zero_noise():
            for i, (x, mask) in enumerate(zip(batches, masks, strict=True)):
                set_lr(optimizer, 1e-3 * 0.9**i)
                weight = 0.0 if i < 5 else min(1.0, 0.1 * i)
                if captured:
                    values.append(graph_step(x, mask, weight))
                else:
                    values.append(train_step(loss, optimizer, x, mask, weight, clip_norm=1.0))
        trajectories.append(torch.stack(values).cpu())
    eager, graph = trajectories
    torch.testing.assert_close(graph, eager, rtol=1e-9, atol=1e-12)
    assert len(graph_step.graphs) == 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_bfloat16_graph_step_follows_the_bfloat16_eager_trajectory(name):
    """``train.precision=bfloat16`` with ``train.step=graph``: autocast inside the capture (its
    cast cache off) replays the eager bfloat16 step's losses over 20 steps (float32 model,
    ε = 0). The same kernels run in both; a different kernel choice would differ by bfloat16
    rounding, so 8 units of it (2^-8 each) are allowed."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build(name, "speech", 33, device)
    batches = [torch.rand(4, 12, 33, device=device) * 10 for _ in range(20)]
    trajectories = []
    for captured in (False, True):
        net = copy.deepcopy(model)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss = ELBOLoss(net, "mean_field", "bfloat16")
        if captured:
            capturable(optimizer)
            step = GraphStep(loss, optimizer, clip_norm=1.0)
        with zero_noise():
            values = [
                step(x, None, 1.0)
                if captured
                else train_step(loss, optimizer, x, None, 1.0, clip_norm=1.0)
                for x in batches
            ]
        trajectories.append(torch.stack(values).cpu())
    eager, graph = trajectories
    assert eager.dtype == torch.float32 and eager.isfinite().all()
    torch.testing.assert_close(graph, eager, rtol=8 * 2.0**-8, atol=0)
