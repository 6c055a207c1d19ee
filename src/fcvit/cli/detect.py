"""``fcvit detect train|eval|predict``: Mask R-CNN + FPN with FCViT backbones on COCO-format data."""
from __future__ import annotations

import argparse
import json
import os

from .options import (add_backbone, add_batch_size, add_device, add_images, add_overwrite, add_results,
                      add_runtime_options, add_training_options, check_results_file, non_negative_int, positive_float,
                      positive_int, probability)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect", help="object detection and instance segmentation: Mask R-CNN train / eval / predict",
        description="Mask R-CNN + FPN with an FCViT backbone (torchvision's detection models) on COCO or any "
                    "COCO-format dataset; COCO box and mask AP from pycocotools.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "train", help="train a Mask R-CNN (epoch-based, torchrun-ready)",
        description="Train Mask R-CNN + FPN. Defaults are the paper's 1x recipe (MMDetection 2.19, docs/"
                    "reproduction.md). Run with torchrun --nproc_per_node N for N GPUs; -b is per process.")
    _add_data_options(p, ("train", "val"))
    add_backbone(p, 4)
    p.add_argument("--epochs", type=positive_int, default=12, help="epochs (default 12, the 1x schedule)")
    p.add_argument("--lr-steps", type=positive_int, nargs="+", default=[8, 11], metavar="EPOCH",
                   help="multiply the lr by 0.1 after these epochs (default 8 11)")
    add_batch_size(p, 4, ", the paper's per GPU: 32 per step on 8 GPUs")
    p.add_argument("--min-size", type=positive_int, default=800, help="shorter image side (default 800)")
    p.add_argument("--max-size", type=positive_int, default=1333, help="longest allowed longer side (default 1333)")
    p.add_argument("--lr", type=positive_float, default=2e-4,
                   help="AdamW learning rate (default 2e-4, the paper's for 32 images per step; not scaled by -b)")
    p.add_argument("--warmup-iters", type=non_negative_int, default=500, help="linear warmup iterations (default 500)")
    p.add_argument("--warmup-factor", type=probability, default=0.001, help="warmup start, times the lr (default 0.001)")
    p.add_argument("--flip-prob", type=probability, default=0.5, help="horizontal flip probability (default 0.5)")
    p.add_argument("--freeze-bn-stats", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the backbone's BatchNorm statistics fixed, as torchvision (default off, the paper's)")
    _add_model_options(p)
    p.add_argument("--fpn-channels", type=positive_int, default=256, help="FPN channels (default %(default)s)")
    p.add_argument("--representation-size", type=positive_int, default=1024,
                   help="box head's hidden width (default %(default)s)")
    add_training_options(p, "detect", 1, "box AP", save_interval=1000, eval_interval=(1, "epochs"),
                         sync_bn=" (default off: the paper's were per GPU)")
    add_runtime_options(p, amp_help="mixed precision also on CPU (default: float16 autocast with loss scaling on "
                                    "CUDA, the paper's; float32 on CPU)",
                        dtype_help="auto, float16 or bfloat16 (default auto: float16 with a GradScaler on CUDA, the "
                                   "paper's; bfloat16 needs no scaler)")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="train in float32 (the paper's float16 autocast is the default on CUDA)")
    p.run_shaping(RUN_SHAPING)
    p.set_defaults(func=run_train, amp=None)

    p = actions.add_parser("eval", help="COCO box and mask AP of a checkpoint",
                           description="Evaluate a detection checkpoint with pycocotools' COCOeval: bbox and segm "
                                       "AP, AP50, AP75, APs, APm, APl. Runs under torchrun too.")
    _add_data_options(p, ("val",))
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'fcvit detect train'")
    add_results(p, "the metrics", "also write the detections to PATH in the COCO results format (RLE masks)")
    _add_sizes(p)
    add_batch_size(p, 1, ", as the original: a batch pads its images to one size, which moves AP slightly")
    add_runtime_options(p, amp_help="mixed precision inference")
    p.set_defaults(func=run_eval)

    p = actions.add_parser("predict", help="draw boxes, masks and class names on images",
                           description="Detect objects; writes NAME.png with masks, boxes and 'class score' labels "
                                       "per image, and detections.json.")
    add_images(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'fcvit detect train'")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files and detections.json")
    add_overwrite(p, "existing drawings and detections.json in DIR")
    p.add_argument("--score-threshold", type=probability, default=0.5, help="draw scores of at least this (default 0.5)")
    _add_sizes(p)
    add_device(p)
    p.add_argument("--json", action="store_true", help="print the detections as JSON")
    p.set_defaults(func=run_predict)


def _add_data_options(p: argparse.ArgumentParser, splits: tuple) -> None:
    p.add_argument("--data", metavar="ROOT", help="dataset root in the COCO layout (annotations/instances_{train,val}"
                                                  "2017.json, {train,val}2017/), or the --*-ann/--*-images options")
    for split in splits:
        p.add_argument(f"--{split}-ann", metavar="JSON", help=f"COCO-format annotation file of the {split} split")
        p.add_argument(f"--{split}-images", metavar="DIR", help=f"image folder of the {split} split")


