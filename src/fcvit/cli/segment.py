"""``fcvit segment train|eval|predict``: Semantic FPN with FCViT backbones on ADE20K-layout data."""
from __future__ import annotations

import argparse
import json
import sys

from .options import (add_batch_size, add_device, add_keep_best, add_overwrite, add_results, add_runtime_options,
                      non_negative_float, non_negative_int, positive_float, positive_int, probability)

SYNC_BN_SCOPES = ("head", "all", "none")  # fcvit.tasks.segmentation.model's, without importing torch here
PHOTOMETRIC_CHOICES = ("mmseg", "torchvision")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment", help="semantic segmentation: Semantic FPN train / eval / predict",
        description="Semantic FPN with an FCViT backbone on data in the ADE20K layout "
                    "(images/{training,validation}/*.jpg, annotations/{training,validation}/*.png).")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    _add_train(actions)
    _add_eval(actions)
    _add_predict(actions)


def _add_class_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes after the label mapping (default 150, ADE20K; or the count of --class-names)")
    p.add_argument("--class-names", metavar="FILE", help="text file with one class name per line, in class order")
    p.add_argument("--no-reduce-zero-label", action="store_true",
                   help="use annotation values as class indices (default: ADE20K's 0 = ignored, 1..N = classes 0..N-1)")


def _add_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("train", help="train a Semantic FPN (iteration-based, torchrun-ready)",
                           description="Train a Semantic FPN. Defaults are the paper's MMSegmentation 0.19 ADE20K "
                                       "set-up, setting by setting: 40,000 iterations of 8 GPUs x 4 images (512x512 "
                                       "crops), AdamW 2e-4, poly decay, float32, MMSegmentation's photometric "
                                       "distortion, resizes without anti-aliasing, SyncBN in the head only. "
                                       "Reproduce it with: torchrun --nproc_per_node 8 -m fcvit segment train ... -b 4 "
                                       "(-b is images per process).")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root in the ADE20K layout")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for checkpoints, summary.csv and log.txt")
    p.add_argument("--backbone", default="fcvit_b12", help="FCViT variant (default fcvit_b12)")
    p.add_argument("--pretrained-backbone", metavar="CKPT",
                   help="ImageNet FCViT checkpoint to start the backbone from (strongly recommended)")
    p.add_argument("--backbone-depths", type=positive_int, nargs="+", metavar="N",
                   help="custom blocks per stage instead of the variant's (small experiments)")
    p.add_argument("--backbone-dims", type=positive_int, nargs="+", metavar="C",
                   help="custom channels per stage (with --backbone-depths)")
    _add_class_options(p)
    p.add_argument("--iters", type=positive_int, default=40000, help="optimizer steps (default 40000)")
    add_batch_size(p, 4, ", the paper's per GPU: 8 GPUs x 4 = 32 per step, with --lr used as given")
    p.add_argument("--crop-size", type=positive_int, default=512,
                   help="training crop (default 512); training rescales to (4x, 1x) this size times 0.5-2.0, "
                        "evaluation uses it as the shorter side")
    p.add_argument("--lr", type=positive_float, default=2e-4, help="AdamW learning rate (default 2e-4)")
    p.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--power", type=positive_float, default=0.9, help="poly decay power (default 0.9)")
    p.add_argument("--clip-grad", type=positive_float, default=None, help="clip gradient norm (default off)")
    p.add_argument("--drop-path", type=probability, default=0.0, help="backbone drop-path rate (default 0)")
    p.add_argument("--head-norm", choices=("bn", "gn"), default="bn",
                   help="norm in the head: bn (the paper's; synchronised per --sync-bn) or gn for tiny batches")
    p.add_argument("--sync-bn", choices=SYNC_BN_SCOPES, default="head",
                   help="BatchNorms synchronised across GPUs under torchrun: head (default, the paper's: the "
                        "backbone's BatchNorms stay per GPU), all (torchvision references' --sync-bn) or none")
    p.add_argument("--photometric", choices=PHOTOMETRIC_CHOICES, default="mmseg",
                   help="colour distortion: mmseg (default, the paper's MMSegmentation PhotoMetricDistortion: "
                        "additive brightness, uncentred contrast, HSV saturation/hue) or torchvision (ColorJitter)")
    p.add_argument("--antialias", action="store_true",
                   help="anti-aliased image resizes (torchvision's default) instead of the paper's plain bilinear")
    p.add_argument("--fpn-channels", type=positive_int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--head-channels", type=positive_int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--eval-interval", type=non_negative_int, default=4000,
                   help="evaluate and keep the best checkpoints by mIoU every N iterations (default 4000; 0 = at the end)")
    p.add_argument("--save-interval", type=non_negative_int, default=1000,
                   help="write last.pth.tar every N iterations (default 1000; 0 = at evaluations only)")
    add_keep_best(p, 1, "mIoU")
    p.add_argument("--log-interval", type=non_negative_int, default=50, help="log the loss every N iterations (default 50)")
    add_runtime_options(p, training=True)
    p.set_defaults(func=run_train)


def _add_eval(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("eval", help="mIoU, mAcc, aAcc and per-class IoU of a checkpoint",
                           description="Evaluate a segmentation checkpoint on the validation split (whole images).")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root in the ADE20K layout")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'fcvit segment train'")
    p.add_argument("--split", default="val", help="split to score: val (validation/) or train (training/)")
    p.add_argument("--no-reduce-zero-label", action="store_true",
                   help="use annotation values as class indices (default: 0 = ignored, 1..N = classes 0..N-1)")
    p.add_argument("--short-side", type=positive_int, default=None,
                   help="evaluation shorter side (default: the training crop size stored in the checkpoint)")
    add_results(p, "the scores")
    add_runtime_options(p, training=False)
    p.set_defaults(func=run_eval)


def _add_predict(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("predict", help="colour-coded masks and overlays for images",
                           description="Segment images; writes NAME_mask.png (palette PNG, value = class + 1) and "
                                       "NAME_overlay.png per image.")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files or folders of images; one that cannot be read is reported and skipped "
                        "(exit status 1)")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'fcvit segment train'")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files")
    add_overwrite(p, "existing NAME_mask.png and NAME_overlay.png files in DIR")
    p.add_argument("--alpha", type=probability, default=0.5, help="mask weight in the overlay (default 0.5)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print the classes found per image as JSON")
    p.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from ..tasks.segmentation.train import train

    train(args)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import logging

    from ..engine import cleanup_distributed, init_distributed, resolve_amp
    from ..tasks.segmentation.data import SegmentationFolder
    from ..tasks.segmentation.evaluate import (
        class_names_from,
        eval_loader,
        evaluate,
        load_segmenter,
    )
    from ..files import check_outputs, json_text, write_json
    from ..tasks.segmentation.metrics import format_class_table
    from ..tasks.segmentation.transforms import eval_transforms

    if args.results_file:
        check_outputs([args.results_file], [args.checkpoint], args.overwrite, "choose another --results-file",
                      "checkpoint")
    ctx = init_distributed(args.device)
    try:
        model, checkpoint = load_segmenter(args.checkpoint, ctx.device)
        num_classes = model.num_classes
        names = class_names_from(checkpoint, num_classes)
        short_side = args.short_side or int(checkpoint.get("eval_short_side") or 512)
        antialias = bool(checkpoint.get("eval_antialias", False))  # the resize the model was trained with
        dataset = SegmentationFolder(args.data, args.split, num_classes, not args.no_reduce_zero_label,
                                     eval_transforms(short_side, 4 * short_side, antialias=antialias))
        amp = resolve_amp(ctx.device, args.amp, args.amp_dtype)
        scores = evaluate(model, eval_loader(dataset, ctx, args.workers), num_classes, ctx, amp,
                          progress=sys.stderr.isatty())
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


def run_predict(args: argparse.Namespace) -> int:
    from ..data import ImageReader, expand_image_paths
    from ..engine import resolve_device
    from ..files import check_outputs
    from ..tasks.segmentation.evaluate import class_names_from, load_segmenter
    from ..tasks.segmentation.predict import planned_outputs, predict_images

    reader = ImageReader(expand_image_paths(args.images))  # bad paths and outputs fail before the model is built
    check_outputs([p for pair in planned_outputs(reader.paths, args.output) for p in pair], reader.paths,
                  args.overwrite, choose="choose another --output folder", input_name="input image")
    device = resolve_device(args.device)
    model, checkpoint = load_segmenter(args.checkpoint, device)
    names = class_names_from(checkpoint, model.num_classes)
    short_side = int(checkpoint.get("eval_short_side") or 512)
    antialias = bool(checkpoint.get("eval_antialias", False))
    results = predict_images(model, reader, args.output, names, device, args.alpha, short_side, antialias,
                             overwrite=args.overwrite)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            top = ", ".join(f"{c['name']} {c['fraction'] * 100:.1f}%" for c in r["classes"][:5])
            print(f"{r['image']}: {r['mask']}, {r['overlay']}  ({top})")
    return reader.exit_status()
