"""Recurrences over whole sequences with one autograd node each: the CPU fast path of RNNs.

A one-layer LSTM or Elman RNN (tanh or ReLU) splits into an input part that is known for every
step at once and a recurrence that is not::

    a_t = W_ih u_t + b_ih + b_hh                  (all t: one matrix product, :func:`input_gates`)
    LSTM:  [i, f, g, o]_t = a_t + W_hh h_{t−1},  c_t = σ(f)·c_{t−1} + σ(i)·tanh(g),
           h_t = σ(o)·tanh(c_t)                   (:class:`LSTMScan`)
    Elman: h_t = f(a_t + W_hh h_{t−1}), f = tanh or max(·, 0)   (:class:`ElmanScan`)

with c_0 = 0 and h_0 = 0 (an Elman RNN's h_0 may be given), PyTorch's gate order and weights
(``nn.LSTM``/``nn.RNN`` parameters are used as they are, so checkpoints do not change). Against
torch's own RNNs this saves, on the CPU:

* the gradient of the input when nothing upstream needs it (x itself): oneDNN's LSTM
  backward always computes it, a (B·T, 4H)×(4H, D) product, as large as the forward's input
  projection for D = 513;
* autograd's per-op overhead: each scan is one node whose backward is a hand-written loop of
  a few fused operations per step, with everything that does not depend on the recursion
  (the gate derivatives, W_hh's gradient) computed for all steps at once (torch's Elman RNN
  on the CPU records every step's operations, and computes and adds W_hh's gradient at each);
* shared inputs: several RNNs (or directions) that read the same u share its time-major copy
  (:func:`input_gates` with a list), one product per weight: one product of the concatenated
  weights, split, would cat the parts' gradients back into a (T·B × ΣG) tensor in the backward
  pass (for DSAE's four directions, 52 MB per step, page-faulted afresh).

Tensors inside are time-major ``(T, B, ·)`` so that a step's slice is contiguous. Padded
batches (:func:`~pyro_dvae.nn.sequence_lengths`) are handled by the callers in
:mod:`pyro_dvae.nn` (``run_rnn``, ``run_rnn_fast``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

CPU_FLOAT32_FORWARD = torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
CPU_FLOAT32_BACKWARD = torch.amp.custom_bwd(device_type="cpu")
"""Decorators of a CPU autograd Function's ``forward`` and ``backward``: under autocast
(``train.precision=bfloat16``) the recurrence runs in float32, its inputs cast, autocast off."""


def _order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _padded(
    T: int, B: int, H: int, like: torch.Tensor, reverse: bool, initial: torch.Tensor | None = None
):
    """A buffer ``(T + 1, B, H)`` whose extra slot is the state before the first step,
    ``initial (B, H)`` or zero; returns (buffer, values (T, B, ·), previous values (T, B, ·)) as
    views of it."""
    buffer = like.new_empty(T + 1, B, H)
    first = buffer[T] if reverse else buffer[0]
    first.zero_() if initial is None else first.copy_(initial)
    if reverse:
        return buffer, buffer[:T], buffer[1:]
    return buffer, buffer[1:], buffer[:T]


def _tanh_from_doubled(s: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 2σ(2x) − 1 in place on ``s = σ(2x)``: one sigmoid, which the CPU vectorises,
    where ``torch.tanh`` is several times slower; absolute error ~1 ulp of 1."""
    return s.mul_(2).sub_(1)


