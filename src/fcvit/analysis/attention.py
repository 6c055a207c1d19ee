"""Reading attention maps out of timm's ViT/DeiT models and FCViT's similarity maps, ready to draw or measure.

timm computes attention with ``F.scaled_dot_product_attention`` when it can, which never forms the attention matrix.
:class:`ViTAttention` turns each ``Attention``'s ``fused_attn`` switch off (explicit ``q @ k.T``, softmax,
``attn_drop``) and hooks the ``attn_drop`` outputs, in eval mode the softmax probabilities themselves; the models'
code and outputs stay the same.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import UserError

__all__ = ["ViTAttention", "is_vit", "split_prefix", "patch_index", "fcvit_similarity", "resolve_block"]


def is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def resolve_block(block: int, n: int) -> int:
    """A block index (negative from the end) checked against ``n`` blocks."""
    if not -n <= block < n:
        raise UserError(f"Block {block} does not exist: the model has {n} blocks, so use 0..{n - 1} "
                        "or -1 for the last.")
    return block % n


class ViTAttention:
    """Attention probabilities of every block of a timm VisionTransformer (ViT, DeiT, DeiT-distilled): ``reader(x)``
    gives ``{block: B x heads x N x N}`` over all N tokens, prefix (class, distillation, register) tokens first."""

    def __init__(self, model: nn.Module, blocks: Optional[Sequence[int]] = None) -> None:
        from timm.utils import AttentionExtract

        if not is_vit(model):
            raise UserError(f"{type(model).__name__} is not one of timm's ViT/DeiT models (VisionTransformer): choose "
                            "one such as vit_base_patch16_224 or deit_base_patch16_224, or FCViT for similarity maps.")
        self.model = model
        n = len(model.blocks)
        self.blocks: List[int] = sorted(range(n) if blocks is None else {resolve_block(b, n) for b in blocks})
        names = [f"blocks.{i}.attn.attn_drop" for i in self.blocks]
        modules = dict(model.named_modules())
        if missing := [name for name in names if name not in modules]:
            raise UserError(f"{type(model).__name__} has no '{missing[0]}' module to read attention from: "
                            "use a standard timm ViT/DeiT model.")
        for i in self.blocks:
            model.blocks[i].attn.fused_attn = False  # explicit softmax path: same result, attention matrix formed
        self.extractor = AttentionExtract(model, names=names, method="hook")
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def grid(self, x: torch.Tensor) -> Tuple[int, int]:
        """Patch rows and columns for an input ``x``."""
        return self.model.patch_embed.dynamic_feat_size(x.shape[-2:])

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
    index = resolve_block(block, n)
    _, maps = similarity_maps(model, x, blocks=[index])
    return index, {k: v.float() for k, v in maps[index].items()}
