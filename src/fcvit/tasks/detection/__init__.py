"""Object detection and instance segmentation: Mask R-CNN + FPN with FCViT backbones (torchvision's models),
set up as the paper's MMDetection config; ``fcvit detect train|eval|predict`` wraps it."""
from .coco_eval import AP_FIELDS, CocoEvaluator
from .dataset import Category, CocoInstances, coco_split_paths
from .model import PAPER_SETTINGS, TORCHVISION_SETTINGS, FCViTFPN, build_mask_rcnn, count_parameters
from .predict import load_detector, predict_images
from .sampler import AspectRatioBatchSampler
from .train import detection_step, evaluate

__all__ = ["AP_FIELDS", "PAPER_SETTINGS", "TORCHVISION_SETTINGS", "AspectRatioBatchSampler", "Category",
           "CocoEvaluator", "CocoInstances", "FCViTFPN", "build_mask_rcnn", "coco_split_paths", "count_parameters",
           "detection_step", "evaluate", "load_detector", "predict_images"]
