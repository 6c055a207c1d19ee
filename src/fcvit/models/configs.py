"""The four published FCViT variants: their shapes and the recipe values that belong to each.

A leaf module: the model, the checkpoint reader and the tools read it; it imports none of them."""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["FCViTConfig", "MODEL_CONFIGS"]


@dataclass(frozen=True)
class FCViTConfig:
    """Shape of one FCViT variant."""

    depths: Tuple[int, ...]
    dims: Tuple[int, ...]
    mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4)
    drop_path_rate: float = 0.1  # the ImageNet recipe's value for this variant
    crop_pct: float = 0.9
    published_top1: Optional[float] = None  # ImageNet-1k top-1 (%) of the published checkpoint


MODEL_CONFIGS: Dict[str, FCViTConfig] = {
    "fcvit_tiny": FCViTConfig(depths=(3, 3, 5, 2), dims=(32, 64, 160, 320), published_top1=74.9),
    "fcvit_b12": FCViTConfig(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512), published_top1=80.9),
    "fcvit_b24": FCViTConfig(depths=(4, 4, 12, 4), dims=(64, 128, 320, 512), crop_pct=0.95, published_top1=82.5),
    "fcvit_b48": FCViTConfig(depths=(8, 8, 24, 8), dims=(64, 128, 320, 512), drop_path_rate=0.2, crop_pct=0.95,
                             published_top1=83.6),
}
