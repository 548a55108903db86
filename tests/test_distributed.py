"""Data-parallel training (pyro_dvae.distributed): how the batches are shared, and 2 CPU
processes with gloo against one process with the same global batch and seed.

The multi-process runs use :func:`zero_noise_run.exact_arithmetic`: every Normal draw is its
mean (each rank draws its own noise, so with noise a 2-process run equals a 1-process run only in
distribution), and models and batches are float64. They then compute the same numbers up to the
float64 round-off of sums taken in another order (:data:`ROUND_OFF`). Data sets have an even
size, so torch's DistributedSampler repeats nothing.
"""

import contextlib
import csv
import itertools
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
import torch.multiprocessing as mp

from benchmarks.train_step import build
from pyro_dvae import distributed, runner
from pyro_dvae.data.music import PianoRolls
from pyro_dvae.distributed import SINGLE, Cluster, batch_sampler
from pyro_dvae.likelihoods import Bernoulli
from pyro_dvae.models import MODELS, build_model
from pyro_dvae.train import TrainConfig, Trainer, load_checkpoint
from tests.zero_noise_run import exact_arithmetic

ROOT = Path(__file__).resolve().parents[1]
ZERO_NOISE_RUN = ROOT / "tests" / "zero_noise_run.py"
FSDD = [  # 20 train chunks (batches of 6: 6 + 6 + 6 + 2), 19 validation chunks; the KL
    # weight 0, 0.2, 0.4, ... by epoch, however many epochs a run (or its resumed part) has
    "model=dkf", "data.max_files=40", "train.batch_size=6", "train.warmup_every=1",
    "train.warmup_fit=false", "train.progress=false", "threads=1",
]  # fmt: skip
LOSSES = ("epoch", "kl_weight", "train_loss", "val_loss", "val_recon", "val_kl", "best_epoch")
ROUND_OFF = 1e-10
"""Relative tolerance between a run on N processes and one on 1, both float64, zero noise.

They compute the same real numbers; only the order of sums differs (the all-reduce of gradients
and validation sums, BLAS blocking on a half batch). Two orders of a sum of n terms differ by at
most (n − 1) u Σ|x_i| (Higham, Accuracy and Stability of Numerical Algorithms, §4.2), u the unit
round-off, and to first order in u the losses and weights after S steps move by c · u, c a
property of the computation (its conditioning over 4 epochs of Adam), not of the precision.
Measured in float32 (u = 2⁻²⁴ ≈ 6.0e-8): losses differed by 4.4e-6 on the development machine and
1.45e-5 on another (issue 21), so c ≤ 2.4e2 there; in float64 (u = 2⁻⁵³ ≈ 1.1e-16) that is
2.7e-14 (measured here: 3.2e-16 for the losses, 9.2e-14 for the weights in norm). 1e-10 leaves a
factor > 1000 for other machines' orders, and stays far below the changes of the mutations this
file catches: 3e-3 or more without the DDP wrap, with step weights 1, or with validation sums not
all-reduced; 6e-8 with the all-reduce done in float32 instead of float64.

First order needs Adam to stay linear in the round-off δ of a gradient element: its step
lr · m̂ / (√v̂ + ε) is ≈ lr · δ / ε where the true gradient is 0 and δ ≪ ε = 1e-8, but ±lr, the
sign of δ, where δ ≫ ε. Float64 gives δ ≈ u · |terms| ≪ 1e-8; float32 does not, and there the
weights differed by 1e-3 in norm: hence float64."""


