"""Semantic segmentation data in the ADE20K layout, with the checks that catch broken datasets early.

Layout::

    ROOT/images/{training,validation}/NAME.jpg        (also .jpeg/.png)
    ROOT/annotations/{training,validation}/NAME.png   (single-channel class indices)

ADE20K's annotations use 0 for "other" (not scored) and 1..150 for its classes; with
``reduce_zero_label`` (the default, as in MMSegmentation) 0 becomes the ignore index 255 and 1..N
become classes 0..N-1. Pairing and sizes are checked when the dataset is built, from file headers
only; label values are checked as each annotation is read, and for every annotation of a split at once
by ``check_labels`` (training calls it for both splits before the first step).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ...data import load_image
from ...errors import UserError
from .transforms import IGNORE_INDEX

__all__ = [
    "ADE20K_CLASSES", "IMAGE_EXTENSIONS", "SPLITS", "SegmentationFolder", "map_labels", "read_class_names",
    "default_class_names", "check_split_exists", "header_size",
]

SPLITS = {"train": "training", "val": "validation"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def default_class_names(num_classes: int) -> List[str]:
    """ADE20K's names for 150 classes, otherwise ``class 0``, ``class 1``, ..."""
    if num_classes == len(ADE20K_CLASSES):
        return list(ADE20K_CLASSES)
    return [f"class {i}" for i in range(num_classes)]


def read_class_names(path: str | os.PathLike, num_classes: Optional[int] = None) -> List[str]:
    """Class names from a text file, one per line in class order (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Class names file '{path}' does not exist: pass a text file with one name per line.")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise UserError(f"Class names file '{path}' is empty: write one class name per line.")
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f"Class names file '{path}' has {len(names)} names but --num-classes is {num_classes}: "
                        "make them agree.")
    return names


def map_labels(annotation: np.ndarray, num_classes: int, reduce_zero_label: bool = True,
               source: str = "annotation") -> np.ndarray:
    """Annotation values to training labels (uint8), with 255 for ignored pixels.

    With ``reduce_zero_label``: 0 -> 255, v -> v - 1 (255 stays 255). Values that land outside
    0..num_classes-1 and are not 255 are an error naming the values and the fix.
    """
    values = annotation.astype(np.int64)
    if reduce_zero_label:
        labels = values - 1
        labels[values == 0] = IGNORE_INDEX
        labels[values == IGNORE_INDEX] = IGNORE_INDEX
    else:
        labels = values
    bad = (labels >= num_classes) & (labels != IGNORE_INDEX) | (labels < 0)
    if bad.any():
        offset = 1 if reduce_zero_label else 0
        found = np.unique(values[bad])
        shown = ", ".join(str(v) for v in found[:8]) + (" ..." if len(found) > 8 else "")
        allowed = f"{offset}..{num_classes - 1 + offset}" + (" (0 = ignored)" if reduce_zero_label else "")
        raise UserError(f"{source} has label values {shown} beyond the {num_classes} classes (allowed "
                        f"{allowed}, and 255 = ignored): pass the right --num-classes or fix the annotation.")
    return labels.astype(np.uint8)


def check_split_exists(root: str | os.PathLike, split: str) -> Tuple[Path, Path]:
    """The image and annotation folders of a split, or a clear error about the layout."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"Dataset folder '{root}' does not exist: pass the ADE20K root with --data.")
    folder = SPLITS.get(split, split)
    images, annotations = root / "images" / folder, root / "annotations" / folder
    for path in (images, annotations):
        if not path.is_dir():
            raise UserError(f"'{path}' is missing: --data must point to a folder with images/{folder}/ and "
                            f"annotations/{folder}/ (the ADE20K layout).")
    return images, annotations


