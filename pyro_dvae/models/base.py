"""What every DVAE shares: the sequence plate, KL weighting, observation and its uses.

A DVAE is a :class:`~pyro.nn.PyroModule` with two methods that read like the equations:

* ``model(x, kl_weight)``: the generative model p(x_{1:T}, z_{1:T}) scoring the data ``x``;
* ``guide(x, kl_weight)``: the inference model q(z_{1:T} | x_{1:T}).

Both run under :meth:`DVAE.sequences`, a plate over the B sequences of the batch that also
scales every log-density by 1/(T·B), so the ELBO is reported per frame as in the paper, and
registers the module's parameters with Pyro's param store (``pyro.module``), so that Pyro's
own ``SVI`` and ``Predictive`` work on the pair (the trainer's loss, whose optimiser holds the
parameters, skips that: :meth:`DVAE.without_param_sites`). Latent sites go through
:meth:`DVAE.latent`, which multiplies their log-densities by the KL warm-up weight β·w in both
model and guide (``poutine.scale``) and emits a latent trajectory in the model's
:attr:`DVAE.sites` form: one site ``z``, or Markov sites ``z_1 … z_T`` (see
:mod:`pyro_dvae.distributions`).

Everything else is derived: :meth:`reconstruct` (posterior mean or sample, decoded) and
``generate`` (ancestral sampling; each model writes its own).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pyro
import torch
from pyro import poutine
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule

from pyro_dvae.distributions import SITES, PosteriorMean, Trajectory, markov_sites
from pyro_dvae.feedback import Feedback
from pyro_dvae.likelihoods import Likelihood, MaskedSteps
from pyro_dvae.nn import full_precision, sequence_lengths


class DVAE(PyroModule):
    """Base class. Subclasses define ``model``, ``guide`` and ``generate``.

    Args:
        x_dim: feature dimension D.
        z_dim: latent dimension L.
        likelihood: observation model applied to the decoder output.
    """

    guide_name: str = "default"
    """The inference network in use (reported in results)."""

    sites: str = "trajectory"
    """How latent trajectories become sample sites: ``trajectory`` or ``markov`` (:data:`SITES`)."""

    feedback: Feedback | None = None
    """What the decoder recurrence reads (:mod:`pyro_dvae.feedback`); None for a model whose
    decoder does not see x_{<t}, where teacher forcing and generation mode coincide."""

    def __init__(self, x_dim: int, z_dim: int, likelihood: Likelihood) -> None:
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.likelihood = likelihood

    def choose_guide(self, name: str | None, choices: Mapping[str, object], default: str) -> object:
        """Validate the ``guide.name`` config value (None: ``default``), remember it in
        :attr:`guide_name`, and return what ``choices`` maps it to."""
        name = name or default
        if name not in choices:
            raise ValueError(
                f"guide.name={name!r} is not a guide of {type(self).__name__}; "
                f"expected one of {list(choices)}"
            )
        self.guide_name = name
        return choices[name]

    def use_sites(self, sites: str) -> DVAE:
        """Emit latent trajectories as one site (``trajectory``) or per step (``markov``)."""
        if sites not in SITES:
            raise ValueError(f"model.sites={sites!r} is not known; expected one of {list(SITES)}")
        self.sites = sites
        return self

    def set_feedback(self, p: float, context: int = 0) -> None:
        """Let the decoder recurrence read the model's own prediction x̂_{t−1} instead of x_{t−1}
        with probability ``p``, per sequence and step (0: teacher forcing, the default; 1:
        generation mode; in between: scheduled sampling), except for the first ``context``
        frames. A no-op for a model without :attr:`feedback`."""
        if self.feedback is not None:
            self.feedback = Feedback(p, context)

    _step_mask: torch.Tensor | None = None

    @contextmanager
    def step_mask(self, mask: torch.Tensor | None) -> Iterator[None]:
        """Within this block, batches are padded sequences: ``mask (B, T)`` is False on the
        padded frames, which add nothing to the ELBO (observations, latent log-densities and
        KLs, in both site forms); the loss is per valid frame. None: no padding.

        Padding comes after each sequence's valid frames; full-sequence RNNs that run through
        :func:`~pyro_dvae.nn.run_rnn` (backward and bidirectional ones too) then never read a
        padded frame at a valid step (:func:`~pyro_dvae.nn.sequence_lengths`)."""
        previous, self._step_mask = self._step_mask, None if mask is None else mask.bool()
        try:
            with sequence_lengths(mask):
                yield
        finally:
            self._step_mask = previous

    _param_sites: bool = True

    @contextmanager
    def without_param_sites(self) -> Iterator[None]:
        """Within this block, model and guide do not register the parameters with Pyro's param
        store (``pyro.module``, one param site per parameter and call): for a loss whose
        optimiser holds the parameters itself, as the trainer's does
        (:func:`~pyro_dvae.step.loss_terms`). Pyro's ``SVI`` needs the sites; each costs
        ~20 µs a call, 1–7 % of a small training step (``benchmarks/README.md``)."""
        previous, self._param_sites = self._param_sites, False
        try:
            yield
        finally:
            self._param_sites = previous

    @contextmanager
    def sequences(self, x: torch.Tensor) -> Iterator[None]:
        """Plate over the batch of sequences ``x (B, T, D)``, log-densities scaled by one over
        the number of frames (T·B, or the unpadded frames under :meth:`step_mask`)."""
        B, T = x.shape[:2]
        # padded: a device tensor, so that nothing is read back to the host inside a step
        frames = B * T if self._step_mask is None else self._step_mask.sum().to(x.dtype)
        if self._param_sites:
            pyro.module("dvae", self)
        with pyro.plate("sequences", B, dim=-1), poutine.scale(scale=1.0 / frames):
            yield

    def latent(
        self, name: str, fn: TorchDistribution, kl_weight: float | torch.Tensor
    ) -> torch.Tensor:
        """A latent sample site whose log-density (hence KL) is weighted by ``kl_weight``; a
        :class:`~pyro_dvae.distributions.Trajectory` becomes one site ``name`` or, with
        ``sites="markov"``, the sites ``name_1 … name_T``. Returns the value (B, ·).

        A float weight 0 (the first warm-up epochs) masks the KL out: Pyro scales must be
        positive. A tensor weight (a captured step's, rewritten between replays) is a scale.
        """
        zero = not torch.is_tensor(kl_weight) and kl_weight == 0
        weighting = poutine.mask(mask=False) if zero else poutine.scale(scale=kl_weight)
        if isinstance(fn, Trajectory):
            fn.step_mask = self._step_mask
        with weighting:
            if self.sites == "markov" and isinstance(fn, Trajectory):
                return markov_sites(name, fn)
            return pyro.sample(name, fn)

    def observe(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Score ``x (B, T, D)`` under the likelihood of the decoder output ``y``; returns y."""
        d = self.likelihood(full_precision(y))
        pyro.sample("x", d if self._step_mask is None else MaskedSteps(d, self._step_mask), obs=x)
        return y

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        """p(x, z); returns the decoder output ``y (B, T, D)``."""
        raise NotImplementedError

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """q(z | x)."""
        raise NotImplementedError

    def generate(self, n: int, T: int) -> torch.Tensor:
        """Ancestral sample of ``n`` sequences of length T; returns ``E[x_t | ·]`` ``(n, T, D)``."""
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Decoder output ``y (B, T, D)`` for latents from q(z | x): the posterior mean path by
        default, a posterior sample with ``sample=True``."""
        guide = self.guide if sample else PosteriorMean()(self.guide)
        trace = poutine.trace(guide).get_trace(x)
        return poutine.replay(self.model, trace=trace)(x)

    def estimate(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Reconstructed features ``E[x | y]`` ``(B, T, D)``, in the space of x."""
        return self.likelihood.mean(self.reconstruct(x, sample))


class LatentDecoderDVAE(DVAE):
    """DVAEs whose decoder sees z only: ``p(x, z) = p(x_{1:T} | z_{1:T}) p(z_{1:T})``.

    VAE, DKF and RVAE differ only in their parts, which subclasses set:

    * ``self.prior``: ``trajectory(B, T, L, like) -> Trajectory`` (p(z));
    * ``self.decoder``: ``z (B, T, L) -> y (B, T, D)``;
    * ``self.inference``: ``x (B, T, D) -> Trajectory`` (q(z | x)), the guide.
    """

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        B, T, _ = x.shape
        with self.sequences(x):
            z = self.latent("z", self.prior.trajectory(B, T, self.z_dim, x), kl_weight)
            return self.observe(self.decoder(z), x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        with self.sequences(x):
            self.latent("z", self.inference(x), kl_weight)

    def generate(self, n: int, T: int) -> torch.Tensor:
        like = next(self.parameters())
        z = self.prior.trajectory(n, T, self.z_dim, like).rsample()
        return self.likelihood.mean(self.decoder(z))
