"""Image classification data: folder datasets checked up front, timm's other dataset forms and the
built-in digits dataset. The samplers that make training resumable live in :mod:`fcvit.data.samplers`.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ...data.images import load_image
from ...errors import UserError

__all__ = [
    "DIGITS_CLASSES", "SKIPPED_TARGET", "BadImageError", "DigitsDataset", "CheckedImageFolder", "create_classification_dataset",
    "find_split_dir",
]

_logger = logging.getLogger(__name__)

DIGITS_CLASSES = [str(i) for i in range(10)]
SKIPPED_TARGET = -1  # an evaluation sample that could not be read: counted nowhere
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SPLIT_SYNONYMS = {"train": ("train", "training"), "val": ("val", "validation", "valid", "eval", "evaluation", "test")}


class BadImageError(UserError):
    """A sample that cannot be decoded. DataLoader workers re-raise it as ``BadImageError(long text)``;
    the constructor keeps only the original one-sentence message."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.split("BadImageError: ", 1)[-1]
        super().__init__(message)


class DigitsDataset(Dataset):
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) as RGB PIL images.

    The split is stratified and fixed by ``split_seed`` (80% train, 20% val by default), so every run,
    machine and process sees the same 1,437 / 360 images.
    """

    classes = DIGITS_CLASSES

    def __init__(self, split: str = "train", transform: Optional[Callable] = None, val_fraction: float = 0.2,
                 split_seed: int = 0) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        split = _canonical_split(split)
        if split is None:
            raise UserError("The digits dataset has the splits 'train' and 'val': pass one of those.")
        digits = load_digits()
        images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
        train_idx, val_idx = train_test_split(np.arange(len(images)), test_size=val_fraction,
                                              random_state=split_seed, stratify=digits.target)
        idx = np.sort(train_idx if split == "train" else val_idx)
        self.images = images[idx]
        self.targets = digits.target[idx].astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


def _canonical_split(split: str) -> Optional[str]:
    for canonical, names in _SPLIT_SYNONYMS.items():
        if split in names:
            return canonical
    return None


def find_split_dir(root: str, split: str) -> str:
    """``root/split`` or a usual synonym (val <-> validation); a clear error if none exists."""
    if not os.path.isdir(root):
        raise UserError(f"Data folder '{root}' does not exist: pass a folder holding train/<class>/* and "
                        "val/<class>/*, or --dataset digits for the built-in dataset.")
    canonical = _canonical_split(split)
    for name in (split,) + (_SPLIT_SYNONYMS[canonical] if canonical else ()):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise UserError(f"Data folder '{root}' has no '{split}' split: create '{os.path.join(root, split)}' with "
                    "one sub-folder of images per class.")


def _has_image(folder: str) -> bool:
    for _, _, files in os.walk(folder):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
    return False


class CheckedImageFolder(Dataset):
    """``<split>/<class>/<image>`` read with timm's folder reader, with one-sentence errors.

    Class folders are checked when the dataset is built (an empty one would silently shift every
    class index); an undecodable image raises :class:`BadImageError` naming the file, or with
    ``skip_bad_images`` is logged and, in training, replaced by the next readable sample. For
    ``evaluation`` it is not replaced (that would count another image twice): the sample becomes a
    blank image with target :data:`SKIPPED_TARGET`, which the evaluation leaves out of every count.
    """

    def __init__(self, split_dir: str, transform: Optional[Callable] = None, skip_bad_images: bool = False,
                 class_names: Optional[Sequence[str]] = None, evaluation: bool = False) -> None:
        from timm.data.readers.reader_image_folder import ReaderImageFolder

        folders = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
        if not folders:
            raise UserError(f"'{split_dir}' has no class folders: put the images of each class in "
                            f"'{split_dir}/<class name>/'.")
        for name in folders:
            if not _has_image(os.path.join(split_dir, name)):
                raise UserError(f"Class folder '{os.path.join(split_dir, name)}' has no images: add images "
                                "or remove the folder.")
        class_map = {name: i for i, name in enumerate(class_names)} if class_names is not None else ""
        if class_names is not None:
            extra = [f for f in folders if f not in class_map]
            if extra:
                raise UserError(f"'{split_dir}' has classes the training split lacks ({', '.join(extra[:5])}): "
                                "use the same class folders in every split.")
        self.reader = ReaderImageFolder(split_dir, class_map=class_map)
        self.classes = list(class_names) if class_names is not None else sorted(
            self.reader.class_to_idx, key=self.reader.class_to_idx.get)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.evaluation = evaluation

    def __len__(self) -> int:
        return len(self.reader)

    def _load(self, index: int) -> Tuple[Image.Image, int]:
        path = self.reader.filename(index, absolute=True)
        try:
            img = load_image(path)
        except UserError as exc:
            raise BadImageError(f"{exc} (or pass --skip-bad-images to go on without it)") from None
        return img, int(self.reader[index][1])

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        if self.evaluation:
            img, target = self._load_or_blank(index)
        else:
            img, target = self._load_or_next(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def _load_or_blank(self, index: int) -> Tuple[Image.Image, int]:
        try:
            return self._load(index)
        except BadImageError as exc:
            if not self.skip_bad_images:
                raise
            _logger.warning("Not evaluating unreadable image: %s", exc)
            return Image.new("RGB", (32, 32)), SKIPPED_TARGET

    def _load_or_next(self, index: int) -> Tuple[Image.Image, int]:
        for attempt in range(len(self)):
            try:
                return self._load((index + attempt) % len(self))
            except BadImageError as exc:
                if not self.skip_bad_images:
                    raise
                _logger.warning("Skipping unreadable image: %s", exc)
        raise UserError("No image in the dataset could be decoded: check the data folder.")


def create_classification_dataset(
        name: str,
        root: Optional[str],
        split: str,
        transform: Optional[Callable] = None,
        skip_bad_images: bool = False,
        class_names: Optional[Sequence[str]] = None,
        evaluation: bool = False,
) -> Dataset:
    """The dataset for ``--dataset name`` and ``DATA``: 'digits', an image folder (empty name or
    'folder'), or any other name ``timm.data.create_dataset`` accepts ('torch/cifar10', 'hfds/...').

    The result has ``.classes`` (names in label order) where the source knows them. ``evaluation``: an
    image folder marks unreadable images (with ``skip_bad_images``) instead of replacing them.
    """
    if name == "digits":
        return DigitsDataset(split, transform=transform)
    if not root:
        raise UserError("No DATA folder given: pass a folder holding train/<class>/* and val/<class>/*, "
                        "or --dataset digits for the built-in dataset.")
    if name in ("", "folder", "imagefolder"):
        return CheckedImageFolder(find_split_dir(root, split), transform, skip_bad_images, class_names, evaluation)
    from timm.data import create_dataset

    try:
        dataset = create_dataset(name, root=root, split=split, is_training=False)
    except (RuntimeError, ValueError, AssertionError, FileNotFoundError, ImportError) as exc:
        raise UserError(f"timm could not open dataset '{name}' at '{root}' split '{split}' "
                        f"({str(exc).splitlines()[0][:200]}): check --dataset, DATA and the split names.") from None
    dataset.transform = transform
    reader = getattr(dataset, "reader", None)
    classes = getattr(dataset, "classes", None)
    if classes is None and reader is not None and hasattr(reader, "class_to_idx"):
        classes = sorted(reader.class_to_idx, key=reader.class_to_idx.get)
    if classes is None and hasattr(getattr(dataset, "parser", None), "class_to_idx"):
        classes = sorted(dataset.parser.class_to_idx, key=dataset.parser.class_to_idx.get)
    dataset.classes = list(classes) if classes is not None else None
    return dataset
