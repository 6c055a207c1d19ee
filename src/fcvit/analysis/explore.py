"""One self-contained HTML page (no server, no network) to move the query and watch the maps (the paper's Figures 1
and 3). ViT attention maps of every patch query, per head and mean over heads, are uint8 against their own maximum
(kept as float32), so the page can draw a map on its own scale or on the block's; FCViT's query-independent group
maps are uint8 between their own minimum and maximum.
"""
from __future__ import annotations

import base64
import io
import json
from importlib import resources
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .attention import ViTAttention, resolve_blocks, split_prefix
from .loading import image_to_tensor, input_size_of
from .measures import attention_measures, head_irrelevance, normalized_entropy, similarity_measures, top_mass

__all__ = ["explore_page"]

_QUERY_MEASURES = ("query_irrelevance", "top1pct_mass", "top5pct_mass", "entropy")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _finite(values: Dict[str, float]) -> Dict[str, Optional[float]]:
    """JSON has no NaN (head irrelevance of a one-head model): such a value is shown as "-"."""
    return {k: (v if np.isfinite(v) else None) for k, v in values.items()}


def _vit_block(attn: torch.Tensor, num_prefix_tokens: int) -> Dict[str, object]:
    """Maps and per-query measures (``heads x P``) of one block's ``heads x N x N`` attention over the patches."""
    spatial, prefix = split_prefix(attn, num_prefix_tokens)
    p = spatial.shape[-1]
    heads = torch.cat([spatial, spatial.mean(0, keepdim=True)])  # the mean over heads as one more head
    peak = heads.amax(-1).clamp_min(1e-12)  # (heads + 1) x P
    quantised = torch.round(heads / peak[..., None] * 255).to(torch.uint8)
    unit = torch.nn.functional.normalize(spatial.double(), dim=-1)
    gram = unit @ unit.transpose(-1, -2)  # heads x P x P: every query against every other
    per_query = {"query_irrelevance": ((gram.sum(-1) - gram.diagonal(dim1=-2, dim2=-1)) / max(p - 1, 1)).float(),
                 "top1pct_mass": top_mass(spatial, 0.01), "top5pct_mass": top_mass(spatial, 0.05),
                 "entropy": normalized_entropy(spatial)}
    head_irr = head_irrelevance(spatial) if spatial.shape[0] > 1 else torch.full((p,), float("nan"))
    columns = {k: torch.cat([v, v.mean(0, keepdim=True)]) for k, v in per_query.items()}  # the mean column: over heads
    return {"maps": _b64(quantised.numpy()), "peak": _b64(peak.float().numpy()),
            "query": {k: _b64(v.numpy()) for k, v in columns.items()}, "head_irrelevance": _b64(head_irr.numpy()),
            "average": _finite(attention_measures(spatial[None], prefix[None] if num_prefix_tokens else None))}


def _fcvit_block(maps: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """Both global contexts' ``G x H x W`` maps of one block, quantised between each map's extremes."""
    stacked = torch.stack([maps["gc1"][0], maps["gc2"][0]]).float().flatten(-2)  # 2 x G x HW
    lo, hi = stacked.amin(-1), stacked.amax(-1)
    quantised = torch.round((stacked - lo[..., None]) / (hi - lo).clamp_min(1e-12)[..., None] * 255).to(torch.uint8)
    return {"grid": list(maps["gc1"].shape[-2:]), "maps": _b64(quantised.numpy()), "lo": lo.tolist(), "hi": hi.tolist(),
            "average": {name: _finite(similarity_measures(maps[name])) for name in ("gc1", "gc2")}}


def _image_entry(name: str, image, vit: ViTAttention, fcvit: nn.Module, fcvit_blocks: Sequence[int],
                 device: torch.device) -> Dict[str, object]:
    from PIL import Image

    from ..models.similarity import similarity_maps
    from .plots import display_image

    attention = vit(image_to_tensor(image, vit.model, input_size_of(vit.model)).to(device))
    vit_entry = {str(block): _vit_block(attention[block][0].cpu(), vit.num_prefix_tokens) for block in vit.blocks}
    y = image_to_tensor(image, fcvit, input_size_of(fcvit, None, image.size)).to(device)
    _, maps = similarity_maps(fcvit, y, blocks=list(fcvit_blocks))
    fcvit_entry = {str(b): _fcvit_block({k: v.cpu() for k, v in maps[b].items()}) for b in fcvit_blocks}
    photo = io.BytesIO()
    Image.fromarray(display_image(image, 448)).save(photo, format="JPEG", quality=88)
    return {"name": name, "photo": "data:image/jpeg;base64," + base64.b64encode(photo.getvalue()).decode("ascii"),
            "aspect": image.height / image.width, "vit": vit_entry, "fcvit": fcvit_entry}


def explore_page(images: Sequence[tuple], vit_model: nn.Module, vit_name: str, vit_weights: str,
                 fcvit_model: nn.Module, fcvit_name: str, fcvit_weights: str,
                 vit_blocks: Optional[Sequence[int]] = None, fcvit_blocks: Optional[Sequence[int]] = None) -> str:
    """The page's HTML for ``images`` (``(name, PIL image)`` pairs); block lists default to every block."""
    from matplotlib import colormaps

    from ..models.similarity import fcvit_blocks as all_fcvit_blocks
    from .plots import OVERLAY_ALPHA, OVERLAY_CMAP

    device = next(vit_model.parameters()).device
    reader = ViTAttention(vit_model, blocks=vit_blocks)
    if not (fcvit_modules := all_fcvit_blocks(fcvit_model)):
        raise UserError(f"{fcvit_name} is not an FCViT model: the page's right panel needs one, "
                        "e.g. --fcvit fcvit_b12.")
    chosen = resolve_blocks(fcvit_blocks, len(fcvit_modules))
    lut = colormaps[OVERLAY_CMAP](np.linspace(0.0, 1.0, 256))[:, :3]
    data = {
        "vit": {"name": vit_name, "weights": vit_weights, "blocks": reader.blocks,
                "grid": list(vit_model.patch_embed.grid_size), "heads": int(vit_model.blocks[0].attn.num_heads),
                "prefix_tokens": reader.num_prefix_tokens},
        "fcvit": {"name": fcvit_name, "weights": fcvit_weights, "blocks": chosen,
                  "groups": int(fcvit_modules[0].token_mixer.gc1.num_groups)},
        "measures": list(_QUERY_MEASURES), "cmap": _b64(np.round(lut * 255).astype(np.uint8)), "alpha": OVERLAY_ALPHA,
        "images": [_image_entry(name, image, reader, fcvit_model, chosen, device) for name, image in images],
    }
    template = resources.files("fcvit.analysis").joinpath("explore.html").read_text(encoding="utf-8")
    # "</" cannot end the script early once escaped; JSON stays valid
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return template.replace("/*FCVIT_EXPLORE_DATA*/null", payload)
