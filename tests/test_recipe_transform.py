"""The paper's default training transform (RandAugment rand-m9-mstd0.5-inc1 and the rest of the recipe)
runs on real photographs under every Pillow version, keeping posterize's 0-bit meaning (a black image)."""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import PIL
import pytest
import timm
import torch
from PIL import Image, ImageOps
from timm.data.auto_augment import NAME_TO_OP, AugmentOp, RandAugment, posterize

from fcvit.cli.train import build_parser, finalize_args
from fcvit.data import load_image
from fcvit.tasks.classification.transforms import (
    create_train_transform,
    posterize_keeping_zero_bits,
    restore_zero_bit_posterize,
)
from fcvit.tasks.classification.train import _transform_args

from real_photos import sample_photos

PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13
DRAWS_PER_SEED = 500
SEEDS = (0, 1, 2, 3)  # 4 x 500 = 2,000 draws


pytestmark = pytest.mark.usefixtures("one_thread")


def default_train_transform() -> Callable:
    """What `fcvit train DATA` builds for fcvit_tiny at 224 px: the CLI's defaults, the engine's code path."""
    args = finalize_args(build_parser().parse_args(["DATA"]))
    assert args.aa == "rand-m9-mstd0.5-inc1" and args.img_size is None  # the paper's recipe
    model = timm.create_model(args.model, num_classes=2)
    return create_train_transform(**_transform_args(args, model, training=True))


def augment_ops(transform: Any) -> List[AugmentOp]:
    """The ops of the one RandAugment in the recipe's Compose(crop, flip, RandAugment, tensor, ...)."""
    (rand_augment,) = [t for t in transform.transforms if isinstance(t, RandAugment)]
    return list(rand_augment.ops)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Dict[str, Image.Image]:
    """The sample photographs as the data loader sees them (JPEG files decoded to RGB), plus a
    grayscale one and a tiny one."""
    folder = tmp_path_factory.mktemp("photos")
    arrays = sample_photos()
    arrays["astronaut_gray"] = np.asarray(Image.fromarray(arrays["astronaut"]).convert("L"))
    arrays["tiny_coffee"] = arrays["coffee"][100:130, 200:240]  # 40 x 30: the crop upsamples
    images = {}
    for name, pixels in arrays.items():
        path = Path(folder) / f"{name}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        images[name] = load_image(path)
    return images


class ZeroBitCounter:
    """Wraps an op's posterize to count how often the draws asked for 0 bits."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.zero_bit_calls, self.calls = fn, 0, 0

    def __call__(self, img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
        self.calls += 1
        self.zero_bit_calls += bits_to_keep <= 0
        return self.fn(img, bits_to_keep, **kwargs)


def test_default_transform_survives_2000_draws_on_real_photographs(photos):
    transform = default_train_transform()
    counters = []
    for op in augment_ops(transform):
        if op.name.startswith("Posterize"):
            assert op.aug_fn is posterize_keeping_zero_bits
            op.aug_fn = ZeroBitCounter(op.aug_fn)
            counters.append(op.aug_fn)
    assert counters, "the default RandAugment policy has a posterize op"
    images = list(photos.values())
    for seed in SEEDS:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for i in range(DRAWS_PER_SEED):
            out = transform(images[i % len(images)])
            assert out.shape == (3, 224, 224) and out.dtype == torch.float32
            assert torch.isfinite(out).all()
    # the draws reached the case Pillow 13 refuses (magnitude >= 10 keeps 0 bits; about 3 in 2,000 draws)
    assert sum(c.zero_bit_calls for c in counters) >= 1, [(c.calls, c.zero_bit_calls) for c in counters]


def expected_posterize_pre13(img: Image.Image, bits: int) -> np.ndarray:
    """Pillow < 13's posterize: a lookup table masking the 8 - bits low bits (all bits at 0 bits)."""
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return np.asarray(img) & mask


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_zero_bits_give_the_black_image_older_pillow_gave(photos, mode):
    img = photos["chelsea"].convert(mode)
    out = posterize_keeping_zero_bits(img, 0)
    assert out.mode == img.mode and out.size == img.size
    assert np.array_equal(np.asarray(out), expected_posterize_pre13(img, 0))
    assert not np.asarray(out).any()


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_other_bit_counts_are_pillows_posterize(photos, bits):
    img = photos["coffee"]
    out = posterize_keeping_zero_bits(img, bits)
    assert np.array_equal(np.asarray(out), np.asarray(ImageOps.posterize(img, bits)))
    assert np.array_equal(np.asarray(out), expected_posterize_pre13(img, bits))


def test_recipe_op_at_full_magnitude_is_fixed_per_instance_not_in_timm(photos):
    """At magnitude 10 timm's increasing posterize keeps 0 bits: Pillow 13 raises, the fixed op blacks out."""
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    assert op.level_fn(10, op.hparams) == (0,)
    if PILLOW_13:
        with pytest.raises(ValueError, match="bits"):
            op(photos["rocket"])
    assert restore_zero_bit_posterize([op]) == [op]
    assert not np.asarray(op(photos["rocket"])).any()
    # timm's own tables are untouched: a new op still gets timm's posterize
    assert NAME_TO_OP["PosterizeIncreasing"] is posterize
    assert AugmentOp("PosterizeIncreasing").aug_fn is posterize


def test_fixed_transform_pickles_for_dataloader_workers(photos):
    transform = pickle.loads(pickle.dumps(default_train_transform()))
    fixed = [op for op in augment_ops(transform) if op.name.startswith("Posterize")]
    assert fixed and all(op.aug_fn is posterize_keeping_zero_bits for op in fixed)
    assert transform(photos["flower"]).shape == (3, 224, 224)


@pytest.mark.parametrize("policy", ["original", "v0", "augmix-m5"])
def test_other_timm_policies_get_the_fix_too(policy):
    """AutoAugment keeps its ops in nested policy lists, AugMix in ops: the walk finds them all."""
    transform = create_train_transform(input_size=(3, 64, 64), is_training=True, auto_augment=policy)
    changed = restore_zero_bit_posterize(transform)  # already done by create_train_transform
    assert changed == []
    ops: List[AugmentOp] = []
    pending: List[Any] = [transform]
    while pending:
        node = pending.pop()
        if isinstance(node, AugmentOp):
            ops.append(node)
        elif isinstance(node, (list, tuple)):
            pending.extend(node)
        else:
            for name in ("transforms", "ops", "policy"):
                pending.extend(getattr(node, name, None) or [])
    posterizes = [op for op in ops if op.name.startswith("Posterize")]
    assert posterizes and all(op.aug_fn is posterize_keeping_zero_bits for op in posterizes)
