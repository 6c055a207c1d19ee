"""Writing result files so that an interrupted run never leaves half a file in place of a good one."""
from __future__ import annotations

import os
import tempfile
from typing import Union

from ..errors import UserError

__all__ = ["atomic_write"]


def atomic_write(path: str, data: Union[str, bytes]) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"The folder of '{path}' does not exist: create it or choose another path.")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=".fcvit-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
