"""Exporting a model to ONNX, TorchScript or safetensors, each checked against PyTorch after writing.

Files are written atomically, so an interrupted export leaves no half-written file. Exports record the
plain ops whatever the fast-path switch: scripting skips the fused methods, and ONNX export is one of the
calls :func:`fcvit.ops.recording` sees. ONNX files are written for a runtime to optimise (issue 22): the
layers take their ONNX forms (:mod:`fcvit.ops.onnx_forms`), the exporter folds constants, :func:`simplify_onnx`
cleans up what is left, and ``static=True`` fixes the batch and image size so that the shape arithmetic of
the dynamic file folds away too. ``metadata_props`` carry the preprocessing and class names.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_write
from ..models.checkpoint import DATA_CONFIG_KEYS, stored_preprocessing
from ..ops.onnx_forms import onnx_symbolics

__all__ = ["FORMATS", "export_onnx", "export_torchscript", "export_safetensors", "check_onnx", "default_suffix",
           "onnx_metadata", "simplify_onnx", "ONNX_OPSET"]

FORMATS = ("onnx", "torchscript", "safetensors")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}

# The default ONNX opset: 20 has GELU as one operator (five before it: FCViT has five GELUs a block);
# ONNX Runtime reads it from 1.17. FCViT's one-group GroupNorms become LayerNormalization from opset 17,
# with the per-channel scale broadcast as the ONNX spec allows (ONNX Runtime 1.24 and later run it).
ONNX_OPSET = 20


def default_suffix(fmt: str) -> str:
    return _SUFFIX[fmt]


def _checked_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    if not path.parent.is_dir():
        raise UserError(f"The output folder '{path.parent}' does not exist: create it or choose another --output.")
    atomic_write(path, write)


def export_onnx(model: nn.Module, path: str | os.PathLike, img_size: int = 224, opset: int = ONNX_OPSET,
                in_chans: int = 3, static: bool = False, batch_size: int = 1,
                metadata: Optional[Mapping[str, str]] = None) -> Path:
    """ONNX (input ``images``, output ``output``), weights inside, with dynamic batch size and image size, or
    fixed to ``batch_size`` x ``in_chans`` x ``img_size`` x ``img_size`` with ``static``; simplified
    (:func:`simplify_onnx`), ``metadata`` written into its ``metadata_props``."""
    try:
        import onnx
    except ImportError as exc:
        raise UserError("Exporting ONNX needs the onnx package: pip install onnx (and onnxruntime to check the "
                        "file).") from exc
    path = Path(path)
    model = model.eval()
    example = torch.randn(batch_size if static else 1, in_chans, img_size, img_size)
    dynamic = None if static else {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), onnx_symbolics(opset):
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["output"], do_constant_folding=True, dynamic_axes=dynamic)
    proto = onnx.load_from_string(buffer.getvalue())
    simplify_onnx(proto)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    _checked_write(path, lambda f: f.write(proto.SerializeToString()))
    return path


def onnx_metadata(model: nn.Module, checkpoint: Optional[Mapping[str, Any]] = None, name: Optional[str] = None,
                  input_size: Optional[Sequence[int]] = None) -> Dict[str, str]:
    """What a deployment needs beside the graph, as ``metadata_props`` strings (lists and sizes as JSON): the
    model's name, the preprocessing (``input_size``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``,
    ``interpolation``: a checkpoint's ``data_config`` where training stored one, else the model's
    ``pretrained_cfg``; ``input_size`` given, that of a static file) and, when known, ``class_names`` (the
    checkpoint's, else ImageNet's for a 1000-class head)."""
    from timm.data import resolve_data_config

    checkpoint = checkpoint or {}
    config = resolve_data_config(stored_preprocessing(checkpoint), model=model)
    if input_size is not None:
        config["input_size"] = tuple(input_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    out = {"model": name or cfg.get("architecture") or type(model).__name__}
    for key in DATA_CONFIG_KEYS:
        if config.get(key) is not None:
            value = config[key]
            out[key] = json.dumps([float(v) if key in ("mean", "std") else v for v in value]) \
                if isinstance(value, (list, tuple)) else str(value)
    classes, names = getattr(model, "num_classes", 0), checkpoint.get("class_names")
    if classes:
        out["num_classes"] = str(classes)
    if classes and isinstance(names, (list, tuple)) and len(names) == classes:
        out["class_names"] = json.dumps([str(n) for n in names])
    elif classes == 1000:
        from timm.data import ImageNetInfo

        out["class_names"] = json.dumps(list(ImageNetInfo().label_descriptions()))
    return out


def simplify_onnx(proto: Any) -> Any:
    """Simplify an ONNX ``ModelProto`` in place, outputs unchanged: ``Constant`` nodes become initializers,
    ``Identity`` nodes and multiplications by constant ones (that do not broadcast) are bypassed, and nodes
    and initializers nothing reads are removed. Returns ``proto``."""
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"} and node.output[0] not in initializers:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs["value"].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            initializers[tensor.name] = tensor
        else:
            kept.append(node)
    _set_items(graph.node, kept)
    shapes = _inferred_shapes(proto)
    bypass = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.output[0] not in outputs}

    def source(name: str) -> str:
        while name in bypass:
            name = bypass[name]
        return name

    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2 or node.output[0] in outputs:
            continue
        for const, other in ((node.input[1], node.input[0]), (node.input[0], node.input[1])):
            tensor = initializers.get(source(const))
            if tensor is not None and _keeps_shape(shapes.get(other), list(tensor.dims)) \
                    and bool((numpy_helper.to_array(tensor) == 1).all()):
                bypass[node.output[0]] = other
                break

    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in bypass:
                node.input[i] = source(name)
    _remove_unread(graph)
    return proto


def _inferred_shapes(proto: Any) -> Dict[str, List[Optional[int]]]:
    """Each value's shape as ONNX shape inference gives it (None for a symbolic dimension)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # inference is a help here, not a requirement
        return {}
    shapes = {}
    for info in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _keeps_shape(shape: Optional[List[Optional[int]]], const_dims: List[int]) -> bool:
    """Whether broadcasting a tensor of ``shape`` with a constant of ``const_dims`` leaves its shape as it is."""
    if shape is None or len(const_dims) > len(shape):
        return False
    tail = shape[len(shape) - len(const_dims):]
    return all(c == 1 or c == s for c, s in zip(const_dims, tail))


