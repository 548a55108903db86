"""CUDA: every model runs there and agrees with the CPU. Skipped where there is no GPU (CI)."""

import copy

import pytest
import torch

from benchmarks.train_step import build
from pyro_dvae.models import MODELS
from pyro_dvae.train import loss_terms

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