class LSTMScan(torch.autograd.Function):
    """``apply(a (T, B, 4H), w_hh (4H, H), reverse) -> h (T, B, H)``; ``reverse`` runs t = T..1.

    ``a`` and ``w_hh`` are in doubled-g form (:func:`direction_weights`): the g rows of the
    gates are 2·(W u + b), so one sigmoid gives every gate (g = 2σ(·) − 1)."""

    @staticmethod
    @CPU_FLOAT32_FORWARD
    def forward(ctx: FunctionCtx, a: torch.Tensor, w_hh: torch.Tensor, reverse: bool):
        T, B, G = a.shape
        H = G // 4
        acts = a.new_empty(T, B, G)
        c_buffer, cs, _ = _padded(T, B, H, a, reverse)
        h_buffer, hs, _ = _padded(T, B, H, a, reverse)
        tcs = a.new_empty(T, B, H)
        h = c = a.new_zeros(B, H)
        w_t = w_hh.t()
        for t in _order(T, reverse):
            act = acts[t]
            torch.sigmoid(torch.addmm(a[t], h, w_t), out=act)
            i, f, g, o = act.unflatten(-1, (4, H)).unbind(-2)
            _tanh_from_doubled(g)
            c = torch.mul(f, c, out=cs[t]).addcmul_(i, g)
            tc = _tanh_from_doubled(torch.sigmoid(c * 2, out=tcs[t]))
            h = torch.mul(o, tc, out=hs[t])
        ctx.save_for_backward(w_hh, acts, c_buffer, tcs, h_buffer)
        ctx.reverse = reverse
        return hs.clone()

    @staticmethod
    @CPU_FLOAT32_BACKWARD
    @once_differentiable
    def backward(ctx: FunctionCtx, d_hs: torch.Tensor):
        """Through time with dh_t = ∂/∂h_t + W_hhᵀ d_a_{t+1} and dc_t = dc_{t+1}·f_{t+1} +
        dh_t·o_t·(1 − tanh²c_t); the gates' pre-activation derivatives are dh_t or dc_t times
        a factor that does not depend on the recursion, computed for all steps at once
        (σ' = σ(1 − σ); the doubled g's: (1 − g²)/2), so a step is five operations."""
        w_hh, acts, c_buffer, tcs, h_buffer = ctx.saved_tensors
        T, B, G = acts.shape
        H = G // 4
        reverse = ctx.reverse
        c_prev = c_buffer[1:] if reverse else c_buffer[:T]
        h_prev = h_buffer[1:] if reverse else h_buffer[:T]
        i, f, g, o = acts.unflatten(-1, (4, H)).unbind(-2)
        to_c = o * (1 - tcs * tcs)  # dc_t += dh_t · to_c_t
        to_o = tcs * o * (1 - o)  # d_o = dh · to_o
        to_ifg = torch.stack(  # (d_i, d_f, d_g) = dc · to_ifg
            [
                g * i * (1 - i),
                c_prev * f * (1 - f),
                i * (1 - g * g) / 2,
            ],
            dim=-2,
        )
        d_a = acts.new_empty(T, B, G)
        d_ifg = d_a[..., : 3 * H].unflatten(-1, (3, H))
        d_o = d_a[..., 3 * H :]
        t_next = None
        for t in _order(T, not reverse):
            if t_next is None:
                dh = d_hs[t]
                dc = dh * to_c[t]
            else:
                dh = torch.addmm(d_hs[t], d_a[t_next], w_hh)
                dc = (dc * f[t_next]).addcmul_(dh, to_c[t])
            torch.mul(dh, to_o[t], out=d_o[t])
            torch.mul(dc.unsqueeze(-2), to_ifg[t], out=d_ifg[t])
            t_next = t
        d_w = d_a.view(-1, G).t() @ h_prev.reshape(-1, H)
        return d_a, d_w, None


