"""Writing files so that a kill at any moment leaves the old complete file or the new one, never half.

Every file fcvit writes goes through :func:`atomic_write`: the content goes to a hidden temporary file
beside the target (``.NAME.XXXXXXXX.tmp``), is flushed to disk, and only then renamed over the target.
The temporaries share one name pattern so that :func:`remove_stale_temporaries` can clear those a
killed process left behind.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from typing import Any, BinaryIO, Callable, Union

from .errors import UserError

__all__ = ["atomic_write", "atomic_save", "atomic_copy", "json_text", "write_json", "remove_stale_temporaries"]

Content = Union[str, bytes, Callable[[BinaryIO], Any]]


def _temporary_beside(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"The folder of '{path}' does not exist: create it or choose another path.")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the user's usual permissions
    return tmp


def atomic_write(path: Union[str, os.PathLike], content: Content) -> None:
    """Write text, bytes, or whatever ``content(file)`` writes to a binary file, atomically to ``path``."""
    path = os.fspath(path)
    tmp = _temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save`` with the all-or-nothing guarantee of :func:`atomic_write`; creates the folder."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> None:
    """Copy a finished file under a new name with the same guarantee."""
    with open(src, "rb") as source:
        atomic_write(dst, lambda f: shutil.copyfileobj(source, f))


def json_text(obj: Any) -> str:
    """Indented JSON in which NaN and infinities (a class never seen, an undefined AP) become null."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), indent=2, allow_nan=False)


def write_json(path: Union[str, os.PathLike], obj: Any) -> None:
    """:func:`json_text` written atomically."""
    atomic_write(path, json_text(obj) + "\n")


def remove_stale_temporaries(folder: Union[str, os.PathLike]) -> int:
    """Delete the temporaries a killed writer left in ``folder``; returns how many."""
    removed = 0
    for tmp in glob.glob(os.path.join(glob.escape(os.fspath(folder)), ".*.tmp")):
        try:
            os.remove(tmp)
            removed += 1
        except OSError:
            pass
    return removed