def _list_pairs(images_dir: Path, annotations_dir: Path) -> List[Tuple[Path, Path]]:
    images = {p.stem: p for p in sorted(images_dir.iterdir())
              if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    annotations = {p.stem: p for p in sorted(annotations_dir.iterdir())
                   if p.is_file() and p.suffix.lower() == ".png"}
    without_annotation = sorted(set(images) - set(annotations))
    without_image = sorted(set(annotations) - set(images))
    if without_annotation:
        names = ", ".join(images[s].name for s in without_annotation[:3])
        more = f" and {len(without_annotation) - 3} more" if len(without_annotation) > 3 else ""
        raise UserError(f"{len(without_annotation)} image(s) in '{images_dir}' have no annotation PNG of the same "
                        f"name in '{annotations_dir}' ({names}{more}): add the annotations or remove the images.")
    if without_image:
        names = ", ".join(annotations[s].name for s in without_image[:3])
        more = f" and {len(without_image) - 3} more" if len(without_image) > 3 else ""
        raise UserError(f"{len(without_image)} annotation(s) in '{annotations_dir}' have no image of the same name "
                        f"in '{images_dir}' ({names}{more}): add the images or remove the annotations.")
    if not images:
        raise UserError(f"'{images_dir}' holds no images ({', '.join(IMAGE_EXTENSIONS)}): check --data.")
    return [(images[s], annotations[s]) for s in sorted(images)]


def header_size(path: str | os.PathLike) -> Tuple[int, int]:
    """(width, height) read from the file header, without decoding the pixels (detection uses it too)."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"'{path}' cannot be read as an image ({exc}): replace or remove it.") from None


def _label_values(path: Path) -> set:
    """The distinct values of one annotation PNG (decoded, not mapped)."""
    try:
        with Image.open(path) as ann:
            if ann.mode in ("L", "P"):
                return {v for v, n in enumerate(ann.histogram()[:256]) if n}
            if ann.mode not in ("I;16", "I"):
                raise UserError(f"Annotation '{path}' is a {ann.mode} image: annotations must be single-channel "
                                "PNGs of class indices (mode L or P), not colour images.")
            return set(np.unique(np.asarray(ann)).tolist())
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"Annotation '{path}' cannot be decoded ({exc}): replace or remove it.") from None


class SegmentationFolder(Dataset):
    """(image, mask) pairs of one split; ``transforms`` receives and returns them jointly.

    Returns ``tv_tensors.Image`` (uint8, 3 x H x W) and ``tv_tensors.Mask`` (H x W) before transforms.
    """

    def __init__(
            self,
            root: str | os.PathLike,
            split: str = "train",
            num_classes: int = 150,
            reduce_zero_label: bool = True,
            transforms: Optional[Callable] = None,
            check_sizes: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.transforms = transforms
        images_dir, annotations_dir = check_split_exists(root, split)
        self.samples = _list_pairs(images_dir, annotations_dir)
        if check_sizes:
            for image_path, annotation_path in self.samples:
                self._check_size(image_path, annotation_path, header_size(image_path), header_size(annotation_path))

    @staticmethod
    def _check_size(image_path: Path, annotation_path: Path, image_size: Sequence[int],
                    annotation_size: Sequence[int]) -> None:
        if tuple(image_size) != tuple(annotation_size):
            raise UserError(
                f"Annotation '{annotation_path}' is {annotation_size[0]}x{annotation_size[1]} but its image "
                f"'{image_path}' is {image_size[0]}x{image_size[1]}: annotations must have their image's size.")

    def check_labels(self, workers: int = 8) -> None:
        """Read every annotation now and refuse label values beyond the classes, naming the files.

        Training would otherwise meet a bad validation label only at its first evaluation, after the
        steps since the last save. Values come from PIL's C histogram (256 bins for L/P PNGs), with
        the decoding spread over threads (PIL releases the GIL), so a split of 20,000 costs seconds.
        """
        from concurrent.futures import ThreadPoolExecutor

        allowed = self._allowed_values()
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(self.samples)))) as pool:
            found = list(pool.map(_label_values, (ann for _, ann in self.samples)))
        bad = [(path, sorted(values - allowed)) for (_, path), values in zip(self.samples, found) if values - allowed]
        if bad:
            path, values = bad[0]
            shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
            offset = 1 if self.reduce_zero_label else 0
            more = f" (and {len(bad) - 1} more annotation(s) of this split)" if len(bad) > 1 else ""
            raise UserError(
                f"Annotation '{path}'{more} has label values {shown} beyond the {self.num_classes} classes (allowed "
                f"{offset}..{self.num_classes - 1 + offset}{' with 0 = ignored' if offset else ''}, and 255 = "
                "ignored): pass the right --num-classes or fix the annotations.")

    def _allowed_values(self) -> set:
        """Annotation values that map to a class or to the ignore label."""
        offset = 1 if self.reduce_zero_label else 0
        return set(range(offset + self.num_classes)) | {IGNORE_INDEX}

    def __len__(self) -> int:
        return len(self.samples)

    def read_annotation(self, index: int) -> np.ndarray:
        """The mapped labels of sample ``index`` (uint8, 255 = ignored), checked against the classes."""
        image_path, annotation_path = self.samples[index]
        try:
            with Image.open(annotation_path) as ann:
                ann.load()
                if ann.mode not in ("L", "P", "I;16", "I"):
                    raise UserError(f"Annotation '{annotation_path}' is a {ann.mode} image: annotations must be "
                                    "single-channel PNGs of class indices (mode L or P), not colour images.")
                values = np.asarray(ann)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"Annotation '{annotation_path}' cannot be decoded ({exc}): replace or remove it.") \
                from None
        return map_labels(values, self.num_classes, self.reduce_zero_label, f"Annotation '{annotation_path}'")

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image_path, annotation_path = self.samples[index]
        image = load_image(image_path)
        labels = self.read_annotation(index)
        self._check_size(image_path, annotation_path, image.size, labels.shape[::-1])
        image = tv_tensors.Image(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(labels))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask
