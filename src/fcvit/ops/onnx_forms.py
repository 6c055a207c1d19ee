"""How FCViT is written into an ONNX graph: the one place for choices made only while exporting.

A step of :mod:`fcvit.models.layers` whose cheapest ONNX form differs from its eager one is written here
both ways: eagerly (and under FX, TorchScript and ``torch.compile``) the expression the layers always ran;
while ``torch.onnx`` exports, the form an ONNX runtime optimises, free of the shape arithmetic a reshape
with dynamic sizes costs (``Shape``, ``Gather``, ``Unsqueeze``, ``Concat`` per use): 1x1 convolutions and
the global context's group sums and spread as ``Conv`` s (the latter with a constant block mask), the
bottleneck as ``Split`` and ``Max``, and a one-group GroupNorm as one ``LayerNormalization`` (opset 17 and
later, TorchScript-based exporter only, :func:`onnx_symbolics`). The math stays in ``layers.py``.

Annotations stay evaluated: TorchScript compiles these functions where the scripted layers call them.
"""
import contextlib
from typing import Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.onnx.operators import shape_as_tensor

__all__ = ["exporting", "pointwise_conv", "group_sums", "sample_mean_std", "max_of_halves", "spread_groups",
           "onnx_symbolics"]


@torch.jit.unused  # TorchScript never exports to ONNX: the callers ask torch.jit.is_scripting() first
def exporting() -> bool:
    """Whether ``torch.onnx`` is recording this call (either exporter)."""
    return torch.onnx.is_in_onnx_export()


def _group_mask(channels: int, groups: int, like: Tensor) -> Tensor:
    """``channels x groups``: 1 where a channel belongs to the group (groups are contiguous channel blocks).
    Built from the module's sizes, not the tensor's, so that the exporter folds it into a constant."""
    eye = torch.eye(groups, dtype=like.dtype, device=like.device)
    return eye.repeat_interleave(channels // groups, dim=0)


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A 1x1 convolution (weight ``out x in x 1 x 1``): a matrix product over the channels of the NHWC view."""
    if not torch.jit.is_scripting() and exporting():
        return F.conv2d(x, weight, bias)
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)


def group_sums(x: Tensor, g: Tensor, groups: int, channels: int, scale: float) -> Tensor:
    """``scale * sum over each group's channels of x * g`` (``g``: B x C), B x groups x H x W. The sizes come
    from the module: a size read off a tensor is a computation in an exported graph, not a constant."""
    if not torch.jit.is_scripting() and exporting():
        mask = _group_mask(channels, groups, x).t() * scale
        return F.conv2d(x * g.reshape(-1, channels, 1, 1), mask[:, :, None, None])
    b, c, h, w = x.shape
    return (x.reshape(b, groups, c // groups, h, w) * g.reshape(b, groups, c // groups, 1, 1)).sum(2) * scale


def sample_mean_std(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-sample mean and unbiased std over all of a sample's values, each B x 1 x 1 x 1."""
    if not torch.jit.is_scripting() and exporting():
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        norm = torch.linalg.vector_norm(x - mean, dim=(1, 2, 3), keepdim=True)
        if torch.compiler.is_compiling():  # the dynamo-based exporter: sizes are symbolic integers
            return mean, norm / (x.shape[1] * x.shape[2] * x.shape[3] - 1) ** 0.5
        count = shape_as_tensor(x)[1:].prod()  # the TorchScript-based one: Shape, Slice, ReduceProd
        return mean, norm / (count - 1).to(x.dtype).sqrt()
    b = x.shape[0]
    flat = x.reshape(b, -1)
    return flat.mean(1).reshape(b, 1, 1, 1), flat.std(1).reshape(b, 1, 1, 1)


def max_of_halves(x: Tensor, half: int) -> Tensor:
    """The elementwise maximum of a B x (2 * half) tensor's two halves, B x half."""
    if not torch.jit.is_scripting() and exporting():
        first, second = x.split(half, dim=1)
        return torch.maximum(first, second)
    return x.reshape(x.shape[0], 2, half).amax(dim=1)


def spread_groups(maps: Tensor, scale: Tensor, groups: int, channels: int) -> Tensor:
    """``out[b, c] = maps[b, group(c)] * scale[b, c]`` for maps B x groups x H x W and scale B x C."""
    if not torch.jit.is_scripting() and exporting():
        mask = _group_mask(channels, groups, maps)
        return F.conv2d(maps, mask[:, :, None, None]) * scale.reshape(-1, channels, 1, 1)
    b, groups, h, w = maps.shape
    c = scale.shape[1]
    return (maps.unsqueeze(2) * scale.reshape(b, groups, c // groups, 1, 1)).reshape(b, c, h, w)


# ---------------------------------------------------------------------------------------------------
# symbolic functions of the TorchScript-based exporter (torch.onnx.export(..., dynamo=False))

_GROUP_NORM = "::group_norm"
LAYER_NORM_OPSET = 17  # LayerNormalization's first opset


def _group_norm_symbolic(g, x, num_groups, weight, bias, eps, cudnn_enabled):
    """GroupNorm with one group as one LayerNormalization over axis 1 (C, H, W); other groupings as torch
    writes them. The scale and shift (C x 1 x 1, folded to constants) broadcast as the spec allows."""
    from torch.onnx._internal.torchscript_exporter import _type_utils, symbolic_helper, symbolic_opset9

    groups = symbolic_helper._maybe_get_const(num_groups, "i")
    rank = symbolic_helper._get_tensor_rank(x)
    if groups != 1 or rank is None or rank < 2:
        return symbolic_opset9.group_norm(g, x, num_groups, weight, bias, eps, cudnn_enabled)
    dtype = _type_utils.JitScalarType.from_value(x).dtype()
    axes = g.op("Constant", value_t=torch.tensor(list(range(1, rank - 1)), dtype=torch.long))

    def affine(t, fill: float):
        if t is None or symbolic_helper._is_none(t):
            return g.op("Constant", value_t=torch.full((1,), fill, dtype=dtype))
        return g.op("Unsqueeze", t, axes)  # C -> C x 1 x 1

    return g.op("LayerNormalization", x, affine(weight, 1.0), affine(bias, 0.0), axis_i=1,
                epsilon_f=symbolic_helper._maybe_get_const(eps, "f"))


@contextlib.contextmanager
def onnx_symbolics(opset: int) -> Iterator[None]:
    """The symbolic functions above, registered for one export at ``opset`` and removed afterwards."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    if opset < LAYER_NORM_OPSET:
        yield
        return
    register_custom_op_symbolic(_GROUP_NORM, _group_norm_symbolic, opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic(_GROUP_NORM, opset)
