"""Iteration-based Semantic FPN training on the shared engine, with the published MMSegmentation 0.19 recipe:
AdamW (lr 2e-4, weight decay 1e-4 on every parameter), poly decay (power 0.9) to 0 over 40,000 iterations without
warmup, float32, 8 GPUs x 4 images, 512x512 crops; evaluation every 4,000 iterations, the final one reported.
``-b`` is PER PROCESS (``torchrun --nproc_per_node 8 ... -b 4`` is the paper's); the lr is used as given.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, List, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...data.samplers import EpochShardSampler, SeededSamples, SeekableBatches
from ...engine import (DistContext, Task, convert_sync_batchnorm, eval_loader, resolve_amp, run_distributed,
                       run_training, seed_everything, train_loader)
from ...engine.logs import run_folder
from ...errors import UserError
from ...files import write_json
from ...models.checkpoint import expect_kind
from ..training import loop_settings
from .data import SegmentationFolder, default_class_names, read_class_names
from .evaluate import CONFIG_KEY, evaluate, stored_config
from .metrics import format_class_table
from .model import SemanticFPN, create_segmenter
from .transforms import IGNORE_INDEX, eval_transforms, train_transforms

__all__ = ["RECIPE_GLOBAL_BATCH", "segmentation_loss", "build_model", "build_optimizer", "build_scheduler",
           "distributed_batch_norm", "global_batch", "train"]

_logger = logging.getLogger(__name__)

RECIPE_GLOBAL_BATCH = 32  # 8 GPUs x 4 images: the batch the recipe's lr 2e-4 belongs to
SUMMARY = ("mIoU", "mAcc", "aAcc")


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy averaged over ALL pixels, ignored ones counting 0 (MMSegmentation 0.x's default):
    a crop that is entirely "other" gives a loss of 0, not the NaN of a mean over labelled pixels only."""
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none").mean()


def resolve_classes(args: argparse.Namespace) -> Tuple[int, List[str]]:
    """``--num-classes`` and ``--class-names`` reconciled (either may give the count; default 150)."""
    if args.class_names:
        names = read_class_names(args.class_names, args.num_classes)
        return len(names), names
    num_classes = args.num_classes or 150
    if not 1 <= num_classes <= 254:
        raise UserError(f"--num-classes {num_classes} is out of range: use 1..254 (255 is the ignore label).")
    return num_classes, default_class_names(num_classes)


def build_model(args: argparse.Namespace, num_classes: int) -> SemanticFPN:
    backbone_kwargs = {k: tuple(v) for k, v in (("depths", args.backbone_depths), ("dims", args.backbone_dims)) if v}
    if len(backbone_kwargs) == 1 or len({len(v) for v in backbone_kwargs.values()}) > 1:
        raise UserError("--backbone-depths and --backbone-dims go together, with one value per stage each.")
    if args.pretrained_backbone and backbone_kwargs:
        raise UserError("--pretrained-backbone loads a published variant's weights: "
                        "drop --backbone-depths/--backbone-dims.")
    return create_segmenter(args.backbone, num_classes, backbone_checkpoint=args.pretrained_backbone,
                            drop_path_rate=args.drop_path, head_channels=args.head_channels,
                            fpn_channels=args.fpn_channels, norm="gn" if args.norm == "gn" else "bn",
                            backbone_kwargs=backbone_kwargs)


