"""FCViT's layers: the paper's math (Figure 2; docs/fcvit-architecture.md), as the original writes it.

Tensors flow as logical NCHW tensors stored channels-last: depth-wise convolutions run on channels-last
kernels and a 1x1 convolution is a matrix product over channels (:class:`PointwiseConv`). Speed lives in
:mod:`fcvit.ops`: a module built with the fast paths on (kept in its ``fused_ops``) hands its own
parameters to fused operators of the same function (the ``fused_forward`` methods), so a change of
structure is made here alone and a change of math in the operator too.

A traced FX graph also runs eagerly, and timm's tests demand ``torch.equal`` between traced and untraced
models. So :class:`FCViTBlock` is a leaf in timm's FX registry: the traced call chooses its path as the
untraced block does (behind ``torch.jit.is_scripting()``, so the graph still scripts).
"""
import math
from typing import Callable, Final, Optional, Type

import torch
from torch import nn

from timm.layers import DropPath, register_notrace_module

from .. import ops
from ..ops import DepthwiseConv2d
from ..ops import onnx_forms as forms

__all__ = ["ConvEmbed", "PointwiseConv", "GroupNorm1", "GlobalContext", "TokenMixer", "ChannelMixer", "FCViTBlock"]


class ConvEmbed(nn.Module):
    """Strided convolution + BatchNorm: the stem (7x7/4) and the downsamplers between stages (3x3/2)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class PointwiseConv(nn.Module):
    """A 1x1 convolution as a matrix product over the channels of the NHWC view (faster than a 1x1
    ``conv2d`` on either layout); the weight keeps the published ``(out, in, 1, 1)`` shape."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.in_channels = in_chs
        self.out_channels = out_chs
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_chs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s default initialisation, so the layer is usable on its own (FCViT re-initialises)."""
        nn.Conv2d.reset_parameters(self)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forms.pointwise_conv(x, self.weight, self.bias)  # one Conv in ONNX (fcvit.ops.onnx_forms)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with a single group: MetaFormer's layer norm over (C, H, W) for 2D maps."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(1, num_channels, eps=eps)


class GlobalContext(nn.Module):
    """Global context weighted by token-global similarity (what replaces attention in FCViT): each
    position is compared with the mean token per channel group, and the normalised similarity scales a
    global vector squeezed through a competitive (max-of-two) bottleneck. The maps, ``B x groups x H x
    W``, pass through ``self.similarity`` (an identity) for forward hooks to read."""

    fused_ops: Final[bool]

    def __init__(self, dim: int, num_groups: int = 8, reduction: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"GlobalContext needs channels divisible by {num_groups} groups, got {dim}.")
        self.dim = dim
        self.num_groups = num_groups
        self.group_dim = dim // num_groups
        self.scale = self.group_dim ** -0.5
        self.hidden = dim // reduction
        self.eps = eps
        self.rescale_weight = nn.Parameter(torch.ones(num_groups))
        self.rescale_bias = nn.Parameter(torch.zeros(num_groups))
        self.fc1 = nn.Linear(dim, 2 * self.hidden)
        self.fc2 = nn.Linear(self.hidden, dim)
        self.similarity = nn.Identity()
        self.fused_ops = ops.use_fused_ops()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The context alone: ``out[b, c, p] = sim[b, group(c), p] * gc[b, c]``."""
        # the steps that reshape to groups are spelled for ONNX apart (fcvit.ops.onnx_forms), the same math
        g = x.mean(dim=(2, 3))  # B x C: the global token
        sim = forms.group_sums(x, g, self.num_groups, self.dim, self.scale)  # B x groups x H x W: per-group x . g
        mean, std = forms.sample_mean_std(sim)  # normalised per sample, with the unbiased std as the original
        sim = (sim - mean) / (std + self.eps)
        sim = self.similarity(sim * self.rescale_weight.reshape(1, -1, 1, 1) + self.rescale_bias.reshape(1, -1, 1, 1))
        gc = self.fc2(forms.max_of_halves(self.fc1(g), self.hidden))  # competitive bottleneck
        return forms.spread_groups(sim, gc, self.num_groups, self.dim)

    def add_context(self, x: torch.Tensor) -> torch.Tensor:
        """``x + self(x)``; fused, in one pass (:func:`fcvit.ops.add_global_context`)."""
        if self.fused_ops and not torch.jit.is_scripting() and not ops.recording(x):
            return ops.add_global_context(x, self.similarity, self.rescale_weight, self.rescale_bias, self.fc1.weight,
                                          self.fc1.bias, self.fc2.weight, self.fc2.bias, self.num_groups, self.eps)
        return x + self(x)


