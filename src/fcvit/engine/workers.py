"""DataLoader worker behaviour every task needs: workers survive stop signals, and their UserErrors stay
one sentence.

Import from ``fcvit.engine.workers``: ``ignore_stop_signals`` as ``worker_init_fn`` and
``user_errors_from_workers(loader)`` around the iteration.
"""
from __future__ import annotations

import atexit
import signal
import weakref
from typing import Iterable, Iterator, TypeVar

from ..errors import UserError

__all__ = ["ignore_stop_signals", "user_errors_from_workers"]

T = TypeVar("T")

# loader iterators still running; an exception raised by the loop around one keeps it alive in its traceback
_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


def _shut_down_live_workers() -> None:
    """At exit, stop the workers of loaders an exception left running.

    Workers ignore SIGTERM (:func:`ignore_stop_signals`), and multiprocessing's own exit handler stops
    worker processes with SIGTERM and then joins them: without this, an unexpected error inside a loop
    over a loader printed its traceback and then left the process waiting for its workers forever.
    Registered when this module is imported, after torch's multiprocessing, so it runs before that handler.
    """
    for iterator in list(_LIVE_ITERATORS):
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


atexit.register(_shut_down_live_workers)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` leaving SIGTERM/SIGINT to the main process, which finishes the step and saves.

    A scheduler that signals the whole process group (Slurm pre-emption, ``kill -- -PGID``) would
    otherwise kill the workers first and the main process would fail on the lost worker instead of
    stopping cleanly. Workers still exit when the main process does.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def user_errors_from_workers(loader: Iterable[T]) -> Iterator[T]:
    """Iterate ``loader``; a UserError raised in a worker comes back as its original one sentence.

    DataLoader re-raises worker exceptions with the worker's traceback folded into the message; the
    user needs only the last line. When the iteration ends early (an error, or the consumer stops),
    the workers are shut down here, at once: workers that ignore SIGTERM (``ignore_stop_signals``)
    would otherwise outlive an iterator kept alive by the exception's traceback, and the main
    process would wait for them forever at exit.
    """
    iterator = iter(loader)
    try:
        _LIVE_ITERATORS.add(iterator)
    except TypeError:  # an iterator without weak references holds no worker processes
        pass
    marker = "UserError: "
    finished = False
    try:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                finished = True
                return
            except UserError as exc:
                text = str(exc)
                if "Traceback" in text and marker in text:
                    raise UserError(text.rsplit(marker, 1)[1].strip()) from None
                raise
            yield batch
    finally:
        if not finished:
            # torch's own clean shutdown: ask each worker to exit, join, then terminate stragglers
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            if getattr(loader, "_iterator", None) is iterator:  # persistent workers: start afresh next time
                loader._iterator = None  # type: ignore[attr-defined]
