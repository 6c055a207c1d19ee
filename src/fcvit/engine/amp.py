"""Mixed precision with torch.amp: bf16 where the device supports it, fp16 with a GradScaler on request."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Iterable, Optional

import torch

from ..errors import UserError

__all__ = ["AmpSettings", "resolve_amp", "backward_step"]

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class AmpSettings:
    """How forward passes are autocast and whether gradients go through a scaler (fp16 only)."""

    enabled: bool
    dtype: torch.dtype
    device_type: str
    scaler: Optional[torch.amp.GradScaler] = None

    def autocast(self) -> ContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype) if self.enabled else contextlib.nullcontext()

    def describe(self) -> str:
        if not self.enabled:
            return "float32"
        return f"{str(self.dtype).replace('torch.', '')} autocast" + (" + GradScaler" if self.scaler else "")


def _bf16_supported(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu"


def resolve_amp(device: torch.device, enabled: bool, dtype: str = "auto") -> AmpSettings:
    """Settings for ``device``: ``dtype`` 'auto' picks bf16 if supported else fp16 (with a GradScaler); a named
    dtype turns mixed precision on by itself."""
    device = torch.device(device)
    if not enabled and dtype == "auto":
        return AmpSettings(False, torch.float32, device.type)
    if dtype == "auto":
        chosen = torch.bfloat16 if _bf16_supported(device) else torch.float16
    elif dtype in _DTYPES:
        chosen = _DTYPES[dtype]
        if chosen is torch.bfloat16 and not _bf16_supported(device):
            raise UserError(f"--amp-dtype bfloat16 is not supported on {device}: use --amp-dtype float16.")
    else:
        raise UserError(f"--amp-dtype '{dtype}' is unknown: use auto, bfloat16 or float16.")
    scaler = torch.amp.GradScaler(device.type) if chosen is torch.float16 else None
    return AmpSettings(True, chosen, device.type, scaler)


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, amp: AmpSettings,
                  clip_grad: Optional[float] = None, clip_mode: str = "norm",
                  parameters: Optional[Iterable[torch.nn.Parameter]] = None) -> None:
    """Backward, optional clipping (timm's norm/value/agc modes, on unscaled gradients), optimizer step; the
    caller zeroes the gradients."""
    from timm.utils import dispatch_clip_grad

    scaler = amp.scaler
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if clip_grad:
        if scaler is not None:
            scaler.unscale_(optimizer)
        everything = (p for group in optimizer.param_groups for p in group["params"])
        dispatch_clip_grad(list(parameters or everything), clip_grad, mode=clip_mode)
    if scaler is not None:  # it skips steps whose gradients overflowed
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
