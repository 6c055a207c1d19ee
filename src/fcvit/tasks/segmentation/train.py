"""Iteration-based Semantic FPN training on the shared engine (torchrun/DDP, AMP, checkpoints, clean stops).

The published recipe (MMSegmentation 0.19): AdamW (lr 2e-4, weight decay 1e-4 on every parameter),
poly decay with power 0.9 to 0 per iteration over 40,000 iterations without warmup, float32, 8 GPUs x 4
images = 32 per step, 512x512 crops; evaluation every 4,000 iterations, the final checkpoint reported.
``-b`` is images PER PROCESS, as in torchvision's references and timm: ``torchrun --nproc_per_node 8 ...
-b 4`` is the paper's set-up, and the lr is used as given whatever the global batch.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ...engine import (
    AmpSettings,
    CheckpointSaver,
    DistContext,
    GracefulStop,
    SummaryLog,
    all_reduce_mean,
    backward_step,
    build_train_state,
    check_finite,
    run_distributed,
    load_train_state,
    resolve_amp,
    resolve_resume,
    restore_train_state,
    seed_everything,
    setup_logging,
    wrap_ddp,
)
from ...data.samplers import EpochShardSampler, SeededSamples
from ...engine.workers import ignore_stop_signals, user_errors_from_workers
from ...errors import UserError
from .data import SegmentationFolder, default_class_names, read_class_names
from .evaluate import CONFIG_KEY, atomic_save_json, eval_loader, evaluate
from .metrics import format_class_table
from .model import SemanticFPN, create_segmenter, synchronize_batch_norm
from .transforms import IGNORE_INDEX, eval_transforms, train_transforms

__all__ = ["RECIPE_GLOBAL_BATCH", "segmentation_loss", "build_model", "build_optimizer", "build_scheduler",
           "distributed_batch_norm", "global_batch", "train_steps", "train"]

_logger = logging.getLogger(__name__)

RECIPE_GLOBAL_BATCH = 32  # 8 GPUs x 4 images: the batch the recipe's lr 2e-4 belongs to


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy averaged over ALL pixels of the batch, ignored ones counting 0.

    This is MMSegmentation 0.x's default (the published runs): a crop that is entirely "other" gives
    a loss of 0 instead of the NaN a mean over labelled pixels only would give.
    """
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
    backbone_kwargs: Dict[str, Any] = {}
    if args.backbone_depths:
        backbone_kwargs["depths"] = tuple(args.backbone_depths)
    if args.backbone_dims:
        backbone_kwargs["dims"] = tuple(args.backbone_dims)
    if len(backbone_kwargs) == 1 or (backbone_kwargs and len(backbone_kwargs["depths"]) != len(backbone_kwargs["dims"])):
        raise UserError("--backbone-depths and --backbone-dims go together, with one value per stage each.")
    if args.pretrained_backbone and backbone_kwargs:
        raise UserError("--pretrained-backbone loads a published variant's weights: drop --backbone-depths/--backbone-dims.")
    return create_segmenter(args.backbone, num_classes, backbone_checkpoint=args.pretrained_backbone,
                            drop_path_rate=args.drop_path, head_channels=args.head_channels,
                            fpn_channels=args.fpn_channels, norm=args.head_norm, backbone_kwargs=backbone_kwargs)


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


def distributed_batch_norm(model: SemanticFPN, scope: str, ctx: DistContext) -> SemanticFPN:
    """SyncBatchNorm for ``scope`` (head/all/none) in a multi-GPU run, else unchanged (torch's SyncBN is GPU-only)."""
    if ctx.distributed and ctx.device.type == "cuda":
        return synchronize_batch_norm(model, scope)
    return model


def infinite_batches(loader: DataLoader, sampler: EpochShardSampler, epoch: int, done: int = 0
                     ) -> Iterator[Tuple[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]]]:
    """((data epoch, batches of it done), batch) forever, starting after ``done`` batches of ``epoch``.

    The order is fixed by (seed, epoch) and every sample's augmentation by (seed, epoch, position), so a
    run resumed mid-epoch continues with exactly the batches an uninterrupted run would see.
    """
    batch_size = loader.batch_size or 1
    while True:
        if done >= sampler.per_rank // batch_size:  # that epoch was complete
            epoch, done = epoch + 1, 0
        sampler.set_epoch(epoch, skip=done * batch_size)
        for batch in user_errors_from_workers(loader):
            done += 1
            yield (epoch, done), batch