# --- how the batches are shared ----------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_ranks_shares_make_up_the_single_process_batches(world):
    """For every world size the k-th batches of all ranks together are the single process's
    k-th batch, in every epoch; validation shares cover the set once."""
    n, batch = 36, 12
    data = list(range(n))
    ranks = [Cluster(rank, world) for rank in range(world)]
    for epoch in (0, 1):
        single = batch_sampler(data, batch, SINGLE, seed=5, shuffle=True)
        single.sampler.set_epoch(epoch)
        shares = [batch_sampler(data, batch, c, seed=5, shuffle=True) for c in ranks]
        for share in shares:
            share.sampler.set_epoch(epoch)
        steps = list(zip(*shares, strict=True))
        assert len(steps) == len(list(single)) == 3
        for whole, parts in zip(single, steps, strict=True):
            assert sorted(sum(parts, [])) == sorted(whole)
            assert {len(p) for p in parts} == {batch // world}
    last_epoch = list(single)
    single.sampler.set_epoch(0)
    assert list(single) != last_epoch  # reshuffled every epoch
    val = [batch_sampler(list(range(37)), batch, c, seed=5, shuffle=False) for c in ranks]
    scored = [i for share in val for b in share for i in b]
    assert sorted(scored) == list(range(37))


def test_the_trainer_reshuffles_every_epoch(tmp_path):
    trainer, seen = _trainer(tmp_path, SINGLE), []
    loss = trainer.loss
    trainer.loss = lambda x, mask, weight: seen.append(x.sum().item()) or loss(x, mask, weight)
    for epoch in (0, 1, 0):
        trainer.run_epoch(epoch)
    assert seen[:2] != seen[2:4] and seen[:2] == seen[4:]


def _blocks(lengths: list[int], size: int) -> list[list[int]]:
    """The indices sorted by length, ties in index order, in consecutive blocks of ``size``."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + size] for i in range(0, len(order), size)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sorted_batches_are_the_length_sorted_blocks_in_a_new_order_each_epoch(world):
    """train.batches=sorted: every epoch the batches are the consecutive blocks of the
    length-sorted set (ties broken by index) in a permuted order, a function of the seed and
    the epoch (so a resumed run reads the same); the ranks' k-th shares make up the single
    process's k-th batch."""
    lengths = torch.randint(3, 9, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    data = PianoRolls([np.zeros((t, 88), dtype=np.uint8) for t in lengths])
    blocks = _blocks(lengths, 6)
    single = batch_sampler(data, 6, SINGLE, seed=5, shuffle=True, by_length=True)
    shares = [
        batch_sampler(data, 6, Cluster(r, world), seed=5, shuffle=True, by_length=True)
        for r in range(world)
    ]
    orders = []
    for epoch in (0, 1, 0):
        for sampler in (single, *shares):
            sampler.set_epoch(epoch)
        batches = list(single)
        assert sorted(batches) == sorted(blocks)
        for whole, *parts in zip(batches, *shares, strict=True):
            assert sorted(sum(parts, [])) == sorted(whole)
        orders.append(batches)
    assert orders[0] != orders[1] and orders[0] == orders[2]
    val = [batch_sampler(data, 6, Cluster(r, world), 0, shuffle=False, by_length=True)
           for r in range(world)]  # fmt: skip
    assert sorted(i for share in val for b in share for i in b) == list(range(23))
    for share in val:
        assert all(lengths[i] <= lengths[j] for b in share for i, j in itertools.pairwise(b))


def test_sorted_batches_need_lengths_and_a_share_for_every_rank():
    with pytest.raises(ValueError, match=r"train.batches=sorted: the training set \(list\)"):
        batch_sampler(list(range(20)), 10, SINGLE, seed=0, shuffle=True, by_length=True)
    data = PianoRolls([np.zeros((3, 88), dtype=np.uint8)] * 21)  # batches of 10, 10, 1
    with pytest.raises(ValueError, match=r"a batch of 1 sequences for 2 processes"):
        batch_sampler(data, 10, Cluster(0, 2), seed=0, shuffle=True, by_length=True)


def test_the_trainer_reads_sorted_batches(tmp_path):
    """With train.batches=sorted each step's batch holds one length-sorted block, no longer
    than its longest sequence, and the blocks come in a new order each epoch."""
    trainer, seen = _trainer(tmp_path, SINGLE, batches="sorted"), []
    loss = trainer.loss

    def recording(x, mask, weight):
        seen.append((x.shape[1], sorted(mask.sum(1).tolist())))
        return loss(x, mask, weight)

    trainer.loss = recording
    for epoch in (0, 1):
        trainer.run_epoch(epoch)
    lengths = _rolls().lengths.tolist()
    expected = sorted((max(lengths[i] for i in b), sorted(lengths[i] for i in b))
                      for b in _blocks(lengths, 4))  # fmt: skip
    assert sorted(seen[:2]) == sorted(seen[2:]) == expected
    assert seen[:2] != seen[2:]


def test_a_global_batch_must_split_evenly():
    with pytest.raises(ValueError, match=r"train.batch_size=10 .* multiple of the 4 processes"):
        batch_sampler(list(range(20)), 10, Cluster(0, 4), seed=0, shuffle=True)


def test_step_weights_make_ddp_average_the_global_per_frame_gradient():
    """DDP averages ∇ℓ_r over N ranks; weighting rank r by N·f_r/F gives Σ_r (f_r/F) ∇ℓ_r."""
    frames = [30, 10, 20]
    weights = [Cluster(r, 3).step_weight(f, sum(frames)) for r, f in enumerate(frames)]
    assert np.mean(weights) == pytest.approx(1.0)
    assert weights == pytest.approx([1.5, 0.5, 1.0])
    assert SINGLE.step_weight(7, 7) == 1.0


def test_launch_settings_are_checked(monkeypatch):
    for name in distributed.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"train.distributed=true, but RANK, WORLD_SIZE.*torchrun"):
        distributed.start(True, torch.device("cpu"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"train.distributed=false, but .* WORLD_SIZE=2"):
        distributed.start(False, torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: it may train alone
    assert distributed.start(False, torch.device("cpu")) == SINGLE


# --- 2 processes through torchrun and experiments/run.py -----------------------------------


def _run(run_dir: Path, *overrides: str, processes: int = 0) -> None:
    """``experiments/run.py`` under :func:`exact_arithmetic`, alone or as ``processes`` ranks
    of torchrun."""
    launcher = [sys.executable]
    if processes:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        overrides += ("train.distributed=true",)
    done = subprocess.run(
        [*launcher, str(ZERO_NOISE_RUN), *FSDD, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(run_dir: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    return [{k: float(r[k]) for k in LOSSES} for r in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    """Same losses at every epoch and the same final weights (in norm), to :data:`ROUND_OFF`."""
    for row_a, row_b in zip(_losses(a), _losses(b), strict=True):
        assert row_a == pytest.approx(row_b, rel=ROUND_OFF, abs=0)
    weights_a = load_checkpoint(a / "last.pt")["model"]
    weights_b = load_checkpoint(b / "last.pt")["model"]
    assert weights_a.keys() == weights_b.keys()
    for name, w in weights_a.items():
        assert w.dtype == torch.float64, name
        assert torch.linalg.norm(w - weights_b[name]) <= ROUND_OFF * torch.linalg.norm(w), name


@pytest.fixture(scope="module")
def one_process(data_root, tmp_path_factory) -> Path:
    """The reference: 4 epochs of DKF on an FSDD subset in one process."""
    run_dir = tmp_path_factory.mktemp("ddp") / "one"
    _run(run_dir, "train.epochs=4")
    return run_dir


def test_two_gloo_processes_follow_the_single_process_trajectory(one_process, tmp_path):
    _run(tmp_path / "two", "train.epochs=4", processes=2)
    _assert_same_run(tmp_path / "two", one_process)
    assert _losses(one_process)[-1]["train_loss"] < 0.5 * _losses(one_process)[0]["train_loss"]
    # rank 0 alone writes: the same files as one process, one log
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in one_process.iterdir()
    )
    assert (tmp_path / "two" / "run.log").read_text().count("done: 4 epochs") == 1
    rng = load_checkpoint(tmp_path / "two" / "last.pt")["rng"]  # every rank's RNG states,
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # not the same


def test_a_ddp_run_resumes_on_one_process_and_back(one_process, tmp_path):
    """2 epochs on 2 processes, resumed on 1 to epoch 3 then on 2 to epoch 4: the same run."""
    run_dir = tmp_path / "mixed"
    _run(run_dir, "train.epochs=2", processes=2)
    _run(run_dir, "train.epochs=3", "resume=true")
    _run(run_dir, "train.epochs=4", "resume=true", processes=2)
    _assert_same_run(run_dir, one_process)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_nccl_on_gpus_follows_the_single_gpu_trajectory(one_process, tmp_path):
    """min(2, GPUs) processes with nccl against one process on one GPU, both float64 (the
    argument of :data:`ROUND_OFF` holds for any summation order)."""
    _run(tmp_path / "gpu1", "train.epochs=4", "device=cuda")
    _run(tmp_path / "gpus", "train.epochs=4", "device=cuda",
         processes=min(2, torch.cuda.device_count()))  # fmt: skip
    for row_a, row_b in zip(_losses(tmp_path / "gpus"), _losses(tmp_path / "gpu1"), strict=True):
        assert row_a == pytest.approx(row_b, rel=ROUND_OFF, abs=0)


# --- the Trainer on 2 spawned processes ------------------------------------------------------


def _rolls(n: int = 8) -> PianoRolls:
    """``n`` piano rolls of 6 keys and 3 to 17 steps: every batch is padded."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 18, (n,), generator=g).tolist()
    return PianoRolls([(torch.rand(t, 88, generator=g) < 0.2).numpy().astype(np.uint8)
                       for t in lengths])  # fmt: skip


def _trainer(run_dir: Path, cluster: Cluster, epochs: int = 3, **options) -> Trainer:
    torch.manual_seed(0)
    model = build_model(
        "dkf", 88, Bernoulli(), z_dim=3, dense_x_gx=[8], dim_rnn_gx=6, dense_ztm1_g=[4],
        dense_g_z=[5], dense_z_x=[7],
    )  # fmt: skip
    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=1e-2, warmup_every=1, warmup_fit=False,
                      progress=False, **options)  # fmt: skip
    return Trainer(model, _rolls(), _rolls(6), cfg, run_dir, torch.device("cpu"), 0, None, cluster)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> Cluster:
    """Rank ``rank`` of ``world`` CPU processes, joined as under torchrun (its variables)."""
    env = {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank, "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": port}  # fmt: skip
    os.environ.update({k: str(v) for k, v in env.items()})
    torch.set_num_threads(1)
    return distributed.start(True, torch.device("cpu"))


def _worker(rank: int, world: int, port: int, run_dir: Path, run: dict) -> None:
    """Rank ``rank`` trains :func:`_trainer` for ``run["epochs"]``, under
    :func:`exact_arithmetic` unless ``run["noise"]``, resuming from ``last.pt`` if
    ``run["resume"]``. With ``run["fault"]``, rank 1 is signalled (``sigterm``) or gets a NaN
    loss (``nan``) at its 2nd step of epoch 1. Writes what happened to
    ``run_dir/rank{rank}.txt``: ``done``, or the exception and the step."""
    cluster = _join(rank, world, port)
    with contextlib.nullcontext() if run.get("noise") else exact_arithmetic():
        outcome = _fit_on_rank(rank, cluster, run_dir, run)
    (run_dir / f"rank{rank}.txt").write_text(outcome)


def _fit_on_rank(rank: int, cluster: Cluster, run_dir: Path, run: dict) -> str:
    """The body of :func:`_worker`: ``done``, or the exception and the step; leaves the group."""
    trainer, steps = _trainer(run_dir, cluster, run.get("epochs", 3)), []
    if run.get("resume"):
        trainer.resume(run_dir / "last.pt")
    loss, fault = trainer.loss, run.get("fault")

    def faulty(x, mask, weight):
        steps.append(trainer.state.epoch)
        value = loss(x, mask, weight)
        if rank == 1 and steps.count(1) == 2:
            if fault == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            if fault == "nan":
                value = value * float("nan")
        return value

    trainer.loss = faulty
    try:
        trainer.fit()
        return "done"
    except (KeyboardInterrupt, FloatingPointError) as err:
        return f"{type(err).__name__} at step {len(steps)}"
    finally:
        distributed.stop(cluster)


def _spawn(run_dir: Path, **run) -> list[str]:
    """Run :func:`_worker` on 2 processes; returns what happened on each."""
    run_dir.mkdir(exist_ok=True)
    mp.start_processes(_worker, (2, _free_port(), run_dir, run), nprocs=2, start_method="spawn")
    return [(run_dir / f"rank{r}.txt").read_text() for r in range(2)]


def test_padded_batches_on_two_processes_equal_one_process(tmp_path):
    """Chorale-like batches of different lengths: the ranks hold different numbers of valid
    frames, and the weighted step still equals the single process's."""
    assert _spawn(tmp_path / "two") == ["done", "done"]
    with exact_arithmetic():
        _trainer(tmp_path / "one", SINGLE).fit()
    _assert_same_run(tmp_path / "two", tmp_path / "one")


@pytest.mark.parametrize(
    ("fault", "stopped"), [("sigterm", "KeyboardInterrupt"), ("nan", "FloatingPointError")]
)
def test_a_fault_on_one_rank_stops_every_rank_at_the_same_step(fault, stopped, tmp_path):
    """Rank 1 alone is signalled / gets a NaN loss at its 2nd step of epoch 1 (of 2 steps an
    epoch): both ranks stop at that step, and last.pt holds epoch 0."""
    assert _spawn(tmp_path, fault=fault) == [f"{stopped} at step 4"] * 2
    assert load_checkpoint(tmp_path / "last.pt")["state"]["epoch"] == 1


def _share_worker(rank: int, port: int, root: Path) -> None:
    """Rank r was given ``root/r`` as its run directory (Hydra stamped another second)."""
    own = root / str(rank)
    own.mkdir()
    cluster = _join(rank, 2, port)
    shared = runner._shared_run_dir(cluster, own)
    distributed.stop(cluster)
    (root / f"rank{rank}.txt").write_text(str(shared))


def test_every_rank_trains_in_rank_0s_run_directory(tmp_path):
    mp.start_processes(_share_worker, (_free_port(), tmp_path), nprocs=2, start_method="spawn")
    assert {(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)} == {str(tmp_path / "0")}
    assert not (tmp_path / "1").exists()  # rank 1's empty folder is gone


def _model_trainer(name: str, run_dir: Path, cluster: Cluster) -> Trainer:
    """``name`` with its speech sizes on 8 random sequences (T=6, D=12), 2 epochs of batch 4,
    the first at KL weight 0 (the prior has no gradient: DDP must allow unused parameters)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = build(name, "speech", 12, torch.device("cpu"))
    data = list(torch.rand(8, 6, 12, generator=torch.Generator().manual_seed(1)) + 0.01)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, warmup_every=1, warmup_step=1.0,
                      progress=False)  # fmt: skip
    return Trainer(model, data, data[:6], cfg, run_dir, torch.device("cpu"), 0, None, cluster)


def _models_worker(rank: int, world: int, port: int, root: Path) -> None:
    cluster = _join(rank, world, port)
    try:
        with exact_arithmetic():
            for name in sorted(MODELS):
                _model_trainer(name, root / name, cluster).fit()
    finally:
        distributed.stop(cluster)


def test_every_model_trains_on_two_processes_as_on_one(tmp_path):
    """All nine models (parameters a step may leave unused included) under DDP."""
    mp.start_processes(
        _models_worker, (2, _free_port(), tmp_path / "two"), nprocs=2, start_method="spawn"
    )
    for name in sorted(MODELS):
        with exact_arithmetic():
            _model_trainer(name, tmp_path / "one" / name, SINGLE).fit()
        _assert_same_run(tmp_path / "two" / name, tmp_path / "one" / name)


def test_resuming_on_as_many_processes_is_exact_with_noise(tmp_path):
    """Every rank's RNG state is saved and given back to the same rank: with noise on, 2 + 1
    epochs resumed on 2 processes equal 3 epochs straight."""
    assert _spawn(tmp_path / "straight", noise=True) == ["done", "done"]
    assert _spawn(tmp_path / "resumed", noise=True, epochs=2) == ["done", "done"]
    assert _spawn(tmp_path / "resumed", noise=True, resume=True) == ["done", "done"]
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    for name, w in straight["model"].items():
        assert torch.equal(w, resumed["model"][name]), name
