"""Loading a trained detector and drawing its boxes, masks and class names on images."""
from __future__ import annotations

import colorsys
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ...data import ImageReader
from ...files import atomic_write, check_image_outputs, make_folder, unique_stems, warn_replaced, write_json
from ...errors import UserError
from ...models import extract_state_dict, read_checkpoint
from ...models.checkpoint import expect_kind
from .dataset import Category
from .model import build_mask_rcnn, with_legacy_settings

__all__ = ["load_detector", "draw_detections", "predict_images", "planned_outputs", "class_colours"]

_logger = logging.getLogger(__name__)


def load_detector(path: str | os.PathLike, device: torch.device | str = "cpu",
                  min_size: Optional[int] = None, max_size: Optional[int] = None
                  ) -> Tuple[MaskRCNN, List[Category], Dict[str, Any]]:
    """The Mask R-CNN a ``fcvit detect train`` checkpoint describes, with its weights and categories;
    ``min_size``/``max_size`` override its test-time resizing."""
    checkpoint = read_checkpoint(path)
    expect_kind(checkpoint, ("detector",), f"Checkpoint '{path}'")
    config = checkpoint.get("model_config")
    if not isinstance(config, Mapping) or not isinstance(checkpoint.get("categories"), list):
        raise UserError(f"Checkpoint '{path}' was not written by 'fcvit detect train' (it has no model_config "
                        "and categories): pass a detection checkpoint, such as OUTPUT/model_best.pth.tar.")
    categories = [Category(int(c["id"]), str(c["name"])) for c in checkpoint["categories"]]
    config = with_legacy_settings(config)
    config.update({k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v})
    model = build_mask_rcnn(**config)
    try:
        model.load_state_dict(extract_state_dict(checkpoint, use_ema=False))
    except RuntimeError as exc:
        raise UserError(f"Checkpoint '{path}' holds weights that do not fit the Mask R-CNN its model_config "
                        f"describes ({str(exc).splitlines()[0][:160]}): the file was altered; use the file "
                        "that training wrote.") from None
    return model.eval().to(device), categories, checkpoint


def class_colours(num_classes: int) -> List[Tuple[int, int, int]]:
    """Well-separated colours, one per label (0 = background unused), the same in every run."""
    golden = 0.618033988749895
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * golden) % 1.0, 0.75, 0.95))
            for i in range(num_classes + 1)]


def draw_detections(image: torch.Tensor, prediction: Mapping[str, torch.Tensor], names: Sequence[str],
                    score_threshold: float = 0.5, mask_threshold: float = 0.5) -> torch.Tensor:
    """``image`` (uint8, 3 x H x W) with the masks, boxes and "name score" labels of confident detections;
    ``names`` are indexed by model label (0 = background)."""
    keep = prediction["scores"] >= score_threshold
    boxes, labels, scores = prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep]
    all_colours = class_colours(len(names) - 1)
    colours = [all_colours[int(i)] for i in labels]
    drawn = image
    if "masks" in prediction and keep.any():
        masks = prediction["masks"][keep][:, 0] > mask_threshold
        drawn = draw_segmentation_masks(drawn, masks, alpha=0.45, colors=colours)
    if len(boxes):
        captions = [f"{names[int(i)]} {float(s):.2f}" for i, s in zip(labels, scores)]
        drawn = draw_bounding_boxes(drawn, boxes, labels=captions, colors=colours,
                                    width=max(1, round(min(image.shape[-2:]) / 300)))
    return drawn


def planned_outputs(paths: Sequence[str], output_dir: str) -> List[str]:
    """Every file :func:`predict_images` writes for ``paths``: one PNG per image and ``detections.json``."""
    return [os.path.join(output_dir, f"{stem}.png") for stem in unique_stems(paths)] + [
        os.path.join(output_dir, "detections.json")]


def predict_images(model: nn.Module, categories: Sequence[Category],
                   images: ImageReader | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                   score_threshold: float = 0.5, device: torch.device | str = "cpu",
                   overwrite: bool = False) -> List[Dict[str, Any]]:
    """Draw detections on each image into ``output_dir``, and all of them at or above the threshold into
    ``detections.json``; return them per image. ``images``: paths or an :class:`ImageReader` (which skips
    unreadable files). Nothing is written over an input, nor over an existing file unless ``overwrite``.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise UserError(f"--score-threshold {score_threshold} is outside [0, 1]: pass a value such as 0.5.")
    reader = images if isinstance(images, ImageReader) else ImageReader(images)
    output_dir = os.fspath(output_dir)
    outputs = planned_outputs(reader.paths, output_dir)
    replaced = check_image_outputs(outputs, reader.paths, overwrite)
    make_folder(output_dir)
    names = ["background"] + [c.name for c in categories]
    out_path_of = dict(zip(reader.paths, outputs))
    results = []
    for path, image in reader:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
        with torch.inference_mode():  # boxes come back in the image's own pixels
            prediction = {k: v.cpu() for k, v in model([(pixels.float() / 255.0).to(device)])[0].items()}
        drawn = draw_detections(pixels, prediction, names, score_threshold)
        out_path = out_path_of[path]
        atomic_write(out_path, lambda f: Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(f, format="PNG"))
        keep = prediction["scores"] >= score_threshold
        detections = [
            {"category_id": categories[int(label) - 1].id, "name": names[int(label)], "score": round(float(score), 4),
             "bbox_xyxy": [round(float(v), 2) for v in box]}
            for box, label, score in zip(prediction["boxes"][keep], prediction["labels"][keep],
                                         prediction["scores"][keep])]
        scores = prediction["scores"]  # the best one also below the threshold: what a lower one would show
        results.append({"image": path, "output": out_path, "detections": detections,
                        "best_score": round(float(scores.max()), 4) if len(scores) else None})
        _logger.info("%s: %d detections at score >= %.2f -> %s", path, len(detections), score_threshold, out_path)
    write_json(outputs[-1], results)
    warn_replaced(_logger, replaced, {r["output"] for r in results} | {outputs[-1]})
    return results
