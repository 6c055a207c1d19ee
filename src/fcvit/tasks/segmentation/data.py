"""Semantic segmentation data in the ADE20K layout, checked early: ``ROOT/images/{training,validation}/NAME.jpg``
(.jpeg/.png) pairs with ``ROOT/annotations/.../NAME.png`` of class indices, 0 "other" and 1..150 the classes;
``reduce_zero_label`` (MMSegmentation's default) makes 0 the ignore index 255 and 1..N classes 0..N-1.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ...data.images import header_size, is_regular_file, load_image
from ...errors import UserError
from .transforms import IGNORE_INDEX

__all__ = ["ADE20K_CLASSES", "IMAGE_EXTENSIONS", "SPLITS", "SegmentationFolder", "map_labels", "read_class_names",
           "default_class_names", "check_split_exists"]

_logger = logging.getLogger(__name__)
SPLITS = {"train": "training", "val": "validation"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
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
    """Annotation values to training labels (uint8, 255 ignored); with ``reduce_zero_label`` 0 -> 255 and
    v -> v - 1. Values landing outside 0..num_classes-1 and not 255 are an error naming them and the fix."""
    values = annotation.astype(np.int64)
    ignored = (values == 0) | (values == IGNORE_INDEX)
    labels = np.where(ignored, IGNORE_INDEX, values - 1) if reduce_zero_label else values
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


def _files(folder: Path, extensions: Sequence[str]) -> dict:
    """{stem: path} of the regular files with ``extensions``; FIFOs, sockets and devices skipped with a line."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in extensions or path.is_dir():
            continue
        if is_regular_file(str(path)):
            found[path.stem] = path
        else:
            _logger.warning("Skipping '%s': not a regular file (a FIFO, socket, device or broken link).", path)
    return found


def _unpaired(have: dict, lack: dict, have_dir: Path, lack_dir: Path, what: str, other: str) -> None:
    missing = sorted(set(have) - set(lack))
    if missing:
        names = ", ".join(have[s].name for s in missing[:3]) + (f" and {len(missing) - 3} more"
                                                                 if len(missing) > 3 else "")
        raise UserError(f"{len(missing)} {what}(s) in '{have_dir}' have no {other} of the same name in '{lack_dir}' "
                        f"({names}): add the {other.split()[0]}s or remove the {what}s.")


def _list_pairs(images_dir: Path, annotations_dir: Path) -> List[Tuple[Path, Path]]:
    images, annotations = _files(images_dir, IMAGE_EXTENSIONS), _files(annotations_dir, (".png",))
    _unpaired(images, annotations, images_dir, annotations_dir, "image", "annotation PNG")
    _unpaired(annotations, images, annotations_dir, images_dir, "annotation", "image")
    if not images:
        raise UserError(f"'{images_dir}' holds no images ({', '.join(IMAGE_EXTENSIONS)}): check --data.")
    return [(images[s], annotations[s]) for s in sorted(images)]


def _read_annotation(path: Path, values_only: bool = False):
    """The pixels, upright as its image's (EXIF); or their distinct values (PIL's C histogram for L/P)."""
    try:
        with Image.open(path) as ann:
            if ann.mode not in ("L", "P", "I;16", "I"):
                raise UserError(f"Annotation '{path}' is a {ann.mode} image: annotations must be single-channel "
                                "PNGs of class indices (mode L or P), not colour images.")
            if values_only and ann.mode in ("L", "P"):
                return {v for v, n in enumerate(ann.histogram()[:256]) if n}
            if values_only:
                return set(np.unique(np.asarray(ann)).tolist())
            return np.asarray(ImageOps.exif_transpose(ann))
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"Annotation '{path}' cannot be decoded ({exc}): replace or remove it.") from None


class SegmentationFolder(Dataset):
    """(image, mask) pairs of one split as ``tv_tensors.Image`` (uint8, 3 x H x W) and ``tv_tensors.Mask``
    (H x W); ``transforms`` receives and returns them jointly."""

    def __init__(self, root: str | os.PathLike, split: str = "train", num_classes: int = 150,
                 reduce_zero_label: bool = True, transforms: Optional[Callable] = None, check_sizes: bool = True
                 ) -> None:
        self.root, self.split, self.num_classes = Path(root), split, num_classes
        self.reduce_zero_label, self.transforms = reduce_zero_label, transforms
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
        """Read every annotation now (on threads: seconds for 20,000) and refuse values beyond the classes,
        naming the files, or a split whose every pixel is ignored (it would train at loss 0, score nan)."""
        offset = 1 if self.reduce_zero_label else 0
        allowed = set(range(offset + self.num_classes)) | {IGNORE_INDEX}
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(self.samples)))) as pool:
            found = list(pool.map(lambda path: _read_annotation(path, True), (ann for _, ann in self.samples)))
        bad = [(path, sorted(values - allowed)) for (_, path), values in zip(self.samples, found) if values - allowed]
        if bad:
            path, values = bad[0]
            shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
            more = f" (and {len(bad) - 1} more annotation(s) of this split)" if len(bad) > 1 else ""
            raise UserError(
                f"Annotation '{path}'{more} has label values {shown} beyond the {self.num_classes} classes (allowed "
                f"{offset}..{self.num_classes - 1 + offset}{' with 0 = ignored' if offset else ''}, and 255 = "
                "ignored): pass the right --num-classes or fix the annotations.")
        ignored = {IGNORE_INDEX, 0} if offset else {IGNORE_INDEX}
        if not set().union(*found) - ignored:
            raise UserError(f"Every pixel of the {len(self.samples)} annotations of '{self.samples[0][1].parent}' is "
                            f"ignored (only values {'0 and ' if offset else ''}255): fix the annotations"
                            f"{' or pass --no-reduce-zero-label if 0 is a class' if offset else ''}.")

    def __len__(self) -> int:
        return len(self.samples)

    def read_annotation(self, index: int) -> np.ndarray:
        """The mapped labels of sample ``index`` (uint8, 255 = ignored), checked against the classes."""
        path = self.samples[index][1]
        return map_labels(_read_annotation(path), self.num_classes, self.reduce_zero_label, f"Annotation '{path}'")

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
