"""Figures of FCViT's group similarity maps, ViT attention maps per query, both side by side, measures over depth.

Each overlay's array is exactly the model's map, stretched over the photograph by ``extent`` and bilinear
interpolation at render time. Figures are ``Figure`` objects (no pyplot state).
"""
from __future__ import annotations

import math
import os
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import UserError
from ..files import atomic_write

__all__ = ["draw_similarity", "draw_attention", "draw_compare", "draw_measures", "save_figure", "check_figure_path",
           "display_image", "spread", "uniform_values"]

OVERLAY_CMAP = "jet"
OVERLAY_ALPHA = 0.55
NEAR_UNIFORM = 0.5  # maps whose (max - min) / mean is below this look like one flat colour on a scale from 0
# measure: (panel title, y label) of the plots over depth
MEASURE_LABELS = {
    "query_irrelevance": ("query irrelevance", "cosine of two queries' maps"),
    "head_irrelevance": ("head irrelevance", "cosine of two heads' maps"),
    "group_irrelevance": ("group irrelevance", "cosine of two groups' softmax"),
    "group_correlation": ("group correlation", "Pearson r of two groups' maps"),
    "top1pct_mass": ("mass on the top 1% of tokens", "share of the mass"),
    "top5pct_mass": ("mass on the top 5% of tokens", "share of the mass"),
    "entropy": ("normalised entropy", "entropy / log(tokens)"),
    "prefix_mass": ("mass on class/distillation tokens", "share of the mass"),
}


def display_image(image, max_side: int = 480) -> np.ndarray:
    """The photograph as an ``H x W x 3`` uint8 array, shrunk so that figures stay small."""
    from PIL import Image

    img = image.convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    return np.asarray(img)


def spread(arrays: Sequence[np.ndarray]) -> float:
    """The largest (max - min) / mean over ``arrays``: below ``NEAR_UNIFORM`` every map is nearly flat."""
    return max(float((a.max() - a.min()) / max(abs(a.mean()), 1e-12)) for a in map(_as_numpy, arrays))


def uniform_values(tokens: int, prefix_tokens: int = 0) -> Dict[str, float]:
    """What each measure gives for uniform attention over ``tokens`` patches (docs/analysis.md): maps all alike
    (irrelevances 1), entropy 1, ceil(pN)/N on the top pN, T/(N+T) on T prefix tokens; the plots' baseline."""
    return dict(query_irrelevance=1.0, head_irrelevance=1.0, group_irrelevance=1.0, entropy=1.0,
                top1pct_mass=math.ceil(0.01 * tokens) / tokens, top5pct_mass=math.ceil(0.05 * tokens) / tokens,
                prefix_mass=prefix_tokens / (tokens + prefix_tokens))


def _as_numpy(t) -> np.ndarray:
    return t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)


def _overlay(ax, image: np.ndarray, heat: np.ndarray, vmin: float, vmax: float):
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0))
    mappable = ax.imshow(heat, cmap=OVERLAY_CMAP, alpha=OVERLAY_ALPHA, vmin=vmin, vmax=vmax,
                         extent=(0, w, h, 0), interpolation="bilinear")
    ax.set(xlim=(0, w), ylim=(h, 0), xticks=[], yticks=[])
    return mappable


def _figure(image: np.ndarray, rows: int, columns: int, side: float, margin: Tuple[float, float], title: str,
            labels: Optional[Sequence[str]] = None) -> Tuple[Figure, np.ndarray]:
    """Rows of the photograph and ``columns`` maps, panels ``side`` inches wide; ``labels`` title the columns."""
    aspect = image.shape[0] / image.shape[1]
    fig = Figure(figsize=(side * (columns + 1) + margin[0], side * aspect * rows + margin[1]), layout="constrained")
    axes = fig.subplots(rows, columns + 1, squeeze=False)
    for ax in axes[:, 0]:
        ax.imshow(image)
        ax.set(xticks=[], yticks=[])
    for ax, label in zip(axes[0], ["image", *labels] if labels is not None else []):
        ax.set_title(label, fontsize=9)
    _title(fig, title)
    return fig, axes


