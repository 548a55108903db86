"""Data-parallel training over processes with ``torch.distributed``, launched by ``torchrun``.

One process per GPU (or per CPU share)::

    torchrun --nproc_per_node=N experiments/run.py model=srnn train.distributed=true

Every process (rank) holds the whole model. ``train.batch_size`` stays the *global* batch: each
step, rank r reads the r-th strided share of the same global batch (:func:`batch_sampler`),
computes the ELBO of its share, and DistributedDataParallel averages the gradients, which the
trainer weights so that the step equals one single-process step on the global batch (see
:meth:`Cluster.step_weight`). Validation sums and the decision to stop are all-reduced, so every
rank stops at the same epoch; rank 0 alone writes checkpoints, logs, metrics and figures.

A :class:`Cluster` is the process's view of the group: :data:`SINGLE` (one process, no
``torch.distributed`` at all) or the one :func:`start` returns under ``torchrun``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DistributedSampler

log = logging.getLogger(__name__)

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The environment ``torchrun`` gives each process it starts."""


@dataclass(frozen=True)
class Cluster:
    """This process's place among ``world_size`` training processes.

    Attributes:
        rank: 0 … world_size − 1; rank 0 is the one that writes.
        world_size: number of processes (1 without ``torch.distributed``).
        device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, logs, metrics and figures."""
        return self.rank == 0

    @property
    def connected(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over all ranks (in float64; unchanged in a single process)."""
        if not self.connected:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(total)
        return total.tolist()

    def gather(self, obj: object) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
        if not self.connected:
            return [obj]
        objects = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if not self.connected:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. a download or a feature cache), then the others."""
        if self.connected and not self.main:
            dist.barrier()
        yield
        if self.connected and self.main:
            dist.barrier()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` inside DistributedDataParallel when connected (its gradients are then
        averaged over ranks during ``backward``), else ``module`` itself.

        ``find_unused_parameters``: a model may leave parameters out of a step (e.g. a decoder
        recurrence used only in generation mode)."""
        if not self.connected:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def share(self, batch_size: int) -> int:
        """Each rank's part of a global batch of ``batch_size`` sequences.

        Raises:
            ValueError: ``batch_size`` not a multiple of the number of processes.
        """
        if batch_size % self.world_size:
            raise ValueError(
                f"train.batch_size={batch_size} is the global batch and must be a multiple of "
                f"the {self.world_size} processes"
            )
        return batch_size // self.world_size

    def step_weight(self, frames: int, total_frames: float) -> float:
        """The factor on this rank's per-frame loss (``frames`` of the step's ``total_frames``)
        that makes DDP's gradient average the gradient of the global batch's per-frame loss:
        Σ_r (1/N) · N·f_r/F · ∇ℓ_r = Σ_r (f_r/F) ∇ℓ_r. It is 1 for equal shares."""
        return self.world_size * frames / total_frames

    @property
    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Cluster()
"""One process, no ``torch.distributed``."""


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher setting its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(distributed: bool, device: torch.device) -> Cluster:
    """Join the process group ``torchrun`` set up (``distributed``), or stay :data:`SINGLE`.

    ``device`` is the device type asked for: with CUDA each rank takes GPU ``LOCAL_RANK`` and
    the ``nccl`` backend, on the CPU the ``gloo`` backend. Multi-node runs only need torchrun's
    rendezvous (``--nnodes``, ``--rdzv-endpoint``); nothing here changes.

    Raises:
        ValueError, naming ``train.distributed``: ``distributed`` without torchrun's variables,
            or torchrun's variables with several processes but not ``distributed`` (the
            processes would each train alone and write into the same run directory).
    """
    if not distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if launched() and world > 1:
            raise ValueError(
                f"train.distributed=false, but this process is one of WORLD_SIZE={world} started "
                "by torchrun; add train.distributed=true, or run without torchrun"
            )
        return Cluster(device=device)
    if not launched():
        missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
        raise ValueError(
            f"train.distributed=true, but {', '.join(missing)} are not set: launch with "
            "torchrun --nproc_per_node=N experiments/run.py ... train.distributed=true "
            "(docs/distributed.md)"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Cluster(rank, world, device)


FINISH_SECONDS = 120
"""How long :func:`stop` waits for the other ranks before leaving without them."""


def stop(cluster: Cluster, together: bool = True) -> None:
    """Leave the process group (a no-op for :data:`SINGLE`).

    ``together``: first wait (at most :data:`FINISH_SECONDS`) until every rank is here, so that
    none tears down its connections while a peer's last collective is still in flight. Only for
    exits every rank takes at the same point: the end of training, or a stop the ranks agreed on.
    """
    if not cluster.connected:
        return
    if together:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=FINISH_SECONDS))
            else:
                dist.barrier()
        except RuntimeError as err:  # a rank that never came: leave anyway
            log.warning("not every rank finished together: %s", err)
    dist.destroy_process_group()


def by_length_order(lengths: Sequence[int]) -> list[int]:
    """The indices of ``lengths`` from the shortest sequence to the longest, ties in index order."""
    return sorted(range(len(lengths)), key=lambda i: int(lengths[i]))


class SortedBatches:
    """Training batches of sequences of near-equal length (``train.batches=sorted``, the DMM
    authors' length-sorted data): the sequences sorted by ``lengths`` (ties in index order) and
    cut into consecutive global batches of ``batch_size``, the same batches every epoch, in an
    order permuted by ``seed`` and the epoch (:meth:`set_epoch`). Rank r reads positions r,
    r + N, … of each: the k-th batches of all ranks together are the single process's k-th.
    A padded batch is as long as its longest sequence, so sorting pads less: 1.06 times the
    frames of the JSB training set against 1.78 for random batches of 20.

    Raises:
        ValueError: a global batch smaller than the number of processes (a rank with none).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, cluster: Cluster, seed: int):
        order = by_length_order(lengths)
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if self.batches and len(self.batches[-1]) < cluster.world_size:  # only the last is short
            raise ValueError(
                f"train.batches=sorted: a batch of {len(self.batches[-1])} sequences for "
                f"{cluster.world_size} processes; choose train.batch_size so that the last "
                f"batch of the {len(order)} training sequences has at least one each"
            )
        self.rank, self.world_size, self.seed, self.epoch = (
            cluster.rank, cluster.world_size, seed, 0
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        permutation = torch.randperm(
            len(self.batches), generator=torch.Generator().manual_seed(self.seed + self.epoch)
        )
        for k in permutation.tolist():
            yield self.batches[k][self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.batches)


def batch_sampler(
    dataset: Sized,
    batch_size: int,
    cluster: Cluster,
    seed: int,
    shuffle: bool,
    by_length: bool = False,
) -> BatchSampler | SortedBatches | list[list[int]]:
    """The batches of ``dataset`` this rank reads: its strided share of each global batch of
    ``batch_size`` sequences.

    Training (``shuffle``): torch's ``DistributedSampler`` permutes the indices by ``seed`` and
    the epoch (``set_epoch``), the same permutation on every rank and for every world size; rank
    r takes the positions r, r + N, …, and batches of ``batch_size / N``, so the k-th batches of
    all ranks together are exactly the single process's k-th batch. When N does not divide the
    dataset, the sampler repeats up to N − 1 sequences so that every rank takes the same number
    of steps. Validation and test (no ``shuffle``): rank r scores items r, r + N, … in batches of
    ``batch_size``, nothing repeated (their sums are all-reduced).

    ``by_length``: in training, :class:`SortedBatches` from the dataset's ``lengths``; in
    validation, the items in order of length (when the dataset has ``lengths``), so that a
    batch pads little.

    Raises:
        ValueError: ``batch_size`` not a multiple of the number of processes; ``by_length`` for
            a dataset without ``lengths``.
    """
    share = cluster.share(batch_size)
    if shuffle and by_length:
        if not hasattr(dataset, "lengths"):
            raise ValueError(
                f"train.batches=sorted: the training set ({type(dataset).__name__}) has no "
                "sequence lengths (its items are all as long); use train.batches=random"
            )
        return SortedBatches(dataset.lengths, batch_size, cluster, seed)
    if not shuffle:
        order = range(len(dataset))
        if by_length and hasattr(dataset, "lengths"):
            order = by_length_order(dataset.lengths)
        order = list(order)[cluster.rank :: cluster.world_size]
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    shard = DistributedSampler(
        dataset, cluster.world_size, cluster.rank, shuffle=True, seed=seed, drop_last=False
    )
    return BatchSampler(shard, share, drop_last=False)
