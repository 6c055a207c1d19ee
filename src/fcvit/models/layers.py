"""FCViT's own layers.

Tensors flow through the network as logical NCHW tensors stored channels-last (NHWC in memory). That
lets the depth-wise convolutions run on oneDNN/cuDNN's channels-last kernels while every 1x1
convolution becomes a plain matrix product over the channel dimension (``F.linear`` on a free
``permute`` view), which is markedly faster than a 1x1 ``conv2d`` on either layout. The global
context's per-group products are batched matrix products, and the second layer scale rides on the
channel mixer's last 1x1 convolution.

How it runs fast is not here: :mod:`fcvit.models.fast_paths` computes the same blocks with
custom operators that keep less for backward and fuse kernels (one switch,
:func:`~fcvit.models.fast_paths.set_fast_paths`), and :meth:`FCViTBlock.forward` is the single point
that hands a block over to it. The 11x11 depth-wise convolutions compute their CPU weight gradient
faster (:mod:`fcvit.models.depthwise`). docs/benchmarks.md has the measurements behind these choices.

FX needs care because a traced graph runs eagerly too: had it recorded the plain ops, the same model
traced and untraced would differ by float rounding (timm's own model tests demand ``torch.equal``).
So :class:`FCViTBlock` is registered as a leaf module in timm's FX registry: timm's tracer
(``timm.models._features_fx``, ``features_only=True, feature_cls='fx'``) records a call of the block
itself, which then makes the same choice of path as the untraced model, and since the dispatch is
``@torch.jit.unused`` behind ``torch.jit.is_scripting()`` the traced graph still scripts. A bare
``torch.fx.symbolic_trace`` without timm's leaf modules traces into the block and records the plain
ops.
"""

import math
from typing import Callable, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath, register_notrace_module

from . import fast_paths
from .depthwise import DepthwiseConv2d
# compatibility: these lived here before the fast paths had their own module
from .fast_paths import CPU_SLICE_BYTES, fused_inference_enabled, set_cpu_slice_bytes, set_fused_inference  # noqa: F401

