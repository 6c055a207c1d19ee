"""What a run reports: console logging on the main rank, ``summary.csv``, TensorBoard and a progress bar."""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import sys
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional

from ..errors import UserError
from ..files import RunLock, atomic_write
from .distributed import DistContext, broadcast_object

__all__ = ["setup_logging", "run_folder", "SummaryLog", "ProgressBar", "rate"]

_logger = logging.getLogger(__name__)


def setup_logging(ctx: DistContext, output_dir: Optional[str] = None) -> None:
    """INFO on the main rank (console, and ``output_dir/log.txt`` if given); other ranks only warn."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if ctx.is_main else logging.WARNING)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    for old in [h for h in root.handlers if getattr(h, "_fcvit_run_log", False)]:
        root.removeHandler(old)  # a second run in the same process logs to its own folder only
        old.close()
    if ctx.is_main and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler._fcvit_run_log = True
        root.addHandler(handler)


@contextlib.contextmanager
def run_folder(ctx: DistContext, output_dir: str) -> Iterator[None]:
    """``output_dir`` while a training run writes it: its lock (one run per folder: a second one is refused before
    it writes anything) and its ``log.txt``. A refusal (a UserError) removes the folders made here again if they
    hold nothing but that log: a refused command leaves no trace (a new, empty class folder under DATA/train,
    say), and nothing written by another run is touched."""
    made, folder = [], os.path.abspath(output_dir)
    while ctx.is_main and not os.path.lexists(folder):
        made, folder = made + [folder], os.path.dirname(folder)
    lock, refusal = RunLock(output_dir), None
    if ctx.is_main:
        try:
            lock.acquire()
        except UserError as exc:
            refusal = str(exc)
    refusal = broadcast_object(refusal, ctx)  # every rank stops, not only the one that holds the folder
    if refusal:
        raise UserError(refusal)
    try:
        setup_logging(ctx, output_dir)
        yield
    except UserError:
        setup_logging(ctx)  # closes log.txt
        lock.release()
        for folder in made:  # the deepest first
            with contextlib.suppress(OSError):
                if set(os.listdir(folder)) <= {"log.txt", RunLock.NAME}:
                    shutil.rmtree(folder)
        raise
    finally:
        lock.release()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def rate(value: float) -> str:
    """A throughput for logs: whole numbers from 100 img/s, 3 significant digits below (0.0123, 4.56)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


class SummaryLog:
    """``summary.csv``, one row per epoch or evaluation, flushed as written (main rank only); a row with new
    columns rewrites the file atomically with the wider header. ``tensorboard_dir`` mirrors every number."""

    def __init__(self, path: str, ctx: Optional[DistContext] = None, tensorboard_dir: Optional[str] = None,
                 step_key: str = "epoch") -> None:
        self.path, self.ctx, self.step_key = path, ctx or DistContext(), step_key
        self._tb = None
        if tensorboard_dir and self.ctx.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("TensorBoard logging needs the tensorboard package: pip install tensorboard, "
                                "or leave out --tensorboard.") from None

            self._tb = SummaryWriter(tensorboard_dir)

    def read(self) -> List[Dict[str, str]]:
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _fields(self) -> List[str]:
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline="") as f:
            return next(csv.reader(f), [])

    def _rewrite(self, rows: List[Mapping[str, Any]], fields: List[str]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, text.getvalue())

    def append(self, row: Mapping[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        row = {k: _fmt(v) for k, v in row.items()}
        fields = self._fields()
        if not fields:
            self._rewrite([row], list(row))
        elif set(row) - set(fields):  # the wider header
            self._rewrite(self.read() + [row], fields + [k for k in row if k not in fields])
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writerow(row)
        if self._tb is not None and self.step_key in row:
            step = int(float(row[self.step_key]))
            for key, value in row.items():
                if key != self.step_key:
                    try:
                        self._tb.add_scalar(key, float(value), step)
                    except (TypeError, ValueError):
                        pass
            self._tb.flush()

    def truncate(self, keep_below: float) -> None:
        """Keep only the rows whose ``step_key`` is below ``keep_below``: a resumed run writes the others again."""
        if not self.ctx.is_main or not os.path.isfile(self.path):
            return
        key, rows = self.step_key, self.read()
        kept = [r for r in rows if key not in r or not r[key] or float(r[key]) < keep_below]
        if len(kept) != len(rows):
            self._rewrite(kept, self._fields())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressBar:
    """A tqdm bar counted in images (so its rate reads img/s, with an ETA), shown on the main rank only and only
    on a terminal; elsewhere (a redirected log) a line per tenth of ``total_images`` (per ``every`` steps without
    a total) instead of the bar's carriage returns, once it has run ``quiet_seconds`` (short ones print nothing)."""

    quiet_seconds, every = 5.0, 50

    def __init__(self, total_images: int, desc: str, ctx: Optional[DistContext] = None, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        shown, tty = enabled and (ctx or DistContext()).is_main, sys.stderr.isatty()
        self._bar = tqdm(total=total_images, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True,
                         leave=False, disable=not (shown and tty), file=sys.stderr)
        self._lines, self._desc, self._total = shown and not tty, desc, total_images
        self._steps = self._images = 0
        self._start, self.closed = time.perf_counter(), False

    def update(self, images: int, **postfix: Any) -> None:
        if postfix:
            self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(images)
        self._steps, self._images = self._steps + 1, self._images + images
        tenth, seconds = max(self._total // 10, 1), time.perf_counter() - self._start
        due = self._images // tenth > (self._images - images) // tenth if self._total else self._steps % self.every == 0
        if self._lines and due and seconds >= self.quiet_seconds:
            _logger.info("%s: %d%s images, %s img/s", self._desc, self._images,
                         f"/{self._total}" if self._total else "", rate(self._images / max(seconds, 1e-9)))

    def close(self) -> None:
        self._bar.close()
        self.closed = True

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
