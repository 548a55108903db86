"""Checks of generation mode and scheduled sampling shared by the autoregressive models' tests."""

import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_dvae.feedback import Feedback


class PerfectPredictor(Feedback):
    """Generation mode whose "prediction" of every frame is its ground truth."""

    def predict(self, likelihood, y, x):
        return x


def elbo_loss(model, x, feedback, seed):
    """The mean-field ELBO loss with ``feedback`` in the model, the noise drawn from ``seed``."""
    model.feedback = feedback
    torch.manual_seed(seed)
    return TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, 1.0)


def assert_perfect_predictor_is_teacher_forcing(model, x, seed=3):
    """The free-running code path fed the ground truth gives the teacher-forced loss (to float
    rounding: the teacher-forced path runs the LSTM in one call) and reconstruction."""
    generation = elbo_loss(model, x, PerfectPredictor(1.0), seed)
    reconstruction = model.reconstruct(x)
    teacher = elbo_loss(model, x, Feedback(), seed)
    torch.testing.assert_close(generation, teacher)
    torch.testing.assert_close(reconstruction, model.reconstruct(x))


def guide_draw_and_coins(model, x, p, seed):
    """The guide's z for ``seed`` and then the coins the model draws: what a by-hand loss needs
    to use the same noise as :func:`elbo_loss`."""
    torch.manual_seed(seed)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    coins = torch.rand(x.shape[:2]) < p if p < 1 else torch.ones(x.shape[:2], dtype=torch.bool)
    return z, coins


def assert_loss_and_gradients_match(model, loss, expected):
    """Equal losses and equal gradients for every parameter."""
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        if grad is None or expected_grad is None:
            assert grad is None and expected_grad is None
        else:
            torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
