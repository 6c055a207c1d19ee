"""Mask R-CNN with an FCViT backbone and an FPN (strides 4..32, plus a max-pooled stride-64 level), built from
torchvision's detection models. The defaults reproduce the published MMDetection 2.19 config; where it differs
from torchvision, :mod:`.components` overrides the one step concerned and a keyword switches back to
torchvision's behaviour (``TORCHVISION_SETTINGS``).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ...errors import UserError
from ...models import FCViTBackbone, create_backbone
from ...models.fcvit import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .components import (
    AlignedMultiScaleRoIAlign,
    FlooredMatcher,
    GridAnchorGenerator,
    MaskRoIHeads,
    ProposalNetwork,
    mmdet_head_init,
    xavier_init_convs,
)

__all__ = ["FCViTFPN", "build_mask_rcnn", "count_parameters", "FPN_CHANNELS", "PAPER_SETTINGS",
           "TORCHVISION_SETTINGS", "with_legacy_settings"]

FPN_CHANNELS = 256
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one scale, 8 x stride
ANCHOR_STRIDES = (4, 8, 16, 32, 64)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
ROI_STRIDES = (4, 8, 16, 32)
RPN_LOW_QUALITY_FLOOR = 0.3  # MMDetection's rpn assigner min_pos_iou
ROI_LOW_QUALITY_FLOOR = 0.5  # ... and its rcnn assigner's

# The paper's config (the defaults) and torchvision's choice for each setting where the two differ.
PAPER_SETTINGS: Dict[str, Any] = dict(box_loss="l1", roi_align="aligned", matcher="mmdet", anchors="mmdet",
                                      proposals_train=1000, fpn_init="xavier", head_init="mmdet")
TORCHVISION_SETTINGS: Dict[str, Any] = dict(box_loss="smooth_l1", roi_align="legacy", matcher="torchvision",
                                            anchors="torchvision", proposals_train=2000, fpn_init="kaiming",
                                            head_init="torchvision")


class FCViTFPN(nn.Module):
    """FCViT body plus FPN, the ``backbone`` torchvision's ``GeneralizedRCNN`` expects: maps '0'..'3' (strides
    4..32) and 'pool' (64). ``init`` 'xavier' is MMDetection's FPN init, 'kaiming' torchvision's (a=1)."""

    def __init__(self, body: FCViTBackbone, out_channels: int = FPN_CHANNELS, init: str = "xavier") -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        if init == "xavier":
            xavier_init_convs(self.fpn)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps = self.body(images)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def _check_settings(settings: Mapping[str, Any]) -> None:
    for name, value in settings.items():
        allowed = (PAPER_SETTINGS[name], TORCHVISION_SETTINGS[name])
        if name == "proposals_train":
            if not isinstance(value, int) or value < 1:
                raise UserError(f"proposals_train {value!r} must be a positive number of proposals (the paper's "
                                "1000, torchvision's 2000).")
        elif value not in allowed:
            raise UserError(f"{name} '{value}' is not one of {allowed[0]} (the paper's) or {allowed[1]} "
                            "(torchvision's).")


def with_legacy_settings(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A stored ``model_config`` with torchvision's value for every setting it lacks: checkpoints written
    before these settings existed were trained with torchvision's defaults."""
    return {**TORCHVISION_SETTINGS, **config}


def _poolers(roi_align: str) -> Dict[str, MultiScaleRoIAlign]:
    names = [str(i) for i in range(len(ROI_STRIDES))]
    if roi_align == "aligned":
        return dict(box_roi_pool=AlignedMultiScaleRoIAlign(names, 7, ROI_STRIDES),
                    mask_roi_pool=AlignedMultiScaleRoIAlign(names, 14, ROI_STRIDES))
    return dict(box_roi_pool=MultiScaleRoIAlign(names, 7, sampling_ratio=2),
                mask_roi_pool=MultiScaleRoIAlign(names, 14, sampling_ratio=2))


def _anchor_generator(anchors: str) -> AnchorGenerator:
    sizes = tuple((s,) for s in ANCHOR_SIZES)
    ratios = (ANCHOR_RATIOS,) * len(ANCHOR_SIZES)
    if anchors == "mmdet":
        return GridAnchorGenerator(sizes, ratios, ANCHOR_STRIDES)
    return AnchorGenerator(sizes, ratios)


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
        box_loss: str = "l1",
        roi_align: str = "aligned",
        matcher: str = "mmdet",
        anchors: str = "mmdet",
        proposals_train: int = 1000,
        fpn_init: str = "xavier",
        head_init: str = "mmdet",
        **mask_rcnn_kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN + FPN on ``fcvit.create_backbone(backbone)``, set up as the paper's MMDetection config.

    ``num_classes`` excludes the background (COCO: 80); images are normalised with the ImageNet statistics the
    ``pretrained_backbone`` was trained with. ``box_loss`` .. ``head_init`` take the paper's values (the defaults,
    ``PAPER_SETTINGS``) or torchvision's (``TORCHVISION_SETTINGS``), each explained in :mod:`.components`.
    ``backbone_kwargs`` and ``mask_rcnn_kwargs`` pass through to ``create_backbone`` and ``MaskRCNN``.
    """
    settings = dict(box_loss=box_loss, roi_align=roi_align, matcher=matcher, anchors=anchors,
                    proposals_train=proposals_train, fpn_init=fpn_init, head_init=head_init)
    _check_settings(settings)
    body = create_backbone(backbone, checkpoint_path=pretrained_backbone, drop_path_rate=drop_path_rate,
                           **(backbone_kwargs or {}))
    mask_rcnn_kwargs.setdefault("image_mean", list(IMAGENET_DEFAULT_MEAN))
    mask_rcnn_kwargs.setdefault("image_std", list(IMAGENET_DEFAULT_STD))
    classes = num_classes + 1
    anchor_generator = _anchor_generator(anchors)
    parts: Dict[str, Any] = dict(
        rpn_anchor_generator=anchor_generator,
        rpn_head=RPNHead(fpn_channels, anchor_generator.num_anchors_per_location()[0]),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, classes),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, classes),
        **_poolers(roi_align))
    if head_init == "mmdet":
        mmdet_head_init(parts["box_head"], parts["box_predictor"], parts["mask_predictor"])
    for name, part in parts.items():
        mask_rcnn_kwargs.setdefault(name, part)
    mask_rcnn_kwargs.setdefault("rpn_post_nms_top_n_train", proposals_train)
    model = MaskRCNN(FCViTFPN(body, fpn_channels, fpn_init), num_classes=None, min_size=min_size,
                     max_size=max_size, **mask_rcnn_kwargs)
    model.rpn = ProposalNetwork.from_torchvision(model.rpn, box_loss)
    model.roi_heads = MaskRoIHeads.from_torchvision(model.roi_heads, box_loss, roi_align)
    if matcher == "mmdet":
        for part, floor in ((model.rpn, RPN_LOW_QUALITY_FLOOR), (model.roi_heads, ROI_LOW_QUALITY_FLOOR)):
            old = part.proposal_matcher
            part.proposal_matcher = FlooredMatcher(old.high_threshold, old.low_threshold, floor)
    return model


def count_parameters(model: nn.Module, parts: Sequence[str] = ()) -> Dict[str, int]:
    """Parameters in total and per named sub-module (e.g. 'backbone.body', 'roi_heads.box_head')."""
    modules = dict(model.named_modules())
    counts = {name: sum(p.numel() for p in modules[name].parameters()) for name in parts}
    return {"total": sum(p.numel() for p in model.parameters()), **counts}
