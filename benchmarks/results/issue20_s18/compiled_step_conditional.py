"""Issue 20 §1 asks to compile "the pure-torch parts (the networks and the step conditionals)".
The eleventh session compiled the networks (slower: each compiled call pays dynamo's guards and
AOTAutograd's wrappers). This times the other half: VRNN's guide step, written as one function
of tensors, (z_{t−1}, h_{t−1}, c_{t−1}, the φx shares of step t, ε_t) → (z_t, h_t, c_t, its KL
term), so that one compiled call per step covers φz, the gate products, the LSTM cell, the
encoder's head and the draw. Speech sizes (L = 16, φx 256, φz 64, H = 128), T = 50, forward
and backward, 2 threads; medians of 15 loops alternated in one process. Variants:

* ``eager``: the function as written, torch operations;
* ``eager_fused_cell``: the same with the library's LSTM cell (:func:`pyro_dvae.nn.lstm_cell`,
  one autograd node with a hand-written backward when the JSON was made, at ``1586748``; the
  plain form of ``eager`` since);
* ``compiled``: ``torch.compile(step, dynamic=False)`` of the first (inductor's C++ kernels).

Made ``compiled_step_conditional_xeon.json`` (eighteenth session)::

    python benchmarks/results/issue20_s18/compiled_step_conditional.py out.json
"""

import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import record  # noqa: E402
from pyro_dvae.nn import lstm_cell  # noqa: E402

T, L, FX, FZ, H = 50, 16, 256, 64, 128


def weights() -> dict[str, torch.Tensor]:
    shapes = {"w1": (32, L), "b1": (32,), "w2": (FZ, 32), "b2": (FZ,), "wz": (FZ, 4 * H)}
    shapes |= {"whh": (H, 4 * H), "wqh": (H, 2 * L), "wx": (FX, 4 * H), "bx": (4 * H,)}
    shapes |= {"wqx": (FX, 2 * L), "bq": (2 * L,)}
    return {k: (0.1 * torch.randn(*s)).requires_grad_() for k, s in shapes.items()}


def make_step(w: dict[str, torch.Tensor], fused_cell: bool):
    def step(z, h, c, gx, qx, eps):
        fz = torch.tanh(torch.tanh(z @ w["w1"].t() + w["b1"]) @ w["w2"].t() + w["b2"])
        gates = gx + fz @ w["wz"] + h @ w["whh"]
        if fused_cell:
            h, c = lstm_cell(gates, c)
        else:
            i, f, g, o = gates.chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        loc, logvar = (qx + h @ w["wqh"]).chunk(2, -1)
        scale = torch.exp(0.5 * logvar)
        kl = (-0.5 * logvar + 0.5 * (loc**2 + scale**2)).sum()
        return loc + scale * eps, h, c, kl

    return step


def loop(step, w: dict[str, torch.Tensor], fx: torch.Tensor) -> float:
    """Seconds of one guide loop over T steps, forward and backward."""
    start = time.perf_counter()
    B = fx.shape[0]
    gx, qx = (fx @ w["wx"] + w["bx"]).unbind(1), (fx @ w["wqx"] + w["bq"]).unbind(1)
    eps = torch.randn(T, B, L)
    z, h, c, total = torch.zeros(B, L), torch.zeros(B, H), torch.zeros(B, H), 0
    for t in range(T):
        z, h, c, kl = step(z, h, c, gx[t], qx[t], eps[t])
        total = total + kl
    (total + z.sum()).backward()
    for p in w.values():
        p.grad = None
    return time.perf_counter() - start


def rows() -> Iterator[dict]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    w = weights()
    for B in (8, 128):
        fx = torch.randn(B, T, FX)
        steps = {
            "eager": make_step(w, False),
            "eager_fused_cell": make_step(w, True),
            "compiled": torch.compile(make_step(w, False), dynamic=False),
        }
        row = {"B": B, "compile_seconds": loop(steps["compiled"], w, fx)}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for i in range(18):
            for name, step in steps.items():
                elapsed = loop(step, w, fx)
                if i >= 3:
                    times[name].append(elapsed)
        row |= {f"{k}_ms": 1000 * statistics.median(v) for k, v in times.items()}
        row["compiled/eager_fused_cell"] = row["compiled_ms"] / row["eager_fused_cell_ms"]
        yield row


if __name__ == "__main__":
    record(sys.argv[1], rows())
