"""FCViT: "A Close Look at Spatial Modeling: From Attention to Convolution" (Ma et al., 2022).

A MetaFormer whose token mixer replaces attention by a global context weighted with token-global
similarity, plus large depth-wise convolutions, in timm's layout (``stem``, ``stages.i.downsample`` /
``.blocks``, ``norm``, ``head``). A load-state-dict hook renames the published checkpoints' flat layout
(``patch_embed``, ``network.N``) at any prefix: a detector's ``backbone.``, an EMA copy, DDP.

Annotations stay evaluated: FX copies ``forward``'s into the traced graph, where a string would not script.
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

__all__ = ["FCViT", "FCViTBackbone", "FCViTStage", "FCViTConfig", "MODEL_CONFIGS", "PUBLISHED_WEIGHTS_URL",
           "PretrainedWeightsUnavailable", "checkpoint_filter_fn", "remap_state_dict", "strip_wrapper_prefixes"]

# where the authors publish the ImageNet checkpoints (the original repository's download links)
PUBLISHED_WEIGHTS_URL = "https://github.com/ma-xu/FCViT/releases"


def _published_part(index: str) -> Tuple[int, str]:
    """Stage and part of ``network.N`` in the published flat layout, which lists the blocks of stage 0,
    the downsample of stage 1, the blocks of stage 1, the downsample of stage 2, and so on."""
    stage, is_blocks = divmod(int(index) + 1, 2)
    return stage, "blocks" if is_blocks else "downsample"


def _rename_keys(module: nn.Module, state_dict: Dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: rename, in place and in order, the keys under ``prefix`` to this layout."""
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if key.startswith(prefix):
            key = prefix + module.published_key(key[len(prefix):])
        state_dict[key] = value


def remap_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """``state_dict`` with the keys ``model.load_state_dict`` would see once its FCViT parts renamed them."""
    out = dict(state_dict)
    for name, module in model.named_modules():  # parents first, as load_state_dict runs the hooks
        if isinstance(module, (FCViT, FCViTBackbone)):
            _rename_keys(module, out, f"{name}." if name else "")
    return out


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Drop DistributedDataParallel's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    return {key.removeprefix("module.").removeprefix("_orig_mod."): value for key, value in state_dict.items()}


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, Any]:
    """timm's pretrained filter: renamed before timm adapts ``stem.proj`` to other input channels."""
    return remap_state_dict(model, strip_wrapper_prefixes(state_dict))


class FCViTStage(nn.Module):
    """One stage: the 3x3/2 downsampling (none in the first stage), then the blocks."""

    def __init__(self, in_chs: int, out_chs: int, drop_path_rates: Sequence[float], downsample: bool,
                 **block_kwargs: Any) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = ConvEmbed(in_chs, out_chs, 3, 2, 1) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[FCViTBlock(out_chs, drop_path=rate, **block_kwargs) for rate in drop_path_rates])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _check_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}.")
    return global_pool


