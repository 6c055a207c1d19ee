"""Figures: FCViT's group similarity maps, ViT attention maps per query, both side by side, measures over depth.

Maps are drawn at their own resolution (patch grid or feature map) with ``extent`` covering the
photograph and bilinear interpolation at render time, so the array inside each overlay is exactly
the map the model computed. Figures are ``matplotlib.figure.Figure`` objects (no pyplot state), saved
atomically.
"""
from __future__ import annotations

import io
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

__all__ = [
    "draw_similarity",
    "draw_attention",
    "draw_compare",
    "draw_measures",
    "save_figure",
    "check_figure_path",
    "display_image",
    "spread",
    "uniform_values",
]

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


def _overlay(ax, image: np.ndarray, heat: np.ndarray, vmin: float, vmax: float):
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0))
    mappable = ax.imshow(heat, cmap=OVERLAY_CMAP, alpha=OVERLAY_ALPHA, vmin=vmin, vmax=vmax,
                         extent=(0, w, h, 0), interpolation="bilinear")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return mappable


def _plain(ax, image: np.ndarray) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def _as_numpy(t) -> np.ndarray:
    return t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)


def draw_similarity(image: np.ndarray, maps: Dict[str, torch.Tensor], title: str = "") -> Figure:
    """The photograph and, per global-context module (rows gc1, gc2), its group maps (``G x h x w`` each)."""
    names = list(maps)
    groups = maps[names[0]].shape[0]
    arrays = {k: _as_numpy(v) for k, v in maps.items()}
    vmin = min(float(a.min()) for a in arrays.values())
    vmax = max(float(a.max()) for a in arrays.values())
    aspect = image.shape[0] / image.shape[1]
    fig = Figure(figsize=(1.6 * (groups + 1) + 0.8, 1.6 * aspect * len(names) + 0.7), layout="constrained")
    axes = fig.subplots(len(names), groups + 1, squeeze=False)
    mappable = None
    for r, name in enumerate(names):
        _plain(axes[r, 0], image)
        axes[r, 0].set_ylabel(name, fontsize=10)
        for g in range(groups):
            mappable = _overlay(axes[r, g + 1], image, arrays[name][g], vmin, vmax)
            if r == 0:
                axes[r, g + 1].set_title(f"group {g + 1}", fontsize=9)
    axes[0, 0].set_title("image", fontsize=9)
    fig.colorbar(mappable, ax=axes, shrink=0.9, label="similarity (normalised)")
    _title(fig, title)
    return fig


def _wrap(fig: Figure, text: str, fontsize: int) -> str:
    """``text`` wrapped to the figure's width, so that narrow figures do not cut it off, into lines of even
    length (never one word left alone on a line)."""
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


def _mark(ax, x: float, y: float, number: Optional[int] = None) -> None:
    """A query's star, drawn whole over the panel's border, with its number on the side towards the middle."""
    ax.plot([x], [y], marker="*", markersize=13, color="white", markeredgecolor="black", markeredgewidth=1.0,
             clip_on=False, zorder=5)
    if number is not None:
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
    value = spread(arrays)
    if value < NEAR_UNIFORM:
        text = f"Every map is nearly uniform (max - min at most {100 * value:.0f}% of the mean): " + (
            "the per-map scale stretches these small differences." if per_map else
            "one flat colour on this scale; --scale map shows their structure.")
        fig.supxlabel(_wrap(fig, text, 8), fontsize=8)