__all__ = [
    "ConvEmbed",
    "PointwiseConv",
    "GroupNorm1",
    "GlobalContext",
    "TokenMixer",
    "ChannelMixer",
    "FCViTBlock",
    "set_fused_inference",
    "fused_inference_enabled",
    "set_cpu_slice_bytes",
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
        self.bias = nn.Parameter(torch.empty(out_chs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s default initialisation, so the layer is usable on its own (FCViT re-initialises)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.in_channels)
        nn.init.uniform_(self.bias, -bound, bound)

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

    Both per-group products are batched matrix products with a block-diagonal ``C x groups``
    operand (the global token, or the context vector, spread over a one-hot group mask), so neither
    the ``B x HW x C`` broadcast product nor its per-group sum is materialised, and
    :meth:`add_context` adds the context to its input inside the same ``baddbmm``.
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
        # channel c belongs to group c // group_dim; not saved: checkpoints keep the published keys
        group_mask = torch.eye(num_groups).repeat_interleave(self.group_dim, dim=0)  # C x G
        self.register_buffer("group_mask", group_mask, persistent=False)

    def _tokens_similarity_context(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``B x HW x C``, normalised similarity ``B x HW x G`` and the context spread ``B x G x C``."""
        b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a free view on a channels-last tensor
        g = tokens.mean(dim=1)  # B x C: the global token

        # token-global similarity per group as one product with a block-diagonal C x G matrix
        sim = torch.bmm(tokens, (g * self.scale).unsqueeze(-1) * self.group_mask)
        # (sim - mean) / (std + eps) * w + b as one pass over sim: sim * a + (b - mean * a)
        # unbiased std, as the original; a mean and a norm of the centred values are 2x faster on the CPU
        # than std_mean (forward and backward) and agree with it to float rounding
        mean = sim.mean(dim=[1, 2], keepdim=True)
        std = torch.linalg.vector_norm(sim - mean, dim=[1, 2], keepdim=True) / (sim.shape[1] * sim.shape[2] - 1) ** 0.5
        a = self.rescale_weight / (std + self.eps)  # B x 1 x G
        sim = torch.addcmul(self.rescale_bias - mean * a, sim, a)
        sim_map = self.similarity(sim.reshape(b, h, w, self.num_groups).permute(0, 3, 1, 2))
        sim = sim_map.permute(0, 2, 3, 1).reshape(b, h * w, self.num_groups)

        # competitive information bottleneck on the global token
        gc = self.fc1(g).unflatten(-1, (2, self.hidden)).amax(dim=1)
        gc = self.fc2(gc)
        spread = gc.unsqueeze(1) * self.group_mask.t()  # B x G x C, block-diagonal per sample
        return tokens, sim, spread

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The context alone: ``out[b, c, p] = sim[b, group(c), p] * gc[b, c]``."""
        tokens, sim, spread = self._tokens_similarity_context(x)
        out = torch.bmm(sim, spread)
        return out.reshape(x.shape[0], x.shape[2], x.shape[3], self.dim).permute(0, 3, 1, 2)

    def add_context(self, x: torch.Tensor) -> torch.Tensor:
        """``x + self(x)``, with the addition done by the output product itself."""
        tokens, sim, spread = self._tokens_similarity_context(x)
        out = torch.baddbmm(tokens, sim, spread)
        return out.reshape(x.shape[0], x.shape[2], x.shape[3], self.dim).permute(0, 3, 1, 2)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 convolution with a 2-D weight as a matrix product on the NHWC view of ``x``."""
    return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


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
        self.dw1 = DepthwiseConv2d(dim, kernel_size)
        self.fc1 = nn.Sequential(PointwiseConv(dim, hidden), act_layer(), PointwiseConv(hidden, dim))
        self.act1 = act_layer()
        self.gc2 = GlobalContext(dim, num_groups)
        self.dw2 = DepthwiseConv2d(dim, kernel_size)
        self.fc2 = nn.Sequential(PointwiseConv(dim, hidden), act_layer(), PointwiseConv(hidden, dim))
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gc1.add_context(x)
        x = self.act1(self.fc1(self.dw1(x)))
        x = self.gc2.add_context(x)
        x = self.act2(self.fc2(self.dw2(x)))
        return x


class ChannelMixer(nn.Module):
    """Inverted-bottleneck MLP with a 3x3 depth-wise conv in its hidden layer.

    ``layer_scale`` (the block's per-channel scale) is folded into the last 1x1 convolution, which is
    exact and saves a pass over the output.
    """

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

    def forward(self, x: torch.Tensor, layer_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.drop1(self.act(self.dwconv(self.fc1(x))))
        weight, bias = self.fc2.weight.flatten(1), self.fc2.bias
        if layer_scale is not None:
            weight, bias = weight * layer_scale[:, None], bias * layer_scale
        return self.drop2(_pointwise(x, weight, bias))


@register_notrace_module
class FCViTBlock(nn.Module):
    """MetaFormer block: norm -> token mixer -> scaled residual, norm -> channel mixer -> scaled residual.

    Wherever :func:`fcvit.models.fast_paths.block_applies` allows (eager or ``torch.compile``, CPU or
    CUDA, training or inference) :meth:`forward` hands the block to
    :func:`fcvit.models.fast_paths.block_forward`, which computes the same function with less
    memory and fused kernels; TorchScript, ONNX export and the switch turned off run the plain
    PyTorch ops below. timm's FX tracer keeps the block as one call (a registered leaf), so a traced
    model chooses its path exactly as the untraced one does.
    """

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
        self.has_drop_path = drop_path > 0.0
        init = 1.0 if layer_scale_init_value is None else layer_scale_init_value
        self.layer_scale_1 = nn.Parameter(init * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._fast_path_applies(x):
            return self._fast_forward(x)
        scale1 = self.layer_scale_1.reshape(-1, 1, 1)
        if self.training and self.has_drop_path:
            x = x + self.drop_path(scale1 * self.token_mixer(self.norm1(x)))
        else:
            x = torch.addcmul(x, scale1, self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.channel_mixer(self.norm2(x), self.layer_scale_2))

    @torch.jit.unused
    def _fast_path_applies(self, x: torch.Tensor) -> bool:
        return fast_paths.block_applies(self, x)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_paths.block_forward(self, x)


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
