"""Generated datasets for the detection and segmentation tests: a COCO-format set of filled squares, triangles
and discs on noise (the drawn polygon is the annotation, so boxes and masks are exact; category ids 3, 7, 11 exercise
the id mapping), and an ADE20K-layout set of a noisy background (class 1), rectangles and ellipses of other classes
in their own colours, and a frame of 0 ("other")."""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw


SHAPE_CATEGORIES: Tuple[Dict[str, object], ...] = (
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
    {"id": 11, "name": "disc", "supercategory": "shape"},
)
_COLOURS = {3: (220, 40, 40), 7: (40, 200, 60), 11: (40, 80, 230)}


def _polygon(kind: int, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    if kind == 3:
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == 7:
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx + r * math.cos(2 * math.pi * k / 20), cy + r * math.sin(2 * math.pi * k / 20)) for k in range(20)]


def write_shapes_split(image_dir: str | os.PathLike, annotation_file: str | os.PathLike, num_images: int,
                       size: Tuple[int, int] = (96, 96), objects_per_image: Tuple[int, int] = (1, 3), seed: int = 0,
                       categories: Sequence[Dict[str, object]] = SHAPE_CATEGORIES) -> Dict[str, object]:
    """Write ``num_images`` PNGs of ``size`` (width, height) and their COCO instances file; return its dict."""
    rng = random.Random(seed)
    image_dir, annotation_file = os.fspath(image_dir), os.fspath(annotation_file)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(annotation_file)), exist_ok=True)
    width, height = size
    cat_ids = [int(c["id"]) for c in categories]
    images, annotations = [], []
    for index in range(num_images):
        noise = np.random.default_rng(seed * 1000 + index).integers(90, 150, (height, width, 3), dtype=np.uint8)
        img = Image.fromarray(noise)
        draw = ImageDraw.Draw(img)
        image_id = 100 + 2 * index  # non-contiguous image ids too
        placed: List[Tuple[float, float, float]] = []
        for _ in range(rng.randint(*objects_per_image)):
            for _attempt in range(20):
                r = rng.uniform(0.12, 0.22) * min(width, height)
                cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
                if all(math.hypot(cx - x, cy - y) > r + s + 2 for x, y, s in placed):
                    break
            else:
                continue
            placed.append((cx, cy, r))
            kind = rng.choice(cat_ids)
            poly = _polygon(kind, cx, cy, r)
            draw.polygon(poly, fill=_COLOURS.get(kind, (230, 230, 40)))
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            x0, y0 = min(xs), min(ys)
            w, h = max(xs) - x0, max(ys) - y0
            area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": kind,
                                "bbox": [x0, y0, w, h], "area": area, "iscrowd": 0,
                                "segmentation": [[v for p in poly for v in p]]})
        name = f"shapes_{index:04d}.png"
        img.save(os.path.join(image_dir, name))
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    data = {"images": images, "annotations": annotations, "categories": [dict(c) for c in categories]}
    with open(annotation_file, "w") as f:
        json.dump(data, f)
    return data


def make_shapes_coco(root: str | os.PathLike, num_train: int = 8, num_val: int = 4,
                     size: Tuple[int, int] = (96, 96), seed: int = 0) -> str:
    """A dataset in the COCO layout under ``root`` (``annotations/instances_{train,val}2017.json``)."""
    root = os.fspath(root)
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1)):
        write_shapes_split(os.path.join(root, f"{split}2017"),
                           os.path.join(root, "annotations", f"instances_{split}2017.json"),
                           count, size=size, seed=split_seed)
    return root


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
