"""Semantic segmentation: Semantic FPN with FCViT backbones, trained and scored the ADE20K way (MMSegmentation's
config); ``fcvit segment train|eval|predict`` wraps it."""
from .data import ADE20K_CLASSES, SegmentationFolder, default_class_names, map_labels, read_class_names
from .metrics import ConfusionMatrix, format_class_table, scores_from_confusion
from .model import SemanticFPN, SemanticFPNHead, create_segmenter
from .photometric import PhotometricDistortion, TorchvisionPhotometricDistortion
from .transforms import IGNORE_INDEX, eval_transforms, train_transforms

__all__ = ["ADE20K_CLASSES", "SegmentationFolder", "default_class_names", "map_labels", "read_class_names",
           "ConfusionMatrix", "format_class_table", "scores_from_confusion", "SemanticFPN", "SemanticFPNHead",
           "create_segmenter", "PhotometricDistortion", "TorchvisionPhotometricDistortion",
           "IGNORE_INDEX", "eval_transforms", "train_transforms"]