class FCViT(nn.Module):
    """FCViT image classifier with the full timm model interface."""

    def __init__(
            self, depths: Sequence[int] = (2, 2, 6, 2), dims: Sequence[int] = (64, 128, 320, 512),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4), in_chans: int = 3, num_classes: int = 1000,
            global_pool: str = "avg", drop_rate: float = 0.0, proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
            layer_scale_init_value: Optional[float] = 1e-5, act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Callable[[int], nn.Module] = GroupNorm1,
    ) -> None:
        super().__init__()
        if not (len(depths) == len(dims) == len(mlp_ratios)):
            raise ValueError("depths, dims and mlp_ratios need one entry per stage.")
        self.num_classes = num_classes
        self.global_pool = _check_pool(global_pool)
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = ConvEmbed(in_chans, dims[0], 7, 4, 3)
        # linear drop-path rule over the whole network: block i of n gets rate * i / (n - 1)
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        stages, start = [], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(FCViTStage(
                dims[i - 1] if i else dim, dim, rates[start:start + depth], downsample=i > 0,
                mlp_ratio=mlp_ratios[i], act_layer=act_layer, norm_layer=norm_layer, proj_drop=proj_drop_rate,
                layer_scale_init_value=layer_scale_init_value))
            start += depth
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f"stages.{i}") for i, d in enumerate(dims)]
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)
        self.register_load_state_dict_pre_hook(_rename_keys)

    @staticmethod
    def published_key(key: str) -> str:
        """A key of the published layout (or this one, unchanged) in this layout."""
        head, _, rest = key.partition(".")
        if head == "patch_embed":
            return f"stem.{rest}"
        index, _, rest = rest.partition(".")
        if head != "network" or not index.isdigit():
            return key
        stage, part = _published_part(index)
        return f"stages.{stage}.{part}.{rest}"

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        # each downsample is a group of its own, ordered before its stage's blocks (suffix 0 before 1)
        blocks = r"^stages\.(\d+)\.blocks" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)"
        return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)\.downsample", (0,)), (blocks, (1,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last from the stem on: see fcvit.models.layers for why
        return self.stem(x.contiguous(memory_format=torch.channels_last))

    def forward_intermediates(
            self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
            stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (strides 4..32); ``norm`` applies the classifier norm to the last stage's."""
        assert output_fmt == "NCHW", "Output format must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        intermediates: List[torch.Tensor] = []
        x = self.forward_stem(x)
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.forward_stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(-2, -1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FCViTBackbone(nn.Module):
    """FCViT for detection and segmentation: the stage outputs of an :class:`FCViT` trunk (its norm and
    head pruned), each through a GroupNorm of its own that the next stage does not see, as in the
    published dense-prediction models (whose ``norm0/2/4/6`` become ``norms.i``)."""

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), layer_scale_init_value: Optional[float] = 1e-6,
                 norm_layer: Callable[[int], nn.Module] = GroupNorm1, **kwargs: Any) -> None:
        """``kwargs`` go to :class:`FCViT` (shape, drop-path rate, ...)."""
        super().__init__()
        self.trunk = FCViT(num_classes=0, layer_scale_init_value=layer_scale_init_value, norm_layer=norm_layer,
                           **kwargs)
        num_stages = len(self.trunk.stages)
        self.trunk.prune_intermediate_layers(num_stages, prune_norm=True)
        self.out_indices = tuple(sorted(feature_take_indices(num_stages, list(out_indices))[0]))
        info = [self.trunk.feature_info[i] for i in self.out_indices]
        self.norms = nn.ModuleDict({str(i): norm_layer(f["num_chs"]) for i, f in zip(self.out_indices, info)})
        self.channels: List[int] = [f["num_chs"] for f in info]
        self.strides: List[int] = [f["reduction"] for f in info]
        self.out_channels = self.channels  # torchvision-style alias
        self.feature_info = [dict(f, module=f"trunk.{f['module']}") for f in info]
        self.register_load_state_dict_pre_hook(_rename_keys)

    @staticmethod
    def published_key(key: str) -> str:
        """Trunk keys (either layout) move under ``trunk.``; ``normN`` (the norm of ``network.N``) to ``norms``."""
        head, _, rest = key.partition(".")
        if head in ("patch_embed", "network", "stem", "stages"):
            return f"trunk.{key}"
        if head.startswith("norm") and head[4:].isdigit():
            return f"norms.{_published_part(head[4:])[0]}.{rest}"
        return key

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        maps = self.trunk.forward_intermediates(x, list(self.out_indices), stop_early=True, intermediates_only=True)
        return [norm(m) for norm, m in zip(self.norms.values(), maps)]


def _cfg(crop_pct: float) -> Dict[str, Any]:
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=crop_pct, crop_mode="center",
        interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stem.proj",
        classifier="head", license="apache-2.0", paper_ids="arXiv:2212.12552",
        paper_name="A Close Look at Spatial Modeling: From Attention to Convolution")


default_cfgs = generate_default_cfgs({name: _cfg(cfg.crop_pct) for name, cfg in MODEL_CONFIGS.items()})


class PretrainedWeightsUnavailable(UserError, RuntimeError):
    """``pretrained=True`` with no weights to load: a ``RuntimeError`` like timm's own, so code catching that
    keeps working, and a :class:`~fcvit.errors.UserError` that says where FCViT's weights are."""


def _has_weight_source(variant: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether timm has somewhere to load weights from (a state dict, file, URL, hub id or local folder)."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")).to_dict()
    return (cfg.get("state_dict") is not None or any(cfg.get(key) for key in ("file", "url", "hf_hub_id"))
            or cfg.get("source") in ("local-dir", "hf-hub"))


def _create_fcvit(variant: str, pretrained: bool = False, **kwargs: Any) -> FCViT:
    if pretrained and not _has_weight_source(variant, kwargs):
        raise PretrainedWeightsUnavailable(
            f"No weights are bundled for {variant}: download its published checkpoint from "
            f"{PUBLISHED_WEIGHTS_URL} and load it with timm.create_model('{variant}', checkpoint_path='FILE'), "
            f"or convert it once with 'fcvit convert FILE --output DIR' and load that folder with "
            f"timm.create_model('local-dir:DIR', pretrained=True).")
    cfg = MODEL_CONFIGS[variant]
    kwargs = {"depths": cfg.depths, "dims": cfg.dims, "mlp_ratios": cfg.mlp_ratios, **kwargs}
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs["depths"]))))
    return build_model_with_cfg(FCViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **kwargs)


def _entrypoint(variant: str, params_m: float) -> Callable[..., FCViT]:
    """timm's model function of ``variant``, registered as ``@register_model`` registers one."""
    def create(pretrained: bool = False, **kwargs: Any) -> FCViT:
        return _create_fcvit(variant, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = variant
    top1 = MODEL_CONFIGS[variant].published_top1
    create.__doc__ = f"{variant}: {params_m}M parameters, {top1}% ImageNet top-1 (published)."
    return register_model(create)


fcvit_tiny = _entrypoint("fcvit_tiny", 4.8)
fcvit_b12 = _entrypoint("fcvit_b12", 14.7)
fcvit_b24 = _entrypoint("fcvit_b24", 27.0)
fcvit_b48 = _entrypoint("fcvit_b48", 51.5)
