"""Data order: a resumable, sharded sampler (the same global batches for any number of processes)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

__all__ = ["ResumableDistributedSampler", "EpochIndexed"]


class ResumableDistributedSampler(DistributedSampler):
    """A :class:`~torch.utils.data.distributed.DistributedSampler` that can start mid-epoch.

    Epoch ``e`` uses the permutation ``torch.randperm(n)`` of a generator seeded with
    ``seed + e`` (the same on every process). The epoch is cut into ``n // global_batch`` global
    batches (``drop_last``); process ``r`` of ``W`` takes slice ``[r·b, (r+1)·b)`` of each global
    batch (``b = global_batch / W``), so a DDP run sees the same global batches as a one-process
    run. :meth:`set_position` skips the first batches of an epoch (resume). Items are yielded
    as ``(epoch, index)`` pairs for :class:`EpochIndexed`, which hands the epoch to the dataset's
    ``set_epoch`` inside the worker, so augmentations depend only on (seed, epoch, index), also
    with persistent DataLoader workers.
    """

    def __init__(self, dataset, *, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        if batch_size % num_replicas:
            raise ValueError(f"the global batch {batch_size} is not divisible by the {num_replicas} processes")
        self.global_batch = int(batch_size)
        self.local_batch = self.global_batch // num_replicas
        self.n = len(dataset)
        self.steps_per_epoch = self.n // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the dataset has {self.n} items, fewer than one global batch of {self.global_batch}")
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Next iteration yields epoch ``epoch`` from its batch ``start_batch`` on."""
        self.set_epoch(epoch)
        if not 0 <= start_batch <= self.steps_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.steps_per_epoch}")
        self.start_batch = int(start_batch)

    def order(self, epoch: int) -> list[int]:
        """The global order of epoch ``epoch`` (all processes)."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(int(self.seed) + int(epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm = self.order(self.epoch)
        B, b, r = self.global_batch, self.local_batch, self.rank
        for k in range(self.start_batch, self.steps_per_epoch):
            for i in perm[k * B + r * b: k * B + (r + 1) * b]:
                yield (self.epoch, i)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_batch) * self.local_batch


class EpochIndexed(Dataset):
    """Wraps a dataset so that it is indexed by ``(epoch, index)`` pairs: calls
    ``dataset.set_epoch(epoch)`` (when the dataset has it) before ``dataset[index]``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        epoch, index = item
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]
