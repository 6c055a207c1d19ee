"""Mask R-CNN with an FCViT backbone and an FPN, built from torchvision's maintained detection models.

The FCViT backbone gives four GroupNorm-ed maps (strides 4, 8, 16, 32); torchvision's
``FeaturePyramidNetwork`` turns them into 256-channel maps and ``LastLevelMaxPool`` adds a fifth level
(stride 64) by max-pooling the last one, which is the layout of the published FCViT detection config and
of ``torchvision.models.detection.maskrcnn_resnet50_fpn``. Everything after the FPN (anchors, RPN,
``MultiScaleRoIAlign`` box and mask heads, image resizing and normalisation) is torchvision's default.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ...models import FCViTBackbone, create_backbone
from ...models.fcvit import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["FCViTFPN", "build_mask_rcnn", "count_parameters", "FPN_CHANNELS"]

FPN_CHANNELS = 256


class FCViTFPN(nn.Module):
    """FCViT body plus FPN: the ``backbone`` torchvision's ``GeneralizedRCNN`` expects.

    Returns an ``OrderedDict`` with keys '0'..'3' (strides 4..32) and 'pool' (stride 64), each with
    ``out_channels`` channels; the names match the feature maps ``MaskRCNN``'s default RoI poolers read.
    """

    def __init__(self, body: FCViTBackbone, out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps = self.body(images)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def build_mask_rcnn(
        backbone: str,
        num_classes: int,
        pretrained_backbone: Optional[str | os.PathLike] = None,
        min_size: int = 800,
        max_size: int = 1333,
        drop_path_rate: float = 0.0,
        fpn_channels: int = FPN_CHANNELS,
        representation_size: int = 1024,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        **mask_rcnn_kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN + FPN on ``fcvit.create_backbone(backbone)``.

    ``num_classes`` counts the object classes without the background (COCO: 80); torchvision's heads get
    one more output for it. ``pretrained_backbone`` is an ImageNet FCViT checkpoint (its classifier is
    dropped). Images are normalised with the ImageNet mean and std the backbone was trained with.
    ``fpn_channels`` (256) and ``representation_size`` (1024, the width of the two-layer box head) are
    the recipe's; smaller values (the mask head follows ``fpn_channels``) make quick models for tests. ``backbone_kwargs`` (e.g. smaller
    ``depths``/``dims``) and ``mask_rcnn_kwargs`` (e.g. ``box_batch_size_per_image``) pass through to
    ``create_backbone`` and ``MaskRCNN``.
    """
    body = create_backbone(backbone, checkpoint_path=pretrained_backbone, drop_path_rate=drop_path_rate,
                           **(backbone_kwargs or {}))
    mask_rcnn_kwargs.setdefault("image_mean", list(IMAGENET_DEFAULT_MEAN))
    mask_rcnn_kwargs.setdefault("image_std", list(IMAGENET_DEFAULT_STD))
    classes = num_classes + 1
    if (fpn_channels, representation_size) != (FPN_CHANNELS, 1024):
        # torchvision builds the default heads for 256 channels; narrower ones are passed in whole
        pool = 7  # MaskRCNN's default box RoIAlign output size
        mask_rcnn_kwargs.setdefault("box_head", TwoMLPHead(fpn_channels * pool * pool, representation_size))
        mask_rcnn_kwargs.setdefault("box_predictor", FastRCNNPredictor(representation_size, classes))
        mask_rcnn_kwargs.setdefault("mask_head", MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1))
        mask_rcnn_kwargs.setdefault("mask_predictor", MaskRCNNPredictor(fpn_channels, fpn_channels, classes))
        classes = None
    return MaskRCNN(FCViTFPN(body, fpn_channels), num_classes=classes, min_size=min_size, max_size=max_size,
                    **mask_rcnn_kwargs)


def count_parameters(model: nn.Module, parts: Sequence[str] = ()) -> Dict[str, int]:
    """Parameters in total and per named sub-module (e.g. 'backbone.body', 'roi_heads.box_head')."""
    counts = {"total": sum(p.numel() for p in model.parameters())}
    modules = dict(model.named_modules())
    for name in parts:
        counts[name] = sum(p.numel() for p in modules[name].parameters())
    return counts
