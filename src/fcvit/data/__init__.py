"""Data loading shared by classification, detection, segmentation and analysis."""
from .images import ImageReader, expand_image_paths, load_image

__all__ = ["ImageReader", "expand_image_paths", "load_image"]
