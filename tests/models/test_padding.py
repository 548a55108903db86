"""Padded batches: every model and guide gives a padded batch exactly the loss of its
sequences on their own (observation, latent log-densities and KLs, RNNs in both directions)."""

import re
from pathlib import Path

import pyro
import pytest
import torch
from omegaconf import OmegaConf
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_dvae.distributions import Trajectory
from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model
from pyro_dvae.train import loss_terms
from tests.models.test_base import PAIRS as BASE_PAIRS

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
PAIRS = [*BASE_PAIRS, ("kvae", None, None)]
D, T, KL_WEIGHT = 12, 6, 0.7
LENGTHS = (6, 4)


def small(name: str, guide: str | None, prior: str | None, sites: str):
    """The model with its motion layer sizes (the small ones) on D = 12 power bins."""
    params = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml").motion)
    return build_model(name, D, ExponentialPower(), guide=guide, prior=prior, sites=sites, **params)


def one_sequence(trace: poutine.Trace, b: int, length: int) -> poutine.Trace:
    """The latent values of ``trace`` for sequence b cut to its first ``length`` steps, as a trace
    to replay: trajectories (B, T, ·) are cut in time, per-step sites z_t with t > length are
    dropped, static latents (B, ·) are kept."""
    out = poutine.Trace()
    for name in trace.stochastic_nodes:
        site = trace.nodes[name]
        step = re.fullmatch(r".+_(\d+)", name)
        if step and int(step[1]) > length:
            continue
        value = site["value"][b : b + 1]
        if isinstance(site["fn"], Trajectory):
            value = value[:, :length]
        out.add_node(name, type="sample", value=value, is_observed=False, infer={})
    return out


@pytest.mark.parametrize("sites", ["trajectory", "markov"])
@pytest.mark.parametrize("name,guide,prior", PAIRS)
def test_a_padded_batch_scores_as_its_sequences_alone(name, guide, prior, sites):
    """Sequences of lengths 6 and 4, the second padded with 123.0 under a step mask: the loss
    is the frame-weighted mean of the two unpadded losses (same latent values, replayed)."""
    model = small(name, guide, prior, sites)
    x = torch.exp(torch.randn(len(LENGTHS), T, D))
    mask = torch.arange(T) < torch.tensor(LENGTHS)[:, None]
    x[~mask] = 123.0
    elbo = TraceMeanField_ELBO()
    with model.step_mask(mask):
        guide_trace = poutine.trace(model.guide).get_trace(x, KL_WEIGHT)
        padded = elbo.loss(model.model, poutine.replay(model.guide, guide_trace), x, KL_WEIGHT)

    def alone(b: int, length: int) -> float:
        guide = poutine.replay(model.guide, trace=one_sequence(guide_trace, b, length))
        return elbo.loss(model.model, guide, x[b : b + 1, :length], KL_WEIGHT)

    weighted = sum(n * alone(b, n) for b, n in enumerate(LENGTHS)) / sum(LENGTHS)
    assert padded == pytest.approx(weighted, rel=1e-5)


@pytest.mark.parametrize("sites", ["trajectory", "markov"])
@pytest.mark.parametrize("name,guide,prior", [("dkf", "dks", None), ("dkf", "dks", "student_t")])
def test_the_trainers_validation_terms_add_up_to_the_padded_elbo(name, guide, prior, sites):
    """train.loss_terms (validation's recon and KL, analytic or sampled) under a step mask sum
    to the masked ELBO of the same draw, per-step sites included."""
    model = small(name, guide, prior, sites)
    x = torch.exp(torch.randn(len(LENGTHS), T, D))
    mask = torch.arange(T) < torch.tensor(LENGTHS)[:, None]
    with model.step_mask(mask):
        pyro.set_rng_seed(5)
        recon, kl = loss_terms(model, x)
        pyro.set_rng_seed(5)
        loss = TraceMeanField_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x)
    assert (recon + kl).item() == pytest.approx(loss, rel=1e-5)
