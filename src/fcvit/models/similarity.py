"""Reading FCViT's token-global similarity maps (what the paper visualises) without changing outputs."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .layers import FCViTBlock

__all__ = ["similarity_maps", "fcvit_blocks"]


def fcvit_blocks(model: nn.Module) -> List[FCViTBlock]:
    """All FCViT blocks of a classifier or backbone, in forward order."""
    return [m for m in model.modules() if isinstance(m, FCViTBlock)]


@torch.no_grad()
def similarity_maps(model: nn.Module, x: torch.Tensor, blocks: Optional[Sequence[int]] = (-1,)
                    ) -> Tuple[torch.Tensor, Dict[int, Dict[str, torch.Tensor]]]:
    """Run ``model(x)`` and return its output plus the normalised, rescaled similarity maps.

    Returns ``(output, maps)`` with ``maps[block_index]['gc1' | 'gc2']`` of shape
    ``B x groups x H x W`` (block indices counted over the whole network; negative ones from the
    end are resolved). ``blocks=None`` records every block.
    """
    all_blocks = fcvit_blocks(model)
    if not all_blocks:
        raise ValueError("The model has no FCViT blocks.")
    n = len(all_blocks)
    wanted = range(n) if blocks is None else blocks
    indices = []
    for b in wanted:
        if not -n <= b < n:
            raise ValueError(f"Block {b} is out of range: the model has {n} blocks (0..{n - 1}, or -1 for the last).")
        indices.append(b % n)
    maps: Dict[int, Dict[str, torch.Tensor]] = {i: {} for i in indices}
    handles = []
    for i in indices:
        for name in ("gc1", "gc2"):
            module = getattr(all_blocks[i].token_mixer, name).similarity

            def hook(_m, _inp, out, i=i, name=name):
                maps[i][name] = out.detach().contiguous()

            handles.append(module.register_forward_hook(hook))
    try:
        output = model(x)
    finally:
        for h in handles:
            h.remove()
    return output, maps