def draw_similarity(image: np.ndarray, maps: Dict[str, torch.Tensor], title: str = "") -> Figure:
    """The photograph and, per global-context module (rows gc1, gc2), its group maps (``G x h x w`` each)."""
    arrays = {k: _as_numpy(v) for k, v in maps.items()}
    vmin = min(float(a.min()) for a in arrays.values())
    vmax = max(float(a.max()) for a in arrays.values())
    groups = len(next(iter(arrays.values())))
    fig, axes = _figure(image, len(arrays), groups, 1.6, (0.8, 0.7), title,
                        [f"group {g + 1}" for g in range(groups)])
    for row, (name, array) in zip(axes, arrays.items()):
        row[0].set_ylabel(name, fontsize=10)
        for ax, heat in zip(row[1:], array):
            mappable = _overlay(ax, image, heat, vmin, vmax)
    fig.colorbar(mappable, ax=axes, shrink=0.9, label="similarity (normalised)")
    return fig


def _wrap(fig: Figure, text: str, fontsize: int) -> str:
    """``text`` wrapped to the figure's width (narrow figures would cut it off) in lines of even length."""
    chars, lines = max(30, int(fig.get_figwidth() * 72 / (0.6 * fontsize))), []
    for line in text.splitlines():
        n = max(1, math.ceil(len(line) / chars))
        width = math.ceil(len(line) / n)
        while len(textwrap.wrap(line, width)) > n:
            width += 1
        lines += textwrap.wrap(line, width)
    return "\n".join(lines)


def _title(fig: Figure, text: str, fontsize: int = 10) -> None:
    if text:
        fig.suptitle(_wrap(fig, text, fontsize), fontsize=fontsize)


def _mark(ax, x: float, y: float, number: int) -> None:
    """A query's star, drawn whole over the panel's border, with its number on the side towards the middle."""
    ax.plot([x], [y], marker="*", markersize=13, color="white", markeredgecolor="black", markeredgewidth=1.0,
            clip_on=False, zorder=5)
    right, bottom = x > sum(ax.get_xlim()) / 2, y > sum(ax.get_ylim()) / 2
    ax.annotate(str(number), (x, y), xytext=(-10 if right else 10, 10 if bottom else -10),
                textcoords="offset points", ha="center", va="center", fontsize=8, fontweight="bold",
                annotation_clip=False, zorder=6, bbox=dict(boxstyle="circle,pad=0.15", fc="white", ec="black"))


def _scaled(heat: np.ndarray, per_map: bool, vmax: float) -> Tuple[np.ndarray, float, float]:
    """(map, vmin, vmax): stretched to [0, 1] from its own minimum to its maximum, or as it is on [0, vmax]."""
    if not per_map:
        return heat, 0.0, vmax
    return (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12), 0.0, 1.0


def _uniform_note(fig: Figure, arrays: Sequence[np.ndarray], per_map: bool) -> None:
    """A line under the figure when every map is nearly uniform (see :func:`spread`)."""
    if (value := spread(arrays)) < NEAR_UNIFORM:
        text = f"Every map is nearly uniform (max - min at most {100 * value:.0f}% of the mean): " + (
            "the per-map scale stretches these small differences." if per_map else
            "one flat colour on this scale; --scale map shows their structure.")
        fig.supxlabel(_wrap(fig, text, 8), fontsize=8)


def draw_attention(image: np.ndarray, points: Sequence[Tuple[float, float]], maps: Sequence[torch.Tensor],
                   column_labels: Sequence[str], title: str = "", scale: str = "map") -> Figure:
    """Per query row: the photograph with the query (pixels in ``image``) marked, then its ``columns x rows x cols``
    maps. ``scale`` 'map' draws each from its own minimum to its maximum (the paper's "normalized attention maps"),
    'figure' all on one scale from 0."""
    arrays = [_as_numpy(m) for m in maps]
    per_map, vmax = scale == "map", max(float(a.max()) for a in arrays)
    fig, axes = _figure(image, len(points), len(arrays[0]), 1.9, (0.9, 0.7), title, column_labels)
    for r, (row, (x, y), array) in enumerate(zip(axes, points, arrays)):
        row[0].set_ylabel(f"query {r + 1}\n({x:.0f}, {y:.0f})", fontsize=8)
        _mark(row[0], x, y, r + 1)
        for ax, heat in zip(row[1:], array):
            mappable = _overlay(ax, image, *_scaled(heat, per_map, vmax))
            _mark(ax, x, y, r + 1)
    label = "attention, each map min to max" if per_map else "attention weight"
    fig.colorbar(mappable, ax=axes, shrink=0.9, label=label)
    _uniform_note(fig, [heat for a in arrays for heat in a], per_map)
    return fig


