"""Reading attention maps out of timm's ViT/DeiT models and FCViT's similarity maps, ready to draw or measure.

timm's fused ``F.scaled_dot_product_attention`` never forms the attention matrix: :class:`ViTAttention` turns
``fused_attn`` off (same outputs) and hooks ``attn_drop``, whose eval-mode outputs are the softmax probabilities.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import UserError

__all__ = ["ViTAttention", "is_vit", "split_prefix", "patch_index", "fcvit_similarity", "resolve_blocks"]


def is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def resolve_blocks(blocks: Optional[Sequence[int]], n: int) -> List[int]:
    """Sorted distinct indices (negative from the end; ``None``: all) checked against ``n`` blocks."""
    for block in blocks or ():
        if not -n <= block < n:
            raise UserError(f"Block {block} does not exist: the model has {n} blocks, so use 0..{n - 1} "
                            "or -1 for the last.")
    return sorted(range(n) if blocks is None else {block % n for block in blocks})


class ViTAttention:
    """Attention probabilities of every block of a timm VisionTransformer (ViT, DeiT, DeiT-distilled): ``reader(x)``
    gives ``{block: B x heads x N x N}`` over all N tokens, prefix (class, distillation, register) tokens first."""

    def __init__(self, model: nn.Module, blocks: Optional[Sequence[int]] = None) -> None:
        from timm.utils import AttentionExtract

        if not is_vit(model):
            raise UserError(f"{type(model).__name__} is not one of timm's ViT/DeiT models (VisionTransformer): choose "
                            "one such as vit_base_patch16_224 or deit_base_patch16_224, or FCViT for similarity maps.")
        self.model = model
        self.blocks = resolve_blocks(blocks, len(model.blocks))
        names = [f"blocks.{i}.attn.attn_drop" for i in self.blocks]
        modules = dict(model.named_modules())
        if missing := [name for name in names if name not in modules]:
            raise UserError(f"{type(model).__name__} has no '{missing[0]}' module to read attention from: "
                            "use a standard timm ViT/DeiT model.")
        for i in self.blocks:
            model.blocks[i].attn.fused_attn = False  # explicit softmax path: same result, attention matrix formed
        self.extractor = AttentionExtract(model, names=names, method="hook")
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        self.model.eval()
        found = self.extractor(x)
        maps = {i: found[f"blocks.{i}.attn.attn_drop"].float() for i in self.blocks}
        for i, attn in maps.items():
            if not torch.allclose(attn.sum(-1), torch.ones_like(attn[..., 0]), atol=1e-3):
                raise RuntimeError(f"Block {i}: the values read at attn_drop are not attention probabilities.")
        return maps


def split_prefix(attn: torch.Tensor, num_prefix_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Patch queries over patch keys renormalised (``... x P x P``) and the mass they gave prefix tokens (``... x P``):
    the class and distillation tokens have no place on the image, so their share is reported, not hidden."""
    patch = attn[..., num_prefix_tokens:, :]
    spatial = patch[..., num_prefix_tokens:]
    return spatial / spatial.sum(-1, keepdim=True).clamp_min(1e-12), patch[..., :num_prefix_tokens].sum(-1)


def patch_index(x: float, y: float, image_size: Tuple[int, int], grid: Tuple[int, int]) -> int:
    """Index (row-major) of the patch under pixel ``(x, y)`` of an image of ``(width, height)``."""
    width, height = image_size
    if not (0 <= x < width and 0 <= y < height):
        raise UserError(f"Query point {x:g},{y:g} lies outside the {width}x{height} image: use X,Y pixel "
                        "coordinates inside it (0,0 is the top left).")
    rows, cols = grid
    return min(int(y * rows / height), rows - 1) * cols + min(int(x * cols / width), cols - 1)


def fcvit_similarity(model: nn.Module, x: torch.Tensor, block: int = -1) -> Tuple[int, Dict[str, torch.Tensor]]:
    """FCViT's group similarity maps of one block as the model computes them: ``(index, {gc1, gc2: B x G x H x W})``."""
    from ..models.similarity import fcvit_blocks, similarity_maps

    n = len(fcvit_blocks(model))
    if n == 0:
        raise UserError(f"{type(model).__name__} is not an FCViT model: similarity maps exist only for fcvit_* models.")
    [index] = resolve_blocks([block], n)
    _, maps = similarity_maps(model, x, blocks=[index])
    return index, {k: v.float() for k, v in maps[index].items()}
