"""FCViT: the fully convolutional vision transformer, as timm models with training and analysis tools.

``import fcvit`` registers ``fcvit_tiny``, ``fcvit_b12``, ``fcvit_b24`` and ``fcvit_b48`` in timm.
"""
from .errors import UserError
from .models import (
    FCViT,
    FCViTBackbone,
    create_backbone,
    create_classifier,
    similarity_maps,
)
from .models.fuse import fuse

__version__ = "0.1.0"

__all__ = ["FCViT", "FCViTBackbone", "UserError", "create_backbone", "create_classifier", "similarity_maps",
           "fuse", "__version__"]
