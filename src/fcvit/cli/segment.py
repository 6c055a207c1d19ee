"""``fcvit segment train|eval|predict``: Semantic FPN with FCViT backbones on ADE20K-layout data."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, List, Tuple

from .options import (add_backbone, add_batch_size, add_device, add_images, add_overwrite, add_results,
                      add_runtime_options, add_training_options, check_results_file, note, positive_float, positive_int,
                      probability)

NORMS = ("syncbn", "bn", "gn")
SYNC_BN_SCOPES = ("head", "all", "none")  # the old spellings of --sync-bn, fcvit.tasks.segmentation.model's
PHOTOMETRIC_CHOICES = ("mmseg", "torchvision")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment", help="semantic segmentation: Semantic FPN train / eval / predict",
        description="Semantic FPN with an FCViT backbone on data in the ADE20K layout "
                    "(images/{training,validation}/*.jpg, annotations/{training,validation}/*.png).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("train", help="train a Semantic FPN (iteration-based, torchrun-ready)",
                           description="Train a Semantic FPN. Defaults are the paper's MMSegmentation 0.19 ADE20K "
                                       "set-up, setting by setting (docs/reproduction.md). Reproduce it with: torchrun "
                                       "--nproc_per_node 8 -m fcvit segment train ... -b 4 (-b is images per process).")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root in the ADE20K layout")
    add_backbone(p, "+")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes after the label mapping (default 150, ADE20K; or the count of --class-names)")
    p.add_argument("--class-names", metavar="FILE", help="text file with one class name per line, in class order")
    _add_zero_label(p)
    p.add_argument("--iters", type=positive_int, default=40000, help="optimizer steps (default 40000)")
    add_batch_size(p, 4, ", the paper's per GPU: 8 GPUs x 4 = 32 per step, with --lr used as given")
    p.add_argument("--crop-size", type=positive_int, default=512,
                   help="training crop (default 512; images rescaled to (4x, 1x) it times 0.5-2.0); the eval shorter side")
    p.add_argument("--lr", type=positive_float, default=2e-4, help="AdamW learning rate (default 2e-4)")
    p.add_argument("--power", type=positive_float, default=0.9, help="poly decay power (default 0.9)")
    p.add_argument("--norm", choices=NORMS, default="syncbn",
                   help="the head's norm: syncbn (default, the paper's: SyncBatchNorm in the head, BatchNorm in one "
                        "process), bn, or gn for tiny batches")
    p.add_argument("--head-norm", choices=("bn", "gn"), default=None, help="old spelling: bn = --norm syncbn, gn = --norm gn")
    p.add_argument("--photometric", choices=PHOTOMETRIC_CHOICES, default="mmseg",
                   help="colour distortion: mmseg (default, the paper's PhotoMetricDistortion) or torchvision")
    p.add_argument("--antialias", action="store_true", help="anti-aliased resizes instead of the paper's plain bilinear")
    p.add_argument("--fpn-channels", type=positive_int, default=256, help="FPN channels (default %(default)s)")
    p.add_argument("--head-channels", type=positive_int, default=128,
                   help="segmentation head channels (default %(default)s)")
    add_training_options(p, "segment", 1, "mIoU", save_interval=1000, eval_interval=(4000, "iterations"), sync_bn=None)
    p.add_argument("--sync-bn", nargs="?", const=True, default=False, choices=(True, *SYNC_BN_SCOPES),
                   metavar="head|all|none",
                   help="every BatchNorm a SyncBatchNorm under torchrun (default off: the paper's backbone "
                        "BatchNorms stay per GPU, see --norm); the old scopes map to --norm syncbn, --sync-bn, "
                        "--norm bn")
    add_runtime_options(p)
    p.run_shaping(RUN_SHAPING)
    p.set_defaults(func=run_train)

    p = actions.add_parser("eval", help="mIoU, mAcc, aAcc and per-class IoU of a checkpoint",
                           description="Evaluate a segmentation checkpoint on the validation split (whole images).")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root in the ADE20K layout")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'fcvit segment train'")
    p.add_argument("--split", default="val", help="split to score: val (default, validation/) or train (training/)")
    _add_zero_label(p)
    p.add_argument("--short-side", type=positive_int, default=None,
                   help="evaluation shorter side (default: the training crop size stored in the checkpoint)")
    add_results(p, "the scores")
    add_runtime_options(p, amp_help="mixed precision inference")
    p.set_defaults(func=run_eval)

    p = actions.add_parser("predict", help="colour-coded masks and overlays for images",
                           description="Segment images; writes NAME_mask.png (palette PNG, value = class + 1) and "
                                       "NAME_overlay.png per image.")
    add_images(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'fcvit segment train'")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files")
    add_overwrite(p, "existing NAME_mask.png and NAME_overlay.png files in DIR")
    p.add_argument("--alpha", type=probability, default=0.5, help="mask weight in the overlay (default 0.5)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print the classes found per image as JSON")
    p.set_defaults(func=run_predict)


def _add_zero_label(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-reduce-zero-label", action="store_true",
                   help="use annotation values as class indices (default: ADE20K's 0 = ignored, 1..N = classes 0..N-1)")


#: flags whose change makes a resumed run another run (refused unless --resume-override, which applies them:
#: a new --iters re-spreads the poly decay over the new length)
RUN_SHAPING = (
    "backbone", "backbone_depths", "backbone_dims", "data", "num_classes", "class_names", "no_reduce_zero_label",
    "iters", "crop_size", "batch_size", "lr", "weight_decay", "power", "drop_path", "norm", "photometric",
    "fpn_channels", "head_channels", "seed")


def resolve_norm(args: argparse.Namespace) -> None:
    """The old spellings ``--sync-bn head|all|none`` and ``--head-norm bn|gn`` as ``--norm`` and ``--sync-bn``."""
    scope, old_norm = args.sync_bn, vars(args).pop("head_norm", None)
    given = [f"--sync-bn {scope}"] * isinstance(scope, str) + [f"--head-norm {old_norm}"] * (old_norm is not None)
    if isinstance(scope, str):
        args.sync_bn, args.norm = scope == "all", "bn" if scope == "none" else args.norm
    if old_norm == "gn":
        args.norm = "gn"
    if given:
        note(f"{' '.join(given)}: the old spelling of --norm {args.norm}{' --sync-bn' if args.sync_bn else ''}.")


def run_train(args: argparse.Namespace) -> int:
    from ..tasks.segmentation.train import train

    resolve_norm(args)
    args.output = args.output or os.path.join("output", "segment", args.backbone)
    train(args)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import logging

    from ..engine import cleanup_distributed, eval_loader, init_distributed, resolve_amp
    from ..tasks.segmentation.data import SegmentationFolder
    from ..tasks.segmentation.evaluate import evaluate
    from ..files import json_text, write_json
    from ..tasks.segmentation.metrics import format_class_table
    from ..tasks.segmentation.transforms import eval_transforms

    check_results_file(args)
    ctx = init_distributed(args.device)
    try:
        model, names, short_side, antialias = _load_segmenter(args.checkpoint, ctx.device, args.short_side)
        num_classes = model.num_classes
        dataset = SegmentationFolder(args.data, args.split, num_classes, not args.no_reduce_zero_label,
                                     eval_transforms(short_side, 4 * short_side, antialias=antialias))
        amp = resolve_amp(ctx.device, args.amp, args.amp_dtype)
        scores = evaluate(model, eval_loader(dataset, 1, ctx, args.workers), num_classes, ctx, amp, progress=True)
    finally:
        cleanup_distributed()
    if not ctx.is_main:
        return 0
    logging.getLogger(__name__).info("%d images of '%s', shorter side %d", len(dataset), args.split, short_side)
    results = dict(checkpoint=args.checkpoint, data=args.data, split=args.split, images=len(dataset),
                   mIoU=scores["mIoU"], mAcc=scores["mAcc"], aAcc=scores["aAcc"],
                   IoU=dict(zip(names, scores["IoU"])), Acc=dict(zip(names, scores["Acc"])))
    print(json_text(results) if args.json else format_class_table(scores, names))
    if args.results_file:
        write_json(args.results_file, results)
    return 0


def _load_segmenter(path: str, device: Any, short_side: int | None = None) -> Tuple[Any, List[str], int, bool]:
    """The model, its class names and the evaluation resize: ``short_side``, else the trained one, and antialias."""
    from ..tasks.segmentation.data import default_class_names
    from ..tasks.segmentation.evaluate import load_segmenter
    from .predict import class_names_for

    model, checkpoint = load_segmenter(path, device)
    names = class_names_for(model.num_classes, checkpoint, default_class_names)
    short_side = short_side or int(checkpoint.get("eval_short_side") or 512)
    return model, names, short_side, bool(checkpoint.get("eval_antialias", False))


def run_predict(args: argparse.Namespace) -> int:
    from ..data import ImageReader, expand_image_paths
    from ..engine import resolve_device
    from ..files import check_image_outputs
    from ..tasks.segmentation.predict import planned_outputs, predict_images

    reader = ImageReader(expand_image_paths(args.images))  # bad paths and outputs fail before the model is built
    check_image_outputs([p for pair in planned_outputs(reader.paths, args.output) for p in pair], reader.paths,
                        args.overwrite)
    device = resolve_device(args.device)
    model, names, short_side, antialias = _load_segmenter(args.checkpoint, device)
    results = predict_images(model, reader, args.output, names, device, args.alpha, short_side, antialias,
                             overwrite=args.overwrite)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            top = ", ".join(f"{c['name']} {c['fraction'] * 100:.1f}%" for c in r["classes"][:5])
            print(f"{r['image']}: {r['mask']}, {r['overlay']}  ({top})")
    return reader.exit_status()
