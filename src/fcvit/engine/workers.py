"""DataLoader workers every task needs: they survive stop signals, and their UserErrors stay one sentence."""
from __future__ import annotations

import atexit
import contextlib
import signal
import weakref
from typing import Iterable, Iterator, TypeVar

from ..errors import UserError

__all__ = ["ignore_stop_signals", "user_errors_from_workers"]

T = TypeVar("T")

# loader iterators still running; an exception raised by the loop around one keeps it alive in its traceback
_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


def _shut_down(iterator: object) -> None:
    """torch's own clean shutdown: ask each worker to exit, join, then terminate stragglers."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _shut_down_live_workers() -> None:
    """At exit, stop the workers of loaders an exception left running: they ignore SIGTERM, which
    multiprocessing's own exit handler (registered earlier, so run later) relies on before joining them."""
    for iterator in list(_LIVE_ITERATORS):
        _shut_down(iterator)


atexit.register(_shut_down_live_workers)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` leaving SIGTERM/SIGINT to the main process, which finishes the step and saves (a
    signal to the process group, as Slurm's, would otherwise kill the workers first)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def user_errors_from_workers(loader: Iterable[T]) -> Iterator[T]:
    """Iterate ``loader``; a worker's UserError comes back as its one sentence (without the worker's folded
    traceback). An iteration ended early shuts its workers down at once, as they ignore SIGTERM."""
    iterator = iter(loader)
    with contextlib.suppress(TypeError):  # an iterator without weak references holds no worker processes
        _LIVE_ITERATORS.add(iterator)
    marker, finished = "UserError: ", False
    try:
        for batch in iterator:
            yield batch
        finished = True
    except UserError as exc:
        text = str(exc)
        if "Traceback" in text and marker in text:
            raise UserError(text.rsplit(marker, 1)[1].strip()) from None
        raise
    finally:
        if not finished:
            _shut_down(iterator)
            if getattr(loader, "_iterator", None) is iterator:  # persistent workers: start afresh next time
                loader._iterator = None  # type: ignore[attr-defined]
