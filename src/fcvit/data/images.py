"""Opening image files with errors that name the file and the fix."""
from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from ..errors import UserError

__all__ = ["load_image"]


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Decode an image fully and convert it to ``mode`` (grayscale and RGBA become RGB by default).

    Decoding happens here, not lazily, so a truncated file fails at this point with its name.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"Image '{path}' does not exist: check the path.")
    if os.path.isdir(path):
        raise UserError(f"'{path}' is a folder, not an image: pass image files.")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode) if img.mode != mode else img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"Image '{path}' cannot be decoded ({exc}): it is corrupt, truncated or not an "
                        "image; replace or remove it.") from None
