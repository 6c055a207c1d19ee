"""``fcvit validate``: top-1, top-5, loss and images/s of a checkpoint (torchrun-ready); the original (timm 0.5)
validate.py's flags are accepted, mapped or refused as :mod:`fcvit.cli.original_flags` says."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
from typing import Any, Dict

from ..errors import UserError
from .options import add_batch_size, add_results, check_results_file, is_main_process
from .original_flags import add_original_flags, resolve_original_flags
from .train import add_data_arguments, resolve_data_source

_logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate", help="evaluate a checkpoint: top-1, top-5, loss, images/s",
        description="Evaluate a classifier on DATA/val (or --dataset digits) with the model's crop_pct and "
                    "interpolation unless overridden. Runs under torchrun too.")
    add_data_arguments(p)
    p.add_argument("--split", default="val", help="split to evaluate (default val; 'validation' also found)")
    p.add_argument("--checkpoint", default="", help="checkpoint file (a training run's .pth.tar or published weights) "
                                                   "or hub folder (fcvit convert)")
    p.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights stored in the checkpoint")
    add_batch_size(p, 128)
    add_results(p, "the results", "also write the results to PATH: CSV if it ends in .csv (as timm), else JSON")
    add_original_flags(p, "validate")
    p.layers = lambda parser, args: {}  # nothing to layer, but the flags given are recorded in args._explicit
    p.set_defaults(func=run)


def stored_data_config(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Eval settings a training run stored (``data_config``), used where the command line is silent."""
    stored = checkpoint.get("data_config") or {}
    out = {key: list(value) if isinstance(value, (list, tuple)) else value for key, value in stored.items()
           if key in ("crop_pct", "interpolation", "mean", "std") and value is not None}
    if stored.get("input_size"):
        out["input_size"] = list(stored["input_size"])
    return out


def validate(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from ..engine import cleanup_distributed, init_distributed, resolve_amp, setup_logging, unwrap_model
    from ..tasks.classification.train import build_eval_loader, check_classes, create_model, evaluate
    from ..models import extract_state_dict, load_weights, read_checkpoint
    from ..models.checkpoint import CLASSIFIER_KINDS, classifier_kwargs, expect_kind, model_name_for

    notes = resolve_original_flags(args, "validate")
    resolve_data_source(args, "val/<class>/*, or --dataset digits")
    if not args.checkpoint:
        raise UserError("No --checkpoint given: pass the weights to evaluate (random weights would score chance).")
    check_results_file(args)
    checkpoint = read_checkpoint(args.checkpoint)
    expect_kind(checkpoint, CLASSIFIER_KINDS, f"Checkpoint '{args.checkpoint}'")
    explicit = getattr(args, "_explicit", set())
    for key, value in stored_data_config(checkpoint).items():
        if key not in explicit and not (key == "input_size" and "img_size" in explicit):
            setattr(args, key, value)
    if "model" not in explicit:
        args.model = model_name_for(checkpoint, args.model)
    state_dict = extract_state_dict(checkpoint, use_ema=args.use_ema)
    model_kwargs = classifier_kwargs(checkpoint, state_dict, args.model)  # --model-kwargs rebuild a run's shape
    num_classes = model_kwargs.pop("num_classes", 1000)
    if args.num_classes is not None and args.num_classes != num_classes:
        raise UserError(f"--num-classes {args.num_classes} does not match the checkpoint, whose classifier has "
                        f"{num_classes} classes: leave --num-classes out.")

    ctx = init_distributed(args.device)
    try:
        setup_logging(ctx)
        for note in notes:
            _logger.info(note)
        args.drop_path = 0.0
        args.model_kwargs = model_kwargs
        model = create_model(args, num_classes)
        load_weights(model, state_dict, args.model)
        model.to(ctx.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        loader, dataset, tf_args = build_eval_loader(args, model, ctx, args.split, None)
        _check_test_pool(args, model, tf_args)
        data_classes = getattr(dataset, "classes", None)
        check_classes(data_classes, checkpoint, num_classes, f"the '{args.split}' split")
        amp = resolve_amp(ctx.device, args.amp, args.amp_dtype)
        metrics = evaluate(unwrap_model(model), loader, amp, ctx, args.channels_last, "validate")
    finally:
        cleanup_distributed()
    result = dict(model=args.model, checkpoint=args.checkpoint, split=args.split, top1=metrics["top1"],
                  top5=metrics["top5"], loss=metrics["loss"], img_per_sec=metrics["img_per_sec"],
                  images=metrics["images"], skipped=metrics["skipped"],
                  img_size=list(tf_args["input_size"]), crop_pct=tf_args["crop_pct"],
                  interpolation=tf_args["interpolation"],
                  classes=len(checkpoint.get("class_names") or data_classes or []) or num_classes,
                  amp=amp.describe(), world_size=ctx.world_size)
    if ctx.is_main and args.results_file:
        write_results(args.results_file, result)
    return result


def _check_test_pool(args: argparse.Namespace, model: Any, tf_args: Dict[str, Any]) -> None:
    """``--test-pool`` changes nothing at the model's own input size (timm pooled only for larger inputs)."""
    if not getattr(args, "test_pool", False):
        return
    own = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    if tuple(tf_args["input_size"])[-1] > own[-1]:
        raise UserError(f"--test-pool above the model's {own[-1]} px is not supported: evaluate at "
                        f"--img-size {own[-1]} or leave --test-pool out.")
    _logger.info("--test-pool: no effect at the model's own input size (as in the original).")


def write_results(path: str, result: Dict[str, Any]) -> None:
    """The results as CSV (a ``.csv`` name: a header row and a value row, lists joined by spaces, as timm's
    validate.py) or JSON, written atomically."""
    from ..files import atomic_write

    text = json.dumps(result, indent=2)
    if path.lower().endswith(".csv"):
        row = {k: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in result.items()}
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
        text = buffer.getvalue()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, text)


def run(args: argparse.Namespace) -> int:
    result = validate(args)
    if is_main_process() and args.json:
        print(json.dumps(result, indent=2))
    elif is_main_process():
        print(f"{result['model']} on {result['images']} images ({result['split']}): top-1 {result['top1']:.2f}%  "
              f"top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  {result['img_per_sec']:.1f} img/s  "
              f"({result['img_size'][-1]} px, crop_pct {result['crop_pct']}, {result['interpolation']}, {result['amp']})")
        if args.results_file:
            print(f"results written to {args.results_file}")
    return 0
