"""DataLoader worker behaviour every task needs: workers survive stop signals, and their UserErrors stay
one sentence.

Import from ``fcvit.engine.workers``: ``ignore_stop_signals`` as ``worker_init_fn`` and
``user_errors_from_workers(loader)`` around the iteration.
"""
from __future__ import annotations

import signal
from typing import Iterable, Iterator, TypeVar

from ..errors import UserError

__all__ = ["ignore_stop_signals", "user_errors_from_workers"]

T = TypeVar("T")


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
