"""MMSegmentation 0.19's photometric distortion (the paper's ADE20K runs), step by step on uint8 tensors, and
torchvision's alternative. Every step stores uint8 (``x * alpha + beta`` clipped and truncated); brightness
adds [-32, 32] (torchvision multiplies); contrast multiplies by [0.5, 1.5] without centring on the mean;
saturation scales S and hue adds [-18, 17] (mod 180) in OpenCV's 8-bit HSV, whose conversions are reproduced
exactly (integer tables to HSV, float32 back). Order: brightness, contrast second or last (even odds),
saturation, hue; each step with probability 0.5.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["PHOTOMETRIC_CHOICES", "PhotometricDistortion", "TorchvisionPhotometricDistortion", "build_photometric",
           "rgb_to_hsv_opencv", "hsv_to_rgb_opencv", "adjust_brightness", "adjust_contrast", "adjust_saturation",
           "adjust_hue", "photometric_distortion"]

PHOTOMETRIC_CHOICES = ("mmseg", "torchvision")

_HSV_SHIFT = 12  # OpenCV's fixed-point precision for the 8-bit RGB->HSV tables
_HUE_RANGE = 180  # OpenCV's 8-bit hue: degrees / 2
_OPENCV_BLOCK = 32  # pixels per iteration of OpenCV's AVX2 HSV->RGB loop
# OpenCV's division tables: S = diff * 255 / V and H = (sector offset) * 30 / diff, both in fixed point
_SATURATION_DIV = torch.tensor([0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)], dtype=torch.int32)
_HUE_DIV = torch.tensor([0] + [round((_HUE_RANGE << _HSV_SHIFT) / (6 * i)) for i in range(1, 256)],
                        dtype=torch.int32)
# which of (v, v(1-s), v(1-s f), v(1-s(1-f))) is red, green and blue (rows) in each 60-degree sector
_SECTORS = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def _check_uint8(image: torch.Tensor) -> None:
    if image.dtype != torch.uint8 or image.ndim < 3 or image.shape[-3] != 3:
        raise TypeError(f"expected a uint8 RGB image (..., 3, H, W), got {image.dtype} {tuple(image.shape)}")


def rgb_to_hsv_opencv(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) to uint8 HSV as ``cv2.cvtColor(COLOR_RGB2HSV)``: H 0..179, S and V 0..255."""
    _check_uint8(image)
    r, g, b = image.to(torch.int32).unbind(-3)
    value = torch.maximum(torch.maximum(r, g), b)
    diff = value - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    saturation = (diff * _SATURATION_DIV[value.long()] + half) >> _HSV_SHIFT
    hue = torch.where(value == r, g - b, torch.where(value == g, b - r + 2 * diff, r - g + 4 * diff))
    hue = (hue * _HUE_DIV[diff.long()] + half) >> _HSV_SHIFT
    hue = torch.where(hue < 0, hue + _HUE_RANGE, hue)
    return torch.stack([hue, saturation, value], dim=-3).to(torch.uint8)


def _one_minus_product(a: torch.Tensor, b: torch.Tensor, fused: bool) -> torch.Tensor:
    """``1 - a * b`` in float32, rounded once when ``fused`` (a fused multiply-add), else twice."""
    if fused:
        return (1 - a.double() * b.double()).float()
    return 1 - a * b


@functools.lru_cache(maxsize=2)
def _hsv_factor_table(fused: bool) -> torch.Tensor:
    """(3, 256 * 256): at ``S * 256 + H``, the factor of V that OpenCV gives R, G and B; every term but V
    depends only on the uint8 S and H, so a pixel costs one look-up and one multiplication per channel."""
    hue = torch.remainder(torch.arange(256, dtype=torch.float32) * (6.0 / _HUE_RANGE), 6.0)
    sector = hue.floor()
    fraction = hue - sector
    saturation = (torch.arange(256, dtype=torch.float32) * (1.0 / 255.0))[:, None]
    factors = torch.stack([torch.ones(256, 256), (1 - saturation).expand(256, 256),
                           _one_minus_product(saturation, fraction[None], fused),
                           _one_minus_product(saturation, (1 - fraction)[None], fused)])  # (4, S, H)
    sector = sector.long().clamp_(0, 5)
    lookups = _SECTORS[:, sector]  # (3, H)
    return factors.gather(0, lookups[:, None, :].expand(3, 256, 256)).reshape(3, -1)


def _hsv_to_unit_rgb(hsv: torch.Tensor, fused: bool) -> torch.Tensor:
    """OpenCV's float32 HSV->RGB of uint8 HSV (H in 2-degree units), giving RGB in 0..1."""
    hue, saturation, value = hsv.unbind(-3)
    factors = _hsv_factor_table(fused).to(hsv.device)[:, saturation.long() * 256 + hue.long()]
    return (factors * (value.to(torch.float32) * (1.0 / 255.0))).movedim(0, -3)


