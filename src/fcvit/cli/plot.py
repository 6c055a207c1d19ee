"""``fcvit plot DIR``: the curves of a run's ``summary.csv`` (losses, accuracy, lr, throughput) in one PNG."""
from __future__ import annotations

import argparse
import csv
import math
import os
from typing import Dict, List, Optional, Tuple


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="draw a training run's summary.csv curves to a PNG",
                              description="Plot every numeric column of DIR/summary.csv against epochs or iterations.")
    p.add_argument("run_dir", metavar="DIR", help="training output folder (or the summary.csv itself)")
    p.add_argument("--output", "-o", default="", help="PNG path (default DIR/summary.png)")
    p.set_defaults(func=run)


_POSITIONS = ("epoch", "iter", "step")

# panels: title -> columns drawn together (others get a panel of their own)
_GROUPS = {
    "loss": ("train_loss", "eval_loss", "ema_eval_loss"),
    "accuracy (%)": ("eval_top1", "eval_top5", "ema_eval_top1", "ema_eval_top5"),
    "learning rate": ("lr",),
    "images/s": ("train_img_per_sec", "model_img_per_sec", "eval_img_per_sec"),
}


def read_summary(path: str) -> Dict[str, List[float]]:
    """Numeric columns of a summary.csv (empty cells become NaN so columns stay aligned)."""
    from ..errors import UserError

    if os.path.isdir(path):
        path = os.path.join(path, "summary.csv")
    if not os.path.isfile(path):
        raise UserError(f"'{path}' does not exist: pass a training output folder that holds summary.csv.")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"'{path}' has no rows yet: plot after the first epoch has finished.")
    columns: Dict[str, List[float]] = {}
    for key in rows[0]:
        values: List[float] = []
        for row in rows:
            try:
                values.append(float(row.get(key) or "nan"))
            except ValueError:
                break
        else:
            if not all(math.isnan(v) for v in values):
                columns[key] = values
    return columns


def plot_summary(columns: Dict[str, List[float]], out_path: str, title: Optional[str] = None
                 ) -> Tuple[str, List[str]]:
    """Draw the panels and save the PNG; returns the x axis ('epoch', 'iter' or 'row') and the panel titles."""
    import matplotlib

    from ..files import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a run's rows are keyed by its first column: epochs (classification, detection) or iterations (segmentation)
    positions = [k for k in columns if k in _POSITIONS]
    x_key = positions[0] if positions else None
    x = columns.get(x_key) if x_key else list(range(len(next(iter(columns.values())))))
    panels = [(name, [k for k in keys if k in columns]) for name, keys in _GROUPS.items()]
    panels = [(name, keys) for name, keys in panels if keys]
    used = set(positions).union(*(keys for _, keys in panels))
    panels += [(k, [k]) for k in columns if k not in used]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for key in keys:
            ax.plot(x, columns[key], marker="o", markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel(x_key or "row")
        if name == "learning rate":
            ax.set_yscale("log")
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_write(out_path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return x_key or "row", [p[0] for p in panels]


def run(args: argparse.Namespace) -> int:
    columns = read_summary(args.run_dir)
    base = args.run_dir if os.path.isdir(args.run_dir) else os.path.dirname(args.run_dir) or "."
    out = args.output or os.path.join(base, "summary.png")
    x_key, panels = plot_summary(columns, out, title=os.path.basename(os.path.abspath(base)))
    print(f"wrote {out}: {len(panels)} panels against {x_key}")
    return 0
