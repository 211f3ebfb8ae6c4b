"""Deterministic, resumable sharding of the training set (DistributedSampler-like, no RNG state).

Epoch e visits a permutation of 0..n-1 drawn from seed (seed, e), cut into global batches of `global_batch`
(the incomplete tail is dropped); rank r of `world` takes the r-th contiguous slice of every global batch.
So 1 process with batch B and W processes with B / W each see the same global batches, in the same
row order once gathered rank-major, and a run resumed at (epoch, step) continues on exactly the batches
an uninterrupted run would have used. Flip decisions are drawn the same way, per sample and epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from facepipe.pipeline.errors import ConfigError, DataError


@dataclass(frozen=True)
class ShardPlan:
    n: int
    global_batch: int
    world: int = 1
    rank: int = 0
    seed: int = 0
    flip: bool = False
    views: int = 0  # cached augmented views per face besides the face itself (views.py)

    def __post_init__(self):
        if self.n < 1:
            raise DataError("the training set is empty: nothing to train on")
        if self.global_batch % self.world:
            raise ConfigError(f"distill.batch_size={self.global_batch} must be divisible by the number of "
                              f"processes ({self.world})")
        if self.n < self.global_batch:
            raise DataError(f"the training set has {self.n} images, fewer than one batch "
                            f"(distill.batch_size={self.global_batch}): lower the batch size or add data")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside world size {self.world}")

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(permutation, flip flag, view 0..views) per sample index, of one epoch."""
        rng = np.random.default_rng([self.seed, epoch, 0x5A3])
        perm = rng.permutation(self.n)
        flips = rng.random(self.n) < 0.5 if self.flip else np.zeros(self.n, bool)
        views = rng.integers(0, self.views + 1, size=self.n) if self.views else np.zeros(self.n, np.int64)
        return perm, flips, views

    def global_batch_indices(self, epoch: int, step: int) -> np.ndarray:
        perm = self.order(epoch)[0]
        return perm[step * self.global_batch:(step + 1) * self.global_batch]

    def batches(self, epoch: int, start: int = 0) -> "EpochBatches":
        """This rank's batches of `epoch`, from step `start` on (a DataLoader batch_sampler)."""
        return EpochBatches(self, epoch, start)

    def stream(self, epoch: int, start: int, count: int) -> "BatchStream":
        """`count` batches from (epoch, start) on, crossing epoch boundaries (one DataLoader for a whole run)."""
        return BatchStream(self, epoch, start, count)


class EpochBatches:
    """Iterable of this rank's batches in one epoch: lists of (sample index, flip, epoch, view) keys."""

    def __init__(self, plan: ShardPlan, epoch: int, start: int = 0):
        if not 0 <= start <= plan.steps_per_epoch:
            raise ValueError(f"start step {start} outside 0..{plan.steps_per_epoch}")
        self.plan, self.epoch, self.start = plan, epoch, start

    def __len__(self) -> int:
        return self.plan.steps_per_epoch - self.start

    def __iter__(self) -> Iterator[list[tuple[int, bool, int, int]]]:
        p = self.plan
        perm, flips, views = p.order(self.epoch)
        lo = p.rank * p.local_batch
        for step in range(self.start, p.steps_per_epoch):
            rows = perm[step * p.global_batch + lo: step * p.global_batch + lo + p.local_batch]
            yield [(int(i), bool(flips[i]), self.epoch, int(views[i])) for i in rows]


class BatchStream:
    """This rank's next `count` batches from (epoch, start), epoch after epoch."""

    def __init__(self, plan: ShardPlan, epoch: int, start: int, count: int):
        self.plan, self.epoch, self.start, self.count = plan, epoch, start, max(0, count)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[tuple[int, bool, int, int]]]:
        left, epoch, start = self.count, self.epoch, self.start
        while left > 0:
            for batch in EpochBatches(self.plan, epoch, start):
                yield batch
                left -= 1
                if left == 0:
                    return
            epoch, start = epoch + 1, 0
