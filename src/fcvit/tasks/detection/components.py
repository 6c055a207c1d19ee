"""Where the paper's MMDetection 2.19 Mask R-CNN differs from torchvision's defaults: each class subclasses a
torchvision building block and overrides only the step that differs (torchvision's is a constructor argument
and a ``fcvit detect train`` flag away); value by value in ``docs/reproduction.md``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, roi_align

__all__ = ["FlooredMatcher", "GridAnchorGenerator", "AlignedMultiScaleRoIAlign", "Float32BoxCoder", "ProposalNetwork",
           "MaskRoIHeads", "l1_box_loss", "binary_mask_targets", "aligned_mask_loss", "xavier_init_convs",
           "mmdet_head_init"]

FINEST_SCALE = 56  # MMDetection's SingleRoIExtractor: boxes under 112 px (sqrt of area) pool from stride 4


class FlooredMatcher(Matcher):
    """MMDetection's low-quality matching (``MaxIoUAssigner``): every prediction reaching a ground-truth box's
    best IoU, if that is at least ``floor``, is matched to it, later boxes overriding earlier ones as
    MMDetection's loop does; torchvision has no floor and matches them to their own best box."""

    def __init__(self, high_threshold: float, low_threshold: float, floor: float) -> None:
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches=True)
        self.floor = floor

    def set_low_quality_matches_(self, matches: Tensor, all_matches: Tensor, match_quality_matrix: Tensor) -> None:
        best_per_gt = match_quality_matrix.max(dim=1).values
        reaches_best = (match_quality_matrix == best_per_gt[:, None]) & (best_per_gt >= self.floor)[:, None]
        gt_index = torch.arange(len(best_per_gt), device=matches.device)[:, None].expand_as(reaches_best)
        last_gt = torch.where(reaches_best, gt_index, torch.full_like(gt_index, -1)).max(dim=0).values
        update = last_gt >= 0
        matches[update] = last_gt[update]


class GridAnchorGenerator(AnchorGenerator):
    """MMDetection 2.x anchors: fractional corners centred on ``k x stride``, fixed strides, float32; torchvision
    rounds corners and divides the padded size (an 800-px side gets a stride-64 level of stride 61)."""

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(self, scales: List[int], aspect_ratios: List[float], dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> Tensor:
        scales_t = torch.as_tensor(scales, dtype=torch.float32, device=device)
        root_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=torch.float32, device=device))  # height / width
        heights = (root_ratios[:, None] * scales_t[None, :]).reshape(-1)
        widths = (1 / root_ratios[:, None] * scales_t[None, :]).reshape(-1)
        return torch.stack([-widths, -heights, widths, heights], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        device = feature_maps[0].device
        levels = []
        for feature, stride, cell in zip(feature_maps, self.strides, self.cell_anchors):
            ys, xs = (torch.arange(n, dtype=torch.float32, device=device) * stride for n in feature.shape[-2:])
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 1, 4)
            levels.append((centres + cell.to(device).reshape(1, -1, 4)).reshape(-1, 4))
        anchors = torch.cat(levels)
        return [anchors for _ in image_list.image_sizes]


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """MMDetection's ``SingleRoIExtractor``: ``aligned=True``, adaptive sampling, level
    ``floor(log2(sqrt(area) / 56))`` clamped, at the given ``strides`` (no scale inferred from image sizes)."""

    def __init__(self, featmap_names: List[str], output_size: int, strides: Sequence[int]) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio=0)
        self.strides = tuple(int(s) for s in strides)
        self.aligned = True

    def levels(self, boxes: Tensor) -> Tensor:
        """Pyramid level (0 = stride 4) of each box, by the square root of its area."""
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        level = torch.floor(torch.log2(scale / FINEST_SCALE + 1e-6))
        return level.clamp(0, len(self.strides) - 1).to(torch.int64)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.levels(rois[:, 1:])
        pooled = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            index = torch.where(levels == level)[0]
            out = roi_align(feature, rois[index], self.output_size, spatial_scale=1.0 / stride,
                            sampling_ratio=self.sampling_ratio, aligned=True)
            pooled[index] = out.to(pooled.dtype)
        return pooled

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}, aligned=True, strides={self.strides})")


class Float32BoxCoder(BoxCoder):
    """Decodes in float32: float16 deltas would round 1,333-px coordinates to half-pixel steps."""

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        return super().decode(rel_codes.float(), [b.float() for b in boxes])


def l1_box_loss(deltas: Tensor, targets: Tensor, normaliser: int) -> Tensor:
    """MMDetection's ``L1Loss`` summed over the positives, ``avg_factor`` = the sampled boxes."""
    return F.l1_loss(deltas.float(), targets.float(), reduction="sum") / max(normaliser, 1)


class ProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with a choice of box loss: ``l1`` (the paper's) or ``smooth_l1`` (beta 1/9)."""

    def __init__(self, *args, box_loss: str = "l1", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.box_loss = box_loss
        self.box_coder = Float32BoxCoder(self.box_coder.weights)

    @classmethod
    def from_torchvision(cls, rpn: RegionProposalNetwork, box_loss: str) -> "ProposalNetwork":
        """The same anchors, head, thresholds and proposal counts as ``rpn``, with this class's losses."""
        return cls(rpn.anchor_generator, rpn.head, rpn.proposal_matcher.high_threshold,
                   rpn.proposal_matcher.low_threshold, rpn.fg_bg_sampler.batch_size_per_image,
                   rpn.fg_bg_sampler.positive_fraction, dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n),
                   rpn.nms_thresh, score_thresh=rpn.score_thresh, box_loss=box_loss)

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: List[Tensor],
                     regression_targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
        if self.box_loss == "smooth_l1":
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        positives, negatives = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positives))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negatives))[0]])
        all_labels, targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = l1_box_loss(pred_bbox_deltas[positive], targets[positive], sampled.numel())
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], all_labels[sampled])
        return objectness_loss, box_loss


def binary_mask_targets(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """MMDetection's: each matched mask cropped to its box by aligned, adaptive RoIAlign, binarised at 0.5
    (torchvision keeps the soft values of an unaligned crop)."""
    rois = torch.cat([matched_idxs[:, None].to(boxes.dtype), boxes], dim=1).float()
    crops = roi_align(gt_masks[:, None].float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=0,
                      aligned=True)[:, 0]
    return (crops >= 0.5).float()


def aligned_mask_loss(mask_logits: Tensor, proposals: List[Tensor], gt_masks: List[Tensor],
                      gt_labels: List[Tensor], matched_idxs: List[Tensor]) -> Tensor:
    """Per-pixel sigmoid cross-entropy of each positive's own-class mask against binary aligned targets."""
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched_idxs)])
    targets = torch.cat([binary_mask_targets(m, p, i, size) for m, p, i in zip(gt_masks, proposals, matched_idxs)])
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    own_class = mask_logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(own_class.float(), targets)


class MaskRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with a choice of box loss (``l1``/``smooth_l1``) and mask targets (``aligned``
    as MMDetection, ``legacy`` torchvision's); only the training losses differ."""

    def __init__(self, *args, box_loss: str = "l1", mask_targets: str = "aligned", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.box_loss, self.mask_targets = box_loss, mask_targets
        self.box_coder = Float32BoxCoder(self.box_coder.weights)

    @classmethod
    def from_torchvision(cls, heads: RoIHeads, box_loss: str, mask_targets: str) -> "MaskRoIHeads":
        """The same poolers, heads, sampler and test settings as ``heads``, with this class's losses."""
        return cls(heads.box_roi_pool, heads.box_head, heads.box_predictor, heads.proposal_matcher.high_threshold,
                   heads.proposal_matcher.low_threshold, heads.fg_bg_sampler.batch_size_per_image,
                   heads.fg_bg_sampler.positive_fraction, heads.box_coder.weights, heads.score_thresh,
                   heads.nms_thresh, heads.detections_per_img, mask_roi_pool=heads.mask_roi_pool,
                   mask_head=heads.mask_head, mask_predictor=heads.mask_predictor, box_loss=box_loss,
                   mask_targets=mask_targets)

    def box_losses(self, class_logits: Tensor, box_regression: Tensor, labels: List[Tensor],
                   regression_targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Softmax cross-entropy over the sampled RoIs; class-specific box loss on the positives."""
        if self.box_loss == "smooth_l1":
            return fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        all_labels, targets = torch.cat(labels), torch.cat(regression_targets)
        classification = F.cross_entropy(class_logits, all_labels)
        positive = torch.where(all_labels > 0)[0]
        per_class = box_regression.reshape(len(all_labels), -1, 4)
        box_loss = l1_box_loss(per_class[positive, all_labels[positive]], targets[positive], all_labels.numel())
        return classification, box_loss

    def mask_loss(self, mask_logits: Tensor, proposals: List[Tensor], gt_masks: List[Tensor],
                  gt_labels: List[Tensor], matched_idxs: List[Tensor]) -> Tensor:
        loss = maskrcnn_loss if self.mask_targets == "legacy" else aligned_mask_loss
        return loss(mask_logits, proposals, gt_masks, gt_labels, matched_idxs)

    def forward(self, features: Dict[str, Tensor], proposals: List[Tensor], image_shapes: List[Tuple[int, int]],
                targets: Optional[List[Dict[str, Tensor]]] = None
                ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        self.check_targets(targets)
        assert targets is not None
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = self.box_losses(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if self.has_mask():
            positives = [torch.where(lab > 0)[0] for lab in labels]
            mask_proposals = [p[i] for p, i in zip(proposals, positives)]
            mask_matched = [m[i] for m, i in zip(matched_idxs, positives)]
            mask_features = self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
            mask_logits = self.mask_predictor(mask_features)
            losses["loss_mask"] = self.mask_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                                                 [t["labels"] for t in targets], mask_matched)
        return [], losses


def xavier_init_convs(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every convolution (MMDetection's FPN init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def mmdet_head_init(box_head: nn.Module, box_predictor: nn.Module, mask_predictor: nn.Module) -> None:
    """MMDetection's init where torchvision keeps PyTorch's defaults: box head FCs xavier-uniform, classifier
    normal(0, 0.01), box regressor normal(0, 0.001), zero biases (also of the mask deconvolution and logits)."""
    for layer in box_head.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    for layer, std in ((box_predictor.cls_score, 0.01), (box_predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    for layer in mask_predictor.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and layer.bias is not None:
            nn.init.zeros_(layer.bias)
