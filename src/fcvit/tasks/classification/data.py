"""Image classification data: folder datasets checked up front, timm's other dataset forms and the built-in digits."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ...data.images import check_image, list_images, load_image
from ...errors import UserError

__all__ = ["DIGITS_CLASSES", "SKIPPED_TARGET", "BadImageError", "DigitsDataset", "CheckedImageFolder",
           "create_classification_dataset", "find_split_dir", "check_images"]

_logger = logging.getLogger(__name__)

DIGITS_CLASSES = [str(i) for i in range(10)]
SKIPPED_TARGET = -1  # an evaluation sample that could not be read: counted nowhere
_SPLIT_SYNONYMS = {"train": ("train", "training"), "val": ("val", "validation", "valid", "eval", "evaluation", "test")}


class BadImageError(UserError):
    """A sample that cannot be decoded; keeps only the one sentence of a worker's re-raised long text."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split("BadImageError: ", 1)[-1]
        super().__init__(message)


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (1,797 8x8 images) as RGB, in a fixed stratified 80/20 split."""

    classes = DIGITS_CLASSES

    def __init__(self, split: str = "train", transform: Optional[Callable] = None) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        split = _canonical_split(split)
        if split is None:
            raise UserError("The digits dataset has the splits 'train' and 'val': pass one of those.")
        digits = load_digits()
        images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
        train_idx, val_idx = train_test_split(np.arange(len(images)), test_size=0.2, random_state=0,
                                              stratify=digits.target)
        idx = np.sort(train_idx if split == "train" else val_idx)
        self.images, self.targets, self.transform = images[idx], digits.target[idx].astype(np.int64), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


def _canonical_split(split: str) -> Optional[str]:
    return next((canonical for canonical, names in _SPLIT_SYNONYMS.items() if split in names), None)


def find_split_dir(root: str, split: str) -> str:
    """``root/split`` or a usual synonym (val <-> validation); a clear error if none exists."""
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise UserError(f"Data folder '{root}' {what}: pass a folder holding train/<class>/* and "
                        "val/<class>/*, or --dataset digits for the built-in dataset.")
    canonical = _canonical_split(split)
    for name in (split,) + (_SPLIT_SYNONYMS[canonical] if canonical else ()):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise UserError(f"Data folder '{root}' has no '{split}' split: create '{os.path.join(root, split)}' with "
                    "one sub-folder of images per class.")


class CheckedImageFolder(Dataset):
    """``<split>/<class>/**/<image>``; an empty class folder is refused (it would shift every class index). A bad
    image raises :class:`BadImageError`, or with ``skip_bad_images`` the next readable one replaces it; in
    ``evaluation`` (where that would count one twice) a blank image with target :data:`SKIPPED_TARGET` does."""

    def __init__(self, split_dir: str, transform: Optional[Callable] = None, skip_bad_images: bool = False,
                 class_names: Optional[Sequence[str]] = None, evaluation: bool = False) -> None:
        from timm.data.readers.img_extensions import get_img_extensions
        from timm.utils.misc import natural_key

        folders = sorted((e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")),
                         key=natural_key)  # timm's class order
        if not folders:
            raise UserError(f"'{split_dir}' has no class folders: put the images of each class in "
                            f"'{split_dir}/<class name>/'.")
        extra = [f for f in folders if class_names is not None and f not in class_names]
        if extra:
            raise UserError(f"'{split_dir}' has classes the training split lacks ({', '.join(extra[:5])}): "
                            "use the same class folders in every split.")
        self.classes = list(class_names) if class_names is not None else folders
        self.samples: List[Tuple[str, int]] = []
        for name in folders:
            found = list_images(os.path.join(split_dir, name), get_img_extensions())
            if not found:
                raise UserError(f"Class folder '{os.path.join(split_dir, name)}' has no images "
                                f"({', '.join(get_img_extensions())}): add images or remove the folder.")
            self.samples += [(path, self.classes.index(name)) for path in found]
        self.samples.sort(key=lambda sample: natural_key(sample[0]))
        self.transform, self.skip_bad_images, self.evaluation = transform, skip_bad_images, evaluation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        for attempt in range(len(self)):
            path, target = self.samples[(index + attempt) % len(self)]
            try:
                img = load_image(path)
                break
            except UserError as exc:
                bad = BadImageError(f"{exc} (or pass --skip-bad-images to go on without it)")
                if not self.skip_bad_images:
                    raise bad from None
                _logger.warning("%s unreadable image: %s", "Not evaluating" if self.evaluation else "Skipping", bad)
                if self.evaluation:
                    img, target = Image.new("RGB", (32, 32)), SKIPPED_TARGET
                    break
        else:
            raise UserError("No image in the dataset could be decoded: check the data folder.")
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def check_images(dataset: Dataset, workers: int = 8) -> None:
    """Decode every image of a folder dataset now (JPEGs at 1/8 scale, on threads), so that a bad validation
    image stops training before its first step; with ``skip_bad_images`` one log line names them instead."""
    if not isinstance(dataset, CheckedImageFolder) or not dataset.samples:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(dataset.samples)))) as pool:
        problems = [p for p in pool.map(check_image, (path for path, _ in dataset.samples)) if p]
    if problems and not dataset.skip_bad_images:
        more = f" ({len(problems) - 1} more images of this split are unreadable too)" if len(problems) > 1 else ""
        raise BadImageError(f"{problems[0]}{more} (or pass --skip-bad-images to go on without them)")
    if problems:
        _logger.warning("%d unreadable image(s) will be left out: %s", len(problems), " | ".join(problems[:5]))


def create_classification_dataset(name: str, root: Optional[str], split: str, transform: Optional[Callable] = None,
                                  skip_bad_images: bool = False, class_names: Optional[Sequence[str]] = None,
                                  evaluation: bool = False) -> Dataset:
    """The dataset for ``--dataset name`` and ``DATA``: 'digits', an image folder (empty name or 'folder'), or any
    other name ``timm.data.create_dataset`` accepts; ``.classes`` holds the names where the source knows them.
    ``evaluation``: a folder's images are checked now, and unreadable ones marked instead of replaced."""
    if name == "digits":
        return DigitsDataset(split, transform=transform)
    if not root:
        raise UserError("No DATA folder given: pass a folder holding train/<class>/* and val/<class>/*, "
                        "or --dataset digits for the built-in dataset.")
    if name in ("", "folder", "imagefolder"):
        folder = CheckedImageFolder(find_split_dir(root, split), transform, skip_bad_images, class_names, evaluation)
        if evaluation:
            check_images(folder)
        return folder
    from timm.data import create_dataset

    try:
        dataset = create_dataset(name, root=root, split=split, is_training=False)
    except (RuntimeError, ValueError, AssertionError, FileNotFoundError, ImportError) as exc:
        raise UserError(f"timm could not open dataset '{name}' at '{root}' split '{split}' "
                        f"({str(exc).splitlines()[0][:200]}): check --dataset, DATA and the split names.") from None
    dataset.transform = transform
    classes = getattr(dataset, "classes", None)
    for source in (getattr(dataset, "reader", None), getattr(dataset, "parser", None)):
        if classes is None and hasattr(source, "class_to_idx"):
            classes = sorted(source.class_to_idx, key=source.class_to_idx.get)
    dataset.classes = list(classes) if classes is not None else None
    return dataset
