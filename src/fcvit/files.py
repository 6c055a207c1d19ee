"""Writing files so that a kill at any moment leaves the old complete file or the new one, never half: every file
fcvit writes is a hidden temporary beside the target (``.NAME.<random>.tmp``), flushed, then renamed over it. A write
the system refuses (disk full, read-only, permissions) is one ``UserError`` sentence."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import logging
import math
import os
import shutil
import socket
import tempfile
from typing import AbstractSet, Any, BinaryIO, Callable, Iterable, List, Optional, Sequence, Union

from .errors import UserError

__all__ = ["atomic_write", "atomic_save", "atomic_copy", "json_text", "write_json", "remove_stale_temporaries",
           "check_outputs", "check_image_outputs", "replaced_note", "warn_replaced", "make_folder",
           "check_output_folder", "unique_stems", "RunLock", "write_error"]

_logger = logging.getLogger(__name__)
Content = Union[str, bytes, Callable[[BinaryIO], Any]]
PathLike = Union[str, os.PathLike]

_OTHER_PATH = "choose another output path"
_CAUSES = {errno.ENOSPC: f"the disk is full: free space or {_OTHER_PATH}",
           errno.EDQUOT: f"the disk quota is used up: free space or {_OTHER_PATH}",
           errno.EROFS: "the file system is read-only: choose an output path on a writable disk",
           errno.EACCES: f"permission is denied: fix the folder's permissions or {_OTHER_PATH}",
           errno.ENOTDIR: f"a part of the path is a file, not a folder: {_OTHER_PATH}",
           errno.EEXIST: f"a file stands where a folder must be: move it away or {_OTHER_PATH}",
           errno.ENOENT: "its folder does not exist: create it or choose another path"}
_CAUSES[errno.EPERM] = _CAUSES[errno.EACCES]


def _os_error(exc: Optional[BaseException]) -> Optional[OSError]:
    """The OSError behind ``exc``: torch.save, for one, turns a failed write into a RuntimeError."""
    while exc is not None and not isinstance(exc, (OSError, UserError)):
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return exc if isinstance(exc, OSError) else None


def write_error(path: PathLike, exc: OSError) -> UserError:
    """One sentence naming the path, why the system refused it and the fix."""
    cause = _CAUSES.get(exc.errno, f"{exc.strerror or exc}: {_OTHER_PATH}")
    return UserError(f"Cannot write '{os.fspath(path)}' ({exc.strerror or exc}), {cause}.")


def make_folder(path: PathLike) -> None:
    """``os.makedirs(path, exist_ok=True)`` with the refusals as one sentence."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None


