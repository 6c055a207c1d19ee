"""FCViT's own layers.

Tensors flow through the network as logical NCHW tensors stored channels-last (NHWC in memory). That
lets the depth-wise convolutions run on oneDNN/cuDNN's channels-last kernels while every 1x1
convolution becomes a plain matrix product over the channel dimension (``F.linear`` on a free
``permute`` view), which is markedly faster than a 1x1 ``conv2d`` on either layout. The global
context's per-group products are batched matrix products, and the second layer scale rides on the
channel mixer's last 1x1 convolution.

For float32 inference on the CPU (eval mode, autograd off, eager) the blocks switch to
``forward_fused``: the same function computed with oneDNN kernels that apply the GELU inside the
preceding convolution or matrix product, so the large hidden activations are written once instead
of three times. Training, CUDA, autocast, TorchScript, torch.compile and ONNX export see only the
plain PyTorch ops. Two more CPU measures apply in eager mode: the channel mixer runs its batch in
slices (:data:`CPU_SLICE_BYTES`) so its wide hidden activation stays in cache (inference) or under
the allocator's mmap threshold (training), and the 11x11 depth-wise convolutions compute their
weight gradient faster (:mod:`fcvit.models.depthwise`). docs/benchmarks.md has the measurements
behind these choices.

FX needs care because a traced graph runs eagerly too: had it recorded the plain ops, the same model
traced and untraced would differ in CPU inference by float rounding (timm's own model tests demand
``torch.equal``). So :class:`FCViTBlock` is registered as a leaf module in timm's FX registry: timm's
tracer (``timm.models._features_fx``, ``features_only=True, feature_cls='fx'``) records a call of
the block itself, which then makes the same choice of path as the untraced model, and since the fast
paths are ``@torch.jit.unused`` behind ``torch.jit.is_scripting()`` the traced graph still scripts.
A bare ``torch.fx.symbolic_trace`` without timm's leaf modules traces into the block and records the
plain ops.
"""

import math
from typing import Callable, Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath, register_notrace_module

from .depthwise import DepthwiseConv2d, _cpu_autocast_enabled

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
        std, mean = torch.std_mean(sim, dim=[1, 2], keepdim=True)  # unbiased std, as the original
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