def global_batch(batch_size: int, ctx: DistContext) -> int:
    """Images per optimizer step over all processes (``-b`` is per process)."""
    if batch_size < 1:
        raise UserError(f"-b {batch_size} must be at least 1 image per process.")
    return batch_size * ctx.world_size


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW over every parameter with one weight decay (biases and norms included), as published."""
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> Any:
    """Poly decay per iteration from the lr to 0 at ``--iters``, no warmup: step i uses lr (1 - i/iters)^power."""
    from timm.scheduler import PolyLRScheduler

    return PolyLRScheduler(optimizer, t_initial=args.iters, power=args.power, lr_min=0.0, t_in_epochs=False)


def distributed_batch_norm(model: SemanticFPN, norm: str, sync_bn: bool, ctx: DistContext) -> SemanticFPN:
    """``--sync-bn``: every BatchNorm synchronised; else ``--norm syncbn`` (the paper's): the decode head's
    only, under torchrun on GPUs (plain BatchNorm in one process or on CPU)."""
    if sync_bn:
        return convert_sync_batchnorm(model, ctx)
    if norm == "syncbn":
        model.head = convert_sync_batchnorm(model.head, ctx, required=False)
    return model


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """The whole run; returns the last evaluation's scores (empty if it stopped before one)."""
    return run_distributed(_train, args)


def _train(args: argparse.Namespace, ctx: DistContext) -> Dict[str, Any]:
    with run_folder(ctx, args.output):  # one run per folder; a refusal leaves no new folder behind
        seed_everything(args.seed, ctx.rank)
        if args.iters < 1:
            raise UserError(f"--iters {args.iters} must be at least 1.")
        num_classes, class_names = resolve_classes(args)
        reduce_zero, crop = not args.no_reduce_zero_label, args.crop_size
        train_set = SegmentationFolder(args.data, "train", num_classes, reduce_zero,
                                       train_transforms(crop_size=(crop, crop), scale=(4 * crop, crop),
                                                        photometric=args.photometric, antialias=args.antialias))
        val_set = SegmentationFolder(args.data, "val", num_classes, reduce_zero,
                                     eval_transforms(crop, 4 * crop, antialias=args.antialias))
        for dataset in (train_set, val_set):  # now, not at the first evaluation after many steps
            dataset.check_labels()
        model = build_model(args, num_classes)
        if not args.pretrained_backbone and ctx.is_main:
            _logger.warning("No --pretrained-backbone: the backbone starts from random weights, so mIoU will stay far "
                            "below the published numbers, which start from ImageNet checkpoints.")
        model = distributed_batch_norm(model, args.norm, args.sync_bn, ctx).to(ctx.device)
        task = SegmentationTask(args, ctx, model, train_set, val_set, class_names)
        eval_interval = args.eval_interval if args.eval_interval > 0 else args.iters
        result = run_training(task, ctx, loop_settings(args, task.amp, eval_interval=eval_interval))
        scores = task.last_scores
        if result["global_step"] >= args.iters and scores and ctx.is_main:
            _logger.info("Final checkpoint (iteration %d, the one the paper reports):\n%s", result["global_step"],
                         format_class_table(scores, class_names))
            write_json(os.path.join(args.output, "results.json"),
                       dict(iter=result["global_step"], backbone=args.backbone, **{k: scores[k] for k in SUMMARY},
                            IoU=dict(zip(class_names, scores["IoU"]))))
        return dict(scores)


class SegmentationTask(Task):
    """Semantic FPN on the loop: per-pixel cross-entropy, mIoU/mAcc/aAcc, counted in iterations."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext, model: SemanticFPN, train_set: SegmentationFolder,
                 val_set: SegmentationFolder, class_names: List[str]) -> None:
        batches = SeekableBatches(EpochShardSampler(len(train_set), args.seed, ctx.rank, ctx.world_size),
                                  args.batch_size)
        if batches.batches_per_epoch < 1:
            raise UserError(f"The training split has {len(train_set)} images, fewer than one step of -b "
                            f"{args.batch_size} per process x {ctx.world_size} process(es): pass a smaller -b.")
        optimizer = build_optimizer(model, args)
        super().__init__(model, optimizer, build_scheduler(optimizer, args),
                         train_loader(SeededSamples(train_set), batches, args.workers, ctx.device.type == "cuda"),
                         name=f"Semantic FPN on {args.backbone}", metric="mIoU", mode="max", unit="iter",
                         length=args.iters)
        self.ctx, self.num_classes = ctx, len(class_names)
        self.val_loader = eval_loader(val_set, 1, ctx, args.workers)  # one image a batch: sizes differ
        self.config = dict(model.config)  # create_segmenter()'s arguments, so eval/predict can rebuild the model
        self.amp = resolve_amp(ctx.device, args.amp, args.amp_dtype)
        images_per_step = global_batch(args.batch_size, ctx)
        if images_per_step != RECIPE_GLOBAL_BATCH:
            _logger.warning("The recipe's lr (2e-4) is for %d images per step (8 GPUs x -b 4); this run takes %d at "
                            "--lr %g, used as given.", RECIPE_GLOBAL_BATCH, images_per_step, args.lr)
        self.fields = dict(class_names=class_names, arch=f"semantic_fpn_{args.backbone}",
                           eval_short_side=args.crop_size, eval_antialias=bool(args.antialias))
        self.fields[CONFIG_KEY] = self.config
        self.oom_hint = "a smaller --crop-size, or --amp"
        self.describe = f"{self.num_classes} classes, {len(train_set)} train / {len(val_set)} val images"
        self.last_scores: Dict[str, Any] = {}

    def step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], int]:
        images, masks = (t.to(self.ctx.device, non_blocking=True) for t in batch)
        return segmentation_loss(model(images), masks), {}, images.shape[0]

    def evaluate(self, model: nn.Module) -> Tuple[Dict[str, float], Dict[str, Any]]:
        scores = self.last_scores = evaluate(model, self.val_loader, self.num_classes, self.ctx, self.amp)
        _logger.info("mIoU %.2f, mAcc %.2f, aAcc %.2f", scores["mIoU"], scores["mAcc"], scores["aAcc"])
        summary = {k: scores[k] for k in SUMMARY}
        return summary, summary

    def checkpoint_fields(self) -> Dict[str, Any]:
        return self.fields

    def check_resume(self, state: Mapping[str, Any]) -> None:
        expect_kind(state, ("segmenter",), "The checkpoint to resume")
        stored = stored_config(state)
        if stored and dict(stored) != self.config:
            raise UserError(f"The checkpoint to resume holds another model ({dict(stored)}): resume with the "
                            "same --backbone and class options, or use another --output.")