class ElmanScan(torch.autograd.Function):
    """``apply(a (T, B, H), w_hh (H, H), h_0, relu, reverse) -> h (T, B, H)``: an Elman RNN,
    h_t = f(a_t + W_hh h_{t−1}) from ``h_0 (B, H)`` (None: 0). ``relu``: f = max(·, 0);
    otherwise tanh, with ``a`` and ``w_hh`` doubled (:func:`direction_weights`), so
    h_t = 2σ(a_t + W_hh h_{t−1}) − 1."""

    @staticmethod
    @CPU_FLOAT32_FORWARD
    def forward(
        ctx: FunctionCtx,
        a: torch.Tensor,
        w_hh: torch.Tensor,
        h_0: torch.Tensor | None,
        relu: bool,
        reverse: bool,
    ):
        T, B, H = a.shape
        h_buffer, hs, _ = _padded(T, B, H, a, reverse, h_0)
        h = h_buffer[T if reverse else 0]
        w_t = w_hh.t()
        for t in _order(T, reverse):
            p = torch.addmm(a[t], h, w_t, out=hs[t])
            h = p.clamp_min_(0) if relu else _tanh_from_doubled(p.sigmoid_())
        ctx.save_for_backward(w_hh, h_buffer)
        ctx.relu, ctx.reverse = relu, reverse
        return hs.clone()

    @staticmethod
    @CPU_FLOAT32_BACKWARD
    @once_differentiable
    def backward(ctx: FunctionCtx, d_hs: torch.Tensor):
        """d_a_t = dh_t · f'_t with dh_t = ∂/∂h_t + W_hhᵀ d_a_{t+1}; f' (relu: h_t > 0; tanh:
        (1 − h_t²)/2) and W_hh's gradient are computed for all steps at once."""
        w_hh, h_buffer = ctx.saved_tensors
        T, B, H = d_hs.shape
        reverse = ctx.reverse
        hs, h_prev = (h_buffer[:T], h_buffer[1:]) if reverse else (h_buffer[1:], h_buffer[:T])
        d_a = hs.new_empty(T, B, H)
        slope = (hs > 0).to(hs.dtype) if ctx.relu else (1 - hs * hs) / 2
        t_next = None
        for t in _order(T, not reverse):
            dh = d_hs[t] if t_next is None else torch.addmm(d_hs[t], d_a[t_next], w_hh)
            torch.mul(dh, slope[t], out=d_a[t])
            t_next = t
        d_w = d_a.view(-1, H).t() @ h_prev.reshape(-1, H)
        d_h0 = d_a[t_next] @ w_hh if ctx.needs_input_grad[2] else None
        return d_a, d_w, d_h0, None, None


def direction_weights(rnn: nn.RNNBase, direction: int) -> tuple[torch.Tensor, ...]:
    """``(w_ih, w_hh, b_ih + b_hh)`` of one direction (0 forward, 1 backward) of a one-layer RNN,
    in the form the scans take: an LSTM's g rows and all rows of a tanh RNN doubled, a ReLU
    RNN's as they are (differentiable: gradients reach the module's own parameters)."""
    suffix = "_reverse" if direction else ""
    w_ih, w_hh = getattr(rnn, f"weight_ih_l0{suffix}"), getattr(rnn, f"weight_hh_l0{suffix}")
    bias = getattr(rnn, f"bias_ih_l0{suffix}") + getattr(rnn, f"bias_hh_l0{suffix}")
    if isinstance(rnn, nn.LSTM):
        H = rnn.hidden_size
        scale = bias.new_ones(4 * H)
        scale[2 * H : 3 * H] = 2
        return w_ih * scale[:, None], w_hh * scale[:, None], bias * scale
    if rnn.nonlinearity == "relu":
        return w_ih, w_hh, bias
    return 2 * w_ih, 2 * w_hh, 2 * bias


