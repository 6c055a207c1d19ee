"""Classification data pieces: the digits split, the resumable sharded sampler, per-sample seeding."""
from __future__ import annotations

import random

import numpy as np
import torch

from fcvit.tasks.classification.data import DigitsDataset
from fcvit.data.samplers import EpochShardSampler, SeededSamples, ShardSampler


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, val = DigitsDataset("train"), DigitsDataset("validation")
    assert (len(train), len(val)) == (1437, 360)
    assert np.bincount(val.targets).min() >= 35  # every digit is in the validation split
    again = DigitsDataset("train")
    assert np.array_equal(train.images, again.images) and np.array_equal(train.targets, again.targets)
    seen = {img.tobytes() for img in train.images}
    assert sum(img.tobytes() in seen for img in val.images) < 5  # (the source has a few duplicate images)
    img, label = val[0]
    assert img.mode == "RGB" and img.size == (8, 8) and 0 <= label < 10


def test_epoch_sampler_shards_pads_and_resumes_mid_epoch():
    ranks = [EpochShardSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    shards = [list(s) for s in ranks]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded to equal steps on every rank
    assert {i for shard in shards for i, _ in shard} == set(range(10))
    seeds = [seed for shard in shards for _, seed in shard]
    assert len(set(seeds)) == len(seeds)
    ranks[0].set_epoch(2, skip=3)
    assert list(ranks[0]) == shards[0][3:]  # the rest of the epoch, with the same per-sample seeds
    ranks[0].set_epoch(3)
    assert [i for i, _ in ranks[0]] != [i for i, _ in shards[0]]  # a new order each epoch
    assert sorted(i for r in range(3) for i in ShardSampler(10, r, 3)) == list(range(10))  # eval: no padding


def test_seeded_samples_repeat_augmentation_and_leave_the_main_rngs_alone():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(1).item() + random.random() + np.random.rand()

    data = SeededSamples(Noisy())
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert data[(2, 123)] == data[(2, 123)] != data[(2, 124)]
    assert torch.equal(torch.get_rng_state(), before)
