"""Profile one training step of a model at speech shape, B=128, one thread (issue 20 §2).

python benchmarks/profile_step.py rvae_causal
"""

import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro.infer import TraceMeanField_ELBO  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.train_step import build, data  # noqa: E402

torch.set_num_threads(1)
name = sys.argv[1]
torch.manual_seed(0)
model = build(name, "speech", 513, torch.device("cpu"))
x = data("speech", 128, 50, 513, torch.device("cpu"))
pyro.enable_validation(False)
elbo = TraceMeanField_ELBO().differentiable_loss
opt = torch.optim.Adam(model.parameters(), lr=1e-4)


def step():
    loss = elbo(model.model, model.guide, x, 1.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


for _ in range(2):
    step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(3):
        step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
# fwd/bwd split
fw = bw = 0
for _ in range(3):
    t0 = time.perf_counter()
    loss = elbo(model.model, model.guide, x, 1.0)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    print(f"fwd {1e3 * (t1 - t0):.1f} bwd {1e3 * (t2 - t1):.1f} opt {1e3 * (t3 - t2):.1f}")
