"""FCViT's own layers.

Tensors flow through the network as logical NCHW tensors stored channels-last (NHWC in memory). That
lets the depth-wise convolutions run on oneDNN/cuDNN's channels-last kernels while every 1x1
convolution becomes a plain matrix product over the channel dimension (``F.linear`` on a free
``permute`` view), which is markedly faster than a 1x1 ``conv2d`` on either layout.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Type

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath

__all__ = [
    "ConvEmbed",
    "PointwiseConv",
    "GroupNorm1",
    "GlobalContext",
    "TokenMixer",
    "ChannelMixer",
    "FCViTBlock",
]


class ConvEmbed(nn.Module):
    """Strided convolution + BatchNorm: the stem (7x7/4) and the downsamplers between stages (3x3/2)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class PointwiseConv(nn.Module):
    """A 1x1 convolution computed as a matrix product over channels.

    The weight keeps the ``(out, in, 1, 1)`` shape of the published checkpoints, so their keys load
    unchanged, but the product runs through ``F.linear`` on the NHWC view of the input.
    """

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.in_channels = in_chs
        self.out_channels = out_chs
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with a single group: MetaFormer's layer norm over (C, H, W) for 2D maps."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(1, num_channels, eps=eps)


class GlobalContext(nn.Module):
    """Global context weighted by token-global similarity (what replaces attention in FCViT).

    Every position is compared with the image's mean token, per channel group; the normalised
    similarity then scales a global vector that was squeezed through a competitive (max-of-two)
    bottleneck. The similarity maps, shaped ``B x groups x H x W``, pass through ``self.similarity``
    (an identity) so that forward hooks can read them without changing the output.
    """

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        x_nhwc = x.permute(0, 2, 3, 1)  # free view on a channels-last tensor
        g = x_nhwc.mean(dim=(1, 2))  # B x C: the global token

        # token-global similarity per group: B x H x W x G
        sim = (x_nhwc * g[:, None, None, :]).unflatten(-1, (self.num_groups, self.group_dim)).sum(-1)
        sim = sim * self.scale
        flat = sim.reshape(b, -1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1)  # unbiased, as the original
        sim = (sim - mean[:, None, None, None]) / (std[:, None, None, None] + self.eps)
        sim = sim * self.rescale_weight + self.rescale_bias
        sim = self.similarity(sim.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

        # competitive information bottleneck on the global token
        gc = self.fc1(g).unflatten(-1, (2, self.hidden)).amax(dim=1)
        gc = self.fc2(gc)

        out = sim.unsqueeze(-1) * gc.reshape(b, 1, 1, self.num_groups, self.group_dim)
        return out.reshape(b, h, w, self.dim).permute(0, 3, 1, 2)


class TokenMixer(nn.Module):
    """Two rounds of (global context, 11x11 depth-wise conv, bottleneck 1x1 MLP)."""

    def __init__(
            self,
            dim: int,
            kernel_size: int = 11,
            act_layer: Type[nn.Module] = nn.GELU,
            num_groups: int = 8,
    ) -> None:
        super().__init__()
        hidden = max(dim // 8, 16)
        self.gc1 = GlobalContext(dim, num_groups)
        self.dw1 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.fc1 = nn.Sequential(PointwiseConv(dim, hidden), act_layer(), PointwiseConv(hidden, dim))
        self.act1 = act_layer()
        self.gc2 = GlobalContext(dim, num_groups)
        self.dw2 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.fc2 = nn.Sequential(PointwiseConv(dim, hidden), act_layer(), PointwiseConv(hidden, dim))
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gc1(x)
        x = self.act1(self.fc1(self.dw1(x)))
        x = x + self.gc2(x)
        x = self.act2(self.fc2(self.dw2(x)))
        return x


class ChannelMixer(nn.Module):
    """Inverted-bottleneck MLP with a 3x3 depth-wise conv in its hidden layer."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.0,
            act_layer: Type[nn.Module] = nn.GELU,
            drop: float = 0.0,
    ) -> None:
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


class FCViTBlock(nn.Module):
    """MetaFormer block: norm -> token mixer -> scaled residual, norm -> channel mixer -> scaled residual."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.0,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Callable[[int], nn.Module] = GroupNorm1,
            proj_drop: float = 0.0,
            drop_path: float = 0.0,
            layer_scale_init_value: Optional[float] = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.token_mixer = TokenMixer(dim, act_layer=act_layer)
        self.norm2 = norm_layer(dim)
        self.channel_mixer = ChannelMixer(dim, mlp_ratio, act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        init = 1.0 if layer_scale_init_value is None else layer_scale_init_value
        self.layer_scale_1 = nn.Parameter(init * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.token_mixer(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.channel_mixer(self.norm2(x)))
        return x


def init_weights(module: nn.Module) -> None:
    """The original initialisation: He-normal (fan-out) convs, truncated-normal linears."""
    if isinstance(module, (nn.Conv2d, PointwiseConv)):
        w = module.weight
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        if isinstance(module, nn.Conv2d):
            fan_out //= module.groups
        nn.init.normal_(w, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
