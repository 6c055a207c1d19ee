"""The one switch of FCViT's fast paths, in the manner of timm's ``use_fused_attn``.

:func:`use_fused_ops` is read once when a module is built and kept in its ``fused_ops`` (a
``torch.jit.Final[bool]``). ``FCVIT_FUSED_OPS=0``, :func:`set_fused_ops` before building, or timm's
``set_layer_config(exportable=True)`` makes every FCViT module built afterwards run the plain PyTorch ops.
Per call, a module checks only what cannot be known when it is built: :func:`recording`, dtype, device.
"""
import os

import torch
from timm.layers import is_exportable

__all__ = ["use_fused_ops", "set_fused_ops", "recording"]

_USE_FUSED_OPS = os.environ.get("FCVIT_FUSED_OPS", "1").strip() != "0"


def use_fused_ops() -> bool:
    """Whether a module built now takes the fast paths."""
    return _USE_FUSED_OPS and not is_exportable()


def set_fused_ops(enable: bool = True) -> bool:
    """Set the switch for modules built from now on (tests, benchmarks); returns the previous setting."""
    global _USE_FUSED_OPS
    previous, _USE_FUSED_OPS = _USE_FUSED_OPS, bool(enable)
    return previous


def recording(x: object) -> bool:
    """Whether this call is recorded (FX proxies, ``torch.jit`` tracing, ONNX, ``torch.export``), which
    must see the plain ops: a traced graph also runs eagerly and must equal the untraced model."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return (isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or (exporting is not None and exporting()))
