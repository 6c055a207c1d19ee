"""Exporting a model to ONNX, TorchScript or safetensors, each checked against PyTorch after writing.

Every file is written to a temporary name beside the target and moved into place only when complete,
so an interrupted export never leaves a half-written file under the requested name. Exports record
the plain ops whatever the fast-path switch (:mod:`fcvit.ops.config`): scripting skips the fused
methods, and ONNX export is one of the calls :func:`fcvit.ops.recording` sees.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Optional

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_write

__all__ = ["FORMATS", "export_onnx", "export_torchscript", "export_safetensors", "check_onnx", "default_suffix"]

FORMATS = ("onnx", "torchscript", "safetensors")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


def default_suffix(fmt: str) -> str:
    return _SUFFIX[fmt]


def _checked_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    if not path.parent.is_dir():
        raise UserError(f"The output folder '{path.parent}' does not exist: create it or choose another --output.")
    atomic_write(path, write)


def export_onnx(model: nn.Module, path: str | os.PathLike, img_size: int = 224, opset: int = 17,
                in_chans: int = 3) -> Path:
    """ONNX with dynamic batch size and image size (input ``images``, output ``output``), weights inside."""
    path = Path(path)
    model = model.eval()
    example = torch.randn(1, in_chans, img_size, img_size)

    def write(f: BinaryIO) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
            torch.onnx.export(
                model, (example,), f, dynamo=False, opset_version=opset, input_names=["images"],
                output_names=["output"], do_constant_folding=True,
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}})

    _checked_write(path, write)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, inputs: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs for ``inputs``."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UserError("Checking the ONNX file needs onnxruntime: pip install onnxruntime, "
                        "or pass --no-check.") from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    with torch.no_grad():
        expected = model.eval()(inputs)
    return float((torch.from_numpy(ort_out) - expected).abs().max())


def export_torchscript(model: nn.Module, path: str | os.PathLike) -> Path:
    """A scripted model (``torch.jit.load`` runs it without fcvit installed), any input size and batch."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script announces its deprecation
        scripted = torch.jit.script(model.eval())

    def write(f: BinaryIO) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(scripted, f)

    _checked_write(path, write)
    return path


def check_torchscript(model: nn.Module, path: str | os.PathLike, inputs: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return float((loaded(inputs) - model.eval()(inputs)).abs().max())


def export_safetensors(model: nn.Module, path: str | os.PathLike,
                       metadata: Optional[Dict[str, str]] = None) -> Path:
    """The state dict as safetensors (what ``--checkpoint`` and ``timm.create_model`` load back)."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _checked_write(path, lambda f: f.write(save(tensors, metadata=metadata or {})))
    return path