def draw_compare(image: np.ndarray, points: Sequence[Tuple[float, float]], vit_maps: torch.Tensor,
                 fcvit_maps: torch.Tensor, vit_label: str, fcvit_label: str, title: str = "",
                 scale: str = "map") -> Figure:
    """Figure 3 of the paper: ViT attention for several queries (top, ``vit_maps`` ``queries x rows x cols``) and
    FCViT's group maps (bottom, ``fcvit_maps`` ``groups x h x w``); ``scale`` as in :func:`draw_attention`."""
    vit, fc, per_map = _as_numpy(vit_maps), _as_numpy(fcvit_maps), scale == "map"
    fig, axes = _figure(image, 2, max(len(vit), len(fc)), 1.7, (1.2, 1.0), title)
    axes[0, 0].set_title(vit_label, fontsize=8)
    axes[1, 0].set_title(fcvit_label, fontsize=8)
    for c, (ax, heat, point) in enumerate(zip(axes[0, 1:], vit, points), 1):
        _mark(axes[0, 0], *point, c)
        vit_mappable = _overlay(ax, image, *_scaled(heat, per_map, float(vit.max())))
        _mark(ax, *point, c)
        ax.set_title(f"query {c}", fontsize=9)
    for c, (ax, heat) in enumerate(zip(axes[1, 1:], fc), 1):
        fc_mappable = _overlay(ax, image, heat, float(fc.min()), float(fc.max()))
        ax.set_title(f"group {c}", fontsize=9)
    for ax in [*axes[0, len(vit) + 1:], *axes[1, len(fc) + 1:]]:
        ax.set_axis_off()
    fig.colorbar(vit_mappable, ax=axes[0, :], shrink=0.9, label="attention,\nmin to max" if per_map else "attention")
    fig.colorbar(fc_mappable, ax=axes[1, :], shrink=0.9, label="similarity")
    _uniform_note(fig, list(vit), per_map)
    return fig


def draw_measures(rows: List[dict], measures: Sequence[str], title: str = "",
                  baselines: Optional[Sequence[Dict[str, float]]] = None) -> Figure:
    """Each measure over block depth in panels three to a row, a line per ``module`` (FCViT's gc1/gc2) if rows have
    one; ``baselines`` (one :func:`uniform_values` per row) add a dashed line at what uniform attention gives."""
    cols = min(3, len(measures))
    fig = Figure(figsize=(3.6 * cols, 2.7 * math.ceil(len(measures) / cols) + 0.5), layout="constrained")
    axes = list(fig.subplots(math.ceil(len(measures) / cols), cols, squeeze=False).flat)
    modules = sorted({r.get("module", "") for r in rows})
    for ax, measure in zip(axes, measures):
        for module in modules:
            sel = [i for i, r in enumerate(rows) if r.get("module", "") == module and r.get(measure) is not None]
            ax.plot([rows[i]["block"] for i in sel], [rows[i][measure] for i in sel], marker="o", markersize=3,
                    label=module or "this model")
            if module == modules[0]:
                first = sel  # the baseline's blocks (the same for every module)
        if baselines and all(measure in baselines[i] for i in first):
            ax.plot([rows[i]["block"] for i in first], [baselines[i][measure] for i in first], "--", color="0.3",
                    lw=1.2, label="uniform attention")
        name, ylabel = MEASURE_LABELS.get(measure, (measure.replace("_", " "), ""))
        ax.set_title(name, fontsize=10)
        ax.set(xlabel="block", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if measure != "group_correlation":
            ax.set_ylim(-0.02, 1.02)
    for ax in axes[len(measures):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend for every panel
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=8)
    _title(fig, title)
    return fig


def check_figure_path(path: str) -> str:
    """The figure format of ``path`` (its extension), or a one-sentence error before any slow work."""
    path = os.fspath(path)
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UserError(f"The folder of the output '{path}' does not exist: create it or choose another path.")
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if ext not in supported:
        raise UserError(f"Cannot write the figure '{path}': end its name in one of "
                        f"{', '.join('.' + e for e in sorted(supported))}.")
    return ext


def save_figure(fig: Figure, path: str, dpi: int = 100) -> str:
    """Write the figure to ``path`` (format from its extension) through a temporary file and a rename."""
    path = os.fspath(path)
    fmt = check_figure_path(path)
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    return path
