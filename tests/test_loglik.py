"""ELBO and importance-weighted log-likelihood bounds over any model/guide pair."""

import math
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from omegaconf import OmegaConf
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_dvae import runner
from pyro_dvae.data.music import MusicTask, PianoRolls
from pyro_dvae.likelihoods import Bernoulli
from pyro_dvae.loglik import bounds, importance_log_weights, log_likelihood, log_weights
from pyro_dvae.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
C, R = torch.tensor([1.5, -0.8]), 0.6
"""The toy's emission: x_t = C z_t + N(0, R² I), z_t ~ N(0, 1)."""


class LinearGaussian:
    """z_t ~ N(0, 1) i.i.d., x_t = C z_t + N(0, R² I) (D = 2): log p(x) is known exactly.
    The guide is the exact posterior q(z_t | x_t) with its mean scaled by ``shrink`` and its
    standard deviation by ``widen`` (1, 1: exact). Sites are per step (a plate over time), so
    that padded steps can be masked (:meth:`step_mask`)."""

    def __init__(self, shrink: float = 1.0, widen: float = 1.0) -> None:
        self.shrink, self.widen, self.mask = shrink, widen, True

    @contextmanager
    def step_mask(self, mask: torch.Tensor):
        self.mask = mask
        yield
        self.mask = True

    def model(self, x: torch.Tensor) -> None:
        B, T, _ = x.shape
        with plates(B, T), poutine.mask(mask=self.mask):
            z = pyro.sample("z", dist.Normal(torch.zeros(B, T), 1.0))
            pyro.sample("x", dist.Normal(z[..., None] * C, R).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        precision = 1 + (C**2).sum() / R**2
        loc = (x @ C) / R**2 / precision
        with plates(*x.shape[:2]), poutine.mask(mask=self.mask):
            pyro.sample("z", dist.Normal(self.shrink * loc, self.widen * precision**-0.5))

    @staticmethod
    def exact(x: torch.Tensor) -> torch.Tensor:
        """log p(x_t) per step (B, T): x_t ~ N(0, C Cᵀ + R² I), independent over t."""
        marginal = dist.MultivariateNormal(torch.zeros(2), torch.outer(C, C) + R**2 * torch.eye(2))
        return marginal.log_prob(x)


@contextmanager
def plates(B: int, T: int):
    with pyro.plate("sequences", B, dim=-2), pyro.plate("steps", T, dim=-1):
        yield


def toy_data(B: int, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, generator=g)
    return z[..., None] * C + R * torch.randn(B, T, 2, generator=g)


def test_iwae_approaches_the_exact_log_likelihood_as_k_grows():
    """An imperfect guide: the ELBO is ~3 nats per sequence below log p(x); the IWAE gap
    shrinks with every tenfold K and is within 0.02 nats at K = 1000, never above log p(x)
    by more than noise."""
    x, toy = toy_data(200, 5, seed=1), LinearGaussian(shrink=0.7, widen=1.5)
    exact = LinearGaussian.exact(x).sum(-1).mean()
    gaps = []
    for K in (1, 10, 100, 1000):
        elbo, iwae = bounds(importance_log_weights(toy, x, K))
        gaps.append((exact - iwae.mean()).item())
        assert torch.all(iwae >= elbo - 1e-5)  # Jensen, per sequence
    assert gaps[0] > 2.0
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] > -0.01
    assert gaps[3] < 0.02


def test_with_the_exact_posterior_every_bound_is_the_log_likelihood_per_step():
    """The exact posterior as guide makes every weight p(x): ELBO = IWAE = log p(x) for any K
    and chunking; the totals are divided by the number of valid time steps of all batches."""
    full, padded = toy_data(4, 5, seed=2), toy_data(3, 4, seed=3)
    mask = torch.arange(4) < torch.tensor([4, 1, 3])[:, None]
    padded[~mask] = 100.0
    exact = LinearGaussian.exact(full).sum() + LinearGaussian.exact(padded)[mask].sum()
    result = log_likelihood(LinearGaussian(), [full, (padded, mask)], num_samples=7, max_batch=8)
    assert result["steps"] == 4 * 5 + 8 and result["sequences"] == 7
    assert result["elbo_per_step"] == pytest.approx(exact.item() / 28, rel=1e-5)
    assert result["nll_per_step"] == pytest.approx(-exact.item() / 28, rel=1e-5)
    log_w = importance_log_weights(LinearGaussian(), full, 7, max_batch=8)
    assert log_w.shape == (7, 4)
    torch.testing.assert_close(log_w, LinearGaussian.exact(full).sum(-1).expand(7, 4))