def atomic_write(path: PathLike, content: Content) -> None:
    """Write text, bytes, or whatever ``content(file)`` writes to a binary file, atomically to ``path``."""
    path = os.fspath(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=os.path.dirname(os.path.abspath(path)))
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes owner-only files; give the user's usual permissions
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        cause = _os_error(exc)
        if cause is None:
            raise
        raise write_error(path, cause) from None
    finally:
        if tmp is not None:  # gone when replaced
            with contextlib.suppress(OSError):
                os.remove(tmp)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` with the all-or-nothing guarantee of :func:`atomic_write`; creates the folder."""
    import torch

    make_folder(os.path.dirname(os.path.abspath(os.fspath(path))))
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: PathLike, dst: PathLike) -> None:
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
        return [clean(v) for v in value] if isinstance(value, (list, tuple)) else value

    return json.dumps(clean(obj), indent=2, allow_nan=False)


def write_json(path: PathLike, obj: Any) -> None:
    atomic_write(path, json_text(obj) + "\n")


def remove_stale_temporaries(folder: PathLike) -> int:
    """Delete the temporaries a killed writer left in ``folder``; returns how many."""
    removed = 0
    for tmp in glob.glob(os.path.join(glob.escape(os.fspath(folder)), ".*.tmp")):
        with contextlib.suppress(OSError):
            os.remove(tmp)
            removed += 1
    return removed


def check_output_folder(path: PathLike, option: str = "--output") -> None:
    """Refuse, before any work, an output folder that is a file, lies below a file or cannot be written."""
    path = existing = os.path.abspath(os.fspath(path))
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == path else f"lies below the file '{existing}'"
        raise UserError(f"The output folder '{path}' {where}: choose another {option}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"The output folder '{path}' cannot be written ('{existing}' is read-only or not yours): "
                        f"fix the permissions or choose another {option}.")


def _same_file(a: str, b: str) -> bool:
    """Same real path (symlinks resolved) or the same file on disk (hard links, case-insensitive disks)."""
    with contextlib.suppress(OSError):  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b) or os.path.samefile(a, b)
    return False


def check_outputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike], overwrite: bool,
                  choose: str = "choose another --output", input_name: str = "input") -> List[str]:
    """The one rule for every file a command writes, checked before any: never an input, and an existing file
    only with --overwrite; returns those that will be replaced, for :func:`replaced_note`."""
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
    """The line a command prints after --overwrite replaced files; None when it replaced none."""
    names = [os.fspath(p) for p in replaced]
    return f"replaced {len(names)} existing file(s) (--overwrite): {', '.join(names)}" if names else None


def check_image_outputs(outputs: Iterable[PathLike], images: Iterable[PathLike], overwrite: bool) -> List[str]:
    """:func:`check_outputs` for the files a predict command draws from its input images into --output."""
    return check_outputs(outputs, images, overwrite, "choose another --output folder", "input image")


def warn_replaced(logger: logging.Logger, replaced: Iterable[str], written: AbstractSet[str]) -> None:
    """Log :func:`replaced_note` for the replaced files written again (a skipped image's old ones stay)."""
    note = replaced_note([p for p in replaced if p in written])
    if note:
        logger.warning(note)


def unique_stems(paths: Sequence[PathLike]) -> List[str]:
    """One output stem per input: a repeated stem (also in another case) suffixed ``_2``, ``_3``... until it is free,
    so ``a/x``, ``b/x``, ``c/x_2`` give ``x``, ``x_2``, ``x_2_2``."""
    taken, stems = set(), []
    for path in paths:
        stem = candidate = os.path.splitext(os.path.basename(os.fspath(path)))[0]
        number = 2
        while candidate.casefold() in taken:
            candidate, number = f"{stem}_{number}", number + 1
        taken.add(candidate.casefold())
        stems.append(candidate)
    return stems


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``FOLDER/.fcvit.lock``, naming its holder. The kernel
    drops a dead process's lock (taken over then); keep the object while the run lasts, collecting it drops the lock."""

    NAME = ".fcvit.lock"

    def __init__(self, folder: PathLike) -> None:
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, self.NAME)
        self._file: Optional[BinaryIO] = None

    @staticmethod
    def _holder(f: BinaryIO) -> List[str]:
        f.seek(0)
        return f.read().decode("utf-8", "replace").split()

    def acquire(self) -> "RunLock":
        check_output_folder(self.folder)
        make_folder(self.folder)
        while True:  # until the file locked is still the lock file (its holder may have removed it meanwhile)
            try:
                f = open(self.path, "a+b")
            except OSError as exc:
                raise write_error(self.path, exc) from None
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = (self._holder(f) + ["?", "?"])[:2]
                f.close()
                raise UserError(f"'{self.folder}' is in use by another run (process {holder[0]} on host {holder[1]}): "
                                "wait for it to end, stop it, or choose another --output.") from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                    break
            f.close()
        previous = self._holder(f)
        if previous:
            _logger.warning("Taking over the lock of '%s' left by process %s on host %s, which no longer runs.",
                            self.folder, previous[0], previous[-1])
        f.truncate(0)
        f.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            self._file.close()  # which drops the flock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
