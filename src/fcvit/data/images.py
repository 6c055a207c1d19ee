"""Opening image files as correct 8-bit RGB, with errors that name the file and the fix.

:func:`load_image` is the one loader every command uses (training, validation, prediction, analysis,
detection and segmentation data). :class:`ImageReader` decodes a list of images one at a time for the
commands that take many (``predict``, ``analyze``, ``detect predict``, ``segment predict``): a file
that cannot be read is reported in one line and skipped, so that the others still get their result.
"""
from __future__ import annotations

import os
import sys
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "TRANSPARENT_BACKGROUND", "load_image", "to_rgb", "expand_image_paths",
           "ImageReader"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")

# Transparent pixels are shown on white: cut-out objects, logos and icons are drawn to be seen on white
# pages (which is how browsers and viewers show them), and the colour hidden under alpha 0 is arbitrary,
# often black, so simply dropping the alpha channel shows shapes nobody meant to be seen.
TRANSPARENT_BACKGROUND = (255, 255, 255)

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _sixteen_bit_to_8(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 by dividing by 257, so that 8-bit values stored as 16 bits (v * 257) come back exactly."""
    return np.rint(values.astype(np.float64) / 257.0)


def _integer_to_8(values: np.ndarray) -> np.ndarray:
    """Mode ``I`` (32-bit signed): Pillow stores 16-bit samples (PNG, TIFF) this way, so values within
    0..65535 are 16-bit; anything beyond is scaled by the whole range of its type (0..2**31-1 when no
    value is negative, else -2**31..2**31-1)."""
    values = values.astype(np.float64)
    low, high = float(values.min(initial=0)), float(values.max(initial=0))
    if low >= 0 and high <= 65535:
        return _sixteen_bit_to_8(values)
    if low >= 0:
        return values * (255.0 / (2.0 ** 31 - 1))
    return (values + 2.0 ** 31) * (255.0 / (2.0 ** 32 - 1))


def _float_to_8(values: np.ndarray) -> np.ndarray:
    """Mode ``F`` (32-bit float): a maximum of at most 1 means 0..1 intensities (how float images are
    usually written), anything larger means 0..255; NaN becomes 0 and values outside the range are clipped."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    return values * 255.0 if values.size and values.max() <= 1.0 else values


def _deep_gray_to_l(image: Image.Image) -> Image.Image:
    """A 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) grayscale image as 8-bit ``L``.

    Pillow's own ``convert`` clips these to 255 instead of scaling them, which turns a 16-bit photograph
    almost entirely white; here each mode is scaled by its value range as the helpers above say.
    """
    values = np.asarray(image)
    if image.mode == "F":
        scaled = _float_to_8(values)
    elif image.mode == "I":
        scaled = _integer_to_8(values)
    elif values.dtype.kind == "i":  # signed 16-bit: shift to 0..65535 first
        scaled = _sixteen_bit_to_8(values.astype(np.int64) + 32768)
    else:
        scaled = _sixteen_bit_to_8(values)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image Pillow opens as 8-bit RGB.

    - 16-bit, 32-bit integer and float grayscale: scaled by their value range (:func:`_deep_gray_to_l`).
    - Transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, palette or colour-key
      transparency): composited on :data:`TRANSPARENT_BACKGROUND` (white).
    - ``P``, ``1``, ``L``, ``CMYK``, ``YCbCr`` and the rest: Pillow's conversion (CMYK without a colour
      profile is converted with the plain formula, as every viewer without colour management does).
    """
    if image.mode.startswith("I") or image.mode == "F":
        return _deep_gray_to_l(image).convert("RGB")
    if _has_transparency(image):
        if image.mode == "La":  # premultiplied gray: Pillow converts it to RGBA only through LA
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"Image '{path}' does not exist: check the path.")
    if os.path.isdir(path):
        raise UserError(f"'{path}' is a folder, not an image: pass image files.")


def _decode_error(path: str, exc: BaseException) -> UserError:
    return UserError(f"Image '{path}' cannot be decoded ({exc}): it is corrupt, truncated or not an image; "
                     "replace or remove it.")


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Decode an image fully and return it as 8-bit RGB (:func:`to_rgb`), or converted on to ``mode``.

    Decoding happens here, not lazily, so a truncated file fails at this point with its name.
    """
    path = os.fspath(path)
    _check_path(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(img)
            rgb = rgb.copy() if rgb is img else rgb
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, exc) from None
    return rgb if mode == "RGB" else rgb.convert(mode)


def _check_header(path: str) -> None:
    """What can be told without decoding the pixels: the file exists and is an image Pillow knows."""
    _check_path(path)
    try:
        with Image.open(path):
            pass
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, exc) from None


def expand_image_paths(paths: Sequence[str | os.PathLike]) -> List[str]:
    """Files as given; folders replaced by the images directly inside them (by extension), sorted."""
    out: List[str] = []
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not found:
            raise UserError(f"Folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}): pass image files "
                            "or another folder.")
        out.extend(found)
    return out


class ImageReader:
    """Decodes ``paths`` one at a time (so thousands fit in memory), reporting and skipping bad files.

    Missing files and files that are no image are found at construction, by their headers, before any
    slow work; truncated ones when they are decoded. Each is reported on stderr in one line and skipped.
    A single image that cannot be read, or a list of which none can, is an error (``UserError``).
    """

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.skipped: List[Tuple[str, str]] = []  # (path, why)
        self.processed: List[str] = []  # paths decoded and handed out, in order
        self._readable: List[str] = []
        for path in self.paths:
            try:
                _check_header(path)
                self._readable.append(path)
            except UserError as exc:
                self._skip(path, exc)
        if not self._readable:
            self._raise_none_read()

    def _skip(self, path: str, exc: UserError) -> None:
        if len(self.paths) == 1:
            raise exc
        self.skipped.append((path, str(exc)))
        print(f"skipped: {exc}", file=sys.stderr, flush=True)

    def _raise_none_read(self) -> None:
        raise UserError(f"None of the {len(self.paths)} images could be read (each is named above): replace or "
                        "remove them, or pass other images.")

    def __iter__(self) -> Iterator[Tuple[str, Image.Image]]:
        for path in self._readable:
            try:
                image = load_image(path)
            except UserError as exc:
                self._skip(path, exc)
                continue
            self.processed.append(path)
            yield path, image
        if not self.processed:
            self._raise_none_read()

    def exit_status(self) -> int:
        """0 when every image was processed; else 1, after a line saying how many were skipped."""
        if not self.skipped:
            return 0
        print(f"{len(self.skipped)} of {len(self.paths)} images skipped (named above); the other "
              f"{len(self.processed)} were processed.", file=sys.stderr, flush=True)
        return 1
