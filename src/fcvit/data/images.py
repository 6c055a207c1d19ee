"""Opening image files as upright 8-bit RGB, with errors that name the file and the fix: :func:`load_image` is
every command's loader; :class:`ImageReader` decodes many, reporting and skipping the unreadable ones."""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "TRANSPARENT_BACKGROUND", "load_image", "to_rgb", "expand_image_paths",
           "ImageReader", "list_images", "header_size", "is_regular_file", "check_image"]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")

# Transparent pixels are shown on white, as browsers and viewers do: the colour under alpha 0 is arbitrary
TRANSPARENT_BACKGROUND = (255, 255, 255)

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _deep_gray_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grayscale as 8-bit ``L``, scaled (Pillow's convert clips them to 255).

    Floats up to 1 are 0..1 intensities, else 0..255 (NaN is 0). Integers in 0..65535 (Pillow's 16-bit samples,
    signed ones shifted there) are divided by 257, so that 8-bit values stored as v * 257 come back exactly;
    beyond, they span the 32-bit range."""
    raw = np.asarray(image)
    values = raw.astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        scaled = values * 255.0 if values.size and values.max() <= 1.0 else values
    else:
        if image.mode != "I" and raw.dtype.kind == "i":  # signed 16-bit
            values += 32768
        low, high = float(values.min(initial=0)), float(values.max(initial=0))
        if low >= 0 and high <= 65535:
            scaled = np.rint(values / 257.0)
        elif low >= 0:
            scaled = values * (255.0 / (2.0 ** 31 - 1))
        else:
            scaled = (values + 2.0 ** 31) * (255.0 / (2.0 ** 32 - 1))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image Pillow opens as 8-bit RGB: deep grayscale scaled by its range, any transparency composited
    on :data:`TRANSPARENT_BACKGROUND`, the rest (P, 1, L, CMYK, YCbCr) by Pillow's conversion."""
    if image.mode.startswith("I") or image.mode == "F":
        return _deep_gray_to_l(image).convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        if image.mode == "La":  # premultiplied gray: Pillow converts it to RGBA only through LA
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def is_regular_file(path: str) -> bool:
    """False for FIFOs, sockets and devices (opening one can block forever) and for what does not exist."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[Image.Image]:
    """The image file opened; what is not one, or fails to decode in the block, is a sentence naming it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"Image '{path}' does not exist: check the path.")
    if os.path.isdir(path):
        raise UserError(f"'{path}' is a folder, not an image: pass image files.")
    if not is_regular_file(path):
        raise UserError(f"'{path}' is not a regular file (a FIFO, socket or device): pass image files.")
    try:
        with Image.open(path) as img:
            yield img
    except _DECODE_ERRORS as exc:
        raise UserError(f"Image '{path}' cannot be decoded ({exc}): it is corrupt, truncated or not an image; "
                        "replace or remove it.") from None


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Decode an image fully (a truncated file fails here, with its name), upright as its EXIF orientation
    says (as viewers show it), as 8-bit RGB (:func:`to_rgb`) or converted on to ``mode``."""
    with _open(path) as img:
        img.load()
        rgb = to_rgb(ImageOps.exif_transpose(img))  # a copy, so it outlives the file
    return rgb if mode == "RGB" else rgb.convert(mode)


def header_size(path: str | os.PathLike) -> Tuple[int, int]:
    """(width, height) of :func:`load_image`'s result (EXIF orientation applied), from the header only."""
    with _open(path) as img:
        width, height = img.size
        if img.format == "PNG" and "exif" not in img.info:  # PNG's getexif() would decode the pixels
            return width, height
        return (height, width) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (width, height)


def check_image(path: str) -> Optional[str]:
    """Why :func:`load_image` would refuse ``path``, or None; JPEGs decode at 1/8 scale (Pillow's draft)."""
    try:
        with _open(path) as img:
            img.draft(None, (1, 1))
            img.load()
    except UserError as exc:
        return str(exc)
    return None


def list_images(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Files below ``folder`` with one of ``extensions``, each folder walked once however many symlinks
    reach it (a loop is not followed again); what is not a regular file is skipped with a log line."""
    found, seen, pending = [], set(), [folder]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir():
                    pending.append(entry.path)
                elif not entry.name.lower().endswith(tuple(extensions)):
                    continue
                elif entry.is_file():
                    found.append(entry.path)
                else:
                    _logger.warning("Skipping '%s': not a regular file (a FIFO, socket, device or broken link).",
                                    entry.path)
    return found


def expand_image_paths(paths: Sequence[str | os.PathLike]) -> List[str]:
    """Files as given; folders replaced by the images directly inside them (by extension), sorted."""
    out: List[str] = []
    for path in map(os.fspath, paths):
        found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)
                       and not f.startswith(".")) if os.path.isdir(path) else [path]
        if not found:
            raise UserError(f"Folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}): pass image files "
                            "or another folder.")
        out.extend(found)
    return out


class ImageReader:
    """Decodes ``paths`` one at a time, reporting each unreadable file on stderr in one line and skipping it (missing
    and non-image ones already at construction); one unreadable image, or none readable of many, is a UserError."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [os.fspath(p) for p in paths]  # a path given twice is read twice (unique_stems names its outputs)
        self.skipped: List[Tuple[str, str]] = []  # (path, why)
        self.processed: List[str] = []  # paths decoded and handed out, in order
        self._readable = [path for path in self.paths if self._check(path, header_size)]
        if not self._readable:
            self._raise_none_read()

    def _check(self, path: str, read: Callable[[str], Any]) -> Any:
        """``read(path)``, or None after skipping the path."""
        try:
            return read(path)
        except UserError as exc:
            if len(self.paths) == 1:
                raise
            self.skipped.append((path, str(exc)))
            print(f"skipped: {exc}", file=sys.stderr, flush=True)
            return None

    def _raise_none_read(self) -> None:
        raise UserError(f"None of the {len(self.paths)} images could be read (each is named above): replace or "
                        "remove them, or pass other images.")

    def __iter__(self) -> Iterator[Tuple[str, Image.Image]]:
        for path in self._readable:
            image = self._check(path, load_image)
            if image is not None:
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
