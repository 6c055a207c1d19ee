"""Object detection and instance segmentation: Mask R-CNN + FPN with FCViT backbones (torchvision's models).

- :func:`build_mask_rcnn`: the model, set up as the paper's MMDetection config (``PAPER_SETTINGS``;
  ``TORCHVISION_SETTINGS`` are torchvision's alternatives, built from :mod:`.components`);
  :func:`load_detector`: one from a ``fcvit detect train`` checkpoint.
- :class:`CocoInstances`: any COCO-format dataset, checked when opened.
- :func:`detection_step`, :func:`evaluate`: the loss of one batch and COCO evaluation; the whole run is
  ``fcvit.tasks.detection.train.train(args)`` (``fcvit detect train``) on the engine's loop.
- :class:`CocoEvaluator`: COCO box and mask AP with pycocotools.
- :func:`predict_images`: boxes, masks and class names drawn on images.
"""
from .coco_eval import AP_FIELDS, CocoEvaluator
from .dataset import Category, CocoInstances, coco_split_paths
from .model import PAPER_SETTINGS, TORCHVISION_SETTINGS, FCViTFPN, build_mask_rcnn, count_parameters
from .predict import load_detector, predict_images
from .sampler import AspectRatioBatchSampler
from .synthetic import make_shapes_coco
from .train import detection_step, evaluate

__all__ = [
    "AP_FIELDS", "PAPER_SETTINGS", "TORCHVISION_SETTINGS", "AspectRatioBatchSampler", "Category", "CocoEvaluator",
    "CocoInstances", "FCViTFPN", "build_mask_rcnn", "coco_split_paths", "count_parameters", "detection_step",
    "evaluate", "load_detector", "make_shapes_coco", "predict_images",
]
