"""Mask R-CNN training and COCO evaluation on the shared engine, with the paper's MMDetection 2.19 1x recipe:
12 epochs, AdamW (lr 2e-4, weight decay 1e-4 on every parameter), linear warmup over 500 iterations from 0.001x,
lr x 0.1 after epochs 8 and 11; 8 GPUs x 4 images; sides 800/1333; flips at 0.5; batches grouped by aspect
ratio; float16 autocast with dynamic loss scaling; per-GPU BatchNorm statistics. ``-b`` is PER PROCESS.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...data.samplers import EpochShardSampler, SeededSamples
from ...engine import (AmpSettings, DistContext, ProgressBar, Task, broadcast_object, convert_sync_batchnorm,
                       eval_loader, resolve_amp, run_distributed, run_training, seed_everything,
                       train_loader, unwrap_model)
from ...engine.logs import run_folder
from ...engine.workers import user_errors_from_workers
from ...errors import UserError
from ...models.checkpoint import expect_kind
from ..training import loop_settings
from .coco_eval import CocoEvaluator
from .dataset import CocoInstances, coco_split_paths, collate_detection, eval_transforms, train_transforms
from .model import PAPER_SETTINGS, build_mask_rcnn, with_legacy_settings
from .sampler import AspectRatioBatchSampler, aspect_ratio_groups

__all__ = ["resolve_data_paths", "model_config", "build_optimizer", "build_scheduler", "detection_step", "evaluate",
           "train", "detection_train_loader", "freeze_batchnorm_stats", "detection_amp", "PAPER_GLOBAL_BATCH"]

_logger = logging.getLogger(__name__)

PAPER_GLOBAL_BATCH = 32  # 8 GPUs x 4 images: the batch the recipe's lr 2e-4 was tuned for


def resolve_data_paths(args: argparse.Namespace, splits: Sequence[str] = ("train", "val")
                       ) -> Dict[str, Tuple[str, str]]:
    """(annotation file, image folder) per split: ``--data`` in the COCO layout, overridden by the
    explicit ``--train-ann/--train-images/--val-ann/--val-images`` options."""
    paths: Dict[str, Tuple[str, str]] = {}
    for split in splits:  # detect eval has --val-ann/--val-images only
        ann, images = getattr(args, f"{split}_ann", None), getattr(args, f"{split}_images", None)
        if args.data:
            default_ann, default_images = coco_split_paths(args.data, split)
            ann, images = ann or default_ann, images or default_images
        if not ann or not images:
            raise UserError(f"No {split} data: pass --data ROOT (COCO layout) or both --{split}-ann and "
                            f"--{split}-images.")
        paths[split] = (ann, images)
    return paths


def detection_train_loader(train_set: CocoInstances, per_process: int, ctx: DistContext, workers: int = 4,
                           seed: int = 0) -> DataLoader:
    """Training batches grouped by aspect ratio from an order fixed by (seed, epoch), split over the ranks; each
    image's augmentation seeded by (seed, epoch, position), so a resumed run sees exactly what it missed."""
    sampler = EpochShardSampler(len(train_set), seed, ctx.rank, ctx.world_size)
    batches = AspectRatioBatchSampler(sampler, aspect_ratio_groups(train_set.aspect_ratios()), per_process)
    return train_loader(SeededSamples(train_set), batches, workers, ctx.device.type == "cuda", collate_detection)