def _add_sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-size", type=positive_int, default=None, help="shorter side (default: the checkpoint's)")
    p.add_argument("--max-size", type=positive_int, default=None, help="longer side limit (default: the checkpoint's)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Where the paper's MMDetection config and torchvision's defaults differ (docs/reproduction.md)."""
    g = p.add_argument_group("model settings (defaults: the paper's MMDetection 2.19 config; each second choice "
                             "is torchvision's)")
    g.add_argument("--box-loss", choices=["l1", "smooth_l1"], default="l1",
                   help="RPN and box-head regression loss: l1 (default, the paper's) or smooth_l1 (torchvision's, beta 1/9)")
    g.add_argument("--roi-align", choices=["aligned", "legacy"], default="aligned",
                   help="aligned: half-pixel RoIAlign, adaptive sampling, binary mask targets (default, the paper's); legacy")
    g.add_argument("--matcher", choices=["mmdet", "torchvision"], default="mmdet",
                   help="low-quality matches only at IoU >= 0.3, RoI head >= 0.5 (mmdet: default, the paper's) or any IoU")
    g.add_argument("--anchors", choices=["mmdet", "torchvision"], default="mmdet",
                   help="fractional corners on strides 4-64 (mmdet: default, the paper's) or rounded, from the padded size")
    g.add_argument("--proposals-train", type=positive_int, default=1000, metavar="N",
                   help="RPN proposals kept per image in training (default 1000, the paper's; torchvision's 2000)")
    g.add_argument("--fpn-init", choices=["xavier", "kaiming"], default="xavier",
                   help="FPN convolution init: xavier-uniform (default, the paper's) or kaiming-uniform a=1 (torchvision's)")
    g.add_argument("--head-init", choices=["mmdet", "torchvision"], default="mmdet",
                   help="head init: mmdet's xavier/normal(0.01)/normal(0.001) (the paper's) or PyTorch's defaults")


#: flags whose change makes a resumed run another run (refused unless --resume-override, which applies them)
RUN_SHAPING = (
    "backbone", "backbone_depths", "backbone_dims", "data", "min_size", "max_size", "batch_size", "epochs", "lr",
    "lr_steps", "weight_decay", "warmup_iters", "warmup_factor", "flip_prob", "drop_path", "freeze_bn_stats",
    "fpn_channels", "representation_size", "seed")


def run_train(args: argparse.Namespace) -> int:
    from ..tasks.detection.train import train

    args.output = args.output or os.path.join("output", "detect", args.backbone)
    train(args)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import logging

    from ..engine import cleanup_distributed, eval_loader, init_distributed, resolve_amp, setup_logging
    from ..tasks.detection.dataset import CocoInstances, collate_detection, eval_transforms
    from ..tasks.detection.predict import load_detector
    from ..tasks.detection.train import evaluate, format_metrics, resolve_data_paths

    check_results_file(args)
    ctx = init_distributed(args.device)
    try:
        setup_logging(ctx)
        ann, images = resolve_data_paths(args, ("val",))["val"]
        model, categories, _ = load_detector(args.checkpoint, ctx.device, args.min_size, args.max_size)
        dataset = CocoInstances(ann, images, train=False, categories=categories, transforms=eval_transforms())
        loader = eval_loader(dataset, args.batch_size, ctx, args.workers, collate_fn=collate_detection)
        amp = resolve_amp(ctx.device, args.amp, args.amp_dtype)
        metrics = evaluate(model, loader, dataset, ctx, amp, results_file=args.results_file, progress=True)
    finally:
        cleanup_distributed()
    if not ctx.is_main:
        return 0
    logging.getLogger(__name__).info("%d images of '%s'", len(dataset), ann)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..data import ImageReader, expand_image_paths
    from ..engine import resolve_device
    from ..files import check_image_outputs
    from ..tasks.detection.predict import load_detector, planned_outputs, predict_images

    reader = ImageReader(expand_image_paths(args.images))  # bad paths and outputs fail before the model is built
    check_image_outputs(planned_outputs(reader.paths, args.output), reader.paths, args.overwrite)
    device = resolve_device(args.device)
    model, categories, _ = load_detector(args.checkpoint, device, args.min_size, args.max_size)
    results = predict_images(model, categories, reader, args.output, args.score_threshold, device, args.overwrite)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['image']} -> {r['output']}: {_summary(r, args.score_threshold)}")
    return reader.exit_status()


def _summary(result: dict, threshold: float, top: int = 5) -> str:
    """'3 detections (2 dog, 1 cat); top 3: dog 0.91, ...' or, with none, the best score and the threshold hint."""
    import collections
    import math

    found, best = result["detections"], result.get("best_score")
    if not found:
        return "no detections" if best is None else (
            f"none at score >= {threshold:g} (the best scores {best:.3f}): lower --score-threshold, e.g. "
            f"--score-threshold {math.floor(best * 100) / 100:g}, to see the best ones")
    counts = collections.Counter(d["name"] for d in found).most_common()
    best_k = sorted(found, key=lambda d: -d["score"])[:top]
    return (f"{len(found)} detection{'s' * (len(found) != 1)} ({', '.join(f'{n} {name}' for name, n in counts)}); "
            f"top {len(best_k)}: " + ", ".join(f"{d['name']} {d['score']:.2f}" for d in best_k))