def _is_exact_gelu(module: nn.Module) -> bool:
    return type(module) is nn.GELU and module.approximate == "none"


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
        self.fusable = all(_is_exact_gelu(m) for m in (self.fc1[1], self.act1, self.fc2[1], self.act2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gc1.add_context(x)
        x = self.act1(self.fc1(self.dw1(x)))
        x = self.gc2.add_context(x)
        x = self.act2(self.fc2(self.dw2(x)))
        return x

    @torch.jit.unused
    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on CPU with oneDNN: each 1x1 convolution carries its GELU as a post-op."""
        for gc, dw, fc in ((self.gc1, self.dw1, self.fc1), (self.gc2, self.dw2, self.fc2)):
            x = gc.add_context(x)
            x = _onednn_conv(x, dw.weight, dw.bias, dw.padding, dw.groups, "none")
            x = _onednn_pointwise(x, fc[0].weight.flatten(1), fc[0].bias, "gelu")
            x = _onednn_pointwise(x, fc[2].weight.flatten(1), fc[2].bias, "gelu")
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
        self.fusable = _is_exact_gelu(self.act)

    def forward(self, x: torch.Tensor, layer_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not torch.jit.is_scripting():
            slices = self._batch_slices(x)
            if slices > 1:
                return torch.cat([self._mix(part, layer_scale) for part in x.tensor_split(slices)])
        return self._mix(x, layer_scale)

    @torch.jit.unused
    def _batch_slices(self, x: torch.Tensor) -> int:
        """How many batch slices keep the hidden activation under :data:`CPU_SLICE_BYTES` (1 off the CPU)."""
        if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return 1
        limit = CPU_SLICE_BYTES["grad" if torch.is_grad_enabled() else "no_grad"]
        if limit <= 0 or x.device.type != "cpu" or x.dim() != 4 or x.shape[0] < 2:
            return 1
        sample_bytes = x[0].numel() // x.shape[1] * self.fc1.out_channels * x.element_size()
        per_slice = max(1, limit // sample_bytes)
        return -(-x.shape[0] // per_slice)

    def _mix(self, x: torch.Tensor, layer_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.drop1(self.act(self.dwconv(self.fc1(x))))
        weight, bias = self.fc2.weight.flatten(1), self.fc2.bias
        if layer_scale is not None:
            weight, bias = weight * layer_scale[:, None], bias * layer_scale
        return self.drop2(_pointwise(x, weight, bias))

    @torch.jit.unused
    def forward_fused(self, x: torch.Tensor, layer_scale: torch.Tensor) -> torch.Tensor:
        """Inference on CPU with oneDNN: the GELU rides on the depth-wise conv as a post-op."""
        slices = self._batch_slices(x)
        if slices > 1:
            return torch.cat([self._mix_fused(part, layer_scale) for part in x.tensor_split(slices)])
        return self._mix_fused(x, layer_scale)

    @torch.jit.unused
    def _mix_fused(self, x: torch.Tensor, layer_scale: torch.Tensor) -> torch.Tensor:
        x = _onednn_pointwise(x, self.fc1.weight.flatten(1), self.fc1.bias, "none")
        x = _onednn_conv(x, self.dwconv.weight, self.dwconv.bias, self.dwconv.padding, self.dwconv.groups, "gelu")
        weight = self.fc2.weight.flatten(1) * layer_scale[:, None]
        return _onednn_pointwise(x, weight, self.fc2.bias * layer_scale, "none")


@register_notrace_module
class FCViTBlock(nn.Module):
    """MetaFormer block: norm -> token mixer -> scaled residual, norm -> channel mixer -> scaled residual.

    In CPU float32 inference (eval mode, no autograd, eager) the block runs :meth:`forward_fused`,
    which computes the same function with fused oneDNN kernels and fewer temporaries; everywhere
    else (training, CUDA, autocast, TorchScript, torch.compile, ONNX export) it runs the plain
    PyTorch ops of :meth:`forward`. timm's FX tracer keeps the block as one call (a registered leaf),
    so a traced model chooses its path exactly as the untraced one does.
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
        if not torch.jit.is_scripting() and self._use_fused(x):
            return self.forward_fused(x)
        scale1 = self.layer_scale_1.reshape(-1, 1, 1)
        if self.training and self.has_drop_path:
            x = x + self.drop_path(scale1 * self.token_mixer(self.norm1(x)))
        else:
            x = torch.addcmul(x, scale1, self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.channel_mixer(self.norm2(x), self.layer_scale_2))

    @torch.jit.unused
    def _use_fused(self, x: torch.Tensor) -> bool:
        if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        return (
            _FUSED_INFERENCE[0]
            and not self.training
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 4
            and not _cpu_autocast_enabled()
            and self.token_mixer.fusable
            and self.channel_mixer.fusable
        )

    @torch.jit.unused
    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The block's inference function with fused oneDNN kernels; equal to :meth:`forward` in eval mode."""
        y = self.token_mixer.forward_fused(self.norm1(x))
        x = torch.addcmul(x, self.layer_scale_1.reshape(-1, 1, 1), y)
        y = self.channel_mixer.forward_fused(self.norm2(x), self.layer_scale_2)
        return y.add_(x)  # y is a fresh temporary: adding in place saves allocating the output


# The largest hidden activation (bytes) the channel mixer makes at once on the CPU; it runs its batch in
# slices above that. With autograd on, the limit sits under glibc's mmap threshold (32 MiB): larger
# blocks go back to the kernel when freed and are page-faulted in again on every step (about 2 ms
# per 4 MiB on the machine of docs/benchmarks.md). Without autograd nothing is kept for a backward
# pass, and slices small enough for the last-level cache let the depth-wise conv read the first 1x1's
# output, and the second 1x1 the conv's, from cache instead of memory. 0 turns slicing off.
CPU_SLICE_BYTES = {"grad": 32 * 1024 * 1024 - 4096, "no_grad": 4 * 1024 * 1024}


def set_cpu_slice_bytes(grad: Optional[int] = None, no_grad: Optional[int] = None) -> Dict[str, int]:
    """Set the channel mixer's CPU slice limits (with / without autograd); returns the previous ones."""
    previous = dict(CPU_SLICE_BYTES)
    if grad is not None:
        CPU_SLICE_BYTES["grad"] = max(0, int(grad))
    if no_grad is not None:
        CPU_SLICE_BYTES["no_grad"] = max(0, int(no_grad))
    return previous


# ---------------------------------------------------------------------------------------------------
# fused CPU inference kernels (oneDNN post-ops)

_FUSED_OPS_AVAILABLE = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
)
_FUSED_INFERENCE = [_FUSED_OPS_AVAILABLE]


def set_fused_inference(enabled: bool) -> bool:
    """Switch the fused CPU inference path of :class:`FCViTBlock` on or off; returns the previous setting.

    It is on by default where PyTorch has oneDNN. Turning it off runs the plain PyTorch ops everywhere
    (the benchmarks use this to show what the fusion is worth).
    """
    previous = _FUSED_INFERENCE[0]
    _FUSED_INFERENCE[0] = bool(enabled) and _FUSED_OPS_AVAILABLE
    return previous


def fused_inference_enabled() -> bool:
    return _FUSED_INFERENCE[0]


def _onednn_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], attr: str) -> torch.Tensor:
    """1x1 convolution (2-D weight) on an NCHW-shaped tensor through oneDNN, with ``attr`` ('none' or
    'gelu', the exact erf GELU) applied inside the kernel."""
    b, c, h, w = x.shape
    y = torch.ops.mkldnn._linear_pointwise(
        x.permute(0, 2, 3, 1).reshape(b * h * w, c), weight, bias, attr, [], "none" if attr == "gelu" else "")
    return y.view(b, h, w, weight.shape[0]).permute(0, 3, 1, 2)


def _onednn_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: Tuple[int, ...],
                 groups: int, attr: str) -> torch.Tensor:
    """Stride-1 convolution through oneDNN with ``attr`` ('none' or 'gelu') fused; keeps channels-last."""
    return torch.ops.mkldnn._convolution_pointwise(
        x.contiguous(memory_format=torch.channels_last), weight, bias, list(padding), [1, 1], [1, 1], groups,
        attr, [], "none" if attr == "gelu" else "")


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