def input_gates(
    u: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``W_k u_t + b_k`` for every pair (W_k (G_k, D), b_k (G_k,)), each one product over all
    steps of one time-major copy of u: ``u (B, T, D) -> [a_k (T, B, G_k)]``."""
    B, T, D = u.shape
    u_tm = u.transpose(0, 1).reshape(T * B, D)
    return [
        torch.addmm(b, u_tm, w.t()).view(T, B, -1) for w, b in zip(weights, biases, strict=True)
    ]


def scan(
    rnn: nn.RNNBase,
    a: torch.Tensor,
    direction: int,
    reverse: bool,
    h_0: torch.Tensor | None = None,
) -> torch.Tensor:
    """The recurrence of ``rnn``'s direction ``direction`` over input gates ``a (T, B, G)``:
    ``(T, B, H)``; ``reverse`` runs t = T..1 (step t then summarises steps t..T). ``h_0 (B, H)``:
    the state before the first step of an Elman RNN (None: 0; an LSTM starts from 0)."""
    w_hh = direction_weights(rnn, direction)[1]
    if isinstance(rnn, nn.LSTM):
        if h_0 is not None:
            raise ValueError("the LSTM scan starts from h_0 = c_0 = 0")
        return LSTMScan.apply(a, w_hh, reverse)
    return ElmanScan.apply(a, w_hh, h_0, rnn.nonlinearity == "relu", reverse)


def is_scannable(rnn: nn.RNNBase) -> bool:
    """One layer, batch-first, with biases, no projections: an LSTM or an Elman ``nn.RNN``."""
    kind_ok = isinstance(rnn, nn.LSTM) and rnn.proj_size == 0
    return (kind_ok or type(rnn) is nn.RNN) and rnn.num_layers == 1 and rnn.batch_first and rnn.bias


SCAN_MIN_STEP_INPUT = 18_000
"""Floats in one step's input (B·D) from which an LSTM over a whole sequence runs as a scan
(:func:`lstm_scan_pays`). Below it, torch's own (oneDNN's) LSTM is faster even though its
backward computes x's gradient. Forward and backward, T = 50, 2 threads, two runs on an Intel
Xeon with AVX-512 (``benchmarks/results/issue20_s17/scan_vs_torch_lstm.py``): oneDNN's time
grows 2–3× when B doubles across B·D ≈ 16,000; below the threshold the scan takes 1.06–2.66×
oneDNN's time (0.93–0.98× for three shapes at its edge); from it, 0.62–1.02× for D ≥ 384 and
0.89–1.28× for D = 160–257, widths no default model has. On an AMD EPYC (sixteenth session)
D = 513 → H = 128 changed sides between B = 32 and 64, and D = 96 → H = 64 at B = 128 was
faster with oneDNN (0.7× the scan's time), as here."""


def lstm_scan_pays(x: torch.Tensor) -> bool:
    """Whether an LSTM over ``x (B, T, D)`` runs as a scan rather than as torch's LSTM: on the
    CPU, where B·D is at least :data:`SCAN_MIN_STEP_INPUT`; elsewhere always, as before the
    threshold, which was measured on CPUs only."""
    return x.device.type != "cpu" or x.shape[0] * x.shape[-1] >= SCAN_MIN_STEP_INPUT


def scan_directions(
    rnn: nn.RNNBase,
    a: Sequence[torch.Tensor],
    backward: bool = False,
    h_0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Outputs ``(B, T, H or 2H)`` of ``rnn`` from its input gates per direction ``a``
    (:func:`input_gates`), as :func:`~pyro_dvae.nn.run_rnn` gives them for an unpadded batch:
    a bidirectional RNN's second half runs t = T..1, and ``backward`` reverses every direction.
    ``h_0 (B, H)``: an Elman RNN's state before its first step (:func:`scan`)."""
    out = [scan(rnn, a_k, k, backward != (k == 1), h_0) for k, a_k in enumerate(a)]
    return (out[0] if len(out) == 1 else torch.cat(out, dim=-1)).transpose(0, 1)


def scan_rnn(
    rnn: nn.RNNBase, x: torch.Tensor, backward: bool = False, h_0: torch.Tensor | None = None
) -> torch.Tensor:
    """Outputs ``(B, T, ·)`` of the scannable ``rnn`` (:func:`is_scannable`) over the unpadded
    ``x (B, T, D)``: its input gates for every direction, then :func:`scan_directions`."""
    weights = [direction_weights(rnn, k) for k in range(2 if rnn.bidirectional else 1)]
    a = input_gates(x, [w[0] for w in weights], [w[2] for w in weights])
    return scan_directions(rnn, a, backward, h_0)
