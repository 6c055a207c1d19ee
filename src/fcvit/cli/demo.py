"""``fcvit demo``: train fcvit_tiny on the built-in digits, validate the best checkpoint, plot the curves."""
from __future__ import annotations

import argparse
import os
import time

from .options import add_device, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="end to end on built-in data: train fcvit_tiny on digits, validate, plot",
        description="Train fcvit_tiny on scikit-learn's handwritten digits (1,437 train / 360 val images), "
                    "then validate the best checkpoint and plot the curves. A few minutes on 2 CPU cores.")
    p.add_argument("--output", default=os.path.join("output", "demo"), help="output folder (default output/demo)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the digits preset's)")
    add_device(p)
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming a previous demo run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .main import build_parser as build_fcvit_parser
    from .plot import plot_summary, read_summary
    from .train import build_parser, finalize_args, train_from_args
    from .validate import validate

    argv = ["--dataset", "digits", "--output", args.output, "--device", args.device]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.fresh:
        argv += ["--resume", ""]
    train_args = finalize_args(build_parser().parse_args(argv))
    print(f"Training {train_args.model} on digits for {train_args.epochs} epochs at {train_args.img_size} px "
          f"(outputs in {args.output}) ...", flush=True)
    start = time.perf_counter()
    result = train_from_args(train_args)
    train_seconds = time.perf_counter() - start
    if result.get("interrupted"):
        print(f"Stopped early; run `fcvit demo` again to continue from {result['last']}.")
        return 0
    if not result.get("metrics"):
        print(f"{args.output} already holds a finished run (pass --fresh to train again); validating it.")

    checkpoint = result["best"] or result["last"]
    val_args = build_fcvit_parser().parse_args(
        ["validate", "--dataset", "digits", "--checkpoint", checkpoint, "--results-file",
         os.path.join(args.output, "validate.json"), "--overwrite", "--device", args.device, "-j",
         str(train_args.workers), "-b", "120"])  # the demo's own file, renewed
    metrics = validate(val_args)
    png = os.path.join(args.output, "summary.png")
    plot_summary(read_summary(args.output), png, title="fcvit_tiny on digits")
    print(f"\nValidation of {os.path.basename(checkpoint)} on {metrics['images']} held-out digits: "
          f"top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, loss {metrics['loss']:.4f} "
          f"(training took {train_seconds / 60:.1f} min).")
    print(f"Outputs in {args.output}: {os.path.basename(checkpoint)} (best), last.pth.tar, summary.csv, "
          f"summary.png, validate.json, log.txt")
    print(f"Curves: fcvit plot {args.output}; again with more epochs: fcvit train --dataset digits --epochs N")
    return 0
