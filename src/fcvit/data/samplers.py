"""Samplers every task trains with: an order fixed by (seed, epoch), resumable at any batch, each sample augmented
with RNGs seeded from (seed, epoch, position), so a resumed run sees exactly the batches an uninterrupted one would."""
from __future__ import annotations

import math
import random
from typing import Any, Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

__all__ = ["EpochShardSampler", "ShardSampler", "SeededSamples", "SeekableBatches"]


class EpochShardSampler(Sampler):
    """Training order: a permutation fixed by (seed, epoch), split over ranks (padded to equal counts, as
    DistributedSampler), as ``(index, sample_seed)``; ``set_epoch(epoch, skip=n)`` skips this rank's first ``n``."""

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples_total, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.per_rank = math.ceil(num_samples / world_size)
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.per_rank - self.skip

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(self.seed + 7919 * self.epoch)
        order = torch.randperm(self.num_samples_total, generator=g).tolist()
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        mine = order[self.rank:total:self.world_size]
        for position in range(self.skip, len(mine)):
            sample_seed = np.random.SeedSequence([self.seed, self.epoch, position * self.world_size + self.rank])
            yield mine[position], int(sample_seed.generate_state(1)[0])


class ShardSampler(Sampler):
    """Evaluation order: every sample exactly once over all ranks (no padding), so summed metrics are exact."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is loaded and augmented with all RNGs seeded by ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        index, seed = item
        in_main_process = torch.utils.data.get_worker_info() is None
        if in_main_process:  # -j 0: keep the training loop's own random streams untouched
            saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if in_main_process:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


class SeekableBatches(BatchSampler):
    """Full batches of ``batch_size`` from an :class:`EpochShardSampler` (the last partial one dropped)."""

    def __init__(self, sampler: EpochShardSampler, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        super().__init__(sampler, batch_size, drop_last=True)

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.per_rank // self.batch_size

    def set_position(self, epoch: int, batches_done: int) -> None:
        """The next pass yields the batches of ``epoch`` after the first ``batches_done``."""
        self.sampler.set_epoch(epoch, skip=batches_done * self.batch_size)
