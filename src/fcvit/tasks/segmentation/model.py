"""Semantic FPN (the semantic branch of Panoptic FPN, Kirillov et al. 2019) on an FCViT backbone, as
MMSegmentation 0.19's ``FPN`` + ``FPNHead`` config of the published ADE20K numbers, initialisation included:
backbone (strides 4..32) -> xavier-initialised torchvision FPN (256 channels) -> per level, conv + norm + ReLU
blocks with 2x bilinear upsampling to stride 4 (128 channels) -> sum -> dropout -> 1x1 classifier (normal, std
0.01) -> bilinear upsampling to the input size.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from ...models import create_backbone
from ..detection.components import xavier_init_convs

__all__ = ["SYNC_BN_SCOPES", "SemanticFPNHead", "SemanticFPN", "create_segmenter"]

SYNC_BN_SCOPES = ("head", "all", "none")  # --sync-bn's old spellings


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels)
    raise ValueError(f"unknown norm '{kind}', expected 'bn' or 'gn'")


class SemanticFPNHead(nn.Module):
    """Merge FPN levels at the finest stride s_0 and classify every pixel there: level i gets max(1, log2(s_i /
    s_0)) conv blocks, each but the stride-s_0 one followed by a 2x upsampling, and the levels are summed."""

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, channels: int = 128,
                 dropout: float = 0.1, norm: str = "bn") -> None:
        super().__init__()
        self.strides = list(strides)
        self.scale_heads = nn.ModuleList()
        for stride in self.strides:
            steps = max(1, int(round(math.log2(stride / self.strides[0]))))
            layers: List[nn.Module] = []
            for step in range(steps):
                conv = nn.Conv2d(in_channels if step == 0 else channels, channels, 3, padding=1, bias=False)
                layers.append(nn.Sequential(conv, _norm(norm, channels), nn.ReLU(inplace=True)))
                if stride != self.strides[0]:
                    layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        for module in self.scale_heads.modules():  # MMCV ConvModule's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        merged = self.scale_heads[0](features[0])
        for head, feature in zip(self.scale_heads[1:], features[1:]):
            up = head(feature)
            if up.shape[-2:] != merged.shape[-2:]:  # inputs whose sides are not multiples of 32
                up = F.interpolate(up, size=merged.shape[-2:], mode="bilinear", align_corners=False)
            merged = merged + up
        return self.classifier(self.dropout(merged))


class SemanticFPN(nn.Module):
    """Backbone + FPN + Semantic FPN head; ``forward`` returns logits at the input resolution."""

    def __init__(self, backbone: nn.Module, num_classes: int, fpn_channels: int = 256, head_channels: int = 128,
                 dropout: float = 0.1, norm: str = "bn") -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        # MMSegmentation's init: torchvision's kaiming-uniform (a=1) is wider where fan-in < fan-out (laterals)
        self.fpn = FeaturePyramidNetwork(list(backbone.channels), fpn_channels)
        xavier_init_convs(self.fpn)
        self.head = SemanticFPNHead(fpn_channels, backbone.strides, num_classes, head_channels, dropout, norm)

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the finest FPN stride (4), before upsampling."""
        features = self.backbone(images)
        pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
        return self.head(list(pyramid.values()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def create_segmenter(
        backbone: str = "fcvit_b12",
        num_classes: int = 150,
        backbone_checkpoint: Optional[str | os.PathLike] = None,
        drop_path_rate: float = 0.0,
        fpn_channels: int = 256,
        head_channels: int = 128,
        dropout: float = 0.1,
        norm: str = "bn",
        backbone_kwargs: Optional[Dict[str, Any]] = None,
) -> SemanticFPN:
    """A Semantic FPN with the named FCViT backbone (optionally from a checkpoint); ``config`` keeps these
    arguments so a checkpoint can rebuild it. ``drop_path_rate`` 0 is the published configs'; ``backbone_kwargs``
    overrides the variant's shape (``depths``, ``dims``, ``mlp_ratios``), for tiny test networks."""
    net = create_backbone(backbone, checkpoint_path=backbone_checkpoint,
                          **{"drop_path_rate": drop_path_rate, **(backbone_kwargs or {})})
    model = SemanticFPN(net, num_classes, fpn_channels, head_channels, dropout, norm)
    model.config = dict(backbone=backbone, num_classes=num_classes, drop_path_rate=drop_path_rate,
                        fpn_channels=fpn_channels, head_channels=head_channels, dropout=dropout, norm=norm,
                        backbone_kwargs={k: list(v) if isinstance(v, (tuple, list)) else v
                                         for k, v in (backbone_kwargs or {}).items()})
    return model