def draw_attention(
        image: np.ndarray,
        points: Sequence[Tuple[float, float]],
        maps: Sequence[torch.Tensor],
        column_labels: Sequence[str],
        title: str = "",
        scale: str = "map",
) -> Figure:
    """Per query row: the photograph with the query marked, then its maps (``columns x rows x cols`` each).

    ``points`` are pixel coordinates in ``image``. Values are the query's share of attention per patch;
    ``scale`` 'map' draws each map from its own minimum to its maximum (the paper's "normalized attention
    maps"), 'figure' all on one scale from 0; a note says when every map is nearly uniform.
    """
    arrays = [_as_numpy(m) for m in maps]
    columns, per_map = arrays[0].shape[0], scale == "map"
    vmax = max(float(a.max()) for a in arrays)
    aspect = image.shape[0] / image.shape[1]
    fig = Figure(figsize=(1.9 * (columns + 1) + 0.9, 1.9 * aspect * len(points) + 0.7), layout="constrained")
    axes = fig.subplots(len(points), columns + 1, squeeze=False)
    mappable = None
    for r, ((x, y), arr) in enumerate(zip(points, arrays)):
        _plain(axes[r, 0], image)
        _mark(axes[r, 0], x, y, r + 1)
        axes[r, 0].set_ylabel(f"query {r + 1}\n({x:.0f}, {y:.0f})", fontsize=8)
        for c in range(columns):
            mappable = _overlay(axes[r, c + 1], image, *_scaled(arr[c], per_map, vmax))
            _mark(axes[r, c + 1], x, y, r + 1)
            if r == 0:
                axes[r, c + 1].set_title(column_labels[c], fontsize=9)
    axes[0, 0].set_title("image", fontsize=9)
    fig.colorbar(mappable, ax=axes, shrink=0.9,
                 label="attention, each map min to max" if per_map else "attention weight")
    _uniform_note(fig, [a[c] for a in arrays for c in range(columns)], per_map)
    _title(fig, title)
    return fig


def draw_compare(
        image: np.ndarray,
        points: Sequence[Tuple[float, float]],
        vit_maps: torch.Tensor,
        fcvit_maps: torch.Tensor,
        vit_label: str,
        fcvit_label: str,
        title: str = "",
        scale: str = "map",
) -> Figure:
    """Figure 3 of the paper: ViT attention for several queries (top) and FCViT's group maps (bottom).

    ``vit_maps`` is ``queries x rows x cols`` (one map per query), ``fcvit_maps`` ``groups x h x w``;
    ``scale`` as in :func:`draw_attention`, for the attention maps.
    """
    vit, per_map = _as_numpy(vit_maps), scale == "map"
    fc = _as_numpy(fcvit_maps)
    columns = max(len(vit), len(fc))
    aspect = image.shape[0] / image.shape[1]
    fig = Figure(figsize=(1.7 * (columns + 1) + 1.2, 2 * 1.7 * aspect + 1.0), layout="constrained")
    axes = fig.subplots(2, columns + 1, squeeze=False)
    _plain(axes[0, 0], image)
    for i, (x, y) in enumerate(points):
        _mark(axes[0, 0], x, y, i + 1)
    axes[0, 0].set_title(vit_label, fontsize=8)
    _plain(axes[1, 0], image)
    axes[1, 0].set_title(fcvit_label, fontsize=8)
    vit_mappable = fc_mappable = None
    for c in range(columns):
        for r in (0, 1):
            axes[r, c + 1].set_axis_off()
        if c < len(vit):
            axes[0, c + 1].set_axis_on()
            vit_mappable = _overlay(axes[0, c + 1], image, *_scaled(vit[c], per_map, float(vit.max())))
            _mark(axes[0, c + 1], *points[c], c + 1)
            axes[0, c + 1].set_title(f"query {c + 1}", fontsize=9)
        if c < len(fc):
            axes[1, c + 1].set_axis_on()
            fc_mappable = _overlay(axes[1, c + 1], image, fc[c], float(fc.min()), float(fc.max()))
            axes[1, c + 1].set_title(f"group {c + 1}", fontsize=9)
    fig.colorbar(vit_mappable, ax=axes[0, :], shrink=0.9, label="attention,\nmin to max" if per_map else "attention")
    fig.colorbar(fc_mappable, ax=axes[1, :], shrink=0.9, label="similarity")
    _uniform_note(fig, list(vit), per_map)
    _title(fig, title)
    return fig


def draw_measures(rows: List[dict], measures: Sequence[str], title: str = "",
                  baselines: Optional[Sequence[Dict[str, float]]] = None) -> Figure:
    """Each measure over block depth, a panel each in rows of three; rows with a ``module`` (FCViT's gc1/gc2)
    get a line per module; ``baselines`` (one :func:`uniform_values` per row) a dashed line at what uniform
    attention gives."""
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
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
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
    ext = check_figure_path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=ext, dpi=dpi)
    atomic_write(path, buffer.getvalue())
    return path
