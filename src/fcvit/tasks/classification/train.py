"""Image classification on top of the engine: ``train_one_epoch``, ``evaluate`` and the ``train`` driver.

Everything that is not specific to classification (DDP, checkpoints, stops, AMP, logs) comes from
:mod:`fcvit.engine`; data, augmentation, mixup, optimizer, scheduler, EMA and losses come from timm.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from .amp import AmpSettings, backward_step, resolve_amp
from .checkpoint import (
    CheckpointSaver,
    build_train_state,
    load_train_state,
    resolve_resume,
    restore_train_state,
)
from .control import GracefulStop, check_finite
from .distributed import (
    DistContext,
    all_reduce,
    barrier,
    convert_sync_batchnorm,
    distribute_bn,
    run_distributed,
    unwrap_model,
    wrap_ddp,
)
from .logs import ProgressBar, SummaryLog, setup_logging
from .rng import seed_everything
from .workers import ignore_stop_signals, user_errors_from_workers

__all__ = ["train_one_epoch", "evaluate", "train", "create_model", "build_eval_loader", "check_classes",
           "EpochResult", "out_of_memory_message"]

_logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- model

def create_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The classifier by name (FCViT or any timm model), with the recipe's drop-path for FCViT variants."""
    from ..models import MODEL_CONFIGS, check_model_name

    import timm

    check_model_name(args.model, allow_timm=True)
    drop_path = getattr(args, "drop_path", None)
    if drop_path is None and args.model in MODEL_CONFIGS:
        drop_path = MODEL_CONFIGS[args.model].drop_path_rate
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, drop_rate=getattr(args, "drop", 0.0) or 0.0)
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    kwargs.update(getattr(args, "model_kwargs", None) or {})
    model = timm.create_model(args.model, **kwargs)
    if getattr(args, "initial_checkpoint", None):
        load_initial_weights(model, args.initial_checkpoint, args.model)
    return model


def load_initial_weights(model: nn.Module, path: str, model_name: str) -> None:
    """Start from a checkpoint's weights (fine-tuning); a classifier for other classes is left new."""
    from ..models import extract_state_dict, load_weights, read_checkpoint

    state_dict = extract_state_dict(read_checkpoint(path))
    own = model.state_dict()
    head_keys = [k for k in state_dict if k.startswith("head.")]
    if any(k in own and tuple(state_dict[k].shape) != tuple(own[k].shape) for k in head_keys):
        for k in head_keys:
            del state_dict[k]
        _logger.info("Initial weights from '%s': classifier of %s is for other classes, starting it new.",
                     path, model_name)
        load_weights(model, state_dict, model_name, allow_partial=True)
    else:
        load_weights(model, state_dict, model_name)


def out_of_memory_message(batch_size: int, device: torch.device) -> str:
    smaller = max(batch_size // 2, 1)
    return (f"A batch of {batch_size} images does not fit in {device} memory: use a smaller -b "
            f"(e.g. -b {smaller}), --grad-checkpointing or --amp.")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


# ------------------------------------------------------------------------------------------------ data

def check_classes(data_classes: Optional[Sequence[str]], checkpoint: Dict[str, Any], num_classes: int,
                  data_name: str) -> None:
    """A checkpoint must predict the classes of the data it is evaluated on or resumed with."""
    stored = checkpoint.get("class_names")
    if data_classes is None:
        return
    if isinstance(stored, (list, tuple)) and list(stored) != list(data_classes):
        differing = [c for c in data_classes if c not in stored][:3] or [c for c in stored if c not in data_classes][:3]
        hint = f" (e.g. {', '.join(map(str, differing))})" if differing else " (same names, other order)"
        raise UserError(f"The checkpoint was trained on {len(stored)} classes that differ from the "
                        f"{len(data_classes)} classes of {data_name}{hint}: pass the matching data or checkpoint.")
    if num_classes != len(data_classes):
        raise UserError(f"The checkpoint predicts {num_classes} classes but {data_name} has "
                        f"{len(data_classes)}: pass the matching data or checkpoint.")


def _transform_args(args: argparse.Namespace, model: nn.Module, training: bool) -> Dict[str, Any]:
    from timm.data import resolve_data_config

    config = resolve_data_config(vars(args), model=unwrap_model(model))
    kwargs: Dict[str, Any] = dict(input_size=config["input_size"], mean=config["mean"], std=config["std"],
                                  crop_pct=config["crop_pct"], crop_mode=config.get("crop_mode"),
                                  interpolation=config["interpolation"])
    if training:
        kwargs.update(
            is_training=True, no_aug=args.no_aug, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
            vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa or None,
            interpolation=args.train_interpolation, re_prob=args.reprob, re_mode=args.remode,
            re_count=args.recount)
        if getattr(args, "aug_splits", 0) > 1:
            kwargs["separate"] = True  # (crop+flip, augmentation, tensor+erasing) for AugMix-style splits
        if getattr(args, "resplit", False):
            kwargs["re_prob"] = 0.0  # erasing moves to the batch, where it can spare the first split
    return kwargs


def _loader(dataset: Dataset, batch_size: int, sampler: Any, workers: int, pin_memory: bool,
            drop_last: bool) -> DataLoader:
    # a private generator: creating an iterator must not consume the training RNG (exact resume)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, persistent_workers=workers > 0,
                      generator=torch.Generator(), worker_init_fn=ignore_stop_signals if workers else None)


