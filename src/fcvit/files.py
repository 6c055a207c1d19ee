"""Writing files so that a kill at any moment leaves the old complete file or the new one, never half.

Every file fcvit writes goes through :func:`atomic_write`: the content goes to a hidden temporary file
beside the target (``.NAME.<random>.tmp``), is flushed to disk, and only then renamed over the target.
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
from typing import Any, BinaryIO, Callable, Iterable, List, Optional, Union

from .errors import UserError

__all__ = ["atomic_write", "atomic_save", "atomic_copy", "json_text", "write_json", "remove_stale_temporaries",
           "check_outputs", "replaced_note"]

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


PathLike = Union[str, os.PathLike]


def _same_file(a: str, b: str) -> bool:
    """Same real path (symlinks resolved) or the same file on disk (hard links, case-insensitive disks)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_outputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike], overwrite: bool,
                  choose: str = "choose another --output", input_name: str = "input") -> List[str]:
    """The one rule for every file a command writes: never an input, and an existing file only with --overwrite.

    Call it with every planned output before writing anything. Raises one ``UserError`` sentence naming the
    first conflict and the fix (``choose`` says how to pick another output, ``input_name`` what the inputs
    are); returns the outputs that exist and will be replaced (only with ``overwrite``), for
    :func:`replaced_note`.
    """
    outputs = [os.fspath(p) for p in outputs]
    inputs = [os.fspath(p) for p in inputs]
    for output in outputs:
        for source in inputs:
            if _same_file(output, source):
                raise UserError(f"Writing '{output}' would write over the {input_name} '{source}' itself, which no "
                                f"option allows: {choose}.")
        if os.path.isdir(output):
            raise UserError(f"The output '{output}' is a folder: move it away or {choose}.")
    existing = [p for p in outputs if os.path.lexists(p)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more planned outputs)" if len(existing) > 1 else ""
        raise UserError(f"The output '{existing[0]}' already exists{more}: pass --overwrite to replace it, "
                        f"or {choose}.")
    return existing


def replaced_note(replaced: Iterable[PathLike]) -> Optional[str]:
    """The line a command prints after --overwrite replaced files, naming them; None when it replaced none."""
    names = [os.fspath(p) for p in replaced]
    if not names:
        return None
    return f"replaced {len(names)} existing file(s) (--overwrite): {', '.join(names)}"