def small(name: str, guide: str | None = None, sites: str = "trajectory"):
    """A model with its motion layer sizes on 12 binary features (Bernoulli likelihood)."""
    params = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml").motion)
    return build_model(name, 12, Bernoulli(), guide=guide, sites=sites, **params)


def binary(B: int, T: int) -> torch.Tensor:
    return (torch.rand(B, T, 12) < 0.3).float()


@pytest.mark.parametrize("sites", ["trajectory", "markov"])
@pytest.mark.parametrize("name,guide", [("dkf", "dks"), ("srnn", "smoother"), ("dsae", None)])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_iwae_with_one_sample_is_pyros_elbo(name, guide, sites, padded):
    """K = 1 with the same random draws: Σ_b log w_b = −(Trace_ELBO loss)·(number of frames),
    the loss being per frame; with padding, per valid frame."""
    model, x = small(name, guide, sites), binary(3, 6)
    mask = torch.arange(6) < torch.tensor([6, 2, 4])[:, None] if padded else None
    frames = 18 if mask is None else 12
    pyro.set_rng_seed(7)
    log_w = importance_log_weights(model, x, 1, mask)
    pyro.set_rng_seed(7)
    with model.step_mask(mask), torch.no_grad():
        loss = Trace_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x)
    _, iwae = bounds(log_w)
    assert iwae.sum().item() == pytest.approx(-loss * frames, rel=1e-5)


PAIRS = [
    ("vae", None),
    ("dkf", "dks"),
    ("dkf", "st_lr"),
    ("dkf", "mean_field"),
    ("storn", None),
    ("vrnn", None),
    ("srnn", "smoother"),
    ("srnn", "filter"),
    ("rvae_causal", "causal"),
    ("rvae_noncausal", "noncausal"),
    ("dsae", None),
    ("kvae", None),
]


@pytest.mark.parametrize("name,guide", PAIRS)
def test_each_padded_sequence_gets_the_weight_it_has_alone(name, guide):
    """Per sequence, not only in total: log p(x, z) − log q(z | x) of every sequence of a
    padded batch equals that of the sequence on its own (same latent values)."""
    model, x, lengths = small(name, guide), binary(3, 6), [6, 2, 4]
    mask = torch.arange(6) < torch.tensor(lengths)[:, None]
    x[~mask] = 1.0
    with model.step_mask(mask):
        trace = poutine.trace(model.guide).get_trace(x)
    replaying = SimpleNamespace(model=model.model, step_mask=model.step_mask)
    replaying.guide = poutine.replay(model.guide, trace=trace)
    padded = log_weights(replaying, x, mask)
    for b, length in enumerate(lengths):
        values = poutine.Trace()
        for site in trace.stochastic_nodes:
            value = trace.nodes[site]["value"][b : b + 1]
            value = value[:, :length] if value.dim() == 3 else value  # (1, T, L) or (1, V)
            values.add_node(site, type="sample", value=value, is_observed=False, infer={})
        alone = SimpleNamespace(model=model.model, guide=poutine.replay(model.guide, values))
        torch.testing.assert_close(padded[b : b + 1], log_weights(alone, x[b : b + 1, :length]))


def test_a_site_outside_the_sequence_plate_is_named():
    def model(x):
        pyro.sample("global_scale", dist.LogNormal(0.0, 1.0))

    pair = SimpleNamespace(model=model, guide=model)
    with pytest.raises(ValueError, match="'global_scale' is not inside the vectorised plate"):
        log_weights(pair, torch.zeros(2, 3, 1))