def build_eval_loader(args: argparse.Namespace, model: nn.Module, ctx: DistContext, split: str,
                      class_names: Optional[Sequence[str]] = None, batch_size: Optional[int] = None
                      ) -> Tuple[DataLoader, Dataset, Dict[str, Any]]:
    """Evaluation loader with the model's crop_pct and interpolation (overridable), each sample once over ranks."""
    from timm.data import create_transform

    from ..data.classification import ShardSampler, create_classification_dataset

    tf_args = _transform_args(args, model, training=False)
    dataset = create_classification_dataset(args.dataset, args.data, split, create_transform(**tf_args),
                                            skip_bad_images=args.skip_bad_images, class_names=class_names)
    if len(dataset) == 0:
        raise UserError(f"The '{split}' split of the data has no images: add images or check DATA.")
    sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    loader = _loader(dataset, batch_size or args.batch_size, sampler, args.workers,
                     ctx.device.type == "cuda" and args.pin_mem, drop_last=False)
    return loader, dataset, tf_args


# ------------------------------------------------------------------------------------------- training

@dataclass
class EpochResult:
    """What one (possibly partial) pass over the training data did."""

    steps: int = 0
    images: int = 0
    loss_sum: float = 0.0
    data_seconds: float = 0.0
    seconds: float = 0.0
    global_step: int = 0
    interrupted: bool = False
    metrics: Dict[str, float] = field(default_factory=dict)