def model_config(args: argparse.Namespace, num_classes: int) -> Dict[str, Any]:
    """The arguments of ``build_mask_rcnn`` that fix the architecture; stored in every checkpoint."""
    backbone_kwargs = {k: list(v) for k, v in (("depths", args.backbone_depths), ("dims", args.backbone_dims)) if v}
    if backbone_kwargs and len(set(len(v) for v in backbone_kwargs.values()) | {4}) != 1:
        raise UserError("--backbone-depths and --backbone-dims need four values each (one per stage).")
    if "depths" in backbone_kwargs and "dims" not in backbone_kwargs:
        raise UserError("--backbone-depths needs --backbone-dims as well (four channel counts).")
    return dict(backbone=args.backbone, num_classes=num_classes, min_size=args.min_size, max_size=args.max_size,
                fpn_channels=args.fpn_channels, representation_size=args.representation_size,
                backbone_kwargs=backbone_kwargs or None, box_loss=args.box_loss, roi_align=args.roi_align,
                matcher=args.matcher, anchors=args.anchors, proposals_train=args.proposals_train,
                fpn_init=args.fpn_init, head_init=args.head_init)


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """``--freeze-bn-stats``: BatchNorm running statistics fixed, affine weights trained (torchvision's way). The
    paper's config asked for it (``norm_eval``) but its FCViT backbone ignored it, so the default trains them."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    # the published config decays every parameter (no bias/norm exemption)
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay, filter_bias_and_bn=False)


def late_lr_steps(lr_steps: Sequence[int], epochs: int) -> str:
    """A note naming the ``--lr-steps`` that come after the last epoch (so never lower the lr), or ''."""
    late = " ".join(str(e) for e in lr_steps if e >= epochs)
    return (f"--lr-steps {late}: after the last of --epochs {epochs}, so the lr does not drop there in this run "
            "(the 1x schedule steps after epochs 8 and 11 of 12).") if late else ""


def build_scheduler(optimizer: torch.optim.Optimizer, iters_per_epoch: int, lr_steps: Sequence[int],
                    warmup_iters: int, warmup_factor: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: linear warmup from ``warmup_factor`` x lr, times 0.1 at each epoch in ``lr_steps``;
    the two multiply (``ChainedScheduler``), as MMDetection's warmup does on top of its step policy."""
    from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR

    schedules: List[torch.optim.lr_scheduler.LRScheduler] = [
        MultiStepLR(optimizer, milestones=[e * iters_per_epoch for e in lr_steps], gamma=0.1)]
    if warmup_iters > 0:
        schedules.insert(0, LinearLR(optimizer, start_factor=warmup_factor, end_factor=1.0, total_iters=warmup_iters))
    return ChainedScheduler(schedules, optimizer=optimizer)