def hsv_to_rgb_opencv(hsv: torch.Tensor) -> torch.Tensor:
    """uint8 HSV (H 0..179) back to uint8 RGB as ``cv2.cvtColor(COLOR_HSV2RGB)`` on AVX2: blocks of 32 pixels
    with fused multiply-adds, ``x * 255`` truncated; the rest of each row unfused and rounded."""
    _check_uint8(hsv)
    body = hsv.shape[-1] - hsv.shape[-1] % _OPENCV_BLOCK
    rgb = torch.empty(hsv.shape, dtype=torch.uint8, device=hsv.device)
    rgb[..., :body] = (_hsv_to_unit_rgb(hsv[..., :body], fused=True) * 255.0).clamp_(0, 255).to(torch.uint8)
    rgb[..., body:] = (_hsv_to_unit_rgb(hsv[..., body:], fused=False) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return rgb


def _affine_uint8(image: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """``x * alpha + beta`` in float32, clipped to 0..255 and truncated to uint8 (MMSegmentation's ``convert``)."""
    return (image.to(torch.float32) * alpha + beta).clamp_(0, 255).to(torch.uint8)


def adjust_brightness(image: torch.Tensor, delta: float) -> torch.Tensor:
    _check_uint8(image)
    return _affine_uint8(image, beta=delta)


def adjust_contrast(image: torch.Tensor, alpha: float) -> torch.Tensor:
    _check_uint8(image)
    return _affine_uint8(image, alpha=alpha)


def adjust_saturation(image: torch.Tensor, alpha: float) -> torch.Tensor:
    """Scale OpenCV's 8-bit S channel by ``alpha`` (truncated), through HSV and back."""
    hsv = rgb_to_hsv_opencv(image)
    hsv[..., 1, :, :] = _affine_uint8(hsv[..., 1, :, :], alpha=alpha)
    return hsv_to_rgb_opencv(hsv)


def adjust_hue(image: torch.Tensor, delta: int) -> torch.Tensor:
    """Add ``delta`` to OpenCV's 8-bit hue (0..179, 2-degree units), wrapping modulo 180, through HSV and back."""
    hsv = rgb_to_hsv_opencv(image)
    hsv[..., 0, :, :] = torch.remainder(hsv[..., 0, :, :].to(torch.int32) + int(delta), _HUE_RANGE).to(torch.uint8)
    return hsv_to_rgb_opencv(hsv)


def photometric_distortion(image: torch.Tensor, brightness: Optional[float] = None,
                           contrast: Optional[float] = None, contrast_first: bool = True,
                           saturation: Optional[float] = None, hue: Optional[int] = None) -> torch.Tensor:
    """Apply the drawn steps (None = skipped) in MMSegmentation's order: brightness, contrast if
    ``contrast_first``, saturation, hue, contrast otherwise."""
    _check_uint8(image)
    first, last = (contrast, None) if contrast_first else (None, contrast)
    steps = ((adjust_brightness, brightness), (adjust_contrast, first), (adjust_saturation, saturation),
             (adjust_hue, hue), (adjust_contrast, last))
    for adjust, value in steps:
        if value is not None:
            image = adjust(image, value)
    return image


class PhotometricDistortion(v2.Transform):
    """MMSegmentation 0.19's ``PhotoMetricDistortion`` on uint8 ``tv_tensors.Image`` (masks pass through);
    ``p`` is each step's probability."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness_delta: float = 32, contrast_range: Tuple[float, float] = (0.5, 1.5),
                 saturation_range: Tuple[float, float] = (0.5, 1.5), hue_delta: int = 18, p: float = 0.5):
        super().__init__()
        self.brightness_delta, self.hue_delta, self.p = float(brightness_delta), int(hue_delta), p
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)

    def _applies(self) -> bool:
        return bool(torch.rand(()) < self.p)

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return float(torch.empty(()).uniform_(low, high))

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        brightness = self._uniform(-self.brightness_delta, self.brightness_delta) if self._applies() else None
        contrast_first = bool(torch.rand(()) < 0.5)
        contrast = self._uniform(*self.contrast_range) if self._applies() else None
        saturation = self._uniform(*self.saturation_range) if self._applies() else None
        hue = int(torch.randint(-self.hue_delta, self.hue_delta, ())) if self._applies() else None
        return dict(brightness=brightness, contrast=contrast, contrast_first=contrast_first,
                    saturation=saturation, hue=hue)

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return tv_tensors.wrap(photometric_distortion(inpt.as_subclass(torch.Tensor), **params), like=inpt)


class TorchvisionPhotometricDistortion(v2.Compose):
    """``--photometric torchvision``: ``ColorJitter``'s brightness, contrast, saturation and hue steps of the
    same ranges, each with probability ``p``, in this fixed order."""

    def __init__(self, brightness: float = 32 / 255, contrast: float = 0.5, saturation: float = 0.5,
                 hue: float = 18 / 180, p: float = 0.5):
        steps = dict(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        super().__init__([v2.RandomApply([v2.ColorJitter(**{name: value})], p=p) for name, value in steps.items()])


def build_photometric(kind: str = "mmseg") -> v2.Transform:
    if kind not in PHOTOMETRIC_CHOICES:
        raise ValueError(f"unknown photometric distortion '{kind}', expected one of {PHOTOMETRIC_CHOICES}")
    return PhotometricDistortion() if kind == "mmseg" else TorchvisionPhotometricDistortion()
