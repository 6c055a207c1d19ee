"""FCViT: "A Close Look at Spatial Modeling: From Attention to Convolution" (Ma et al., 2022).

A MetaFormer whose token mixer replaces attention by a global context weighted with token-global
similarity, plus large depth-wise convolutions. Module names follow the published checkpoints
(``patch_embed``, ``network.N``, ``norm``, ``head``) so those files load without remapping.

This module keeps its annotations evaluated (no ``from __future__ import annotations``): FX copies
the annotation of ``forward`` into the traced graph's signature, and a string annotation becomes a
global named ``_torch_Tensor_`` there that TorchScript cannot resolve, so the traced model would not
script.
"""
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Type, Union

import torch
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import UserError
from .configs import MODEL_CONFIGS, FCViTConfig
from .layers import ConvEmbed, FCViTBlock, GroupNorm1, init_weights

__all__ = [
    "FCViT", "FCViTBackbone", "FCViTStage", "FCViTConfig", "MODEL_CONFIGS", "PUBLISHED_WEIGHTS_URL",
    "PretrainedWeightsUnavailable",
]

# where the authors publish the ImageNet checkpoints (the original repository's download links)
PUBLISHED_WEIGHTS_URL = "https://github.com/ma-xu/FCViT/releases"


def _build_network(
        depths: Sequence[int],
        dims: Sequence[int],
        mlp_ratios: Sequence[float],
        drop_path_rate: float,
        proj_drop_rate: float,
        layer_scale_init_value: Optional[float],
        act_layer: Type[nn.Module],
        norm_layer: Callable[[int], nn.Module],
) -> nn.Sequential:
    """The published flat layout: stage 0, downsample, stage 1, downsample, stage 2, downsample, stage 3."""
    total = sum(depths)
    # linear drop-path rule over the whole network: block i of n gets rate * i / (n - 1)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    layers: List[nn.Module] = []
    cursor = 0
    for stage_idx, depth in enumerate(depths):
        if stage_idx > 0:
            layers.append(ConvEmbed(dims[stage_idx - 1], dims[stage_idx], 3, 2, 1))
        layers.append(FCViTStage(*[
            FCViTBlock(
                dims[stage_idx],
                mlp_ratio=mlp_ratios[stage_idx],
                act_layer=act_layer,
                norm_layer=norm_layer,
                proj_drop=proj_drop_rate,
                drop_path=rates[cursor + j],
                layer_scale_init_value=layer_scale_init_value,
            )
            for j in range(depth)
        ]))
        cursor += depth
    return nn.Sequential(*layers)


class FCViTStage(nn.Sequential):
    """The blocks of one stage; a plain Sequential (keys ``network.N.j``) with optional grad checkpointing."""

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self, x)
        for block in self:
            x = block(x)
        return x


class _FCViTTrunk(nn.Module):
    """Stem plus the four stages; shared by the classifier and the dense-prediction backbone."""

    def __init__(
            self,
            depths: Sequence[int],
            dims: Sequence[int],
            mlp_ratios: Sequence[float],
            in_chans: int,
            drop_path_rate: float,
            proj_drop_rate: float,
            layer_scale_init_value: Optional[float],
            act_layer: Type[nn.Module],
            norm_layer: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        if not (len(depths) == len(dims) == len(mlp_ratios)):
            raise ValueError("depths, dims and mlp_ratios need one entry per stage.")
        self.depths = tuple(depths)
        self.dims = tuple(dims)
        self.num_stages = len(depths)
        self.in_chans = in_chans
        self.patch_embed = ConvEmbed(in_chans, dims[0], 7, 4, 3)
        self.network = _build_network(
            depths, dims, mlp_ratios, drop_path_rate, proj_drop_rate, layer_scale_init_value, act_layer, norm_layer)
        self.feature_info = [
            dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"network.{2 * i}") for i in range(self.num_stages)
        ]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last from the stem on: see fcvit.models.layers for why
        return self.patch_embed(x.contiguous(memory_format=torch.channels_last))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.network:
            if isinstance(layer, FCViTStage):
                layer.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^network\.(\d+)" if coarse else [
                (r"^network\.(\d+)\.(\d+)\.", None),
                (r"^network\.(\d+)\.(?:proj|norm)", (0,)),
            ],
        )


