"""Joint image/mask transforms (torchvision v2) for MMSegmentation 0.19's ADE20K recipe: the masks hold class
indices, 255 ignored, and are resized by nearest neighbours (the source pixel of OpenCV's ``INTER_NEAREST``)
and left out of colour transforms. The steps without a torchvision equivalent are written here; images are
resized bilinearly WITHOUT anti-aliasing by default, as the original's ``cv2.resize``.
"""
from __future__ import annotations

import math
import random
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .photometric import PhotometricDistortion, build_photometric

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IGNORE_INDEX", "RandomRescale", "CatMaxRatioCrop", "PadTo", "PhotometricDistortion", "keep_ratio_size",
           "train_transforms", "eval_size", "eval_transforms", "EvalResize"]


def _find_mask(flat_inputs: List[Any]) -> tv_tensors.Mask:
    return next(x for x in flat_inputs if isinstance(x, tv_tensors.Mask))


def keep_ratio_size(height: int, width: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """MMSegmentation's ``Resize(keep_ratio=True)``: long side at most ``max(scale)``, short side at most
    ``min(scale)``, whatever the orientation, rounded half up as ``mmcv.imrescale``."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class RandomRescale(v2.Transform):
    """MMSegmentation's ``Resize(ratio_range=...)``: keep the ratio, fit into ``scale`` times a uniform draw from
    ``ratio_range`` (that box truncated to whole pixels first)."""

    def __init__(self, scale: Tuple[int, int] = (2048, 512), ratio_range: Tuple[float, float] = (0.5, 2.0),
                 antialias: bool = False):
        super().__init__()
        self.scale, self.ratio_range, self.antialias = tuple(scale), tuple(ratio_range), antialias

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = F.get_size(_find_mask(flat_inputs))
        ratio = random.uniform(*self.ratio_range)
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return dict(size=list(keep_ratio_size(height, width, target)))

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=self.antialias)


class CatMaxRatioCrop(v2.Transform):
    """MMSegmentation's ``RandomCrop``: of up to ``max_tries`` crops of at most ``size``, the first with two or
    more labelled classes and none above ``cat_max_ratio`` (ignored pixels do not count), else the last."""

    def __init__(self, size: Tuple[int, int], cat_max_ratio: float = 0.75, max_tries: int = 10,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size, self.cat_max_ratio = tuple(size), cat_max_ratio
        self.max_tries, self.ignore_index = max_tries, ignore_index

    def _draw(self, height: int, width: int) -> Tuple[int, int, int, int]:
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        return random.randint(0, height - crop_h), random.randint(0, width - crop_w), crop_h, crop_w

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        mask = _find_mask(flat_inputs)
        height, width = F.get_size(mask)
        box = self._draw(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                top, left, crop_h, crop_w = box
                labels = mask[..., top:top + crop_h, left:left + crop_w]
                counts = torch.bincount(labels[labels != self.ignore_index].long())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                box = self._draw(height, width)
        return dict(zip(("top", "left", "height", "width"), box))

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class PadTo(v2.Transform):
    """Pad on the bottom and right to at least ``size`` (image with 0, mask with the ignore index)."""

    def __init__(self, size: Tuple[int, int], ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size = tuple(size)
        self.fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = F.get_size(_find_mask(flat_inputs))
        return dict(padding=[0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)])

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=self.fill.get(type(inpt), 0))


def _normalize(mean: Sequence[float], std: Sequence[float]) -> List[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                       scale=True),
            v2.Normalize(mean=list(mean), std=list(std))]


def train_transforms(crop_size: Tuple[int, int] = (512, 512), scale: Tuple[int, int] = (2048, 512),
                     ratio_range: Tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75, hflip: float = 0.5,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     photometric: str = "mmseg", antialias: bool = False) -> v2.Compose:
    """The published ADE20K recipe's training pipeline for ``(image, mask)``; ``photometric``: ``mmseg`` (the
    paper's) or ``torchvision``."""
    return v2.Compose([
        RandomRescale(scale, ratio_range, antialias=antialias),
        CatMaxRatioCrop(crop_size, cat_max_ratio),
        v2.RandomHorizontalFlip(hflip),
        build_photometric(photometric),
        *_normalize(mean, std),
        PadTo(crop_size),
    ])


def eval_size(height: int, width: int, short_side: int = 512, max_long_side: int = 2048,
              size_divisor: int = 32) -> Tuple[int, int]:
    """Shorter side ``short_side`` (long side at most ``max_long_side``), ratio kept, rounded to whole pixels
    and then up to multiples of ``size_divisor`` so every FPN level aligns (the configs' ``AlignResize``)."""
    new_h, new_w = keep_ratio_size(height, width, (max_long_side, short_side))
    return tuple(max(size_divisor, math.ceil(side / size_divisor) * size_divisor) for side in (new_h, new_w))


class EvalResize(v2.Transform):
    """The image (only; the mask is scored at full size) to :func:`eval_size` by two bilinear resizes, each
    rounded to uint8, as ``AlignResize`` (``mmcv.imrescale`` to fit, ``mmcv.imresize`` to the multiples)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, short_side: int = 512, max_long_side: int = 2048, size_divisor: int = 32,
                 antialias: bool = False):
        super().__init__()
        self.short_side, self.max_long_side, self.size_divisor = short_side, max_long_side, size_divisor
        self.antialias = antialias

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        height, width = F.get_size(inpt)
        fitted = keep_ratio_size(height, width, (self.max_long_side, self.short_side))
        aligned = eval_size(height, width, self.short_side, self.max_long_side, self.size_divisor)
        return F.resize(F.resize(inpt, list(fitted), antialias=self.antialias), list(aligned), antialias=self.antialias)


def eval_transforms(short_side: int = 512, max_long_side: int = 2048, size_divisor: int = 32,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    antialias: bool = False) -> v2.Compose:
    """Whole-image evaluation: the image resized by :class:`EvalResize` and normalised, the mask untouched."""
    return v2.Compose([EvalResize(short_side, max_long_side, size_divisor, antialias), *_normalize(mean, std)])