def test_fewer_than_one_sample_names_the_key():
    with pytest.raises(ValueError, match="iwae_samples=0"):
        importance_log_weights(LinearGaussian(), torch.zeros(2, 3, 2), 0)


def test_the_runner_scores_each_test_sequence_on_its_own():
    """runner.test_log_likelihood: every chorale alone (K draws as the batch), per step."""
    rolls = [(torch.rand(n, 88) < 0.2).numpy().astype("uint8") for n in (5, 9, 3)]
    task = MusicTask("toy", *(PianoRolls(rolls) for _ in range(3)))
    model = build_model(
        "dkf",
        88,
        Bernoulli(),
        z_dim=4,
        dense_x_gx=[8],
        dim_rnn_gx=8,
        dense_ztm1_g=[],
        dense_g_z=[],
        dense_z_x=[8],
    )
    pyro.set_rng_seed(3)
    scores = runner.test_log_likelihood(model, task, 6, torch.device("cpu"))
    pyro.set_rng_seed(3)
    alone = log_likelihood(model, [task.test[i][None] for i in range(3)], 6)
    assert scores["iwae_samples"] == 6 and alone["steps"] == 17
    assert scores["nll_per_step"] == pytest.approx(alone["nll_per_step"], rel=1e-6)
    assert scores["elbo_per_step"] == pytest.approx(alone["elbo_per_step"], rel=1e-6)
    assert scores["nll_per_step"] < -scores["elbo_per_step"]


def test_the_runner_names_iwae_samples_for_a_test_set_without_batches():
    task = SimpleNamespace(name="toy", test=[torch.zeros(3, 88)])
    with pytest.raises(ValueError, match="iwae_samples=5: the test set of data=toy"):
        runner.test_log_likelihood(small("dkf"), task, 5, torch.device("cpu"))


def test_the_three_estimators_of_the_dmm_papers():
    """The exact posterior makes every weight p(x): elbo_per_step is Σ log p(x_b) over the
    valid steps, elbo_per_sequence_step the mean over sequences of log p(x_b) / L_b (lengths
    1 to 5 here, so the two differ), nll_per_step −Σ log p(x_b) over the valid steps."""
    full, padded = toy_data(2, 5, seed=4), toy_data(3, 4, seed=5)
    lengths = torch.tensor([4, 1, 3])
    mask = torch.arange(4) < lengths[:, None]
    padded[~mask] = 100.0
    per_sequence = torch.cat(
        [LinearGaussian.exact(full).sum(-1), (LinearGaussian.exact(padded) * mask).sum(-1)]
    )
    steps = torch.cat([torch.tensor([5, 5]), lengths])
    result = log_likelihood(LinearGaussian(), [full, (padded, mask)], num_samples=3)
    assert result["elbo_per_step"] == pytest.approx(per_sequence.sum().item() / 18, rel=1e-5)
    assert result["nll_per_step"] == pytest.approx(-per_sequence.sum().item() / 18, rel=1e-5)
    expected = (per_sequence / steps).mean().item()
    assert result["elbo_per_sequence_step"] == pytest.approx(expected, rel=1e-5)
    assert abs(expected - per_sequence.sum().item() / 18) > 0.1


def test_each_estimator_equals_its_definition_over_the_same_weights():
    """An imperfect guide (so ELBO < IWAE): the three numbers are the definitions applied to the
    importance weights drawn with the same seed."""
    toy, K = LinearGaussian(shrink=0.7, widen=1.5), 50
    batches = [toy_data(2, 5, seed=6), toy_data(3, 2, seed=7)]
    torch.manual_seed(11)
    result = log_likelihood(toy, batches, K)
    torch.manual_seed(11)
    log_w = [importance_log_weights(toy, x, K) for x in batches]  # (K, B) each
    elbo = torch.cat([w.mean(0) for w in log_w])
    iwae = torch.cat([torch.logsumexp(w, 0) - math.log(K) for w in log_w])
    lengths = torch.tensor([5.0, 5.0, 2.0, 2.0, 2.0])
    assert result["elbo_per_step"] == pytest.approx(elbo.sum().item() / 16, rel=1e-6)
    assert result["elbo_per_sequence_step"] == pytest.approx(
        (elbo / lengths).mean().item(), rel=1e-6
    )
    assert result["nll_per_step"] == pytest.approx(-iwae.sum().item() / 16, rel=1e-6)
    assert result["nll_per_step"] < -result["elbo_per_step"] - 0.1


