"""Segmentation scores from a confusion matrix over the whole split, as MMSegmentation's: per-class IoU = TP /
(TP + FP + FN) and accuracy = TP / (TP + FN), NaN for absent classes and left out of the means; aAcc is the
pixel accuracy over all labelled pixels. Ignored pixels count nowhere."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

from .transforms import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "scores_from_confusion", "format_class_table"]


class ConfusionMatrix:
    """``matrix[label, prediction]`` pixel counts; add batches (and sum ``matrix`` over ranks), then score."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted and true class maps of the same shape (any batch layout)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        valid = target != self.ignore_index
        index = target[valid].long() * self.num_classes + prediction[valid].long().to(target.device)
        counts = torch.bincount(index, minlength=self.num_classes ** 2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).to(self.matrix.device)

    def compute(self) -> Dict[str, object]:
        return scores_from_confusion(self.matrix)


def scores_from_confusion(matrix: torch.Tensor) -> Dict[str, object]:
    """mIoU, mAcc, aAcc (percent) and per-class IoU/Acc lists (percent, NaN where undefined)."""
    matrix = matrix.double().cpu()
    true_positive, label_area = matrix.diag(), matrix.sum(dim=1)
    iou = true_positive / (label_area + matrix.sum(dim=0) - true_positive)  # 0/0 = NaN: class absent everywhere
    acc = true_positive / label_area
    return {"mIoU": float(iou.nanmean()) * 100, "mAcc": float(acc.nanmean()) * 100,  # NaN when all are
            "aAcc": float(true_positive.sum() / label_area.sum()) * 100,
            "IoU": [float(v) * 100 for v in iou], "Acc": [float(v) * 100 for v in acc]}


def format_class_table(scores: Dict[str, object], class_names: Optional[Sequence[str]] = None) -> str:
    """A plain-text table of per-class IoU and accuracy followed by the three summary numbers."""
    ious: List[float] = list(scores["IoU"])  # type: ignore[arg-type]
    accs: List[float] = list(scores["Acc"])  # type: ignore[arg-type]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(len(ious))]
    width = max([len("class")] + [len(n) for n in names])

    def cell(value: float) -> str:
        return "    n/a" if math.isnan(value) else f"{value:7.2f}"

    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}", f"{'-' * width}  {'-' * 7}  {'-' * 7}"]
    lines += [f"{name:<{width}}  {cell(i)}  {cell(a)}" for name, i, a in zip(names, ious, accs)]
    lines.append(f"mIoU {cell(scores['mIoU']).strip()}  mAcc {cell(scores['mAcc']).strip()}  "  # type: ignore[arg-type]
                 f"aAcc {cell(scores['aAcc']).strip()}")  # type: ignore[arg-type]
    return "\n".join(lines)