def _mixup_fn(args: argparse.Namespace, num_classes: int) -> Optional[Callable]:
    from timm.data import Mixup

    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def _train_loss(args: argparse.Namespace, mixup: bool) -> nn.Module:
    """The original train.py's choice: JSD over augmentation splits, else (binary) cross-entropy on soft
    (mixup) or smoothed targets."""
    from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    bce = getattr(args, "bce_loss", False)
    threshold = getattr(args, "bce_target_thresh", None)
    if getattr(args, "jsd_loss", False):
        return JsdCrossEntropy(num_splits=args.aug_splits, smoothing=args.smoothing)
    if mixup:  # mixup already smooths the targets
        return BinaryCrossEntropy(target_threshold=threshold) if bce else SoftTargetCrossEntropy()
    if bce:
        return BinaryCrossEntropy(smoothing=args.smoothing, target_threshold=threshold)
    if args.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def _join_splits(images: Any, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """AugMix-style splits arrive as a list of batches [clean, augmented, ...]: one batch, split after split,
    with the targets repeated alike (the layout timm's JsdCrossEntropy expects)."""
    if isinstance(images, (list, tuple)):
        return torch.cat(list(images)), targets.repeat(len(images))
    return images, targets


def _batch_erasing(args: argparse.Namespace, device: torch.device) -> Optional[Callable]:
    """``--resplit``: random erasing on the batch that leaves its first split clean (the first half without
    --aug-splits), as the original's loader did; None when erasing stays per image."""
    from timm.data.random_erasing import RandomErasing

    if not getattr(args, "resplit", False) or not args.reprob or args.no_aug:
        return None
    return RandomErasing(args.reprob, mode=args.remode, max_count=args.recount,
                         num_splits=args.aug_splits or 2, device=device)


def train_one_epoch(
        model: nn.Module,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        amp: AmpSettings,
        ctx: DistContext,
        epoch: int,
        global_step: int,
        scheduler: Any = None,
        model_ema: Optional[nn.Module] = None,
        mixup_fn: Optional[Callable] = None,
        stop: Optional[GracefulStop] = None,
        clip_grad: Optional[float] = None,
        clip_mode: str = "norm",
        channels_last: bool = False,
        last_checkpoint: Optional[str] = None,
        progress: Optional[ProgressBar] = None,
        batch_erasing: Optional[Callable] = None,
        log_interval: int = 0,
        on_step: Optional[Callable[[EpochResult], None]] = None,
) -> EpochResult:
    """One pass over ``loader`` (which may start mid-epoch); returns early, flagged, when a stop is requested.

    The loss is checked on every rank before the optimizer step, so a NaN never reaches the weights.
    ``data_seconds`` is the time spent blocked on the loader: the data-loading bottleneck, if any.
    ``batch_erasing`` runs on the device batch after mixup (``--resplit``); ``log_interval`` logs a line
    every that many steps; ``on_step(result)`` runs after every step on every rank (recovery saves).
    """
    from timm.models import model_parameters

    model.train()
    result = EpochResult(global_step=global_step)
    start = tick = time.perf_counter()
    batch_size = loader.batch_size or 1
    clipped = model_parameters(unwrap_model(model), exclude_head="agc" in clip_mode)  # timm spares the head
    clipped = list(clipped) if clip_grad else None
    for images, targets in user_errors_from_workers(loader):
        result.data_seconds += time.perf_counter() - tick
        batch_images = targets.shape[0]
        images, targets = _join_splits(images, targets)
        images = images.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        if batch_erasing is not None:
            images = batch_erasing(images)
        try:
            with amp.autocast():
                loss = loss_fn(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss_value = check_finite(loss, result.global_step + 1, ctx, last_checkpoint)
            backward_step(loss, optimizer, amp, clip_grad, clip_mode, clipped)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if _is_oom(exc):
                raise UserError(out_of_memory_message(batch_size, ctx.device)) from None
            raise
        result.global_step += 1
        if model_ema is not None:
            model_ema.update(unwrap_model(model), step=result.global_step)
        if scheduler is not None:
            scheduler.step_update(num_updates=result.global_step)
        result.steps += 1
        result.images += batch_images * ctx.world_size
        result.loss_sum += loss_value
        if progress is not None:
            progress.update(batch_images * ctx.world_size, loss=loss_value,
                            lr=optimizer.param_groups[0]["lr"])
        if log_interval and result.steps % log_interval == 0:
            _log_step(epoch, result, len(loader), loss_value, optimizer.param_groups[0]["lr"], start)
        if on_step is not None:
            on_step(result)
        if stop is not None and stop.should_stop(ctx):
            result.interrupted = True
            break
        tick = time.perf_counter()
    result.seconds = time.perf_counter() - start
    return result


def _log_step(epoch: int, result: EpochResult, steps: int, loss: float, lr: float, start: float) -> None:
    """The ``--log-interval`` line: where the epoch is, the step's loss, the lr and the throughput so far."""
    seconds = max(time.perf_counter() - start, 1e-9)
    _logger.info("epoch %d [%d/%d]: loss %.4g (mean %.4g), lr %.3e, %.0f img/s, %.0f%% waiting for data", epoch,
                 result.steps, steps, loss, result.loss_sum / result.steps, lr, result.images / seconds,
                 100 * result.data_seconds / seconds)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, amp: AmpSettings, ctx: DistContext,
             channels_last: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Top-1, top-5 (in %), mean cross-entropy and images/s over the whole split, exact across ranks."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, top1, top5, count
    num_classes = None
    start = time.perf_counter()
    total = len(loader.sampler) * ctx.world_size if hasattr(loader.sampler, "__len__") else 0
    with ProgressBar(total, desc, ctx) as bar:
        for images, targets in user_errors_from_workers(loader):
            images = images.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            try:
                with amp.autocast():
                    logits = model(images)
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if _is_oom(exc):
                    raise UserError(out_of_memory_message(images.shape[0], ctx.device)) from None
                raise
            logits = logits.float()
            num_classes = logits.shape[1]
            k = min(5, num_classes)
            top = logits.topk(k, dim=1).indices
            hits = top.eq(targets.unsqueeze(1))
            sums[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
            sums[1] += hits[:, :1].sum()
            sums[2] += hits.sum()
            sums[3] += targets.numel()
            bar.update(images.shape[0] * ctx.world_size)
    sums = all_reduce(sums, ctx)
    seconds = time.perf_counter() - start
    count = max(float(sums[3].item()), 1.0)
    return {"loss": sums[0].item() / count, "top1": 100.0 * sums[1].item() / count,
            "top5": 100.0 * sums[2].item() / count, "img_per_sec": count / max(seconds, 1e-9),
            "images": int(sums[3].item())}


def _cpu_threads(ctx: DistContext, workers: int) -> None:
    """On CPU, leave the loader workers their cores: intra-op threads competing with workers (or with the
    other ranks) for the same cores spin and can run several times slower. OMP_NUM_THREADS wins."""
    if ctx.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    threads = min(torch.get_num_threads(), max(1, (os.cpu_count() or 1) // max(local_procs, 1) - workers))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        _logger.info("Using %d CPU thread(s) per process next to %d loader worker(s); set OMP_NUM_THREADS to "
                     "choose.", threads, workers)


def _resolve_lr(args: argparse.Namespace, world_size: int) -> float:
    """``--lr`` if given, else ``--lr-base`` scaled by the global batch over ``--lr-base-size`` (timm's rule)."""
    if args.lr is not None:
        return float(args.lr)
    ratio = args.batch_size * world_size / args.lr_base_size
    if args.lr_base_scale == "sqrt":
        ratio = math.sqrt(ratio)
    return args.lr_base * ratio


def _epoch_row(epoch: int, result: EpochResult, lr: float, metrics: Dict[str, float],
               ema_metrics: Optional[Dict[str, float]]) -> Dict[str, Any]:
    compute = max(result.seconds - result.data_seconds, 1e-9)
    row: Dict[str, Any] = {
        "epoch": epoch,
        "train_loss": result.loss_sum / max(result.steps, 1),
        "eval_loss": metrics["loss"], "eval_top1": metrics["top1"], "eval_top5": metrics["top5"],
        "lr": lr,
        "train_img_per_sec": result.images / max(result.seconds, 1e-9),
        "model_img_per_sec": result.images / compute,
        "data_wait_share": result.data_seconds / max(result.seconds, 1e-9),
        "eval_img_per_sec": metrics["img_per_sec"],
        "epoch_seconds": result.seconds,
    }
    if ema_metrics is not None:
        row.update(ema_eval_loss=ema_metrics["loss"], ema_eval_top1=ema_metrics["top1"],
                   ema_eval_top5=ema_metrics["top5"])
    return row


def _schedule_extras(args: argparse.Namespace) -> Dict[str, Any]:
    """timm scheduler options of the original train.py (lr noise, cycles, k-decay, plateau patience)."""
    noise = getattr(args, "lr_noise", None)
    return dict(
        noise=(noise[0] if len(noise) == 1 else list(noise)) if noise else None,
        noise_pct=getattr(args, "lr_noise_pct", 0.67), noise_std=getattr(args, "lr_noise_std", 1.0),
        noise_seed=args.seed, cycle_mul=getattr(args, "lr_cycle_mul", 1.0),
        cycle_decay=getattr(args, "lr_cycle_decay", 0.5), cycle_limit=getattr(args, "lr_cycle_limit", 1),
        k_decay=getattr(args, "lr_k_decay", 1.0), patience_epochs=getattr(args, "patience_epochs", 10),
        plateau_mode="min" if "loss" in args.eval_metric else "max")


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """The full run behind ``fcvit train``: returns the final metrics and where the outputs are."""
    return run_distributed(_train, args)


def _train(args: argparse.Namespace, ctx: DistContext) -> Dict[str, Any]:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    from ..data.classification import EpochShardSampler, SeededSamples, create_classification_dataset
    from ..data.transforms import create_train_transform

    output_dir = args.output
    notes = list(vars(args).pop("compat_notes", None) or [])  # from flags of the original train.py
    if ctx.is_main:
        os.makedirs(output_dir, exist_ok=True)
    setup_logging(ctx, output_dir)
    for note in notes:
        _logger.info(note)
    _cpu_threads(ctx, args.workers)
    seed_everything(args.seed, ctx.rank)

    # data: training split first, its classes define the label order for every other split
    train_set = create_classification_dataset(args.dataset, args.data, args.train_split,
                                              skip_bad_images=args.skip_bad_images)
    class_names = getattr(train_set, "classes", None)
    num_classes = args.num_classes or (len(class_names) if class_names else None)
    if num_classes is None:
        raise UserError(f"Dataset '{args.dataset}' does not name its classes: pass --num-classes.")
    if class_names is not None and num_classes != len(class_names):
        raise UserError(f"--num-classes {num_classes} does not match the {len(class_names)} classes of the "
                        "training data: leave --num-classes out.")
    if len(train_set) == 0:
        raise UserError("The training split has no images: add images or check DATA.")

    model = create_model(args, num_classes)
    if args.grad_checkpointing:
        unwrap_model(model).set_grad_checkpointing(True)
    model.to(ctx.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if getattr(args, "sync_bn", False):
        if not ctx.distributed:
            _logger.info("--sync-bn: no effect with one process (as in the original).")
        model = convert_sync_batchnorm(model, ctx)

    train_set.transform = create_train_transform(**_transform_args(args, model, training=True))
    aug_splits = getattr(args, "aug_splits", 0)
    if aug_splits > 1:
        from timm.data import AugMixDataset

        train_set = AugMixDataset(train_set, num_splits=aug_splits)  # (clean, augmented, ...) per image
    global_batch = args.batch_size * ctx.world_size
    if len(train_set) < global_batch:
        raise UserError(f"The training split has {len(train_set)} images, fewer than one global batch of "
                        f"{global_batch}: use a smaller -b.")
    mixup_fn = _mixup_fn(args, num_classes)
    if mixup_fn is not None and args.batch_size % 2:
        raise UserError(f"Mixup/CutMix need an even batch size per process, not -b {args.batch_size}: "
                        "use an even -b or --mixup 0 --cutmix 0.")
    sampler = EpochShardSampler(len(train_set), args.seed, ctx.rank, ctx.world_size)
    train_loader = _loader(SeededSamples(train_set), args.batch_size, sampler, args.workers,
                           ctx.device.type == "cuda" and args.pin_mem, drop_last=True)
    steps_per_epoch = sampler.per_rank // args.batch_size
    eval_loader, _, eval_tf = build_eval_loader(args, model, ctx, args.val_split, class_names,
                                                args.validation_batch_size or args.batch_size)

    lr = _resolve_lr(args, ctx.world_size)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **({"eps": args.opt_eps} if args.opt_eps else {}),
                                    **({"betas": tuple(args.opt_betas)} if args.opt_betas else {}))
    amp = resolve_amp(ctx.device, args.amp, args.amp_dtype)
    if amp.enabled and amp.dtype is torch.float16 and ctx.device.type == "cpu":
        _logger.info("float16 autocast on CPU runs, but slower than float32 (CPUs lack fast float16 kernels); "
                     "leave out --apex-amp/--amp-dtype float16 there for speed.")
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, cooldown_epochs=args.cooldown_epochs,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
        decay_epochs=args.decay_epochs, decay_rate=args.decay_rate,
        step_on_epochs=not args.sched_on_updates, updates_per_epoch=steps_per_epoch, **_schedule_extras(args))
    ema_on_cpu = args.model_ema and getattr(args, "model_ema_force_cpu", False)
    model_ema = (ModelEmaV3(unwrap_model(model), decay=args.model_ema_decay,
                            device=torch.device("cpu") if ema_on_cpu else None) if args.model_ema else None)

    saver = CheckpointSaver(output_dir, metric=args.eval_metric, mode="min" if "loss" in args.eval_metric else "max",
                            keep_best=args.checkpoint_hist, ctx=ctx)
    start_epoch, global_step, skip_steps = 0, 0, 0
    resume_path = resolve_resume(args.resume, output_dir)
    carried = {"loss_sum": 0.0, "images": 0, "steps": 0, "seconds": 0.0, "data_seconds": 0.0}
    if resume_path:
        state = load_train_state(resume_path)
        check_classes(class_names, state, num_classes, "the training data")
        fresh_optimizer = getattr(args, "no_resume_opt", False)
        counters = restore_train_state(state, model, None if fresh_optimizer else optimizer, scheduler,
                                       None if fresh_optimizer else amp.scaler, model_ema, ctx=ctx)
        start_epoch, global_step = counters["epoch"], counters["global_step"]
        skip_steps = int(state.get("step_in_epoch", 0))
        carried.update(state.get("epoch_progress") or {})
        saver.load_state_dict(state.get("saver") or {})
        _logger.info("Resumed from %s: epoch %d, step %d of it, global step %d%s.", resume_path, start_epoch,
                     skip_steps, global_step, " (fresh optimizer and loss scaler: --no-resume-opt)"
                     if fresh_optimizer else "")
    if args.start_epoch is not None and args.start_epoch != start_epoch:  # the original: it always wins
        if resume_path:
            _logger.info("--start-epoch %d overrides the resumed epoch %d.", args.start_epoch, start_epoch)
        start_epoch, skip_steps, global_step = args.start_epoch, 0, args.start_epoch * steps_per_epoch
        carried = {k: 0 for k in carried}
    summary = SummaryLog(os.path.join(output_dir, "summary.csv"), ctx,
                         tensorboard_dir=os.path.join(output_dir, "tensorboard") if args.tensorboard else None)
    summary.truncate(start_epoch)  # rows of epochs this run is about to (re)do

    if args.compile:
        model = torch.compile(model)
    train_model = wrap_ddp(model, ctx, broadcast_buffers=not getattr(args, "no_ddp_bb", False))
    dist_bn = getattr(args, "dist_bn", "reduce") if ctx.distributed else ""
    batch_erasing = _batch_erasing(args, ctx.device)
    loss_fn = _train_loss(args, mixup_fn is not None).to(ctx.device)
    _logger.info("Training %s on %d images of %d classes (%d validation), %d process(es) on %s, global batch %d, "
                 "lr %.3g, %d epochs, %s.", args.model, len(train_set), num_classes, len(eval_loader.dataset),
                 ctx.world_size, ctx.device, global_batch, lr, num_epochs, amp.describe())
    if dist_bn:
        _logger.info("BatchNorm running statistics: %s over the %d processes after every epoch, before evaluation "
                     "(--dist-bn %s).", "averaged" if dist_bn == "reduce" else "copied from rank 0",
                     ctx.world_size, dist_bn)

    def save_recovery(progress_now: EpochResult) -> None:
        """``--recovery-interval``: last.pth.tar mid-epoch, resumable to the step (every rank calls it)."""
        interval = getattr(args, "recovery_interval", 0)
        done_now = skip_steps + progress_now.steps
        if not interval or progress_now.steps % interval or done_now >= steps_per_epoch:
            return
        fields = ("loss_sum", "images", "steps", "seconds", "data_seconds")
        partial = {k: getattr(progress_now, k) + carried[k] for k in fields}
        partial["seconds"] += time.perf_counter() - epoch_start
        saver.save(build_state(epoch, done_now, progress_now.global_step, partial), epoch, None)

    def build_state(epoch: int, step_in_epoch: int, step: int,
                    progress: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
        return build_train_state(
            model, optimizer, scheduler, amp.scaler, model_ema, epoch=epoch, global_step=step, args=args, ctx=ctx,
            arch=args.model, num_classes=num_classes, class_names=list(class_names) if class_names else None,
            data_config={k: (list(v) if isinstance(v, tuple) else v) for k, v in eval_tf.items()},
            step_in_epoch=step_in_epoch, epoch_progress=progress or {})

    def state_for(epoch: int, step_in_epoch: int, progress: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
        return build_state(epoch, step_in_epoch, global_step, progress)

    last_metrics: Dict[str, float] = {}
    interrupted = False
    if start_epoch > 0 or global_step > 0:  # put the lr where the resumed run left it (timm's rule)
        if args.sched_on_updates:
            scheduler.step_update(num_updates=global_step)
        else:
            scheduler.step(start_epoch)
    with GracefulStop() as stop:
        for epoch in range(start_epoch, num_epochs):
            if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                mixup_fn.mixup_enabled = False
            sampler.set_epoch(epoch, skip=skip_steps * args.batch_size)
            epoch_start = time.perf_counter()
            with ProgressBar(len(sampler) // args.batch_size * global_batch, f"epoch {epoch}", ctx) as bar:
                result = train_one_epoch(
                    train_model, train_loader, optimizer, loss_fn, amp, ctx, epoch, global_step, scheduler,
                    model_ema, mixup_fn, stop, args.clip_grad, args.clip_mode, args.channels_last,
                    saver.last_path if os.path.exists(saver.last_path) else None, bar,
                    batch_erasing=batch_erasing, log_interval=getattr(args, "log_interval", 0),
                    on_step=save_recovery)
            global_step = result.global_step
            done = skip_steps + result.steps
            skip_steps = 0
            for key in carried:  # count the part of this epoch done before a resume
                setattr(result, key, type(getattr(result, key))(getattr(result, key) + carried[key]))
            carried = {k: 0 for k in carried}
            if result.interrupted and done < steps_per_epoch:
                progress = {k: getattr(result, k) for k in ("loss_sum", "images", "steps", "seconds", "data_seconds")}
                saver.save(state_for(epoch, done, progress), epoch, None)
                interrupted = True
                break
            if dist_bn:
                distribute_bn(model, ctx, reduce=dist_bn == "reduce")
                if model_ema is not None and not ema_on_cpu:
                    distribute_bn(model_ema.module, ctx, reduce=dist_bn == "reduce")
            metrics = evaluate(train_model, eval_loader, amp, ctx, args.channels_last, "eval")
            ema_metrics = None
            if model_ema is not None and not ema_on_cpu:  # the original did not evaluate a CPU EMA either
                ema_metrics = evaluate(model_ema.module, eval_loader, amp, ctx, args.channels_last, "eval ema")
            ranked = ema_metrics if ema_metrics is not None else metrics
            lr_now = optimizer.param_groups[0]["lr"]  # the lr this epoch trained with (its last step's)
            scheduler.step(epoch + 1, ranked.get(args.eval_metric))
            row = _epoch_row(epoch, result, lr_now, metrics, ema_metrics)
            saver.save(state_for(epoch + 1, 0), epoch, {args.eval_metric: ranked[args.eval_metric]})
            summary.append(row)
            last_metrics = ranked
            _logger.info("epoch %d: train loss %.4f, val top-1 %.2f%% top-5 %.2f%% loss %.4f%s, %.0f img/s "
                         "(model alone %.0f img/s, %.0f%% waiting for data)", epoch, row["train_loss"],
                         metrics["top1"], metrics["top5"], metrics["loss"],
                         f" (EMA top-1 {ema_metrics['top1']:.2f}%)" if ema_metrics else "",
                         row["train_img_per_sec"], row["model_img_per_sec"], 100 * row["data_wait_share"])
            if stop.should_stop(ctx):
                interrupted = epoch + 1 < num_epochs
                break
    barrier(ctx)
    summary.close()
    if interrupted:
        _logger.warning("Stopped by %s; state saved to %s: rerun the same command with --resume auto to continue.",
                        stop.signal_name or "a signal on another rank", saver.last_path)
    return {"output": output_dir, "last": saver.last_path, "best": saver.best_path if saver.best else None,
            "best_value": saver.best_value(), "metric": args.eval_metric, "metrics": last_metrics,
            "interrupted": interrupted, "epochs": num_epochs, "class_names": class_names}