class Recorder(LinearGaussian):
    """Records the batch size of every guide pass."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[int] = []

    def guide(self, x: torch.Tensor) -> None:
        self.passes.append(x.shape[0])
        super().guide(x)


@pytest.mark.parametrize("B,passes", [(1, [1000, 1000]), (3, [999] * 6 + [6])])
def test_k_2000_draws_go_in_passes_of_at_most_max_batch_sequences(B, passes):
    """Sequences per pass: ⌊1000 / B⌋ draws of the B sequences, the rest in a last pass."""
    toy = Recorder()
    log_w = importance_log_weights(toy, toy_data(B, 2, seed=8), 2000, max_batch=1000)
    assert toy.passes == passes and log_w.shape == (2000, B)


def test_the_runner_reports_all_three_estimators_with_k_2000_in_passes_of_1000():
    """runner.test_log_likelihood: K = 2000 draws of each chorale in two passes of
    IWAE_MAX_BATCH = 1000; the per-sequence bound is reported beside the per-step ones."""
    rolls = [(torch.rand(n, 88) < 0.2).numpy().astype("uint8") for n in (5, 9, 3)]
    task = MusicTask("toy", *(PianoRolls(rolls) for _ in range(3)))
    model = build_model("dkf", 88, Bernoulli(), z_dim=4, dense_x_gx=[8], dim_rnn_gx=8,
                        dense_ztm1_g=[], dense_g_z=[], dense_z_x=[8])  # fmt: skip
    passes, guide = [], model.guide
    model.guide = lambda x, *args: passes.append(x.shape[0]) or guide(x, *args)
    pyro.set_rng_seed(3)
    scores = runner.test_log_likelihood(model, task, 2000, torch.device("cpu"))
    pyro.set_rng_seed(3)
    alone = log_likelihood(model, [task.test[i][None] for i in range(3)], 2000, 1000)
    assert runner.IWAE_MAX_BATCH == 1000 and passes == [1000] * 12  # 6 per run: 3 chorales × 2
    for key in ("elbo_per_step", "elbo_per_sequence_step", "nll_per_step"):
        assert scores[key] == pytest.approx(alone[key], rel=1e-6)


@pytest.mark.parametrize("name", ["dkf", "srnn", "vrnn"])
def test_the_k_draws_share_the_guides_summary_of_x_and_score_as_without(monkeypatch, name):
    """importance_log_weights scores the K copies under nn.identical_copies: an RNN over x
    alone (DKF's and SRNN's summaries) runs on one copy, one over z (VRNN's) on all of them,
    and the log-weights are those of the K copies run in full (float64: rounding only)."""
    import pyro_dvae.loglik as loglik_module
    from pyro_dvae.nn import identical_copies

    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    model = build_model(name, 4, Bernoulli(), **OmegaConf.to_container(cfg.music)).double()
    model.eval()
    x = (torch.rand(2, 6, 4) < 0.3).double()
    rnn_batches = []
    for rnn in (m for m in model.modules() if isinstance(m, torch.nn.RNNBase)):
        rnn.register_forward_pre_hook(lambda _, args: rnn_batches.append(args[0].shape[0]))
    weights = {}
    for shortcut in (True, False):
        monkeypatch.setattr(
            loglik_module,
            "identical_copies",
            identical_copies if shortcut else lambda k: nullcontext(),
        )
        rnn_batches.clear()
        pyro.set_rng_seed(4)
        weights[shortcut] = importance_log_weights(model, x, 5)
        assert (2 in rnn_batches) == (shortcut and name != "vrnn")
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-12, atol=1e-12)
