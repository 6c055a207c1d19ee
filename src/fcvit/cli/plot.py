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
    "loss parts": ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"),
    "COCO box AP (%)": tuple(f"bbox_{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
    "COCO mask AP (%)": tuple(f"segm_{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
    "segmentation (%)": ("mIoU", "mAcc", "aAcc"),
}
# titles of the columns drawn alone ({x}: epoch, or row for runs counted in iterations)
_TITLES = {"seconds": "training time per {x} (s)", "data_wait_share": "share of time waiting for data"}


def read_summary(path: str) -> Dict[str, List[float]]:
    """Numeric columns of a summary.csv (empty cells and COCO's -1, 'not defined', become NaN so columns stay
    aligned; COCO's AP fractions become percent, as in the logs); of rows repeating an epoch (iteration) only the
    last is kept, with a note."""
    import logging

    from ..errors import UserError

    if os.path.isdir(path):
        path = os.path.join(path, "summary.csv")
    if not os.path.isfile(path):
        raise UserError(f"'{path}' does not exist: pass a training output folder that holds summary.csv.")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"'{path}' cannot be read as CSV ({exc}): pass the summary.csv a training run wrote.") from None
    if not rows:
        raise UserError(f"'{path}' has no rows yet: plot after the first epoch has finished.")
    columns: Dict[str, List[float]] = {}
    for key in rows[0]:
        values: List[float] = []
        for row in rows:
            try:
                values.append(float(row.get(key) or "nan"))
            except (TypeError, ValueError):
                break
        else:
            if not all(math.isnan(v) for v in values):
                columns[key] = [math.nan if v < 0 else 100 * v for v in values] if "_AP" in key else values
    if not set(columns) - set(_POSITIONS):
        raise UserError(f"'{path}' has no numeric column to plot: pass the summary.csv a training run wrote.")
    xs = next((v for k, v in columns.items() if k in _POSITIONS), [])
    last = {v: i for i, v in enumerate(xs) if v == v}  # NaN (an empty cell) is no position
    repeated = sorted({v for i, v in enumerate(xs) if v == v and last[v] != i})
    if repeated:
        x_key = next(k for k in columns if k in _POSITIONS)
        logging.getLogger(__name__).warning(
            "%s has several rows for %s %s (two runs into one folder, or a restart without resuming): plotting the "
            "last row of each.", path, x_key, ", ".join(f"{v:g}" for v in repeated[:8]) + " ..." * (len(repeated) > 8))
        keep = sorted(last.values(), key=lambda i: xs[i])
        columns = {k: [v[i] for i in keep] for k, v in columns.items()}
    return columns


def plot_summary(columns: Dict[str, List[float]], out_path: str, title: Optional[str] = None
                 ) -> Tuple[str, List[str]]:
    """Draw the panels and save the PNG; returns the x axis ('epoch', 'iter' or 'row') and the panel titles."""
    import matplotlib

    from ..files import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # a run's rows are keyed by its first column: epochs (classification, detection) or iterations (segmentation)
    positions = [k for k in columns if k in _POSITIONS]
    x_key = positions[0] if positions else None
    x = columns.get(x_key) if x_key else list(range(len(next(iter(columns.values())))))
    panels = [(name, [k for k in keys if k in columns]) for name, keys in _GROUPS.items()]
    panels = [(name, keys) for name, keys in panels if keys]
    used = set(positions).union(*(keys for _, keys in panels))
    panels += [(_TITLES.get(k, k.replace("_", " ")).format(x=x_key if x_key == "epoch" else "row"), [k])
               for k in columns if k not in used]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for key in keys:
            ax.plot(x, columns[key], marker="o", markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel(x_key or "row")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
