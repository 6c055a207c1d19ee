"""Stopping a run cleanly: on a signal (pre-emption, Ctrl-C) or on a loss that stopped being finite."""
from __future__ import annotations

import logging
import math
import signal
import threading
from types import FrameType
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from ..errors import UserError
from .distributed import DistContext, all_reduce

__all__ = ["GracefulStop", "NonFiniteLossError", "check_finite", "check_step"]

_logger = logging.getLogger(__name__)
_Handler = Union[Callable[[int, Optional[FrameType]], object], int, None]


class GracefulStop:
    """A flag SIGTERM/SIGINT set instead of killing the process, so the loop can finish the step and save;
    a second SIGINT is a KeyboardInterrupt. ``should_stop(ctx)`` agrees over ranks (the loop: :func:`check_step`)."""

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals, self.requested = tuple(signals), False
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, _Handler] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        _logger.warning("%s received: finishing the current step, saving a checkpoint and stopping "
                        "(resume with --resume auto).", self.signal_name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in self.signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def should_stop(self, ctx: Optional[DistContext] = None) -> bool:
        """True once any rank got a signal (one small all-reduce per call when distributed)."""
        if ctx is None or not ctx.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=ctx.device)
        return bool(all_reduce(flag, ctx, "max").item() > 0)


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; training stopped before the bad step reached the weights or a checkpoint."""

    def __init__(self, step: int, value: float, checkpoint: Optional[str] = None) -> None:
        self.step, self.value = step, value
        kept = f"the last good checkpoint '{checkpoint}' was kept" if checkpoint else "no checkpoint was written"
        super().__init__(
            f"The loss became {value} at global step {step}, so training stopped and {kept}: "
            "lower --lr, set --clip-grad, or train without --amp, then resume.")


def check_step(loss: Union[torch.Tensor, float], step: int, stop: Optional[GracefulStop] = None,
               ctx: Optional[DistContext] = None, checkpoint: Optional[str] = None) -> Tuple[float, bool]:
    """The loss as a float and whether every rank stops after this step, agreed by ONE all-reduce per step.
    Called before ``optimizer.step()``: a non-finite loss on any rank raises on every rank."""
    value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
    bad, stopping = not math.isfinite(value), stop is not None and stop.should_stop()
    if ctx is not None and ctx.distributed:
        flags = torch.tensor([float(bad), float(stopping)], device=ctx.device)
        bad, stopping = (v > 0 for v in all_reduce(flags, ctx, "max").tolist())
        if bad and math.isfinite(value):
            value = float("nan")  # another rank's loss was the bad one
    if bad:
        raise NonFiniteLossError(step, value, checkpoint)
    return value, bool(stopping)


def check_finite(loss: Union[torch.Tensor, float], step: int, ctx: Optional[DistContext] = None,
                 checkpoint: Optional[str] = None) -> float:
    """:func:`check_step` without a stop request: the loss as a float, or :class:`NonFiniteLossError`."""
    return check_step(loss, step, None, ctx, checkpoint)[0]
