"""Depth-wise convolution with a faster weight gradient on the CPU.

oneDNN computes the weight gradient of FCViT's 11x11 depth-wise convolutions 5 to 20 times slower than
their forward pass (docs/benchmarks.md). That gradient, a per-channel correlation of the input with the
output gradient, is much faster on FCViT's shapes as ``"fft"`` (products summed over the batch before one
inverse transform per channel; large maps) or ``"depthwise"`` (a *forward* depth-wise convolution over
``batch x channels`` planes with the output gradient as kernel; small maps, but not one pixel high or wide,
where PyTorch's fallback is slow). Only eager CPU float32 training with the fast paths on takes this path.
"""
from typing import Final, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import recording, use_fused_ops

__all__ = ["DepthwiseConv2d", "depthwise_weight_grad", "depthwise_conv_backward", "depthwise_input_grad",
           "WEIGHT_GRAD_METHODS"]

WEIGHT_GRAD_METHODS = ("auto", "fft", "depthwise", "native")


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: sizes the FFT libraries transform fastest."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _weight_grad_fft(x: torch.Tensor, grad: torch.Tensor, kh: int, kw: int, ph: int, pw: int) -> torch.Tensor:
    b, c, h, w = x.shape
    # a circular correlation of length n gives the lags -p .. k-1-p exactly once n >= k and n >= h + p
    # (and the same for the width): the wrapped-around terms then only meet zero padding
    n0 = _fft_size(max(kh, h + max(ph, kh - 1 - ph)))
    n1 = _fft_size(max(kw, w + max(pw, kw - 1 - pw)))
    xf = torch.fft.rfft2(x.contiguous(), s=(n0, n1))
    gf = torch.fft.rfft2(grad.contiguous(), s=(n0, n1))
    corr = torch.fft.irfft2((xf * gf.conj()).sum(0), s=(n0, n1))  # corr[c, d] = sum_b,p x[p + d] g[p]
    corr = torch.roll(corr, shifts=(ph, pw), dims=(1, 2))[:, :kh, :kw]  # lags -p .. k-1-p
    return corr.unsqueeze(1)


def _weight_grad_depthwise(x: torch.Tensor, grad: torch.Tensor, kh: int, kw: int, ph: int, pw: int) -> torch.Tensor:
    b, c, h, w = x.shape
    # (1, B*C, H, W) channels-last views: plane b*C + c is sample b's channel c
    planes = x.permute(2, 3, 0, 1).reshape(1, h, w, b * c).permute(0, 3, 1, 2)
    kernels = grad.permute(2, 3, 0, 1).reshape(h, w, b * c).permute(2, 0, 1).unsqueeze(1)
    corr = F.conv2d(planes, kernels, None, padding=(ph, pw), groups=b * c)  # 1 x B*C x kh x kw
    return corr.view(b, c, kh, kw).sum(0).unsqueeze(1)


def _native(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: Tuple[int, int],
            which: int) -> torch.Tensor:
    """PyTorch's own depth-wise backward: the input (``which=0``) or the weight (1) gradient."""
    return torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0],
                                               weight.shape[0], [which == 0, which == 1, False])[which]


def _pick_method(x: torch.Tensor) -> str:
    h, w = x.shape[-2:]
    if h == 1 and w == 1:
        return "pixel"
    if h == 1 or w == 1:  # a 1-wide "kernel" sends the forward-conv trick to PyTorch's slow per-group path
        return "native"
    if h * w >= 24 * 24:
        return "fft"
    return "depthwise"


def depthwise_weight_grad(
        x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, padding: Tuple[int, int], method: str = "auto",
) -> torch.Tensor:
    """Gradient of a stride-1 depth-wise convolution's weight, given its input and output gradient."""
    if method not in WEIGHT_GRAD_METHODS + ("pixel",):
        raise ValueError(f"Unknown depth-wise weight-gradient method {method!r}; choose one of {WEIGHT_GRAD_METHODS}.")
    kh, kw = weight.shape[-2:]
    ph, pw = padding
    if method == "auto":
        method = _pick_method(x)
    if method == "fft":
        return _weight_grad_fft(x, grad, kh, kw, ph, pw).to(weight.dtype)
    if method == "depthwise":
        return _weight_grad_depthwise(x, grad, kh, kw, ph, pw).to(weight.dtype)
    if method == "pixel" and x.shape[-2:] == (1, 1) and ph < kh and pw < kw:
        # a 1x1 map only ever meets the kernel's tap at (ph, pw): the rest of the gradient is zero
        grad_w = weight.new_zeros(weight.shape)
        grad_w[:, 0, ph, pw] = (x * grad).sum(dim=(0, 2, 3)).to(weight.dtype)
        return grad_w
    return _native(grad, x, weight, padding, 1)


def depthwise_conv_backward(
        x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, padding: Tuple[int, int],
        method: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input, weight and bias gradients of a stride-1 depth-wise convolution with bias, the weight's the
    faster way for CPU float32. ``method`` overrides the size-based choice between ``"fft"`` and
    ``"depthwise"`` (a caller working on cache-sized batch slices knows better)."""
    if x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32:
        picked = _pick_method(x)
        if method is not None and picked in ("fft", "depthwise"):
            picked = method
        grad_w = depthwise_weight_grad(x, grad, weight, padding, picked)
    else:
        grad_w = _native(grad, x, weight, padding, 1)
    # the bias gradient apart: inside convolution_backward it cost 5-10x the input gradient on the CPU
    return depthwise_input_grad(x, grad, weight, padding), grad_w, _channel_sums(grad)


def depthwise_input_grad(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor,
                         padding: Tuple[int, int]) -> torch.Tensor:
    """Input gradient of a stride-1 depth-wise convolution: with "same" padding of an odd kernel, the
    forward convolution of the output gradient with the flipped kernel (half the CPU time of
    ``convolution_backward``'s, and it keeps the channels-last layout)."""
    kh, kw = weight.shape[-2:]
    if kh % 2 and kw % 2 and tuple(padding) == (kh // 2, kw // 2) and grad.shape == x.shape:
        return F.conv2d(grad, weight.flip(-2, -1), None, padding=tuple(padding), groups=weight.shape[0])
    return _native(grad, x, weight, padding, 0)


def _channel_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-channel sums of an NCHW tensor, over rows of its NHWC view when it is stored channels-last."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).sum(0)
    return x.sum(dim=(0, 2, 3))


class _DepthwiseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: Tuple[int, int],
                method: str = "auto"):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.method = padding, method
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _native(grad, x, weight, ctx.padding, 0)
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad, weight, ctx.padding, ctx.method)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)`` (the same parameters and keys) whose CPU
    training backward is faster."""

    fused_ops: Final[bool]

    def __init__(self, dim: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias)
        self.fused_ops = use_fused_ops()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_ops and not torch.jit.is_scripting() and self._fast_backward(x):
            return _DepthwiseConvFunction.apply(x, self.weight, self.bias, self.padding)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _fast_backward(self, x: torch.Tensor) -> bool:
        """Eager CPU float32 training only: compiled graphs and cuDNN pick their own algorithms."""
        return (torch.is_grad_enabled() and self.weight.requires_grad and not recording(x)
                and not torch.compiler.is_compiling() and x.device.type == "cpu"
                and x.dtype == self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))