def detection_step(ctx: DistContext, freeze_bn_stats: bool = False) -> Callable[[nn.Module, Any], Any]:
    """The loss of one batch: Mask R-CNN's summed loss dict (its parts are logged separately)."""

    def step(model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], int]:
        if freeze_bn_stats:
            freeze_batchnorm_stats(model)
        images, targets = batch
        images = [img.to(ctx.device, non_blocking=True) for img in images]
        targets = [{k: v.as_subclass(torch.Tensor).to(ctx.device, non_blocking=True)  # tv_tensors: transforms only
                    if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        loss_dict = model(images, targets)
        return sum(loss_dict.values()), loss_dict, len(images)

    return step


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, dataset: CocoInstances, ctx: DistContext,
             amp: Optional[AmpSettings] = None, results_file: Optional[str] = None,
             progress: bool = False) -> Dict[str, float]:
    """COCO bbox and segm AP, AP50, AP75, APs, APm, APl (in [0, 1]): every rank predicts its share, the main
    rank runs COCOeval and broadcasts the numbers; ``results_file`` gets the detections as COCO results."""
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    evaluator = CocoEvaluator(dataset.coco, dataset.categories)
    with ProgressBar(len(loader.dataset), "eval", ctx, enabled=progress) as bar:
        for images, targets in user_errors_from_workers(loader):
            images = [img.to(ctx.device, non_blocking=True) for img in images]
            with amp.autocast() if amp is not None else contextlib.nullcontext():
                outputs = model(images)
            evaluator.update(outputs, [t["image_id"] for t in targets])
            bar.update(len(images))
    evaluator.gather()
    metrics: Dict[str, float] = {}
    if ctx.is_main:
        metrics = evaluator.summarize(image_ids=dataset.ids)
        if results_file:
            evaluator.write_results(results_file)
    metrics = broadcast_object(metrics, ctx)
    model.train(was_training)
    return metrics


def detection_amp(device: torch.device, amp: Optional[bool], amp_dtype: str = "auto") -> AmpSettings:
    """The paper's float16 autocast with a dynamic GradScaler on CUDA by default, float32 elsewhere. ``amp``: None
    (default), False (``--no-amp``) or True (``--amp``); ``amp_dtype`` 'auto' is float16 on CUDA, else the engine's."""
    device = torch.device(device)
    if amp is False and amp_dtype != "auto":
        raise UserError(f"--no-amp and --amp-dtype {amp_dtype} conflict: drop --no-amp for {amp_dtype} "
                        "autocast, or --amp-dtype for float32.")
    if amp is False or (amp is None and device.type != "cuda" and amp_dtype == "auto"):
        return resolve_amp(device, False)
    return resolve_amp(device, True, "float16" if amp_dtype == "auto" and device.type == "cuda" else amp_dtype)


def _log_batch(per_process: int, ctx: DistContext, lr: float) -> None:
    """The global batch, and a note when it is not the 32 images the recipe's lr is for."""
    total = per_process * ctx.world_size
    _logger.info("Global batch: %d image%s per step (-b %d per process x %d process%s).", total,
                 "" if total == 1 else "s", per_process, ctx.world_size, "" if ctx.world_size == 1 else "es")
    if total != PAPER_GLOBAL_BATCH:
        _logger.info("The recipe's lr 2e-4 is for %d images per step (8 GPUs x 4); this run has %d at lr %g.",
                     PAPER_GLOBAL_BATCH, total, lr)


def format_metrics(metrics: Mapping[str, float]) -> str:
    """One line per IoU type, AP fields in percent ('n/a' where COCO defines none, e.g. no small objects)."""
    lines = []
    for iou in ("bbox", "segm"):
        fields = [(k.split("_", 1)[1], v) for k, v in metrics.items() if k.startswith(f"{iou}_")]
        if fields:
            lines.append(f"{iou} (%): " + "  ".join(f"{name} {100 * v:5.1f}" if v >= 0 else f"{name}   n/a"
                                                 for name, v in fields))
    return "\n".join(lines)


def train(args: argparse.Namespace) -> Dict[str, float]:
    """The whole run; returns the last evaluation's metrics (empty if it stopped before one)."""
    return run_distributed(_train, args)


def _train(args: argparse.Namespace, ctx: DistContext) -> Dict[str, float]:
    with run_folder(ctx, args.output):  # one run per folder; a refusal leaves no new folder behind
        seed_everything(args.seed, ctx.rank)
        if args.min_size < 32 or args.max_size < args.min_size:  # each value's own range is checked when parsed
            raise UserError(f"--min-size {args.min_size} / --max-size {args.max_size}: the shorter side must be at "
                            "least 32 and the longer side limit at least the shorter side.")
        paths = resolve_data_paths(args)
        train_set = CocoInstances(*paths["train"], train=True, transforms=train_transforms(args.flip_prob))
        val_set = CocoInstances(*paths["val"], train=False, categories=train_set.categories,
                                transforms=eval_transforms())
        if len(train_set) < args.batch_size * ctx.world_size:
            raise UserError(f"The training set has {len(train_set)} annotated images, fewer than one step of "
                            f"{args.batch_size * ctx.world_size} (-b {args.batch_size} x {ctx.world_size} processes): "
                            "pass a smaller -b.")
        config = model_config(args, len(train_set.categories))
        model = build_mask_rcnn(pretrained_backbone=args.pretrained_backbone, drop_path_rate=args.drop_path, **config)
        if not args.pretrained_backbone:
            _logger.warning("No --pretrained-backbone: the backbone starts from random weights, so AP will stay far "
                            "below the published numbers, which start from ImageNet checkpoints.")
        if args.sync_bn and not args.freeze_bn_stats:
            model = convert_sync_batchnorm(model, ctx)
        task = DetectionTask(args, ctx, model.to(ctx.device), config, train_set, val_set)
        return run_training(task, ctx, loop_settings(args, task.amp, eval_interval=args.eval_interval))["metrics"]


class DetectionTask(Task):
    """Mask R-CNN on the loop: its summed loss dict (logged by part), COCO box and mask AP, ranked by box AP."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext, model: nn.Module, config: Dict[str, Any],
                 train_set: CocoInstances, val_set: CocoInstances) -> None:
        loader = detection_train_loader(train_set, args.batch_size, ctx, args.workers, args.seed)
        self.iters_per_epoch = loader.batch_sampler.batches_per_epoch
        optimizer = build_optimizer(model, args.lr, args.weight_decay)
        scheduler = build_scheduler(optimizer, self.iters_per_epoch, args.lr_steps, args.warmup_iters,
                                    args.warmup_factor)
        super().__init__(model, optimizer, scheduler, loader, name=f"Mask R-CNN on {args.backbone}",
                         metric="bbox_AP", mode="max", unit="epoch", length=args.epochs)
        self.metric_scale = 100.0  # COCO's AP is a fraction; logs show it in percent, as COCO tables do
        self.ctx, self.config, self.val_set = ctx, config, val_set
        categories = train_set.categories
        self.fields = dict(model_config=config, categories=[{"id": c.id, "name": c.name} for c in categories],
                           class_names=[c.name for c in categories], arch=f"mask_rcnn_{args.backbone}",
                           iters_per_epoch=self.iters_per_epoch)
        self.step = detection_step(ctx, args.freeze_bn_stats)  # type: ignore[method-assign]
        # evaluation one image per process, as the original's: a batch pads its images to a shared size
        self.val_loader = eval_loader(val_set, 1, ctx, args.workers, collate_fn=collate_detection)
        late_steps = late_lr_steps(args.lr_steps, args.epochs)
        if late_steps:
            _logger.info(late_steps)
        self.amp = detection_amp(ctx.device, args.amp, args.amp_dtype)
        if not self.amp.enabled and args.amp is None:
            _logger.info("Precision: float32 on %s (the paper's float16 autocast with loss scaling needs CUDA; "
                         "--amp-dtype bfloat16 for mixed precision here).", ctx.device.type)
        _log_batch(args.batch_size, ctx, args.lr)
        bn_note = ("statistics frozen" if args.freeze_bn_stats else
                   "synchronised" if args.sync_bn else "per-process batch statistics")
        self.oom_hint = "a smaller --min-size/--max-size, or --amp"
        self.describe = (f"{len(categories)} classes, {len(train_set)} train / {len(val_set)} val images, "
                         f"sizes {args.min_size}/{args.max_size}, backbone BatchNorm {bn_note}; "
                         + ", ".join(f"{k} {v}" for k, v in config.items() if k in PAPER_SETTINGS))

    def evaluate(self, model: nn.Module) -> Tuple[Dict[str, float], Dict[str, Any]]:
        metrics = evaluate(model, self.val_loader, self.val_set, self.ctx, self.amp, progress=True)
        _logger.info("box AP %.1f%%, mask AP %.1f%%\n%s", 100 * metrics["bbox_AP"], 100 * metrics["segm_AP"],
                     format_metrics(metrics))
        return metrics, dict(metrics)

    def checkpoint_fields(self) -> Dict[str, Any]:
        return self.fields

    def check_resume(self, state: Mapping[str, Any]) -> None:
        expect_kind(state, ("detector",), "The checkpoint to resume")
        stored = state.get("model_config")
        stored = None if stored is None else with_legacy_settings(stored)
        if stored is not None and stored != self.config:
            changed = ", ".join(f"{k} {v!r}" for k, v in stored.items() if self.config.get(k) != v)
            raise UserError(f"The checkpoint to resume holds another model ({changed}): resume with the same "
                            "--backbone, data, size and model options, or use another --output.")
        stored_iters = state.get("iters_per_epoch")
        if stored_iters is not None and int(stored_iters) != self.iters_per_epoch:
            raise UserError(f"The checkpoint to resume was trained with {stored_iters} iterations per epoch, this "
                            f"run has {self.iters_per_epoch}: resume with the same -b and training data, or use "
                            "another --output.")
