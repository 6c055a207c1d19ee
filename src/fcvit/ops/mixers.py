"""The fused operators of an FCViT block: :mod:`fcvit.models.layers`' math, computed cheaper.

Custom operators (namespace ``fcvit``) with fake implementations and autograd formulas, so that
``torch.compile`` (``fullgraph=True`` too) calls them instead of tracing slower plain ops: ``conv_mlp``, a
token-mixer round after its global context (optionally with the block's first residual), and
``channel_mixer``, norm2 and the channel mixer with the layer scale folded into the last 1x1. Training
keeps less for backward than the plain ops (docs/benchmarks.md) and recomputes the rest, on the CPU over
cache-sized batch slices; autocast gets its dtype for the products and float32 for the normalisation.
Inference uses sibling operators that keep nothing, oneDNN-fused (GELU inside the product) on CPU float32.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .depthwise import depthwise_conv_backward, depthwise_input_grad, depthwise_weight_grad

__all__ = ["add_global_context", "conv_mlp", "channel_mixer", "batch_slices", "keep_mixer_hidden",
           "HAS_ONEDNN", "KEEP_HIDDEN_FROM_CHANNELS", "CPU_SLICE_BYTES"]

# oneDNN kernels with a GELU post-op, used for CPU float32 inference where PyTorch ships them
HAS_ONEDNN = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
              and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))

# Channel mixers with this many input channels or more keep their hidden layer for backward.
KEEP_HIDDEN_FROM_CHANNELS = 128

# CPU batch slices, in bytes: "grad" and "no_grad" bound the channel mixer's hidden activation per slice in
# training and inference, "mlp" a token-mixer round's input in its backward. Such slices keep each kernel's
# input in cache; smaller ones lose more to per-call overhead (docs/benchmarks.md). 0 turns slicing off.
CPU_SLICE_BYTES = {"grad": 8 * 1024 * 1024, "mlp": 1024 * 1024, "no_grad": 4 * 1024 * 1024}


def keep_mixer_hidden(channels: int) -> bool:
    """Whether a training channel mixer keeps its first 1x1's output: recomputing it costs ``channels``
    multiply-adds per element, dear in the late stages, cheap in the wide early ones."""
    return channels >= KEEP_HIDDEN_FROM_CHANNELS


def batch_slices(x: Tensor, hidden_channels: int, limit: int) -> int:
    """How many batch slices keep a ``hidden_channels`` activation of ``x``'s map under ``limit`` bytes."""
    if limit <= 0 or x.device.type != "cpu" or x.shape[0] < 2:
        return 1
    sample_bytes = x.shape[2] * x.shape[3] * hidden_channels * x.element_size()
    per_slice = max(1, limit // sample_bytes)
    return -(-x.shape[0] // per_slice)


def _slice_ranges(batch: int, slices: int) -> List[Tuple[int, int]]:
    """``(start, stop)`` of ``slices`` batch slices, sized as ``tensor_split`` sizes them."""
    size, extra = divmod(batch, slices)
    stops = [(i + 1) * size + min(i + 1, extra) for i in range(slices)]
    return list(zip([0] + stops[:-1], stops))


# ---------------------------------------------------------------------------------------------------
# helpers shared by the operators

def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _rows(x: Tensor) -> Tensor:
    """An NHWC tensor as ``(pixels, channels)`` rows (a view when it is contiguous)."""
    return x.reshape(-1, x.shape[-1])


def _norm_dtype(x: Tensor) -> torch.dtype:
    """Normalisation runs in float32 for half-precision inputs, as autocast runs ``group_norm``."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _group_norm(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    b, c, h, w = x.shape
    dtype = _norm_dtype(x)
    return torch.native_group_norm(x.to(dtype), weight.to(dtype), bias.to(dtype), b, c, h * w, groups, eps)


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    return HAS_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32


def _onednn_pointwise(x: Tensor, weight: Tensor, bias: Optional[Tensor], attr: str) -> Tensor:
    """1x1 convolution (2-D weight) of an NCHW-shaped tensor through oneDNN, ``attr`` ('none' or 'gelu',
    the exact erf GELU) applied inside the kernel."""
    b, c, h, w = x.shape
    y = torch.ops.mkldnn._linear_pointwise(
        _rows(_nhwc(x)), weight, bias, attr, [], "none" if attr == "gelu" else "")
    return _nchw(y.view(b, h, w, weight.shape[0]))


def _linear_rows(rows: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear`` on ``(pixels, channels)`` rows; through oneDNN on CPU float32, which adds the bias
    inside the kernel (``addmm`` first copies it into every output row)."""
    if _use_onednn(rows, weight):
        return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
    return F.linear(rows, weight, bias)


def _linear_nhwc(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear`` over the channels of an NCHW-shaped tensor, returned NHWC (oneDNN as :func:`_linear_rows`)."""
    if _use_onednn(x, weight):
        b, c, h, w = x.shape
        return _linear_rows(_rows(_nhwc(x)), weight, bias).view(b, h, w, weight.shape[0])
    return F.linear(_nhwc(x), weight, bias)


def _onednn_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], attr: str) -> Tensor:
    """Stride-1 "same" depth-wise convolution through oneDNN with ``attr`` ('none' or 'gelu') fused; channels-last."""
    return torch.ops.mkldnn._convolution_pointwise(
        x.contiguous(memory_format=torch.channels_last), weight, bias, [weight.shape[-1] // 2] * 2, [1, 1], [1, 1],
        weight.shape[0], attr, [], "none" if attr == "gelu" else "")


def _strided_like(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` with ``ref``'s strides, which the fake implementations promise to ``torch.compile``."""
    return t if t.stride() == ref.stride() else torch.empty_like(ref, dtype=t.dtype).copy_(t)


def _gelu_backward_(grad: Tensor, x: Tensor, into_grad: bool = False) -> Tensor:
    """The exact GELU's input gradient written over ``x`` (or over ``grad``): both are temporaries of
    the backward formulas, and reusing one saves allocating (and page-faulting) a third tensor."""
    return torch.ops.aten.gelu_backward.grad_input(grad, x, grad_input=grad if into_grad else x)


def _empty_nchw(like: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    """``like``'s batch and map size with ``channels``, stored channels-last as the operators return them."""
    return _nchw(like.new_empty(like.shape[0], like.shape[2], like.shape[3], channels, dtype=dtype))


# ---------------------------------------------------------------------------------------------------
# fcvit::conv_mlp: GELU(1x1(GELU(1x1(depth-wise(x))))), the rest of a token-mixer round

def _depthwise(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])


@torch.library.custom_op("fcvit::conv_mlp", mutates_args=())
def _conv_mlp(x: Tensor, wdw: Tensor, bdw: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor,
              residual: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The output (NCHW shape, channels-last; ``residual + scale * GELU(...)`` given both, which keeps
    nothing more for backward) and, for backward, the convolution's output and the narrow hidden
    pre-activation (NHWC), from which the GELUs are recomputed."""
    conv = _depthwise(x, wdw, bdw)
    hidden = _linear_nhwc(conv, w0, b0)
    if _use_onednn(hidden, w1):  # the last GELU inside the product
        out = _nhwc(_onednn_pointwise(_nchw(F.gelu(hidden)), w1, b1, "gelu"))
    else:
        out = F.gelu(F.linear(F.gelu(hidden), w1, b1))
    if residual is not None and scale is not None:
        out = torch.addcmul(_nhwc(residual), scale, out)
    return _nchw(out), _strided_like(conv, x), hidden


@_conv_mlp.register_fake
def _(x: Tensor, wdw: Tensor, bdw: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor,
      residual: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    b, _, h, w = x.shape
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    return _empty_nchw(x, w1.shape[0], dtype), torch.empty_like(x), x.new_empty(b, h, w, w0.shape[0])


@torch.library.custom_op("fcvit::conv_mlp_backward", mutates_args=())
def _conv_mlp_backward(
        grad: Tensor, x: Tensor, conv: Tensor, hidden: Tensor, wdw: Tensor, w0: Tensor, w1: Tensor, b1: Tensor,
        scale: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``x``, the six weights and ``scale`` (zeros without it), per batch slice
    (:data:`CPU_SLICE_BYTES` ``"mlp"``) while the slice's tensors are still in cache."""
    b, c, h, w = x.shape
    pad = wdw.shape[-1] // 2
    dtype = hidden.dtype
    grad_rows, hidden_rows = _rows(_nhwc(grad)), _rows(hidden)
    grad_w0, grad_b0 = torch.zeros_like(w0), w0.new_zeros(w0.shape[0])
    grad_w1, grad_b1 = torch.zeros_like(w1), torch.zeros_like(b1)
    grad_wdw, grad_bdw = torch.zeros_like(wdw), wdw.new_zeros(wdw.shape[0])
    grad_scale = w1.new_zeros(w1.shape[0], dtype=w1.dtype if scale is None else scale.dtype)
    grad_x = torch.empty_like(x)
    slices = batch_slices(x, c, CPU_SLICE_BYTES["mlp"])
    method = "depthwise" if slices > 1 else None  # on a slice the forward-convolution form is the fastest
    for start, stop in _slice_ranges(b, slices):
        rows = slice(start * h * w, stop * h * w)
        act = F.gelu(hidden_rows[rows])
        pre = F.linear(act, w1, b1)  # recomputed: a product with the narrow hidden layer, cheap
        grad_out = grad_rows[rows].to(dtype)
        if scale is not None:
            grad_scale += (grad_out * F.gelu(pre)).sum(0).to(grad_scale.dtype)
            grad_out = grad_out * scale.to(dtype)
        grad_pre = _gelu_backward_(grad_out, pre)
        del grad_out
        grad_w1.addmm_(grad_pre.t(), act)
        grad_b1 += grad_pre.sum(0)
        grad_hidden = _gelu_backward_(grad_pre.mm(w1), hidden_rows[rows], into_grad=True)
        del grad_pre, act, pre
        x_part = x[start:stop]
        grad_w0.addmm_(grad_hidden.t(), _rows(_nhwc(conv[start:stop])))
        grad_b0 += grad_hidden.sum(0)
        grad_conv = _nchw(grad_hidden.mm(w0).view(stop - start, h, w, c))
        del grad_hidden
        part_x, part_wdw, part_bdw = depthwise_conv_backward(x_part, grad_conv, wdw, (pad, pad), method)
        grad_x[start:stop] = part_x
        grad_wdw += part_wdw
        grad_bdw += part_bdw
        del grad_conv, part_x
    return grad_x, grad_wdw, grad_bdw, grad_w0, grad_b0, grad_w1, grad_b1, grad_scale


@_conv_mlp_backward.register_fake
def _(grad: Tensor, x: Tensor, conv: Tensor, hidden: Tensor, wdw: Tensor, w0: Tensor, w1: Tensor, b1: Tensor,
      scale: Optional[Tensor] = None):
    return (torch.empty_like(x), torch.empty_like(wdw), wdw.new_empty(wdw.shape[0]), torch.empty_like(w0),
            w0.new_empty(w0.shape[0]), torch.empty_like(w1), torch.empty_like(b1),
            w1.new_empty(w1.shape[0], dtype=w1.dtype if scale is None else scale.dtype))


def _conv_mlp_setup(ctx, inputs, output) -> None:
    x, wdw, bdw, w0, _b0, w1, b1, residual, scale = inputs
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the hidden output nobody uses
    ctx.has_residual = residual is not None and scale is not None
    ctx.save_for_backward(x, output[1], output[2], wdw, w0, w1, b1, *((scale,) if ctx.has_residual else ()))


def _conv_mlp_grad(ctx, grad: Optional[Tensor], _grad_conv: Optional[Tensor], _grad_hidden: Optional[Tensor]):
    if grad is None:
        return (None,) * 9
    g = torch.ops.fcvit.conv_mlp_backward(grad, *ctx.saved_tensors)
    # the residual's gradient is the output's: no operator, no copy
    return (*g[:7], grad, g[7]) if ctx.has_residual else (*g[:7], None, None)


_conv_mlp.register_autograd(_conv_mlp_grad, setup_context=_conv_mlp_setup)


@torch.library.custom_op("fcvit::conv_mlp_infer", mutates_args=())
def _conv_mlp_infer(x: Tensor, wdw: Tensor, bdw: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """The same function keeping nothing; oneDNN with the GELUs fused on CPU float32."""
    if _use_onednn(x, w0):
        conv = _onednn_conv(x, wdw, bdw, "none")
        return _onednn_pointwise(_onednn_pointwise(conv, w0, b0, "gelu"), w1, b1, "gelu")
    return _nchw(F.gelu(F.linear(F.gelu(F.linear(_nhwc(_depthwise(x, wdw, bdw)), w0, b0)), w1, b1)))


@_conv_mlp_infer.register_fake
def _(x: Tensor, wdw: Tensor, bdw: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    return _empty_nchw(x, w1.shape[0], x.dtype)


# ---------------------------------------------------------------------------------------------------
# fcvit::channel_mixer: GroupNorm -> 1x1 -> 3x3 depth-wise -> GELU -> 1x1

def _mixer_act(h1: Tensor, wdw: Tensor, bdw: Tensor) -> Tensor:
    """GELU of the depth-wise 3x3 convolution (NHWC in, NCHW channels-last out); one oneDNN kernel on CPU float32."""
    if _use_onednn(h1, wdw):
        return _onednn_conv(_nchw(h1), wdw, bdw, "gelu")
    return F.gelu(_depthwise(_nchw(h1), wdw, bdw))


@torch.library.custom_op("fcvit::channel_mixer", mutates_args=())
def _channel_mixer(
        x: Tensor, norm_w: Tensor, norm_b: Tensor, groups: int, eps: float,
        w1: Tensor, b1: Tensor, wdw: Tensor, bdw: Tensor, w2: Tensor, b2: Tensor, keep_hidden: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The output and, for backward, the norm's statistics and (``keep_hidden``) the first 1x1's output,
    NHWC (else empty). After the whole-batch normalisation (PyTorch's channels-last GroupNorm is slow on
    small slices) it works in batch slices whose hidden activation fits in cache (``"grad"``)."""
    b, c, h, w = x.shape
    z, mean, rstd = _group_norm(x, norm_w, norm_b, groups, eps)
    z_rows = _rows(_nhwc(z.to(w1.dtype)))
    del z
    out = x.new_empty(b, h, w, w2.shape[0], dtype=w2.dtype)
    out_rows = _rows(out)
    kept = x.new_empty((b, h, w, w1.shape[0]) if keep_hidden else (0,), dtype=w1.dtype)
    for start, stop in _slice_ranges(b, batch_slices(x, w1.shape[0], CPU_SLICE_BYTES["grad"])):
        rows = slice(start * h * w, stop * h * w)
        if keep_hidden:
            h1 = torch.addmm(b1, z_rows[rows], w1.t(), out=_rows(kept)[rows]).view(stop - start, h, w, -1)
        else:
            h1 = _linear_rows(z_rows[rows], w1, b1).view(stop - start, h, w, -1)
        act = _mixer_act(h1, wdw, bdw)
        del h1
        torch.addmm(b2, _rows(_nhwc(act)), w2.t(), out=out_rows[rows])
        del act
    return _nchw(out), mean, rstd, kept


@_channel_mixer.register_fake
def _(x: Tensor, norm_w: Tensor, norm_b: Tensor, groups: int, eps: float,
      w1: Tensor, b1: Tensor, wdw: Tensor, bdw: Tensor, w2: Tensor, b2: Tensor, keep_hidden: bool = False):
    b, _, h, w = x.shape
    stats = x.new_empty(b, groups, dtype=_norm_dtype(x))
    kept = x.new_empty((b, h, w, w1.shape[0]) if keep_hidden else (0,), dtype=w1.dtype)
    return _empty_nchw(x, w2.shape[0], w2.dtype), stats, torch.empty_like(stats), kept


@torch.library.custom_op("fcvit::channel_mixer_backward", mutates_args=())
def _channel_mixer_backward(
        grad: Tensor, x: Tensor, norm_w: Tensor, norm_b: Tensor, groups: int, eps: float,
        mean: Tensor, rstd: Tensor, w1: Tensor, b1: Tensor, wdw: Tensor, bdw: Tensor, w2: Tensor, kept: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Recomputes the normalisation, and per batch slice the hidden layer (the first 1x1 unless it was
    ``kept``, the 3x3 convolution and the GELU); the weight gradients accumulate over the slices."""
    b, c, h, w = x.shape
    hidden_channels = w1.shape[0]
    pad = (wdw.shape[-1] // 2,) * 2
    grad_rows = _rows(_nhwc(grad.to(w2.dtype)))
    z_rows = _rows(_nhwc(_group_norm(x, norm_w, norm_b, groups, eps)[0].to(w1.dtype)))
    grad_w1, grad_b1 = torch.zeros_like(w1), w1.new_zeros(hidden_channels)
    grad_wdw, grad_bdw = torch.zeros_like(wdw), torch.zeros_like(bdw)
    grad_w2, grad_b2 = torch.zeros_like(w2), grad_rows.sum(0)
    grad_z = x.new_empty(b, h, w, c, dtype=w1.dtype)
    grad_z_rows = _rows(grad_z)
    for start, stop in _slice_ranges(b, batch_slices(x, hidden_channels, CPU_SLICE_BYTES["grad"])):
        rows = slice(start * h * w, stop * h * w)
        h1 = kept[start:stop] if kept.numel() else _linear_rows(z_rows[rows], w1, b1).view(stop - start, h, w, -1)
        h1 = _nchw(h1)
        hidden = _rows(_nhwc(_depthwise(h1, wdw, bdw)))
        grad_w2.addmm_(grad_rows[rows].t(), F.gelu(hidden))
        grad_hidden = _gelu_backward_(grad_rows[rows].mm(w2), hidden, into_grad=True)
        del hidden
        grad_bdw += grad_hidden.sum(0)  # the bias gradient apart from convolution_backward: faster
        grad_hidden = _nchw(grad_hidden.view(stop - start, h, w, hidden_channels))
        grad_wdw += depthwise_weight_grad(h1, grad_hidden, wdw, pad, "native")
        grad_h1 = _rows(_nhwc(depthwise_input_grad(h1, grad_hidden, wdw, pad)))
        del grad_hidden, h1
        grad_w1.addmm_(grad_h1.t(), z_rows[rows])
        grad_b1 += grad_h1.sum(0)
        torch.mm(grad_h1, w1, out=grad_z_rows[rows])
        del grad_h1
    del z_rows
    grad_x, grad_nw, grad_nb = torch.ops.aten.native_group_norm_backward(
        _nchw(grad_z).to(mean.dtype), x.to(mean.dtype), mean, rstd, norm_w.to(mean.dtype), b, c, h * w, groups,
        [True, True, True])
    return (_strided_like(grad_x.to(x.dtype), x), grad_nw.to(norm_w.dtype), grad_nb.to(norm_b.dtype), grad_w1,
            grad_b1, _strided_like(grad_wdw, wdw), grad_bdw, grad_w2, grad_b2)


@_channel_mixer_backward.register_fake
def _(grad: Tensor, x: Tensor, norm_w: Tensor, norm_b: Tensor, groups: int, eps: float,
      mean: Tensor, rstd: Tensor, w1: Tensor, b1: Tensor, wdw: Tensor, bdw: Tensor, w2: Tensor, kept: Tensor):
    return (torch.empty_like(x), torch.empty_like(norm_w), torch.empty_like(norm_b), torch.empty_like(w1),
            w1.new_empty(w1.shape[0]), torch.empty_like(wdw), torch.empty_like(bdw), torch.empty_like(w2),
            w2.new_empty(w2.shape[0]))


def _mixer_setup(ctx, inputs, output) -> None:
    x, norm_w, norm_b, groups, eps, w1, b1, wdw, bdw, w2, _b2, _keep = inputs
    _out, mean, rstd, kept = output
    ctx.groups, ctx.eps = groups, eps
    ctx.set_materialize_grads(False)  # the statistics get no zero-filled gradients
    ctx.save_for_backward(x, norm_w, norm_b, mean, rstd, w1, b1, wdw, bdw, w2, kept)


def _mixer_backward(ctx, grad: Optional[Tensor], *_unused: Optional[Tensor]):
    if grad is None:
        return (None,) * 12
    x, norm_w, norm_b, *stats_and_weights = ctx.saved_tensors
    g = torch.ops.fcvit.channel_mixer_backward(grad, x, norm_w, norm_b, ctx.groups, ctx.eps, *stats_and_weights)
    return (*g[:3], None, None, *g[3:], None)


_channel_mixer.register_autograd(_mixer_backward, setup_context=_mixer_setup)


def _channel_mixer_infer_part(z: Tensor, w1: Tensor, b1: Tensor, wdw: Tensor, bdw: Tensor, w2: Tensor,
                              b2: Tensor) -> Tensor:
    """The mixer after its normalisation, on one batch slice."""
    if _use_onednn(z, w1):
        h1 = _onednn_pointwise(z, w1, b1, "none")
        act = _onednn_conv(h1, wdw, bdw, "gelu")
        return _onednn_pointwise(act, w2, b2, "none")
    act = F.gelu(_depthwise(_nchw(F.linear(_nhwc(z), w1, b1)), wdw, bdw))
    return _nchw(F.linear(_nhwc(act), w2, b2))


@torch.library.custom_op("fcvit::channel_mixer_infer", mutates_args=())
def _channel_mixer_infer(
        x: Tensor, norm_w: Tensor, norm_b: Tensor, groups: int, eps: float,
        w1: Tensor, b1: Tensor, wdw: Tensor, bdw: Tensor, w2: Tensor, b2: Tensor,
) -> Tensor:
    """The mixer keeping nothing, in cache-sized batch slices on the CPU (oneDNN-fused in float32) after
    the whole-batch normalisation (PyTorch's channels-last GroupNorm is many times slower on slices)."""
    z = _group_norm(x, norm_w, norm_b, groups, eps)[0].to(w1.dtype)
    weights = (w1, b1, wdw, bdw, w2, b2)
    slices = batch_slices(z, w1.shape[0], CPU_SLICE_BYTES["no_grad"])
    if slices > 1:
        out = torch.cat([_channel_mixer_infer_part(part, *weights) for part in z.tensor_split(slices)])
    else:
        out = _channel_mixer_infer_part(z, *weights)
    return out.contiguous(memory_format=torch.channels_last)


@_channel_mixer_infer.register_fake
def _(x: Tensor, norm_w: Tensor, norm_b: Tensor, groups: int, eps: float,
      w1: Tensor, b1: Tensor, wdw: Tensor, bdw: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    return _empty_nchw(x, w2.shape[0], w2.dtype)


# ---------------------------------------------------------------------------------------------------
# what the modules call, with their own parameters

def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def _autocast_off(x: Tensor, dtype: Optional[torch.dtype]) -> ContextManager[None]:
    """The operators get their inputs cast already; autocast must not cast them again inside."""
    return torch.autocast(x.device.type, enabled=False) if dtype is not None else contextlib.nullcontext()


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def add_global_context(x: Tensor, similarity: Callable[[Tensor], Tensor], rescale_weight: Tensor,
                       rescale_bias: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
                       fc2_bias: Tensor, groups: int, eps: float) -> Tensor:
    """``x + GlobalContext(x)``, the maps ``B x groups x H x W`` passed through ``similarity``.

    Both per-group products are batched products with a block-diagonal ``C x groups`` operand, so no
    ``B x HW x C`` broadcast product is materialised, and the last adds the residual. The unbiased std
    as a norm of the centred values is 2x faster on the CPU than ``std_mean``, equal to rounding."""
    b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    mask = torch.eye(groups, dtype=x.dtype, device=x.device).repeat_interleave(c // groups, dim=0)  # C x G
    tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a free view on a channels-last tensor
    g = tokens.mean(dim=1)  # B x C: the global token
    sim = torch.bmm(tokens, (g * (c // groups) ** -0.5).unsqueeze(-1) * mask)  # B x HW x G
    mean = sim.mean(dim=[1, 2], keepdim=True)
    std = torch.linalg.vector_norm(sim - mean, dim=[1, 2], keepdim=True) / (sim.shape[1] * sim.shape[2] - 1) ** 0.5
    a = rescale_weight / (std + eps)  # (s - mean) / (std + eps) * w + b as s * a + (b - mean * a)
    sim = torch.addcmul(rescale_bias - mean * a, sim, a)
    sim = similarity(sim.reshape(b, h, w, groups).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, h * w, groups)
    hidden = fc1_weight.shape[0] // 2
    gc = F.linear(F.linear(g, fc1_weight, fc1_bias).unflatten(-1, (2, hidden)).amax(dim=1), fc2_weight, fc2_bias)
    out = torch.baddbmm(tokens, sim, gc.unsqueeze(1) * mask.t())  # the B x G x C spread is block-diagonal
    return out.reshape(b, h, w, c).permute(0, 3, 1, 2)


def conv_mlp(x: Tensor, dw_weight: Tensor, dw_bias: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor,
             residual: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tensor:
    """``GELU(1x1(GELU(1x1(dw(x)))))`` (2-D 1x1 weights), a token-mixer round after its global context;
    with ``residual`` and ``scale`` (per channel), ``residual + scale * GELU(...)``."""
    params = [dw_weight, dw_bias, w0, b0, w1, b1]
    dtype = _autocast_dtype(x)
    if dtype is not None:
        x, params = x.to(dtype), [p.to(dtype) for p in params]
    with _autocast_off(x, dtype):
        if _needs_grad(x, scale, residual, *params):
            return torch.ops.fcvit.conv_mlp(x, *params, residual, scale)[0]
        y = torch.ops.fcvit.conv_mlp_infer(x, *params)
        return y if residual is None or scale is None else torch.addcmul(residual, scale.reshape(-1, 1, 1), y)


def channel_mixer(x: Tensor, norm_weight: Optional[Tensor], norm_bias: Optional[Tensor], groups: int, eps: float,
                  w1: Tensor, b1: Tensor, dw_weight: Tensor, dw_bias: Tensor, w2: Tensor, b2: Tensor,
                  scale: Tensor) -> Tensor:
    """``scale * mixer(GroupNorm(x))`` (2-D 1x1 weights, no dropout); no norm affine (``fcvit.fuse``) is ones."""
    weights = [w1, b1, dw_weight, dw_bias, w2 * scale[:, None], b2 * scale]
    dtype = _autocast_dtype(x)
    if dtype is not None:
        weights = [w.to(dtype) for w in weights]
    if norm_weight is None or norm_bias is None:
        norm_weight, norm_bias = x.new_ones(x.shape[1]), x.new_zeros(x.shape[1])
    norm_args = (norm_weight, norm_bias, groups, eps)
    with _autocast_off(x, dtype):
        if not _needs_grad(x, norm_weight, norm_bias, *weights):
            return torch.ops.fcvit.channel_mixer_infer(x, *norm_args, *weights)
        return torch.ops.fcvit.channel_mixer(x, *norm_args, *weights, keep_mixer_hidden(x.shape[1]))[0]
