"""FCViT models: registering them in timm happens on import."""
from .checkpoint import extract_state_dict, guess_variant, load_weights, read_checkpoint
from .factory import check_model_name, create_backbone, create_classifier
from .fcvit import (MODEL_CONFIGS, PUBLISHED_WEIGHTS_URL, FCViT, FCViTBackbone, FCViTConfig,
                    PretrainedWeightsUnavailable, remap_state_dict)
from .layers import FCViTBlock, GlobalContext
from .similarity import similarity_maps

__all__ = [
    "FCViT", "FCViTBackbone", "FCViTConfig", "FCViTBlock", "GlobalContext", "MODEL_CONFIGS",
    "PUBLISHED_WEIGHTS_URL", "PretrainedWeightsUnavailable",
    "create_backbone", "create_classifier", "check_model_name",
    "read_checkpoint", "extract_state_dict", "load_weights", "guess_variant", "remap_state_dict",
    "similarity_maps",
]
