"""COCO box and mask AP with pycocotools' COCOeval from Mask R-CNN outputs, as COCO result entries (``[x, y, w,
h]`` boxes in original pixels, RLE masks, the file's category ids); under torchrun the main rank gathers every
rank's images (each once: the evaluation loader shards without repeats) and runs COCOeval once."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from ...files import atomic_write, make_folder
from .dataset import Category, check_segmentation

__all__ = ["CocoEvaluator", "AP_FIELDS", "IOU_TYPES", "to_coco_results"]

_logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# the first six numbers of COCOeval.stats, in order
AP_FIELDS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_results(image_id: int, prediction: Mapping[str, torch.Tensor], categories: Sequence[Category],
                    mask_threshold: float = 0.5) -> List[Dict[str, Any]]:
    """COCO result entries for one image; ``prediction`` is one item of ``MaskRCNN``'s eval output."""
    boxes = prediction["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return []
    xywh = box_convert(boxes, "xyxy", "xywh").tolist()
    scores = prediction["scores"].detach().float().cpu().tolist()
    labels = prediction["labels"].detach().cpu().tolist()
    rles: List[Optional[Dict[str, Any]]] = [None] * len(scores)
    if "masks" in prediction:
        binary = (prediction["masks"].detach()[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = coco_mask.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")  # JSON-serialisable
    return [{"image_id": int(image_id), "category_id": categories[label - 1].id, "bbox": box, "score": float(score),
             **({"segmentation": rle} if rle is not None else {})}
            for box, score, label, rle in zip(xywh, scores, labels, rles)]


class CocoEvaluator:
    """Collects Mask R-CNN predictions for a ground-truth ``COCO`` index and computes COCO AP; the ground
    truth's segmentations are checked first, since pycocotools fails on bad ones with a bare TypeError."""

    def __init__(self, coco_gt: COCO, categories: Sequence[Category]) -> None:
        for ann in coco_gt.dataset.get("annotations", []):
            if "segmentation" in ann:
                image = coco_gt.imgs[ann["image_id"]]
                check_segmentation(ann, (float(image["height"]), float(image["width"])),
                                   getattr(coco_gt, "annotation_file", "the ground truth"))
        self.coco_gt, self.categories = coco_gt, list(categories)
        self.results: Dict[int, List[Dict[str, Any]]] = {}

    def update(self, predictions: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int]) -> None:
        for image_id, prediction in zip(image_ids, predictions):
            self.results[int(image_id)] = to_coco_results(image_id, prediction, self.categories)

    def gather(self, dst: int = 0) -> None:
        """Merge every rank's results into rank ``dst``'s only (RLE masks are large; the others need none)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        is_dst = dist.get_rank() == dst
        parts: Optional[List[Optional[Dict[int, List[Dict[str, Any]]]]]] = (
            [None] * dist.get_world_size() if is_dst else None)
        dist.gather_object(self.results, parts, dst=dst)
        if is_dst:
            self.results = {k: v for part in parts or [] for k, v in (part or {}).items()}

    def detections(self) -> List[Dict[str, Any]]:
        return [entry for image_id in sorted(self.results) for entry in self.results[image_id]]

    def write_results(self, path: str | os.PathLike) -> None:
        """Detections as a COCO results JSON (the file the COCO test server takes), written atomically."""
        make_folder(os.path.dirname(os.path.abspath(os.fspath(path))))
        atomic_write(path, json.dumps(self.detections()))

    def _load_detections(self, iou_type: str) -> COCO:
        entries = [e for e in self.detections() if iou_type != "segm" or "segmentation" in e]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            if entries:
                return self.coco_gt.loadRes(copy.deepcopy(entries))
            # loadRes cannot take an empty list; no detections is a valid outcome and scores 0 AP
            empty = COCO()
            empty.dataset = dict(images=self.coco_gt.dataset["images"], categories=self.coco_gt.dataset["categories"],
                                 annotations=[])
            empty.createIndex()
            return empty

    def summarize(self, image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
        """COCOeval over the collected images: ``{'bbox_AP': ..., 'segm_APl': ...}`` in [0, 1], -1 where COCO
        defines none (e.g. APs when no ground-truth object is small)."""
        metrics: Dict[str, float] = {}
        ids = sorted(self.results) if image_ids is None else list(image_ids)
        for iou_type in IOU_TYPES:
            coco_dt = self._load_detections(iou_type)
            evaluator = COCOeval(self.coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.imgIds = ids
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            _logger.debug("COCO %s:\n%s", iou_type, printed.getvalue().rstrip())
            metrics.update({f"{iou_type}_{name}": float(v) for name, v in zip(AP_FIELDS, evaluator.stats)})
        return metrics
