"""Joint image/mask transforms for semantic segmentation, as torchvision transforms v2.

The image is a ``tv_tensors.Image`` (uint8 until normalised) and the mask a ``tv_tensors.Mask`` of class
indices with 255 for ignored pixels; v2 resizes masks with nearest interpolation (the same
``floor(x * scale)`` source pixel as OpenCV's ``INTER_NEAREST``) and leaves them out of the colour
transforms. Steps of MMSegmentation 0.19's ADE20K recipe without a torchvision equivalent are written
here: the keep-ratio rescale with a random ratio, the crop that avoids crops dominated by one class, the
bottom/right padding to the crop size and the two-step evaluation resize; the photometric distortion is
in :mod:`.photometric`. Images are resized bilinearly WITHOUT anti-aliasing by default, as the original's
``cv2.resize``; ``antialias=True`` is torchvision's default instead.
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

__all__ = [
    "IGNORE_INDEX", "RandomRescale", "CatMaxRatioCrop", "PadTo", "PhotometricDistortion",
    "keep_ratio_scale", "keep_ratio_size", "train_transforms", "eval_size", "eval_transforms", "EvalResize",
]


def _find_mask(flat_inputs: List[Any]) -> tv_tensors.Mask:
    masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
    if len(masks) != 1:
        raise TypeError(f"expected one tv_tensors.Mask among the inputs, found {len(masks)}")
    return masks[0]


def keep_ratio_scale(height: int, width: int, scale: Tuple[int, int]) -> float:
    """The factor that fits (height, width) into ``scale`` = (long edge, short edge) keeping the ratio.

    This is MMSegmentation's ``Resize(keep_ratio=True)``: the long side is at most ``max(scale)`` and
    the short side at most ``min(scale)``, whatever the image's orientation.
    """
    return min(max(scale) / max(height, width), min(scale) / min(height, width))


def keep_ratio_size(height: int, width: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) fitted into ``scale`` keeping the ratio, rounded half up as ``mmcv.imrescale``."""
    factor = keep_ratio_scale(height, width, scale)
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class RandomRescale(v2.Transform):
    """Rescale keeping the aspect ratio to ``scale`` times a ratio drawn uniformly from ``ratio_range``.

    As MMSegmentation's ``Resize(ratio_range=...)``: the scaled target box is truncated to whole
    pixels before the image is fitted into it. The image is resized bilinearly, with anti-aliasing
    only if ``antialias``; the mask with nearest neighbours.
    """

    def __init__(self, scale: Tuple[int, int] = (2048, 512), ratio_range: Tuple[float, float] = (0.5, 2.0),
                 antialias: bool = False):
        super().__init__()
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)
        self.antialias = antialias

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = F.get_size(_find_mask(flat_inputs))
        ratio = random.uniform(*self.ratio_range)
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return dict(size=list(keep_ratio_size(height, width, target)))

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=self.antialias)


class CatMaxRatioCrop(v2.Transform):
    """Random crop of at most ``size`` where no single class covers more than ``cat_max_ratio``.

    Up to ``max_tries`` crops are drawn; the first with at least two labelled classes and no class
    above the ratio is taken, otherwise the last one drawn (MMSegmentation's ``RandomCrop``).
    Ignored pixels do not count. Images smaller than ``size`` keep their size (``PadTo`` follows).
    """

    def __init__(self, size: Tuple[int, int], cat_max_ratio: float = 0.75, max_tries: int = 10,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size = tuple(size)
        self.cat_max_ratio = cat_max_ratio
        self.max_tries = max_tries
        self.ignore_index = ignore_index

    def _draw(self, height: int, width: int) -> Tuple[int, int, int, int]:
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        top = random.randint(0, height - crop_h)
        left = random.randint(0, width - crop_w)
        return top, left, crop_h, crop_w

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        mask = _find_mask(flat_inputs)
        height, width = F.get_size(mask)
        box = self._draw(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                top, left, crop_h, crop_w = box
                labels = mask[..., top:top + crop_h, left:left + crop_w]
                labels = labels[labels != self.ignore_index]
                counts = torch.bincount(labels.flatten().long()) if labels.numel() else labels.new_zeros(0)
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                box = self._draw(height, width)
        top, left, crop_h, crop_w = box
        return dict(top=top, left=left, height=crop_h, width=crop_w)

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
        fill = self.fill.get(type(inpt), 0)
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> List[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                       scale=True),
            v2.Normalize(mean=list(mean), std=list(std))]


def train_transforms(
        crop_size: Tuple[int, int] = (512, 512),
        scale: Tuple[int, int] = (2048, 512),
        ratio_range: Tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        photometric: str = "mmseg",
        antialias: bool = False,
) -> v2.Compose:
    """The training pipeline of the published ADE20K recipe, applied to ``(image, mask)``.

    ``photometric`` is ``mmseg`` (the paper's) or ``torchvision``; ``antialias`` switches the
    rescale to torchvision's anti-aliased resize (the paper's is plain bilinear).
    """
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
    """Evaluation input size: shorter side ``short_side`` (long side at most ``max_long_side``), ratio kept,
    then both sides rounded up to multiples of ``size_divisor`` so every FPN level aligns.

    The same two roundings as the published configs' ``AlignResize``: to whole pixels first, then up.
    """
    new_h, new_w = keep_ratio_size(height, width, (max_long_side, short_side))
    return _aligned(new_h, size_divisor), _aligned(new_w, size_divisor)


def _aligned(side: int, size_divisor: int) -> int:
    return max(size_divisor, math.ceil(side / size_divisor) * size_divisor)


class EvalResize(v2.Transform):
    """Resize the image (only) to :func:`eval_size`; the mask stays at full resolution for scoring.

    Two bilinear resizes as the published configs' ``AlignResize`` (``mmcv.imrescale`` to fit, then
    ``mmcv.imresize`` to multiples of ``size_divisor``), each rounded back to uint8; anti-aliased
    only if ``antialias``.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, short_side: int = 512, max_long_side: int = 2048, size_divisor: int = 32,
                 antialias: bool = False):
        super().__init__()
        self.short_side, self.max_long_side, self.size_divisor = short_side, max_long_side, size_divisor
        self.antialias = antialias

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        height, width = F.get_size(inpt)
        fitted = keep_ratio_size(height, width, (self.max_long_side, self.short_side))
        image = F.resize(inpt, list(fitted), antialias=self.antialias)
        aligned = [_aligned(side, self.size_divisor) for side in fitted]
        return F.resize(image, aligned, antialias=self.antialias)


def eval_transforms(short_side: int = 512, max_long_side: int = 2048, size_divisor: int = 32,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    antialias: bool = False) -> v2.Compose:
    """Whole-image evaluation: the image resized by :class:`EvalResize` and normalised, the mask untouched."""
    return v2.Compose([EvalResize(short_side, max_long_side, size_divisor, antialias), *_normalize(mean, std)])
