"""A small generated dataset in the ADE20K layout (and label convention), for tests and smoke runs: a noisy
background (class 1), rectangles and ellipses of other classes in their own colours, a frame of 0 ("other")."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

__all__ = ["CLASS_COLOURS", "make_synthetic_dataset"]

# colours of annotation values 1..8 (class 0..7 after the mapping)
CLASS_COLOURS = np.array([
    (90, 90, 90), (220, 40, 40), (40, 180, 60), (50, 80, 220),
    (230, 200, 40), (200, 60, 200), (40, 200, 210), (240, 140, 40),
], dtype=np.float32)


def _draw_sample(rng: np.random.Generator, size: Tuple[int, int], num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    height, width = size
    labels = np.ones((height, width), dtype=np.uint8)  # background = annotation value 1
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(2, 4))):
        value = int(rng.integers(2, num_classes + 1))
        h, w = int(rng.integers(height // 4, height // 2 + 1)), int(rng.integers(width // 4, width // 2 + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        if rng.random() < 0.5:
            region = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)
        else:
            cy, cx = top + h / 2, left + w / 2
            region = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1.0
        labels[region] = value
    labels[:2, :] = 0  # a frame of "other": ignored after the mapping
    labels[:, :2] = 0
    colours = CLASS_COLOURS[(labels.astype(np.int64) - 1) % len(CLASS_COLOURS)]
    colours[labels == 0] = (0, 0, 0)
    image = colours + rng.normal(0, 12, size=colours.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def make_synthetic_dataset(
        root: str | os.PathLike,
        num_train: int = 16,
        num_val: int = 8,
        size: Tuple[int, int] = (64, 64),
        num_classes: int = 4,
        seed: int = 0,
) -> Path:
    """Write ``images/{training,validation}/*.jpg`` (quality 95, as ADE20K's) and ``annotations/.../*.png`` under
    ``root``; ``num_classes`` (at most 8) counts the classes after the mapping (annotation values 1..num_classes)."""
    if not 2 <= num_classes <= len(CLASS_COLOURS):
        raise ValueError(f"num_classes must be in 2..{len(CLASS_COLOURS)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder, count in (("training", num_train), ("validation", num_val)):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, labels = _draw_sample(rng, size, num_classes)
            name = f"synthetic_{folder}_{index:05d}"
            Image.fromarray(image).save(root / "images" / folder / f"{name}.jpg", quality=95)
            Image.fromarray(labels).save(root / "annotations" / folder / f"{name}.png")
    return root