class FCViT(_FCViTTrunk):
    """FCViT image classifier with the full timm model interface."""

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 6, 2),
            dims: Sequence[int] = (64, 128, 320, 512),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            layer_scale_init_value: Optional[float] = 1e-5,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Callable[[int], nn.Module] = GroupNorm1,
            **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(f"FCViT got unexpected arguments: {', '.join(sorted(kwargs))}.")
        super().__init__(
            depths, dims, mlp_ratios, in_chans, drop_path_rate, proj_drop_rate, layer_scale_init_value,
            act_layer, norm_layer)
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}.")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}.")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (strides 4..32); ``norm`` applies the classifier norm to the last one."""
        assert output_fmt == "NCHW", "Output format must be NCHW."
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        intermediates: List[torch.Tensor] = []
        last_idx = self.num_stages - 1
        x = self.forward_stem(x)
        stage_idx = 0
        for layer_idx, layer in enumerate(self.network):
            is_stage = layer_idx % 2 == 0
            if stop_early and not torch.jit.is_scripting() and layer_idx > 2 * max_index:
                break
            x = layer(x)
            if is_stage:
                stage_idx = layer_idx // 2
                if stage_idx in take_indices:
                    intermediates.append(self.norm(x) if norm and stage_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if stage_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        self.network = self.network[:2 * max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.network(self.forward_stem(x))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(-2, -1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FCViTBackbone(_FCViTTrunk):
    """FCViT for detection and segmentation: the four stage outputs, each with its own GroupNorm.

    The norms apply to the returned maps only; the next stage still receives the raw output, as in
    the published detection and segmentation models (keys ``norm0``, ``norm2``, ``norm4``, ``norm6``).
    """

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 6, 2),
            dims: Sequence[int] = (64, 128, 320, 512),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            in_chans: int = 3,
            drop_path_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            layer_scale_init_value: Optional[float] = 1e-6,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Callable[[int], nn.Module] = GroupNorm1,
    ) -> None:
        super().__init__(
            depths, dims, mlp_ratios, in_chans, drop_path_rate, proj_drop_rate, layer_scale_init_value,
            act_layer, norm_layer)
        self.out_indices = tuple(sorted(i % len(depths) for i in out_indices))
        for i in self.out_indices:
            self.add_module(f"norm{2 * i}", norm_layer(dims[i]))
        self.channels: List[int] = [dims[i] for i in self.out_indices]
        self.strides: List[int] = [4 * 2 ** i for i in self.out_indices]
        self.out_channels = self.channels  # torchvision-style alias
        self.feature_info = [self.feature_info[i] for i in self.out_indices]
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.forward_stem(x)
        outs: List[torch.Tensor] = []
        for name, layer in self.network.named_children():
            layer_idx = int(name)
            x = layer(x)
            if layer_idx % 2 == 0 and layer_idx // 2 in self.out_indices:
                outs.append(getattr(self, f"norm{layer_idx}")(x))
        return outs


def _cfg(crop_pct: float, **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2212.12552",
        "paper_name": "A Close Look at Spatial Modeling: From Attention to Convolution",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg(cfg.crop_pct) for name, cfg in MODEL_CONFIGS.items()})


def _checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    from .checkpoint import normalize_state_dict

    return normalize_state_dict(state_dict)


class PretrainedWeightsUnavailable(UserError, RuntimeError):
    """``pretrained=True`` with no weights to load: timm's own message would not say where FCViT's are.

    A ``RuntimeError`` like timm's, so code that catches timm's error keeps working, and a
    :class:`~fcvit.errors.UserError`, so the CLI prints it as one sentence.
    """


def _has_weight_source(pretrained_cfg: Mapping[str, Any]) -> bool:
    """Whether timm has somewhere to load weights from (a state dict, file, URL, hub id or local folder)."""
    return (
        pretrained_cfg.get("state_dict") is not None
        or any(pretrained_cfg.get(key) for key in ("file", "url", "hf_hub_id"))
        or pretrained_cfg.get("source") in ("local-dir", "hf-hub")
    )


def _check_pretrained_available(variant: str, kwargs: Mapping[str, Any]) -> None:
    """Fail before building the model when ``pretrained=True`` has no weights to load."""
    resolved = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    if not _has_weight_source(resolved.to_dict()):
        raise PretrainedWeightsUnavailable(
            f"No weights are bundled for {variant}: download its published checkpoint from "
            f"{PUBLISHED_WEIGHTS_URL} and load it with timm.create_model('{variant}', checkpoint_path='FILE'), "
            f"or convert it once with 'fcvit convert FILE --output DIR' and load that folder with "
            f"timm.create_model('local-dir:DIR', pretrained=True).")


def _create_fcvit(variant: str, pretrained: bool = False, **kwargs: Any) -> FCViT:
    if pretrained:
        _check_pretrained_available(variant, kwargs)
    cfg = MODEL_CONFIGS[variant]
    kwargs.setdefault("depths", cfg.depths)
    kwargs.setdefault("dims", cfg.dims)
    kwargs.setdefault("mlp_ratios", cfg.mlp_ratios)
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs["depths"]))))
    return build_model_with_cfg(
        FCViT,
        variant,
        pretrained,
        pretrained_filter_fn=_checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )


@register_model
def fcvit_tiny(pretrained: bool = False, **kwargs: Any) -> FCViT:
    """FCViT-tiny: 4.8M parameters, 74.9% ImageNet top-1 (published)."""
    return _create_fcvit("fcvit_tiny", pretrained, **kwargs)


@register_model
def fcvit_b12(pretrained: bool = False, **kwargs: Any) -> FCViT:
    """FCViT-B12: 14.7M parameters, 80.9% ImageNet top-1 (published)."""
    return _create_fcvit("fcvit_b12", pretrained, **kwargs)


@register_model
def fcvit_b24(pretrained: bool = False, **kwargs: Any) -> FCViT:
    """FCViT-B24: 27.0M parameters, 82.5% ImageNet top-1 (published)."""
    return _create_fcvit("fcvit_b24", pretrained, **kwargs)


@register_model
def fcvit_b48(pretrained: bool = False, **kwargs: Any) -> FCViT:
    """FCViT-B48: 51.5M parameters, 83.6% ImageNet top-1 (published)."""
    return _create_fcvit("fcvit_b48", pretrained, **kwargs)
