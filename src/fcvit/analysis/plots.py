"""Figures: FCViT's group similarity maps, ViT attention maps per query, both side by side, measures over depth.

Maps are drawn at their own resolution (patch grid or feature map) with ``extent`` covering the
photograph and bilinear interpolation at render time, so the array inside each overlay is exactly
the map the model computed. Figures are ``matplotlib.figure.Figure`` objects (no pyplot state), saved
atomically.
"""
from __future__ import annotations

import io
import os
import textwrap
from typing import Dict, List, Sequence, Tuple

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
]

OVERLAY_CMAP = "jet"
OVERLAY_ALPHA = 0.55


def display_image(image, max_side: int = 480) -> np.ndarray:
    """The photograph as an ``H x W x 3`` uint8 array, shrunk so that figures stay small."""
    from PIL import Image

    img = image.convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    return np.asarray(img)


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


def _title(fig: Figure, text: str, fontsize: int = 10) -> None:
    """A figure title wrapped to the figure's width, so that narrow figures do not cut it off."""
    if not text:
        return
    chars = max(30, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    lines = [textwrap.fill(line, chars) for line in text.splitlines()]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def _mark(ax, x: float, y: float) -> None:
    ax.plot([x], [y], marker="*", markersize=13, color="white", markeredgecolor="black", markeredgewidth=1.0)


def draw_attention(
        image: np.ndarray,
        points: Sequence[Tuple[float, float]],
        maps: Sequence[torch.Tensor],
        column_labels: Sequence[str],
        title: str = "",
) -> Figure:
    """Per query row: the photograph with the query marked, then its maps (``columns x rows x cols`` each).

    ``points`` are pixel coordinates in ``image``. Values are the query's share of attention per
    patch; one colour scale for the whole figure.
    """
    arrays = [_as_numpy(m) for m in maps]
    columns = arrays[0].shape[0]
    vmax = max(float(a.max()) for a in arrays)
    aspect = image.shape[0] / image.shape[1]
    fig = Figure(figsize=(1.9 * (columns + 1) + 0.9, 1.9 * aspect * len(points) + 0.7), layout="constrained")
    axes = fig.subplots(len(points), columns + 1, squeeze=False)
    mappable = None
    for r, ((x, y), arr) in enumerate(zip(points, arrays)):
        _plain(axes[r, 0], image)
        _mark(axes[r, 0], x, y)
        axes[r, 0].set_ylabel(f"query ({x:.0f}, {y:.0f})", fontsize=8)
        for c in range(columns):
            mappable = _overlay(axes[r, c + 1], image, arr[c], 0.0, vmax)
            _mark(axes[r, c + 1], x, y)
            if r == 0:
                axes[r, c + 1].set_title(column_labels[c], fontsize=9)
    axes[0, 0].set_title("image", fontsize=9)
    fig.colorbar(mappable, ax=axes, shrink=0.9, label="attention weight")
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
) -> Figure:
    """Figure 3 of the paper: ViT attention for several queries (top) and FCViT's group maps (bottom).

    ``vit_maps`` is ``queries x rows x cols`` (one map per query), ``fcvit_maps`` ``groups x h x w``.
    """
    vit = _as_numpy(vit_maps)
    fc = _as_numpy(fcvit_maps)
    columns = max(len(vit), len(fc))
    aspect = image.shape[0] / image.shape[1]
    fig = Figure(figsize=(1.7 * (columns + 1) + 1.2, 2 * 1.7 * aspect + 1.0), layout="constrained")
    axes = fig.subplots(2, columns + 1, squeeze=False)
    _plain(axes[0, 0], image)
    for x, y in points:
        _mark(axes[0, 0], x, y)
    axes[0, 0].set_title(vit_label, fontsize=8)
    _plain(axes[1, 0], image)
    axes[1, 0].set_title(fcvit_label, fontsize=8)
    vit_mappable = fc_mappable = None
    for c in range(columns):
        for r in (0, 1):
            axes[r, c + 1].set_axis_off()
        if c < len(vit):
            axes[0, c + 1].set_axis_on()
            vit_mappable = _overlay(axes[0, c + 1], image, vit[c], 0.0, float(vit.max()))
            _mark(axes[0, c + 1], *points[c])
            axes[0, c + 1].set_title(f"query {c + 1}", fontsize=9)
        if c < len(fc):
            axes[1, c + 1].set_axis_on()
            fc_mappable = _overlay(axes[1, c + 1], image, fc[c], float(fc.min()), float(fc.max()))
            axes[1, c + 1].set_title(f"group {c + 1}", fontsize=9)
    fig.colorbar(vit_mappable, ax=axes[0, :], shrink=0.9, label="attention")
    fig.colorbar(fc_mappable, ax=axes[1, :], shrink=0.9, label="similarity")
    _title(fig, title)
    return fig


def draw_measures(rows: List[dict], measures: Sequence[str], title: str = "") -> Figure:
    """Each measure over block depth; rows with a ``module`` (FCViT's gc1/gc2) get a line per module."""
    fig = Figure(figsize=(3.2 * len(measures), 2.8), layout="constrained")
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    modules = sorted({r.get("module", "") for r in rows})
    for ax, measure in zip(axes, measures):
        for module in modules:
            sel = [r for r in rows if r.get("module", "") == module and r.get(measure) is not None]
            ax.plot([r["block"] for r in sel], [r[measure] for r in sel], marker="o", markersize=3,
                    label=module or None)
        ax.set_title(measure, fontsize=10)
        ax.set_xlabel("block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if measure != "group_correlation":
            ax.set_ylim(-0.02, 1.02)
        if modules != [""]:
            ax.legend(fontsize=8)
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
