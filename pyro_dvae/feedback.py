"""What the decoder recurrence of an autoregressive DVAE reads: teacher forcing, generation mode
and scheduled sampling (spec §7).

SRNN, VRNN and STORN condition their decoder on x_{1:t−1} through a recurrence that reads one
frame x^in_{t−1} at step t (x^in_0 = 0). Three ways to choose it:

* teacher forcing (TF, the default): the ground truth, x^in_{t−1} = x_{t−1};
* generation mode (GM): the model's own prediction x̂_{t−1} = E[x_{t−1} | y_{t−1}] (speech: the
  expected power exp(y); motion: the mean), decoded from the free-running recurrence;
* scheduled sampling (SS): for every sequence and every step, an independent coin with
  probability p picks x̂_{t−1} (detached), else x_{t−1}; p rises from p0 to 1 during training
  (:func:`sampling_probability`).

The encoder always reads the ground truth. A model holds a :class:`Feedback` (p, and a number of
context frames that are always the ground truth, for forecasting) and reads it in ``model()``:
p = 0 runs the teacher-forced path (one LSTM call), any other p the free-running one, in which
the recurrence runs along the latent trajectory step by step (:class:`FreeRunning`). The
original draws one coin per step for the whole batch and lets it choose which of two states
feeds the output layer (spec §10.11); here the coin chooses the frame the recurrence reads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.nn import LSTMState


class Feedback:
    """The frames a decoder recurrence reads.

    Args:
        p: probability that a step reads the prediction x̂_{t−1} instead of x_{t−1}, in [0, 1]
            (0: teacher forcing, 1: generation mode).
        context: the first ``context`` frames are always read from the ground truth
            (forecasting: condition on x_{1:K}, generate from there).
    """

    def __init__(self, p: float = 0.0, context: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"feedback probability {p!r}: expected a number in [0, 1]")
        if context < 0:
            raise ValueError(f"feedback context {context!r}: expected a number of frames >= 0")
        self.p, self.context = float(p), int(context)

    @property
    def teacher_forcing(self) -> bool:
        """Every frame read is the ground truth (p = 0)."""
        return self.p == 0.0

    def coins(self, x: torch.Tensor) -> torch.Tensor:
        """One coin per sequence and frame of ``x (B, T, D)``: ``(B, T)`` bool, True where frame
        t is replaced by its prediction when step t+1 reads it (the last column is never read).
        Drawn from torch's global generator with probability p (nothing is drawn for p = 0 or
        1); the first ``context`` frames are never replaced."""
        B, T = x.shape[:2]
        if self.p in (0.0, 1.0):
            coins = torch.full((B, T), self.p == 1.0, dtype=torch.bool, device=x.device)
        else:
            coins = torch.rand(B, T, device=x.device) < self.p
        coins[:, : self.context] = False
        return coins

    def predict(self, likelihood: Likelihood, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The model's prediction x̂ = E[x | y] ``(B, D)`` of a frame whose ground truth is ``x``
        (not used here: the hook through which a test substitutes a perfect predictor)."""
        return likelihood.mean(y)

    def read(
        self, likelihood: Likelihood, y: torch.Tensor, x: torch.Tensor, coin: torch.Tensor
    ) -> torch.Tensor:
        """The frame ``(B, D)`` the next step reads: x̂ (no gradient) where ``coin (B,)``, else
        the ground truth ``x (B, D)``; ``y (B, D)`` is the decoder output of that frame."""
        with torch.no_grad():
            prediction = self.predict(likelihood, y, x)
        return torch.where(coin[:, None], prediction, x)


Advance = Callable[[LSTMState | None, torch.Tensor, torch.Tensor], LSTMState]
"""``advance(state_{t−1} or None at t = 1, x^in_{t−1} (B, D), z_{t−1} (B, L)) -> state_t``;
``state_t[0]`` is h_t (B, H)."""

Emit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``emit(h_t, z_t) -> y_t``, the decoder output, any leading dims."""


class FreeRunning:
    """A decoder recurrence h_t = advance(h_{t−1}, x^in_{t−1}, z_{t−1}) whose input frame is read
    per ``coins``: x_{t−1}, or x̂_{t−1} = E[x_{t−1} | emit(h_{t−1}, z_{t−1})] (SRNN, VRNN).

    Args:
        advance, emit: see :data:`Advance`, :data:`Emit`.
        x: ground truth ``(B, T, D)`` (read where the coins say so).
        coins: ``(B, T)`` from :meth:`Feedback.coins`.
        feedback: supplies :meth:`Feedback.read`.
        likelihood: turns y into the prediction x̂.
    """

    def __init__(
        self,
        advance: Advance,
        emit: Emit,
        x: torch.Tensor,
        coins: torch.Tensor,
        feedback: Feedback,
        likelihood: Likelihood,
    ) -> None:
        self.advance, self.emit, self.x, self.coins = advance, emit, x, coins
        self.feedback, self.likelihood = feedback, likelihood
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def step(self, t: int, z_prev: torch.Tensor, state: LSTMState | None) -> LSTMState:
        """state_t from state_{t−1} (None at t = 0) and z_{t−1} (B, L); x^in_0 = 0."""
        if state is None:
            return self.advance(None, torch.zeros_like(self.x[:, 0]), z_prev)
        with torch.no_grad():
            y_prev = self.emit(state[0], z_prev)
        x_in = self.feedback.read(self.likelihood, y_prev, self.x[:, t - 1], self.coins[:, t - 1])
        return self.advance(state, x_in, z_prev)

    def along(self, z: torch.Tensor) -> torch.Tensor:
        """h ``(B, T, H)`` along a trajectory z ``(B, T, L)`` (z_0 = 0), cached for the last z
        (by identity): scoring the prior and decoding the same z walk the recurrence once."""
        if self._last is None or self._last[0] is not z:
            state, z_prev, hs = None, torch.zeros_like(z[:, 0]), []
            for t in range(z.shape[1]):
                state = self.step(t, z_prev, state)
                hs.append(state[0])
                z_prev = z[:, t]
            self._last = (z, torch.stack(hs, dim=1))
        return self._last[1]


def ramp(epoch: int, start: float, step: float, every: int) -> float:
    """A stepwise schedule: ``min(1, start + step · ⌊epoch / every⌋)``, rounded to 12 decimals
    so that 0.1 + 0.2 prints and compares as 0.3 (also the trainer's KL warm-up)."""
    return min(1.0, round(start + step * (epoch // every), 12))


def sampling_probability(epoch: int, start: float, step: float, every: int) -> float:
    """Scheduled sampling's p at ``epoch``: :func:`ramp`. The spec's schedule (§7) is start
    0.1, step 0.1: 0.1, 0.2, …, 1.0, reached at epoch 9·every."""
    return ramp(epoch, start, step, every)


def check_schedule(start: float, step: float, every: int) -> None:
    """Raise a ``ValueError`` naming the ``train.ss_*`` key of a schedule that cannot run."""
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"train.ss_start={start!r}: expected a probability in [0, 1]")
    if not step > 0.0:
        raise ValueError(f"train.ss_step={step!r}: expected a number > 0")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"train.ss_every={every!r}: expected a number of epochs >= 1")