def train_steps(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        batches: Iterator[Tuple[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]]],
        amp: AmpSettings,
        ctx: DistContext,
        step: int,
        until: int,
        stop: GracefulStop,
        clip_grad: Optional[float] = None,
        log_interval: int = 50,
        last_checkpoint: Optional[str] = None,
) -> Dict[str, Any]:
    """Run optimizer steps from global step ``step`` up to ``until`` (or an earlier stop request).

    Returns the step reached, the data position ((epoch, batches of it done)), the mean training loss
    and whether a stop was requested.
    """
    model.train()
    losses: List[float] = []
    position = (0, 0)
    window_start, window_images = time.perf_counter(), 0
    while step < until:
        position, (images, masks) = next(batches)
        images = images.to(ctx.device, non_blocking=True)
        masks = masks.to(ctx.device, non_blocking=True)
        try:
            with amp.autocast():
                logits = model(images)
            loss = segmentation_loss(logits, masks)
            value = check_finite(loss, step + 1, ctx, last_checkpoint)
            optimizer.zero_grad(set_to_none=True)
            backward_step(loss, optimizer, amp, clip_grad)
        except torch.cuda.OutOfMemoryError:
            raise UserError(f"Out of GPU memory with {images.shape[0]} images of {images.shape[-2]}x{images.shape[-1]} "
                            "per process: pass a smaller -b or --crop-size, or add --amp.") from None
        step += 1
        scheduler.step_update(num_updates=step)
        losses.append(value)
        window_images += images.shape[0] * ctx.world_size
        if log_interval and (step % log_interval == 0 or step == until):  # the same steps on every rank
            elapsed = time.perf_counter() - window_start
            window = min(len(losses), log_interval)
            _logger.info("iter %d: loss %.4f (mean of the last %d iterations over all ranks), lr %.3g, %.1f img/s",
                         step, _mean_over_ranks(losses[-window:], ctx), window, optimizer.param_groups[0]["lr"],
                         window_images / max(elapsed, 1e-9))
            window_start, window_images = time.perf_counter(), 0
        if stop.should_stop(ctx):
            return dict(step=step, position=position, loss=_mean_over_ranks(losses, ctx), stopped=True)
    return dict(step=step, position=position, loss=_mean_over_ranks(losses, ctx), stopped=False)


def _mean_over_ranks(values: List[float], ctx: DistContext) -> float:
    """The mean of this rank's values, averaged over ranks (each rank holds as many)."""
    mean = sum(values) / len(values) if values else float("nan")
    return float(all_reduce_mean(torch.tensor([mean], dtype=torch.float64, device=ctx.device), ctx).item())


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """The whole run; returns the last evaluation's scores (empty if it stopped before one)."""
    return run_distributed(_train, args)


