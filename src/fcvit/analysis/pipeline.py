"""From a model and images to maps to draw and per-block measures to report."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_write
from .attention import ViTAttention, patch_index, split_prefix
from .measures import ATTENTION_MEASURES, SIMILARITY_MEASURES, attention_measures, similarity_measures

__all__ = ["parse_head", "parse_query", "query_attention", "analyze_attention", "analyze_similarity", "format_table",
           "write_results"]

Head = Union[int, str]


def parse_head(text: str) -> Head:
    """``mean`` (average over heads), ``all`` (one column per head) or a head index (negative from the end)."""
    text = str(text).strip().lower()
    if text in ("mean", "all"):
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--head '{text}' is not valid: use mean, all, or a head index such as 0 or -1.") from None


def parse_query(text: str) -> Tuple[float, float]:
    """``X,Y`` pixel coordinates of the original image."""
    try:
        x, y = text.replace(" ", "").split(",")
        return float(x), float(y)
    except ValueError:
        raise UserError(f"--query '{text}' is not valid: write pixel coordinates as X,Y, "
                        "e.g. --query 120,80.") from None


def _select_heads(maps: torch.Tensor, head: Head) -> Tuple[torch.Tensor, List[str]]:
    """``heads x ...`` -> ``columns x ...`` with labels, for one query."""
    heads = maps.shape[0]
    if head == "mean":
        return maps.mean(0, keepdim=True), [f"mean of {heads} heads"]
    if head == "all":
        return maps, [f"head {h}" for h in range(heads)]
    if not -heads <= head < heads:
        raise UserError(f"Head {head} does not exist: the block has {heads} heads, so use 0..{heads - 1}, "
                        "-1, mean or all.")
    head %= heads  # -1 is the last head; maps[-1:0] would be empty
    return maps[head:head + 1], [f"head {head}"]


def query_attention(reader: ViTAttention, x: torch.Tensor, block: int, image_size: Tuple[int, int],
                    points: Optional[Sequence[Tuple[float, float]]] = None, random_queries: int = 0,
                    head: Head = "mean", seed: int = 0,
                    ) -> Tuple[List[Tuple[float, float]], List[torch.Tensor], List[str], float]:
    """One block's attention for image ``x`` (batch of one) of ``points`` (pixels of an image of ``image_size``) and of
    ``random_queries`` distinct patches drawn with ``seed`` (at their centres): the points, a ``columns x rows x cols``
    map per point, the column labels and the mean share of attention that went to prefix tokens (not drawn)."""
    rows, cols = grid = reader.model.patch_embed.dynamic_feat_size(x.shape[-2:])
    width, height = image_size
    points = list(points or [])
    indices = [patch_index(px, py, image_size, grid) for px, py in points]
    if random_queries:
        if random_queries > rows * cols:
            raise UserError(f"--random-queries {random_queries} exceeds the {rows * cols} patches of the image.")
        for idx in torch.randperm(rows * cols, generator=torch.Generator().manual_seed(seed))[:random_queries].tolist():
            indices.append(idx)
            points.append(((idx % cols + 0.5) * width / cols, (idx // cols + 0.5) * height / rows))
    if not indices:
        raise UserError("No query points: give --query X,Y (pixels) or --random-queries K.")
    spatial, prefix = split_prefix(reader(x)[block][0], reader.num_prefix_tokens)  # heads x P x P, heads x P
    selected, labels = _select_heads(spatial[:, indices], head)  # columns x queries x P
    maps = [m.reshape(-1, rows, cols) for m in selected.unbind(1)]
    prefix_share = float(prefix[:, indices].mean()) if reader.num_prefix_tokens else 0.0
    return points, maps, labels, prefix_share


def _mean_rows(per_image: List[List[dict]], keys: Sequence[str]) -> List[dict]:
    """Average per-image rows (same blocks in the same order) and attach the spread across images."""
    out = []
    for rows in zip(*per_image):
        merged = {k: v for k, v in rows[0].items() if k not in keys}
        std = {}
        for k in keys:
            values = [r[k] for r in rows if k in r and not math.isnan(r[k])]
            if values:
                merged[k] = sum(values) / len(values)
                std[k] = (sum((v - merged[k]) ** 2 for v in values) / len(values)) ** 0.5
        merged["std"] = std
        out.append(merged)
    return out


def analyze_attention(model: nn.Module, inputs: Iterable[torch.Tensor]) -> List[dict]:
    """Per block of a ViT/DeiT: the attention measures, averaged over the images (each ``1 x 3 x H x W``)."""
    reader = ViTAttention(model)
    n = reader.num_prefix_tokens
    per_image = []
    for x in inputs:
        splits = {block: split_prefix(attn, n) for block, attn in reader(x).items()}
        per_image.append([dict(block=b, **attention_measures(spatial, prefix if n else None))
                          for b, (spatial, prefix) in splits.items()])
    return _mean_rows(per_image, list(ATTENTION_MEASURES))


def analyze_similarity(model: nn.Module, inputs: Iterable[torch.Tensor]) -> List[dict]:
    """Per FCViT block and global-context module: the group measures, averaged over the images."""
    from ..models.similarity import similarity_maps
    from ..models.layers import FCViTBlock

    stages = [int(name.split(".")[1]) if name.startswith("stages.") else None
              for name, m in model.named_modules() if isinstance(m, FCViTBlock)]
    if not stages:
        raise UserError(f"{type(model).__name__} is not an FCViT model: group similarity maps exist only for "
                        "fcvit_* models.")
    per_image = []
    for x in inputs:
        _, maps = similarity_maps(model, x, blocks=None)
        per_image.append([dict(block=b, stage=stages[b], module=gc, **similarity_measures(maps[b][gc]))
                          for b in sorted(maps) for gc in ("gc1", "gc2")])
    return _mean_rows(per_image, list(SIMILARITY_MEASURES))


def format_table(rows: List[dict], measures: Sequence[str]) -> str:
    """A plain-text table: one line per block (and module)."""
    keys = ["block"] + (["module"] if any("module" in r for r in rows) else [])
    lines = [" ".join(f"{k:>6}" for k in keys) + " " + " ".join(f"{m:>17}" for m in measures)]
    for r in rows:
        cells = " ".join(f"{str(r.get(k, '')):>6}" for k in keys)
        vals = " ".join(f"{r[m]:>17.4f}" if isinstance(r.get(m), float) else f"{'-':>17}" for m in measures)
        lines.append(f"{cells} {vals}")
    return "\n".join(lines)


def write_results(path: str, payload: Dict[str, object], measures: Sequence[str]) -> str:
    """``.json``: the whole payload; ``.csv``: one row per block with the mean of each measure."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        atomic_write(path, json.dumps(payload, indent=2) + "\n")
    elif ext == ".csv":
        rows = payload["blocks"]
        keys = [k for k in ("block", "stage", "module") if any(k in r for r in rows)] + list(measures)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, buffer.getvalue())
    else:
        raise UserError(f"--results-file '{path}' must end in .json or .csv.")
    return path