class TokenMixer(nn.Module):
    """Two rounds of (global context, 11x11 depth-wise conv, bottleneck 1x1 MLP)."""

    def __init__(self, dim: int, kernel_size: int = 11, act_layer: Type[nn.Module] = nn.GELU,
                 num_groups: int = 8) -> None:
        super().__init__()
        hidden = max(dim // 8, 16)
        self.gc1 = GlobalContext(dim, num_groups)
        self.dw1 = DepthwiseConv2d(dim, kernel_size)
        self.fc1 = nn.Sequential(PointwiseConv(dim, hidden), act_layer(), PointwiseConv(hidden, dim))
        self.act1 = act_layer()
        self.gc2 = GlobalContext(dim, num_groups)
        self.dw2 = DepthwiseConv2d(dim, kernel_size)
        self.fc2 = nn.Sequential(PointwiseConv(dim, hidden), act_layer(), PointwiseConv(hidden, dim))
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gc1(x)
        x = self.act1(self.fc1(self.dw1(x)))
        x = x + self.gc2(x)
        return self.act2(self.fc2(self.dw2(x)))

    @torch.jit.unused
    def fused_forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                      scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``self(x)`` with exact GELUs on :func:`fcvit.ops.conv_mlp`; given ``residual`` and ``scale``,
        ``residual + scale * self(x)`` (the block's first residual, kept nothing of for backward)."""
        x = ops.conv_mlp(self.gc1.add_context(x), *self._round_weights(self.dw1, self.fc1))
        return ops.conv_mlp(self.gc2.add_context(x), *self._round_weights(self.dw2, self.fc2), residual, scale)

    @staticmethod
    def _round_weights(dw: nn.Conv2d, fc: nn.Sequential):
        return dw.weight, dw.bias, fc[0].weight.flatten(1), fc[0].bias, fc[2].weight.flatten(1), fc[2].bias


class ChannelMixer(nn.Module):
    """Inverted-bottleneck MLP with a 3x3 depth-wise conv in its hidden layer."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, act_layer: Type[nn.Module] = nn.GELU,
                 drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = PointwiseConv(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = PointwiseConv(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.dwconv(self.fc1(x))))
        return self.drop2(self.fc2(x))

    @torch.jit.unused
    def fused_forward(self, x: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor) -> torch.Tensor:
        """``scale * self(norm(x))`` with an exact GELU and no dropout, as one :func:`fcvit.ops.channel_mixer`."""
        return ops.channel_mixer(x, norm.weight, norm.bias, norm.num_groups, norm.eps, self.fc1.weight.flatten(1),
                                 self.fc1.bias, self.dwconv.weight, self.dwconv.bias, self.fc2.weight.flatten(1),
                                 self.fc2.bias, scale)


@register_notrace_module
class FCViTBlock(nn.Module):
    """MetaFormer block: norm -> token mixer -> scaled residual, norm -> channel mixer -> scaled residual.

    Built with the fast paths on (and the exact GELU and GroupNorm the operators compute), it runs them
    where :meth:`fuses` says: eager or compiled, CPU or CUDA, training or inference."""

    fused_ops: Final[bool]

    def __init__(self, dim: int, mlp_ratio: float = 4.0, act_layer: Type[nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = GroupNorm1, proj_drop: float = 0.0,
                 drop_path: float = 0.0, layer_scale_init_value: Optional[float] = 1e-5) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.token_mixer = TokenMixer(dim, act_layer=act_layer)
        self.norm2 = norm_layer(dim)
        self.channel_mixer = ChannelMixer(dim, mlp_ratio, act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        init = 1.0 if layer_scale_init_value is None else layer_scale_init_value
        self.layer_scale_1 = nn.Parameter(init * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(init * torch.ones(dim))
        self.has_drop_path = drop_path > 0.0
        self.has_dropout = proj_drop > 0.0
        self.fused_ops = (ops.use_fused_ops() and act_layer is nn.GELU
                          and type(self.norm2).forward is nn.GroupNorm.forward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.fuses(x):
            return self._fused_forward(x)
        x = x + self.drop_path(self.layer_scale_1.reshape(-1, 1, 1) * self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2.reshape(-1, 1, 1) * self.channel_mixer(self.norm2(x)))

    @torch.jit.unused
    def fuses(self, x: torch.Tensor) -> bool:
        """Whether this call runs the fused operators: built with them, not recorded, no dropout in training."""
        return self.fused_ops and not ops.recording(x) and not (self.training and self.has_dropout)

    @torch.jit.unused
    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.training and self.has_drop_path:  # the random draws stay outside the operators
            x = x + self.drop_path(self.layer_scale_1.reshape(-1, 1, 1) * self.token_mixer.fused_forward(y))
            return x + self.drop_path(self.channel_mixer.fused_forward(x, self.norm2, self.layer_scale_2))
        x = self.token_mixer.fused_forward(y, residual=x, scale=self.layer_scale_1)
        return self.channel_mixer.fused_forward(x, self.norm2, self.layer_scale_2) + x


def init_weights(module: nn.Module) -> None:
    """The original initialisation: He-normal (fan-out) convs, truncated-normal linears."""
    if isinstance(module, (nn.Conv2d, PointwiseConv)):
        w = module.weight
        fan_out = w.shape[0] * w.shape[2] * w.shape[3] // getattr(module, "groups", 1)
        nn.init.normal_(w, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)
