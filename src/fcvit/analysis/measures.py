"""Numbers for what attention and similarity maps look like (formulas in docs/analysis.md).

Attention rows (``... x heads x queries x keys``) are distributions; FCViT's real-valued similarity maps go through
a softmax over positions (what attention would make of them) for sparsity, and are compared directly (Pearson
correlation) for diversity between groups.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

__all__ = ["mean_pairwise_cosine", "query_irrelevance", "head_irrelevance", "top_mass", "normalized_entropy",
           "mean_pairwise_correlation", "attention_measures", "similarity_measures", "ATTENTION_MEASURES",
           "SIMILARITY_MEASURES"]

# names as they appear in tables, JSON and CSV, with one line each (the docs give the formulas)
ATTENTION_MEASURES = {
    "query_irrelevance": "mean cosine similarity between the attention maps of two different queries (1: same map "
                         "whatever the query)",
    "head_irrelevance": "mean cosine similarity between the attention maps of two different heads for the same query",
    "top1pct_mass": "share of a query's attention on its top 1% of tokens (1: one-hot)",
    "top5pct_mass": "share of a query's attention on its top 5% of tokens",
    "entropy": "entropy of a query's attention divided by log(number of tokens) (1: uniform, 0: one-hot)",
    "prefix_mass": "share of a patch query's attention that goes to the class/distillation tokens",
}
SIMILARITY_MEASURES = {
    "group_irrelevance": "mean cosine similarity between the softmax-over-positions distributions of two "
                         "different groups (head_irrelevance with groups as heads)",
    "group_correlation": "mean Pearson correlation between the raw similarity maps of two different groups "
                         "(1: all groups alike, 0: unrelated)",
    "top1pct_mass": "share of a group's softmax-over-positions mass on its top 1% of positions",
    "top5pct_mass": "share of a group's softmax-over-positions mass on its top 5% of positions",
    "entropy": "entropy of a group's softmax over positions divided by log(number of positions)",
}


def mean_pairwise_cosine(vectors: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over all pairs ``i != j`` of the rows of ``... x n x d``; shape ``...``. The Gram matrix
    of the unit rows holds every pair once in each triangle; less its diagonal, ``n (n - 1)`` terms."""
    n = vectors.shape[-2]
    if n < 2:
        raise ValueError("Pairwise similarity needs at least two maps.")
    unit = torch.nn.functional.normalize(vectors.double(), dim=-1)
    gram = unit @ unit.transpose(-1, -2)
    off_diagonal = gram.sum(dim=(-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (off_diagonal / (n * (n - 1))).to(vectors.dtype)


def query_irrelevance(attn: torch.Tensor) -> torch.Tensor:
    """How alike the maps of different queries are, per head: ``... x heads x Q x K`` -> ``... x heads``."""
    return mean_pairwise_cosine(attn)


def head_irrelevance(attn: torch.Tensor) -> torch.Tensor:
    """How alike the maps of different heads are, per query: ``... x heads x Q x K`` -> ``... x Q``."""
    return mean_pairwise_cosine(attn.transpose(-3, -2))


def top_mass(dist: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mass of the ``ceil(fraction * n)`` largest entries of each distribution (last dim); shape ``...``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    return dist.topk(max(1, math.ceil(fraction * dist.shape[-1])), dim=-1).values.sum(-1)


def normalized_entropy(dist: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each distribution (last dim) divided by ``log n``: in [0, 1]; shape ``...``."""
    n = dist.shape[-1]
    if n < 2:
        raise ValueError("Normalised entropy needs at least two tokens.")
    return (torch.special.entr(dist.double()).sum(-1) / math.log(n)).to(dist.dtype)


def mean_pairwise_correlation(maps: torch.Tensor) -> torch.Tensor:
    """Mean Pearson correlation over pairs of rows of ``... x n x d``: cosine of the centred rows. A constant row,
    whose correlation is undefined, counts as uncorrelated (a centred row of zeros)."""
    values = maps.double()
    return mean_pairwise_cosine(values - values.mean(dim=-1, keepdim=True)).to(maps.dtype)


def attention_measures(attn: torch.Tensor, prefix_mass: torch.Tensor | None = None) -> Dict[str, float]:
    """All attention measures of one block's ``B x heads x Q x K`` patch attention (rows summing to 1), averaged over
    images, heads and queries; ``prefix_mass`` (``B x heads x Q``), if given, went to the prefix tokens."""
    attn = attn.float()
    out = {
        "query_irrelevance": query_irrelevance(attn).mean().item(),
        "head_irrelevance": head_irrelevance(attn).mean().item() if attn.shape[-3] > 1 else float("nan"),
        "top1pct_mass": top_mass(attn, 0.01).mean().item(),
        "top5pct_mass": top_mass(attn, 0.05).mean().item(),
        "entropy": normalized_entropy(attn).mean().item(),
    }
    if prefix_mass is not None:
        out["prefix_mass"] = prefix_mass.float().mean().item()
    return out


def similarity_measures(maps: torch.Tensor) -> Dict[str, float]:
    """Diversity and sparsity of FCViT's group similarity maps ``B x groups x H x W``, averaged over images."""
    flat = maps.float().flatten(-2)
    dist = flat.softmax(dim=-1)
    return {
        "group_irrelevance": mean_pairwise_cosine(dist).mean().item(),
        "group_correlation": mean_pairwise_correlation(flat).mean().item(),
        "top1pct_mass": top_mass(dist, 0.01).mean().item(),
        "top5pct_mass": top_mass(dist, 0.05).mean().item(),
        "entropy": normalized_entropy(dist).mean().item(),
    }