def _train(args: argparse.Namespace, ctx: DistContext) -> Dict[str, Any]:
    out = args.output
    setup_logging(ctx, out)
    seed_everything(args.seed, ctx.rank)
    if args.iters < 1:
        raise UserError(f"--iters {args.iters} must be at least 1.")
    num_classes, class_names = resolve_classes(args)
    crop = (args.crop_size, args.crop_size)
    images_per_step = global_batch(args.batch_size, ctx)
    reduce_zero = not args.no_reduce_zero_label
    train_set = SegmentationFolder(args.data, "train", num_classes, reduce_zero,
                                   train_transforms(crop_size=crop, scale=(4 * args.crop_size, args.crop_size),
                                                    photometric=args.photometric, antialias=args.antialias))
    val_set = SegmentationFolder(args.data, "val", num_classes, reduce_zero,
                                 eval_transforms(short_side=args.crop_size, max_long_side=4 * args.crop_size,
                                                 antialias=args.antialias))
    sampler = EpochShardSampler(len(train_set), args.seed, ctx.rank, ctx.world_size)
    if sampler.per_rank < args.batch_size:
        raise UserError(f"The training split has {len(train_set)} images, fewer than one step of -b {args.batch_size} "
                        f"per process x {ctx.world_size} process(es): pass a smaller -b.")
    # a private generator: creating an iterator must not draw from the training RNG (exact resume)
    loader = DataLoader(SeededSamples(train_set), batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=ctx.device.type == "cuda", drop_last=True, persistent_workers=args.workers > 0,
                        worker_init_fn=ignore_stop_signals if args.workers else None, generator=torch.Generator())
    val_loader = eval_loader(val_set, ctx, args.workers)

    model = build_model(args, num_classes)
    if not args.pretrained_backbone and ctx.is_main:
        _logger.warning("No --pretrained-backbone: the backbone starts from random weights, so mIoU will stay far "
                        "below the published numbers, which start from ImageNet checkpoints.")
    model = distributed_batch_norm(model, args.sync_bn, ctx)
    model.to(ctx.device)
    config = dict(model.config)  # create_segmenter()'s arguments, stored so eval/predict can rebuild the model
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args)
    amp = resolve_amp(ctx.device, args.amp, args.amp_dtype)
    saver = CheckpointSaver(out, metric="mIoU", mode="max", keep_best=args.keep_best, ctx=ctx)
    summary = SummaryLog(os.path.join(out, "summary.csv"), ctx,
                         tensorboard_dir=os.path.join(out, "tensorboard") if args.tensorboard else None,
                         step_key="iter")

    step, position = 0, (0, 0)
    resume_path = resolve_resume(args.resume, out)
    if resume_path:
        state = load_train_state(resume_path)
        if state.get(CONFIG_KEY) and dict(state[CONFIG_KEY]) != config:
            raise UserError(f"--resume '{resume_path}' holds another model ({state[CONFIG_KEY]}): resume with the "
                            "same --backbone and class options, or use another --output.")
        counters = restore_train_state(state, model, optimizer, scheduler, amp.scaler)
        step, position = counters["global_step"], (counters["epoch"], int(state.get("epoch_batches_done", 0)))
        if scheduler.t_initial != args.iters:  # the poly decay follows this run's --iters
            _logger.warning("--iters %d differs from the checkpoint's %d: the poly decay now ends at %d.",
                            args.iters, scheduler.t_initial, args.iters)
            scheduler.t_initial = args.iters
            scheduler.step_update(num_updates=step)
        saver.load_state_dict(state.get("saver", {}))
        summary.truncate(step + 1)
        _logger.info("Resumed from '%s' at iteration %d.", resume_path, step)
    if step >= args.iters:
        _logger.info("Already trained for %d of %d iterations: nothing to do.", step, args.iters)
    model = wrap_ddp(model, ctx)
    _logger.info("Semantic FPN on %s: %d classes, %d train / %d val images, %d iterations of %d images "
                 "(-b %d per process x %d processes), %s.", args.backbone, num_classes, len(train_set), len(val_set),
                 args.iters, images_per_step, args.batch_size, ctx.world_size, amp.describe())
    if images_per_step != RECIPE_GLOBAL_BATCH:
        _logger.warning("The recipe's lr (2e-4) is for %d images per step (8 GPUs x -b 4); this run takes %d at "
                        "--lr %g, used as given.", RECIPE_GLOBAL_BATCH, images_per_step, args.lr)

    def state_at(step_done: int, data_position: Tuple[int, int]) -> Dict[str, Any]:
        # ``epoch`` is the data epoch in progress and ``epoch_batches_done`` how far into it
        return build_train_state(model, optimizer, scheduler, amp.scaler, epoch=data_position[0],
                                 epoch_batches_done=data_position[1], global_step=step_done,
                                 args=args, class_names=class_names, arch=f"semantic_fpn_{args.backbone}",
                                 eval_short_side=args.crop_size, eval_antialias=bool(args.antialias),
                                 **{CONFIG_KEY: config})

    eval_every = args.eval_interval if args.eval_interval > 0 else args.iters
    save_every = args.save_interval if args.save_interval > 0 else eval_every
    batches = infinite_batches(loader, sampler, *position)
    scores: Dict[str, Any] = {}
    try:
        with GracefulStop() as stop:
            while step < args.iters:
                boundary = min(args.iters, (step // eval_every + 1) * eval_every, (step // save_every + 1) * save_every)
                last = saver.last_path if os.path.isfile(saver.last_path) else None
                result = train_steps(model, optimizer, scheduler, batches, amp, ctx, step, boundary, stop,
                                     args.clip_grad, args.log_interval, last)
                step, position = result["step"], result["position"]
                if result["stopped"]:
                    saver.save(state_at(step, position), step, None)
                    _logger.warning("Stopped at iteration %d; '%s' holds it: continue with --resume auto.",
                                    step, saver.last_path)
                    return scores
                if step % eval_every == 0 or step == args.iters:
                    scores = evaluate(model, val_loader, num_classes, ctx, amp, progress=sys.stderr.isatty())
                    summary.append(dict(iter=step, train_loss=result["loss"], lr=optimizer.param_groups[0]["lr"],
                                        mIoU=scores["mIoU"], mAcc=scores["mAcc"], aAcc=scores["aAcc"]))
                    best = saver.save(state_at(step, position), step, scores)
                    _logger.info("iter %d: mIoU %.2f, mAcc %.2f, aAcc %.2f%s", step, scores["mIoU"],
                                 scores["mAcc"], scores["aAcc"], " (new best)" if best else "")
                else:
                    saver.save(state_at(step, position), step, None)
    finally:
        summary.close()
    if scores and ctx.is_main:
        _logger.info("Final checkpoint (iteration %d, the one the paper reports):\n%s", step,
                     format_class_table(scores, class_names))
        atomic_save_json(dict(iter=step, backbone=args.backbone, **{k: scores[k] for k in ("mIoU", "mAcc", "aAcc")},
                              IoU=dict(zip(class_names, scores["IoU"]))), os.path.join(out, "results.json"))
    return scores

