"""Time a data-parallel training step on 1, 2, … processes (DDP, as ``train.distributed``).

Each configuration trains one model on a fixed global batch of random data of the paper's shape:
every one of N processes takes B/N sequences, computes the trainer's loss
(:class:`pyro_dvae.train.ELBOLoss` inside DistributedDataParallel), all-reduces the frame count
as the trainer does, steps backward (DDP's gradient all-reduce) and takes one Adam step. gloo on
the CPU, nccl on GPUs (one per process). The reported time is rank 0's median step.

    python benchmarks/data_parallel.py --model dkf --processes 1,2 --threads 1 --json out.json
    python benchmarks/data_parallel.py --device cuda --processes 1,2,4,8 --B 512

On a CPU the fair baseline for N processes of t threads is one process of N·t threads, so
``--baseline-threads`` adds that row. Writes a JSON list of objects with the keys ``model``,
``device``, ``processes``, ``threads_per_process``, ``B``, ``T``, ``ms_per_step``, ``seq_per_s``
and ``speedup`` (seq/s over the first row's).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `benchmarks` importable

from benchmarks.train_step import SHAPES, build, data  # noqa: E402
from pyro_dvae.distributed import Cluster, stop  # noqa: E402
from pyro_dvae.train import ELBOLoss  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, opts: dict, out: Path) -> None:
    """One process: ``opts["steps"]`` timed steps after ``opts["warmup"]``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(opts["threads"])
    cuda = opts["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    cluster = Cluster(rank, world, device)
    torch.manual_seed(0)
    x_dim = SHAPES[opts["shape"]]
    model = build(opts["model"], opts["shape"], x_dim, device)
    x = data(opts["shape"], opts["B"] // world, opts["T"], x_dim, device)
    pyro.enable_validation(False)
    loss_fn = cluster.wrap(ELBOLoss(model, "mean_field"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for i in range(opts["warmup"] + opts["steps"]):
        start = time.perf_counter()
        loss = loss_fn(x, None, 1.0)
        (frames,) = cluster.sum([x.shape[0] * x.shape[1]])
        optimizer.zero_grad(set_to_none=True)
        (loss * cluster.step_weight(x.shape[0] * x.shape[1], frames)).backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= opts["warmup"]:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.write_text(json.dumps(statistics.median(times)))
    stop(cluster)  # together: no rank tears gloo down under a peer still in a collective


def measure(processes: int, threads: int, opts: argparse.Namespace, out: Path) -> dict:
    args = {**vars(opts), "threads": threads}
    mp.start_processes(
        _rank, (processes, _free_port(), args, out), nprocs=processes, start_method="spawn"
    )
    seconds = json.loads(out.read_text())
    return {
        "model": opts.model,
        "shape": opts.shape,
        "device": opts.device,
        "processes": processes,
        "threads_per_process": threads,
        "B": opts.B,
        "T": opts.T,
        "ms_per_step": 1000 * seconds,
        "seq_per_s": opts.B / seconds,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dkf")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="speech")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--baseline-threads", type=int, default=None,
                        help="also time one process with this many threads")  # fmt: skip
    parser.add_argument("--B", type=int, default=128, help="global batch")
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args(argv)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"data_parallel_{os.getpid()}.json"
    runs = [(int(n), opts.threads) for n in opts.processes.split(",")]
    if opts.baseline_threads:
        runs.append((1, opts.baseline_threads))
    rows = []
    for processes, threads in runs:
        rows.append(measure(processes, threads, opts, out))
        rows[-1]["speedup"] = rows[-1]["seq_per_s"] / rows[0]["seq_per_s"]
        print(
            f"{opts.model} {opts.device} {processes} process(es) × {threads} thread(s): "
            f"{rows[-1]['ms_per_step']:.1f} ms/step, {rows[-1]['seq_per_s']:.1f} seq/s, "
            f"×{rows[-1]['speedup']:.2f}"
        )
    out.unlink(missing_ok=True)
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
