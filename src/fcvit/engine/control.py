"""Stopping a run cleanly: on a signal (pre-emption, Ctrl-C) or on a loss that stopped being finite."""
from __future__ import annotations

import logging
import math
import signal
import threading
from types import FrameType
from typing import Callable, Dict, Optional, Sequence, Union

import torch

from ..errors import UserError
from .distributed import DistContext, all_reduce

__all__ = ["GracefulStop", "NonFiniteLossError", "check_finite"]

_logger = logging.getLogger(__name__)
_Handler = Union[Callable[[int, Optional[FrameType]], object], int, None]


class GracefulStop:
    """A flag that SIGTERM/SIGINT set instead of killing the process, so the loop can finish the step and save.

    Use as a context manager around the training loop and ask :meth:`should_stop` after each step. A
    second SIGINT (Ctrl-C twice) falls back to the normal KeyboardInterrupt. Under DDP every rank must
    stop at the same step, so ``should_stop(ctx)`` takes the maximum of the flags over ranks.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = tuple(signals)
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, _Handler] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        _logger.warning("%s received: finishing the current step, saving a checkpoint and stopping "
                        "(resume with --resume auto).", self.signal_name)

    def install(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> "GracefulStop":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def should_stop(self, ctx: Optional[DistContext] = None) -> bool:
        """True once any rank got a signal (one small all-reduce per call when distributed)."""
        if ctx is None or not ctx.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=ctx.device)
        return bool(all_reduce(flag, ctx, "max").item() > 0)


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; training stopped before the bad step reached the weights or a checkpoint."""

    def __init__(self, step: int, value: float, checkpoint: Optional[str] = None) -> None:
        self.step = step
        self.value = value
        kept = f"the last good checkpoint '{checkpoint}' was kept" if checkpoint else "no checkpoint was written"
        super().__init__(
            f"The loss became {value} at global step {step}, so training stopped and {kept}: "
            "lower --lr, set --clip-grad, or train without --amp, then resume.")


def check_finite(loss: Union[torch.Tensor, float], step: int, ctx: Optional[DistContext] = None,
                 checkpoint: Optional[str] = None) -> float:
    """Return the loss as a float, or raise :class:`NonFiniteLossError` if it (on any rank) is not finite.

    Call it before ``optimizer.step()`` so a bad step never reaches the weights; under DDP every rank
    raises together because the check is reduced over ranks.
    """
    value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
    bad = not math.isfinite(value)
    if ctx is not None and ctx.distributed:
        flag = torch.tensor([1.0 if bad else 0.0], device=ctx.device)
        bad = bool(all_reduce(flag, ctx, "max").item() > 0)
        if bad and math.isfinite(value):
            value = float("nan")  # another rank's loss was the bad one
    if bad:
        raise NonFiniteLossError(step, value, checkpoint)
    return value
