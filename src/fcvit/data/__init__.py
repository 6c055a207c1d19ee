"""Data loading shared by classification, detection, segmentation and analysis."""
from .images import load_image

__all__ = ["load_image"]
