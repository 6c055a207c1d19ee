"""Batches of images with similar aspect ratios, so that padding to a common size wastes little.

torchvision's detection references have a ``GroupedBatchSampler`` but the library does not export it;
this is the same idea in a few lines, with the mmdetection grouping (landscape vs portrait) by default.
"""
from __future__ import annotations

import bisect
import math
from typing import Iterator, List, Sequence

from torch.utils.data import Sampler

__all__ = ["AspectRatioBatchSampler", "aspect_ratio_groups"]


def aspect_ratio_groups(aspect_ratios: Sequence[float], boundaries: Sequence[float] = (1.0,)) -> List[int]:
    """Group index of every image: the number of ``boundaries`` (width / height) it lies above or at."""
    edges = sorted(boundaries)
    return [bisect.bisect_right(edges, ar) for ar in aspect_ratios]


class AspectRatioBatchSampler(Sampler[List[int]]):
    """Batches from ``sampler`` where every full batch holds images of one aspect-ratio group.

    Indices are taken in the sampler's (shuffled, per-rank) order and a batch is emitted as soon as its
    group has ``batch_size`` of them. What is left over at the end is packed into mixed batches, so an
    epoch always has ``ceil(len(sampler) / batch_size)`` batches: with a ``DistributedSampler`` every
    rank runs the same number of steps.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self._skip = 0

    def skip_next(self, batches: int) -> None:
        """Leave out the first ``batches`` batches of the next pass only (resuming inside an epoch).

        The grouping depends only on the sampler's order, so with a seeded sampler the remaining batches
        are exactly those the interrupted pass would have produced.
        """
        self._skip = max(int(batches), 0)

    def __iter__(self) -> Iterator[List[int]]:
        skip, self._skip = self._skip, 0
        for position, batch in enumerate(self._batches()):
            if position >= skip:
                yield batch

    def _batches(self) -> Iterator[List[int]]:
        buffers: dict[int, List[int]] = {}
        for item in self.sampler:  # an index, or (index, sample seed) from an EpochShardSampler
            index = item[0] if isinstance(item, tuple) else item
            group = buffers.setdefault(self.group_ids[index], [])
            group.append(item)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftovers = [i for group in buffers.values() for i in group]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the sampler (``EpochShardSampler``, ``DistributedSampler``) so each epoch has a new order."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_position(self, epoch: int, batches_done: int) -> None:
        """The next pass yields the batches of ``epoch`` after the first ``batches_done`` (the training loop's
        way to seek); the grouping is redone from the epoch's whole order, so they are the same batches."""
        self.set_epoch(epoch)
        self.skip_next(batches_done)
