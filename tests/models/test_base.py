"""The two site forms of every model and guide, and Pyro's own tools on the model/guide pair."""

from pathlib import Path

import pyro
import pytest
import torch
from omegaconf import OmegaConf
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import ClippedAdam

from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
PAIRS = [
    ("vae", None, None),
    ("dkf", "dks", None),
    ("dkf", "st_lr", None),
    ("dkf", "mean_field", None),
    ("dkf", "dks", "linear"),
    ("dkf", "dks", "student_t"),
    ("dkf", "iaf", None),
    ("storn", None, None),
    ("vrnn", None, None),
    ("srnn", "smoother", None),
    ("srnn", "filter", None),
    ("rvae_causal", "causal", None),
    ("rvae_causal", "noncausal", None),
    ("rvae_noncausal", "noncausal", None),
    ("rvae_noncausal", "causal", None),
    ("dsae", None, None),
]
D, B, T, KL_WEIGHT = 12, 3, 6, 0.7


def small(name: str, guide: str | None = None, prior: str | None = None, sites: str = "trajectory"):
    """The model with its motion layer sizes (the small ones) on D = 12 power bins."""
    params = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml").motion)
    return build_model(name, D, ExponentialPower(), guide=guide, prior=prior, sites=sites, **params)


def replayed_trace(values: dict[str, torch.Tensor]) -> poutine.Trace:
    """A trace holding only the given latent values, for ``poutine.replay``."""
    trace = poutine.Trace()
    for name, value in values.items():
        trace.add_node(name, type="sample", value=value, is_observed=False, infer={})
    return trace


def loss_and_grads(model, x, elbo, guide_trace):
    """The ELBO loss with the guide replaying ``guide_trace``, and its parameter gradients."""
    guide = poutine.replay(model.guide, trace=guide_trace)
    loss = elbo.differentiable_loss(model.model, guide, x, KL_WEIGHT)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    zeros = [torch.zeros_like(p) for p in params]
    return loss, [g if g is not None else zero for g, zero in zip(grads, zeros, strict=True)]


@pytest.mark.parametrize("elbo", [TraceMeanField_ELBO(), Trace_ELBO()], ids=["mean_field", "trace"])
@pytest.mark.parametrize("name,guide,prior", PAIRS)
def test_markov_and_trajectory_sites_give_the_same_loss_and_gradients(name, guide, prior, elbo):
    """Same parameters, same noise (the markov guide's draw, a function of the parameters):
    the per-step sites z_1 … z_T and the single site z give the same ELBO and gradients."""
    model = small(name, guide, prior, sites="markov")
    x = torch.exp(torch.randn(B, T, D))
    torch.manual_seed(1)
    markov_trace = poutine.trace(model.guide).get_trace(x, KL_WEIGHT)
    steps = [f"z_{t}" for t in range(1, T + 1)]
    sites = [n for n, s in markov_trace.nodes.items() if s["type"] == "sample"]
    assert [n for n in sites if n.startswith("z")] == steps
    markov = loss_and_grads(model, x, elbo, markov_trace)

    values = {n: markov_trace.nodes[n]["value"] for n in sites if n not in steps}
    values["z"] = torch.stack([markov_trace.nodes[n]["value"] for n in steps], dim=1)
    trajectory = loss_and_grads(model.use_sites("trajectory"), x, elbo, replayed_trace(values))
    torch.testing.assert_close(markov[0], trajectory[0], rtol=1e-5, atol=1e-5)
    for g_markov, g_trajectory in zip(markov[1], trajectory[1], strict=True):
        torch.testing.assert_close(g_markov, g_trajectory, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,guide,prior", PAIRS)
def test_both_forms_reconstruct_along_the_same_posterior_mean_path(name, guide, prior):
    model, x = small(name, guide, prior), torch.exp(torch.randn(B, T, D))
    trajectory = model.reconstruct(x)
    torch.testing.assert_close(model.use_sites("markov").reconstruct(x), trajectory)
    assert not torch.equal(model.reconstruct(x, sample=True), trajectory)


def test_unknown_sites_is_a_clear_error():
    with pytest.raises(ValueError, match="model.sites='steps'"):
        small("dkf", sites="steps")


@pytest.mark.parametrize("sites", ["trajectory", "markov"])
def test_predictive_gives_posterior_samples_and_posterior_predictive_x(sites):
    """Predictive with the guide: K posterior draws of z; with the observation unconditioned,
    x ~ p(x | z) (Exponential power with mean exp(y)): positive and varying across draws."""
    model, x = small("dkf", sites=sites), torch.exp(torch.randn(B, T, D))
    K = 5
    samples = Predictive(model.model, guide=model.guide, num_samples=K)(x)
    z = (
        samples["z"]
        if sites == "trajectory"
        else torch.stack([samples[f"z_{t}"] for t in range(1, T + 1)], dim=-2)
    )
    assert z.shape == (K, B, T, 10) and z.std(0).min() > 0
    predictive = Predictive(poutine.uncondition(model.model), guide=model.guide, num_samples=K)
    x_new = predictive(x)["x"]
    assert x_new.shape == (K, B, T, D) and (x_new >= 0).all() and x_new.std(0).min() > 0
    assert not torch.equal(x_new[0], x)


def test_pyro_svi_with_clipped_adam_trains_a_model():
    """The README's ten-line script: pyro.infer.SVI and pyro.optim.ClippedAdam on the pair."""
    pyro.clear_param_store()
    model = small("dkf", sites="markov")
    x = torch.exp(torch.sin(torch.linspace(0, 6, T))[None, :, None] + torch.zeros(B, T, D))
    svi = SVI(model.model, model.guide, ClippedAdam({"lr": 1e-2, "clip_norm": 10.0}), Trace_ELBO())
    before = [p.detach().clone() for p in model.parameters()]
    losses = [svi.step(x) for _ in range(60)]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
