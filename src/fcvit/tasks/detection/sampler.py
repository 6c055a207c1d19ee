"""Batches of images with similar aspect ratios, so that padding to a common size wastes little: the idea of
torchvision's references' ``GroupedBatchSampler`` (which the library does not export), grouped landscape vs
portrait by default as MMDetection does.
"""
from __future__ import annotations

import bisect
import itertools
import math
from typing import Iterator, List, Sequence

from torch.utils.data import Sampler

__all__ = ["AspectRatioBatchSampler", "aspect_ratio_groups"]


def aspect_ratio_groups(aspect_ratios: Sequence[float], boundaries: Sequence[float] = (1.0,)) -> List[int]:
    """Group index of every image: the number of ``boundaries`` (width / height) it lies above or at."""
    edges = sorted(boundaries)
    return [bisect.bisect_right(edges, ar) for ar in aspect_ratios]


class AspectRatioBatchSampler(Sampler[List[int]]):
    """Batches from ``sampler``, each emitted once its aspect-ratio group has ``batch_size`` indices; leftovers
    end the pass in mixed batches, so every rank of a sharded sampler runs ``ceil(len(sampler) / batch_size)``."""

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.sampler, self.group_ids, self.batch_size = sampler, list(group_ids), batch_size
        self._skip = 0

    def skip_next(self, batches: int) -> None:
        """Leave out the first ``batches`` batches of the next pass only. The grouping depends only on the
        sampler's order, so with a seeded sampler the rest are exactly those an uninterrupted pass makes."""
        self._skip = max(int(batches), 0)

    def set_position(self, epoch: int, batches_done: int) -> None:
        """The training loop's way to seek: the next pass yields ``epoch``'s batches after ``batches_done``."""
        self.sampler.set_epoch(epoch)
        self.skip_next(batches_done)

    def __iter__(self) -> Iterator[List[int]]:
        skip, self._skip = self._skip, 0
        return itertools.islice(self._batches(), skip, None)

    def _batches(self) -> Iterator[List[int]]:
        buffers: dict[int, List[int]] = {}
        for item in self.sampler:  # an index, or (index, sample seed) from an EpochShardSampler
            group = buffers.setdefault(self.group_ids[item[0] if isinstance(item, tuple) else item], [])
            group.append(item)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftovers = [i for group in buffers.values() for i in group]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    batches_per_epoch = property(__len__)
