"""Depth-wise convolution with a faster weight gradient on the CPU.

FCViT's 11x11 depth-wise convolutions are cheap forwards but expensive to train on the CPU: oneDNN
computes their weight gradient 5 to 20 times slower than the forward pass with the same number of
multiply-adds (docs/benchmarks.md). The weight gradient of a depth-wise convolution is itself a
per-channel correlation of the input with the output gradient, and two other ways of computing it
are much faster on the shapes FCViT has:

- ``"fft"``: correlate in the frequency domain (as cuDNN's FFT algorithms do), summing the
  products over the batch before the one inverse transform per channel. Best on large maps.
- ``"depthwise"``: run the correlation as a *forward* depth-wise convolution over ``batch x channels``
  planes whose kernel is the output gradient, then sum over the batch. Best on small maps, where
  the forward kernels are efficient and the whole problem stays in cache (but not on maps one pixel
  high or wide, where oneDNN declines the shape and PyTorch's per-group fallback is very slow).

``"auto"`` chooses by map size from measurements on FCViT's shapes (docs/benchmarks.md).

The forward pass and the input gradient are the ordinary ones, so outputs do not change; the weight
gradient agrees with oneDNN's to float32 rounding (relative 1e-5, tests/test_depthwise.py). Only
eager CPU training takes this path; CUDA (cuDNN picks its own algorithms), inference, TorchScript,
FX, ONNX export and torch.compile see a plain ``nn.Conv2d``.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthwiseConv2d", "depthwise_weight_grad", "depthwise_conv_backward", "depthwise_input_grad",
           "WEIGHT_GRAD_METHODS"]

WEIGHT_GRAD_METHODS = ("auto", "fft", "depthwise", "native")
_METHOD = ["auto"]


def set_weight_grad_method(method: str) -> str:
    """Choose how :class:`DepthwiseConv2d` computes its weight gradient on the CPU; returns the previous choice.

    ``"auto"`` (default) picks by map size, ``"native"`` is PyTorch's own (oneDNN) backward.
    """
    if method not in WEIGHT_GRAD_METHODS:
        raise ValueError(f"Unknown depth-wise weight-gradient method {method!r}; choose one of {WEIGHT_GRAD_METHODS}.")
    previous = _METHOD[0]
    _METHOD[0] = method
    return previous


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


def _weight_grad_native(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, padding: Tuple[int, int]) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0], weight.shape[0],
        [False, True, False])[1]


def _pick_method(x: torch.Tensor) -> str:
    method = _METHOD[0]
    if method != "auto":
        return method
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
    return _weight_grad_native(x, grad, weight, padding)


def depthwise_conv_backward(
        x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, padding: Tuple[int, int],
        method: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input, weight and bias gradients of a stride-1 depth-wise convolution with bias.

    The weight gradient takes the faster CPU formulations for float32 on the CPU (unless the method
    is ``"native"``), PyTorch's own backward everywhere else. ``method`` overrides the size-based
    choice of ``"auto"`` (a caller working on cache-sized batch slices knows better).
    """
    fast = _METHOD[0] != "native" and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
    if fast:
        picked = _pick_method(x)
        if method is not None and _METHOD[0] == "auto" and picked in ("fft", "depthwise"):
            picked = method
        grad_w = depthwise_weight_grad(x, grad, weight, padding, picked)
    else:
        grad_w = _weight_grad_native(x, grad, weight, padding)
    # the bias gradient apart: inside convolution_backward it cost 5-10x the input gradient on the CPU
    return depthwise_input_grad(x, grad, weight, padding), grad_w, _channel_sums(grad)


def depthwise_input_grad(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor,
                         padding: Tuple[int, int]) -> torch.Tensor:
    """Input gradient of a stride-1 depth-wise convolution.

    With "same" padding of an odd kernel it is the forward convolution of the output gradient with
    the flipped kernel: on the CPU about half the time of ``convolution_backward``'s input branch, and
    it keeps the channels-last layout (no copy afterwards).
    """
    kh, kw = weight.shape[-2:]
    if kh % 2 and kw % 2 and tuple(padding) == (kh // 2, kw // 2) and grad.shape == x.shape:
        return F.conv2d(grad, weight.flip(-2, -1), None, padding=tuple(padding), groups=weight.shape[0])
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0], weight.shape[0],
        [True, False, False])[0]


def _channel_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-channel sums of an NCHW tensor, over rows of its NHWC view when it is stored channels-last."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).sum(0)
    return x.sum(dim=(0, 2, 3))


class _DepthwiseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: Tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], weight.shape[0],
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad, weight, ctx.padding, _pick_method(x))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)`` whose CPU training backward is faster.

    Parameters and keys are those of the ``nn.Conv2d`` it replaces.
    """

    def __init__(self, dim: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._fast_backward(x):
            return _DepthwiseConvFunction.apply(x, self.weight, self.bias, self.padding)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _fast_backward(self, x: torch.Tensor) -> bool:
        if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        return (
            _METHOD[0] != "native"
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.dim() == 4
            and not _cpu_autocast_enabled()
        )


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()