def _remove_unread(graph: Any) -> None:
    """Drop nodes whose outputs nothing reads (repeatedly), then unread initializers and stale value_info."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        live = [n for n in graph.node if any(o in read for o in n.output if o)]
        if len(live) == len(graph.node):
            break
        _set_items(graph.node, live)
    read = {name for node in graph.node for name in node.input} | outputs
    _set_items(graph.initializer, [t for t in graph.initializer if t.name in read])
    produced = {o for node in graph.node for o in node.output}
    _set_items(graph.value_info, [v for v in graph.value_info if v.name in produced])


def _set_items(field: Any, items: List[Any]) -> None:
    """Replace a repeated protobuf field's items (copies: the old ones go with the field)."""
    if len(items) == len(field):
        return
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)


def check_onnx(model: nn.Module, path: str | os.PathLike, inputs: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs for ``inputs``."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UserError("Checking the ONNX file needs onnxruntime: pip install onnxruntime, "
                        "or pass --no-check.") from exc
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (ort_out,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    except Exception as exc:  # onnxruntime raises its own error types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"onnxruntime {ort.__version__} cannot run '{path}' ({reason[:300]}): ONNX Runtime 1.24 or "
                        f"later runs opset {ONNX_OPSET} files with FCViT's LayerNormalization (per-channel scale "
                        f"broadcast); upgrade it, or export with --opset 16 for older runtimes.") from exc
    with torch.no_grad():
        expected = model.eval()(inputs)
    return float((torch.from_numpy(ort_out) - expected).abs().max())


def export_torchscript(model: nn.Module, path: str | os.PathLike) -> Path:
    """A scripted model (``torch.jit.load`` runs it without fcvit installed), any input size and batch."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit announces its deprecation
        scripted = torch.jit.script(model.eval())
        _checked_write(path, lambda f: torch.jit.save(scripted, f))
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
