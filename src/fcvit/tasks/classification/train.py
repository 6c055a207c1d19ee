"""Image classification as a task of the engine's loop: the recipe's data, classifier, mixup and losses of the
original ``train.py``, top-1/top-5 of the model and its EMA; resume, saves and logging come from the loop."""
from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...data.samplers import EpochShardSampler, SeededSamples, SeekableBatches
from ...engine import (AmpSettings, DistContext, ProgressBar, Task, all_reduce, convert_sync_batchnorm, distribute_bn,
                       eval_loader, out_of_memory_as_user_error, resolve_amp, resolve_resume, run_distributed,
                       run_training, seed_everything, train_loader, unwrap_model)
from ...engine.logs import run_folder
from ...engine.workers import user_errors_from_workers
from ...errors import UserError
from ..training import loop_settings

__all__ = ["train", "evaluate", "create_model", "check_model_kwargs", "build_eval_loader", "check_classes",
           "ClassificationTask"]

_logger = logging.getLogger(__name__)

OOM_HINT = "--grad-checkpointing or --amp"


def create_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The classifier by name (FCViT or any timm model), with the recipe's drop-path for FCViT variants."""
    import timm

    from ...models import MODEL_CONFIGS, check_model_name

    check_model_name(args.model, allow_timm=True)
    drop_path = args.drop_path
    if drop_path is None and args.model in MODEL_CONFIGS:
        drop_path = MODEL_CONFIGS[args.model].drop_path_rate
    # validate's namespace has no --drop or --initial-checkpoint
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, drop_rate=getattr(args, "drop", 0.0) or 0.0)
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    check_model_kwargs(args.model, args.model_kwargs or {})
    kwargs.update(args.model_kwargs or {})
    try:
        model = timm.create_model(args.model, **kwargs)
    except TypeError as exc:  # another timm model's constructor: FCViT's arguments are checked above
        if not args.model_kwargs or "keyword argument" not in str(exc):
            raise
        raise UserError(f"{args.model} does not take --model-kwargs {', '.join(map(str, args.model_kwargs))} ({exc}): "
                        "leave them out or pass arguments of its constructor.") from None
    if getattr(args, "initial_checkpoint", None):
        load_initial_weights(model, args.initial_checkpoint, args.model)
    return model


#: constructor arguments with a flag of their own, which --model-kwargs would silently override
FLAG_KWARGS = {"num_classes": "--num-classes", "drop_rate": "--drop", "drop_path_rate": "--drop-path"}
_STAGE_KWARGS = {"depths": int, "dims": int, "mlp_ratios": (int, float)}  # the element types of each


def check_model_kwargs(model: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse, before any work, --model-kwargs the model would only reject (with a traceback) after the data is read:
    an argument with its own flag, one FCViT does not take, malformed or unequal stages, a value of another type."""
    import timm

    from ...models import MODEL_CONFIGS, FCViT

    flagged = next((key for key in kwargs if key in FLAG_KWARGS), None)
    if flagged:
        raise UserError(f"--model-kwargs {flagged} has a flag of its own: pass {FLAG_KWARGS[flagged]} instead.")
    if not kwargs or model not in MODEL_CONFIGS:
        return
    accepted = [name for name in inspect.signature(FCViT.__init__).parameters if name not in ("self", *FLAG_KWARGS)]
    unknown = next((key for key in kwargs if key not in accepted), None)
    if unknown is not None:
        raise UserError(f"--model-kwargs {unknown} is not an argument of {model}: use {', '.join(accepted)}.")
    cfg = MODEL_CONFIGS[model]
    counts = {len(v) if isinstance(v, (list, tuple)) and all(isinstance(x, kind) and not isinstance(x, bool) and x > 0
                                                              for x in v) else 0
              for v, kind in ((kwargs.get(k, getattr(cfg, k)), kind) for k, kind in _STAGE_KWARGS.items())}
    if len(counts) > 1 or 0 in counts:
        given = " ".join(f"{k}={kwargs[k]!r}" for k in _STAGE_KWARGS if k in kwargs)
        own = " ".join(f"{k}={tuple(getattr(cfg, k))}" for k in _STAGE_KWARGS)
        raise UserError(f"--model-kwargs {given} does not fit {model}: depths and dims take whole numbers of at least "
                        f"1, mlp_ratios numbers above 0, one per stage and as many in each (its own: {own}).")
    try:
        with torch.device("meta"):  # the constructor's own checks, without memory for the weights
            timm.create_model(model, **kwargs)
    except Exception as exc:
        given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UserError(f"--model-kwargs {given} cannot build {model} ({str(exc).rstrip('.')}): fix the value or "
                        "leave it out.") from None


def load_initial_weights(model: nn.Module, path: str, model_name: str) -> None:
    """Start from a checkpoint's weights (fine-tuning); a classifier for other classes is left new."""
    from ...models import extract_state_dict, load_weights, read_checkpoint

    state_dict, own = extract_state_dict(read_checkpoint(path)), model.state_dict()
    head_keys = [k for k in state_dict if k.startswith("head.")]
    other_head = any(k in own and tuple(state_dict[k].shape) != tuple(own[k].shape) for k in head_keys)
    if other_head:
        state_dict = {k: v for k, v in state_dict.items() if k not in head_keys}
        _logger.info("Initial weights from '%s': classifier of %s is for other classes, starting it new.",
                     path, model_name)
    load_weights(model, state_dict, model_name, allow_partial=other_head)


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
        if args.aug_splits > 1:
            kwargs["separate"] = True  # (crop+flip, augmentation, tensor+erasing) for AugMix-style splits
        if _batch_erasing_on(args):
            kwargs["re_prob"] = 0.0  # erasing moves to the batch (after mixup), see _batch_erasing
    return kwargs


def build_eval_loader(args: argparse.Namespace, model: nn.Module, ctx: DistContext, split: str,
                      class_names: Optional[Sequence[str]] = None, batch_size: Optional[int] = None
                      ) -> Tuple[DataLoader, Dataset, Dict[str, Any]]:
    """Evaluation loader with the model's crop_pct and interpolation (overridable), each sample once over ranks."""
    from timm.data import create_transform

    from .data import create_classification_dataset

    tf_args = _transform_args(args, model, training=False)
    dataset = create_classification_dataset(args.dataset, args.data, split, create_transform(**tf_args),
                                            skip_bad_images=args.skip_bad_images, class_names=class_names,
                                            evaluation=True)
    if len(dataset) == 0:
        raise UserError(f"The '{split}' split of the data has no images: add images or check DATA.")
    loader = eval_loader(dataset, batch_size or args.batch_size, ctx, args.workers, args.pin_mem)
    return loader, dataset, tf_args


def _mixup_fn(args: argparse.Namespace, num_classes: int) -> Optional[Callable]:
    from timm.data import Mixup

    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def _train_loss(args: argparse.Namespace, mixup: bool) -> nn.Module:
    """The original train.py's: JSD over augmentation splits, else (binary) cross-entropy on soft/smoothed targets."""
    from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    bce, threshold = args.bce_loss, args.bce_target_thresh
    if args.jsd_loss:
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


def _batch_erasing_on(args: argparse.Namespace) -> bool:
    return bool(args.reprob) and not args.no_aug and (args.resplit or not getattr(args, "erase_per_image", False))


def _batch_erasing(args: argparse.Namespace, device: torch.device) -> Optional[Callable]:
    """Random erasing on the normalised batch after mixup/cutmix, as the original's prefetcher (so erased
    regions are never blended between images); with ``--resplit`` it spares the batch's first split. None
    with ``--erase-per-image``: erasing then runs per image in the loader, before mixup."""
    from timm.data.random_erasing import RandomErasing

    if not _batch_erasing_on(args):
        return None
    return RandomErasing(args.reprob, mode=args.remode, max_count=args.recount,
                         num_splits=(args.aug_splits or 2) if args.resplit else 0, device=device)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, amp: AmpSettings, ctx: DistContext,
             channels_last: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Top-1, top-5 (in %), mean cross-entropy and images/s over the whole split, exact across ranks; unreadable
    images (``SKIPPED_TARGET`` under --skip-bad-images) are counted only as ``skipped``."""
    from .data import SKIPPED_TARGET

    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=ctx.device)  # loss, top1, top5, count, skipped
    start = time.perf_counter()
    with ProgressBar(len(loader.sampler) * ctx.world_size, desc, ctx) as bar:
        for images, targets in user_errors_from_workers(loader):
            images = images.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with out_of_memory_as_user_error(images.shape[0], ctx.device, OOM_HINT), amp.autocast():
                logits = model(images)
            read = targets != SKIPPED_TARGET
            sums[4] += (~read).sum()
            logits, targets = logits.float()[read], targets[read]
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets.unsqueeze(1))
            sums[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
            sums[1] += hits[:, :1].sum()
            sums[2] += hits.sum()
            sums[3] += targets.numel()
            bar.update(images.shape[0] * ctx.world_size)
    loss, top1, top5, images, skipped = all_reduce(sums, ctx).tolist()
    count = max(images, 1.0)
    return {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "images": int(images),
            "img_per_sec": count / max(time.perf_counter() - start, 1e-9), "skipped": int(skipped)}


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


def _create_schedule(optimizer: torch.optim.Optimizer, args: argparse.Namespace,
                     updates_per_epoch: int) -> Tuple[Any, int]:
    """timm's schedule for ``--sched``; ``none`` is timm's constant schedule without warmup or noise (the lr
    stays where the optimizer starts it), so the loop always has a schedule to step and checkpoint."""
    from timm.scheduler import create_scheduler_v2

    extras, sched, warmup_epochs = _schedule_extras(args), args.sched, args.warmup_epochs
    if sched == "none":
        sched, warmup_epochs, extras["noise"] = "constant", 0, None
    try:
        return create_scheduler_v2(
            optimizer, sched=sched, num_epochs=args.epochs, cooldown_epochs=args.cooldown_epochs,
            min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=warmup_epochs,
            decay_epochs=args.decay_epochs, decay_milestones=list(args.decay_milestones),
            decay_rate=args.decay_rate, step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch,
            **extras)
    except ValueError as exc:  # timm's own range checks (wsd/rsqrt decay length)
        raise UserError(f"--sched {args.sched}: {str(exc).rstrip('.')}; change --decay-epochs, --warmup-epochs or "
                        "--epochs.") from None


def _schedule_extras(args: argparse.Namespace) -> Dict[str, Any]:
    """timm scheduler options of the original train.py (lr noise, cycles, k-decay, plateau patience)."""
    noise = args.lr_noise
    return dict(
        noise=(noise[0] if len(noise) == 1 else list(noise)) if noise else None, noise_pct=args.lr_noise_pct,
        noise_std=args.lr_noise_std, noise_seed=args.seed, cycle_mul=args.lr_cycle_mul,
        cycle_decay=args.lr_cycle_decay, cycle_limit=args.lr_cycle_limit, k_decay=args.lr_k_decay,
        patience_epochs=args.patience_epochs, plateau_mode="min" if "loss" in args.eval_metric else "max")


def _warn_short_schedule(args: argparse.Namespace, num_epochs: int) -> None:
    """The ImageNet recipe's 5 warmup and 10 cooldown epochs fit 300 epochs; in a short run they leave the lr
    below its scheduled value most of the time, which trains little and says nothing."""
    cooldown = args.cooldown_epochs if num_epochs > args.epochs else 0
    ramps = min(args.warmup_epochs, args.epochs) * (args.sched != "none") + cooldown
    if ramps > num_epochs / 2:
        _logger.warning("Warning: %d of the %d epochs are warmup (--warmup-epochs %d) or cooldown at --min-lr "
                        "(--cooldown-epochs %d), so the lr is below its scheduled value for most of the run: use "
                        "fewer (e.g. --warmup-epochs 1 --cooldown-epochs 0), more --epochs, or --finetune.",
                        ramps, num_epochs, args.warmup_epochs, cooldown)


def _epochs_note(args: argparse.Namespace, num_epochs: int) -> str:
    """Epochs the schedule adds to ``--epochs`` (cooldown, lr cycles), said up front in the start banner."""
    if num_epochs == args.epochs:
        return ""
    plural = "" if args.epochs == 1 else "s"
    cooldown = args.cooldown_epochs
    if num_epochs == args.epochs + cooldown:
        return (f", {args.epochs} epoch{plural} + {cooldown} cooldown epochs at --min-lr = {num_epochs} "
                "(--cooldown-epochs 0 for none)")
    return (f", {num_epochs} epochs in all: --epochs {args.epochs} per lr cycle, --lr-cycle-limit "
            f"{args.lr_cycle_limit}, + {cooldown} cooldown epochs")


def check_initial_with_resume(args: argparse.Namespace) -> None:
    """``--initial-checkpoint`` starts a NEW run, so an explicit ``--resume CKPT`` (whose weights would replace it)
    conflicts; ``--resume auto`` continues a run the same command started."""
    if args.initial_checkpoint and args.resume not in ("", "auto") and resolve_resume(args.resume, args.output):
        raise UserError(f"--initial-checkpoint and --resume {args.resume} conflict: a resumed run continues from "
                        "its own weights, so drop --initial-checkpoint to continue it, or drop --resume (or pass "
                        "--resume '') to start a new run from the initial weights.")


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """The full run behind ``fcvit train``: returns the final metrics and where the outputs are."""
    return run_distributed(_train, args)


def _train(args: argparse.Namespace, ctx: DistContext) -> Dict[str, Any]:
    with run_folder(ctx, args.output):  # one run per folder; a refusal leaves no new folder behind
        task = _task(args, ctx)
        settings = loop_settings(args, task.amp, resume_optimizer=not args.no_resume_opt, clip_mode=args.clip_mode,
                                 start_epoch=args.start_epoch, broadcast_buffers=not args.no_ddp_bb)
        return dict(run_training(task, ctx, settings), epochs=task.length, class_names=task.class_names)


def _task(args: argparse.Namespace, ctx: DistContext) -> "ClassificationTask":
    """The run's data, model and task: every check that can refuse the run before its first step."""
    from .data import create_classification_dataset

    check_initial_with_resume(args)
    for note in vars(args).pop("compat_notes", None) or []:  # from flags of the original train.py
        _logger.info(note)
    _cpu_threads(ctx, args.workers)
    seed_everything(args.seed, ctx.rank)
    # the training split first: its classes define the label order for every other split
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
    if args.sync_bn:
        model = convert_sync_batchnorm(model, ctx)
    return ClassificationTask(args, ctx, model, train_set, class_names, num_classes)


class ClassificationTask(Task):
    """``fcvit train`` on the loop: the recipe's augmentation, mixup and losses; top-1/top-5 of the model and
    its EMA; ``--dist-bn`` before each evaluation; ``--mixup-off-epoch``."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext, model: nn.Module, train_set: Dataset,
                 class_names: Optional[Sequence[str]], num_classes: int) -> None:
        from timm.models import model_parameters
        from timm.optim import create_optimizer_v2
        from timm.utils import ModelEmaV3

        from .transforms import create_train_transform

        train_set.transform = create_train_transform(**_transform_args(args, model, training=True))
        if args.aug_splits > 1:
            from timm.data import AugMixDataset

            train_set = AugMixDataset(train_set, num_splits=args.aug_splits)  # (clean, augmented, ...) per image
        if len(train_set) < args.batch_size * ctx.world_size:
            raise UserError(f"The training split has {len(train_set)} images, fewer than one global batch of "
                            f"{args.batch_size * ctx.world_size}: use a smaller -b.")
        self.mixup = _mixup_fn(args, num_classes)
        if self.mixup is not None and args.batch_size % 2:
            raise UserError(f"Mixup/CutMix need an even batch size per process, not -b {args.batch_size}: "
                            "use an even -b or --mixup 0 --cutmix 0.")
        batches = SeekableBatches(EpochShardSampler(len(train_set), args.seed, ctx.rank, ctx.world_size),
                                  args.batch_size)
        loader = train_loader(SeededSamples(train_set), batches, args.workers,
                              ctx.device.type == "cuda" and args.pin_mem)
        self.val_loader, _, eval_tf = build_eval_loader(args, model, ctx, args.val_split, class_names,
                                                        args.validation_batch_size)
        lr = _resolve_lr(args, ctx.world_size)
        optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                        momentum=args.momentum, **({"eps": args.opt_eps} if args.opt_eps else {}),
                                        **({"betas": tuple(args.opt_betas)} if args.opt_betas else {}))
        self.amp = resolve_amp(ctx.device, args.amp, args.amp_dtype)
        if self.amp.enabled and self.amp.dtype is torch.float16 and ctx.device.type == "cpu":
            _logger.info("float16 autocast on CPU runs, but slower than float32 (CPUs lack fast float16 kernels); "
                         "leave out --apex-amp/--amp-dtype float16 there for speed.")
        scheduler, num_epochs = _create_schedule(optimizer, args, batches.batches_per_epoch)
        _warn_short_schedule(args, num_epochs)
        super().__init__(torch.compile(model) if args.compile else model, optimizer, scheduler, loader,
                         name=f"Training {args.model}", metric=args.eval_metric,
                         mode="min" if "loss" in args.eval_metric else "max", unit="epoch", length=num_epochs)
        self.args, self.ctx, self.class_names, self.num_classes = args, ctx, class_names, num_classes
        self.ema_evaluated = args.model_ema and not args.model_ema_force_cpu  # the original skipped a CPU EMA
        self.model_ema = (ModelEmaV3(model, decay=args.model_ema_decay, device=None if self.ema_evaluated
                                     else torch.device("cpu")) if args.model_ema else None)
        self.dist_bn = args.dist_bn if ctx.distributed else ""
        if self.dist_bn:
            _logger.info("BatchNorm running statistics: %s over the %d processes after every epoch, before "
                         "evaluation (--dist-bn %s).", "averaged" if self.dist_bn == "reduce" else
                         "copied from rank 0", ctx.world_size, self.dist_bn)
        self.loss_fn = _train_loss(args, self.mixup is not None).to(ctx.device)
        self.batch_erasing = _batch_erasing(args, ctx.device)
        if args.clip_grad:
            self.clip_parameters = list(model_parameters(model, exclude_head="agc" in args.clip_mode))
        self.oom_hint = OOM_HINT
        self.describe = (f"{len(train_set)} images of {num_classes} classes, {len(self.val_loader.dataset)} for "
                         f"validation, lr {lr:.3g}{_epochs_note(args, num_epochs)}")
        self.data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in eval_tf.items()}

    def step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], int]:
        images, targets = _join_splits(*batch)
        images, targets = images.to(self.ctx.device, non_blocking=True), targets.to(self.ctx.device, non_blocking=True)
        if self.args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        if self.batch_erasing is not None:
            images = self.batch_erasing(images)
        return self.loss_fn(model(images), targets), {}, batch[1].shape[0]

    def evaluate(self, model: nn.Module) -> Tuple[Dict[str, float], Dict[str, Any]]:
        metrics = evaluate(model, self.val_loader, self.amp, self.ctx, self.args.channels_last, "eval")
        row: Dict[str, Any] = {f"eval_{k}": metrics[k] for k in ("loss", "top1", "top5", "img_per_sec")}
        ranked = metrics
        if self.model_ema is not None and self.ema_evaluated:
            ranked = evaluate(self.model_ema.module, self.val_loader, self.amp, self.ctx, self.args.channels_last,
                              "eval ema")
            row.update({f"ema_eval_{k}": ranked[k] for k in ("loss", "top1", "top5")})
        _logger.info("val top-1 %.2f%% top-5 %.2f%% loss %.4f%s", metrics["top1"], metrics["top5"], metrics["loss"],
                     f" (EMA top-1 {ranked['top1']:.2f}%)" if ranked is not metrics else "")
        return ranked, row

    def before_evaluate(self, model: nn.Module) -> None:
        ema = [self.model_ema.module] if self.model_ema is not None and self.ema_evaluated else []
        for each in [model] + ema if self.dist_bn else []:
            distribute_bn(each, self.ctx, reduce=self.dist_bn == "reduce")

    def on_epoch_start(self, epoch: int) -> None:
        if self.mixup is not None and self.args.mixup_off_epoch and epoch >= self.args.mixup_off_epoch:
            self.mixup.mixup_enabled = False

    def after_update(self, model: nn.Module, global_step: int) -> None:
        if self.model_ema is not None:
            self.model_ema.update(unwrap_model(model), step=global_step)

    def checkpoint_fields(self) -> Dict[str, Any]:
        return dict(arch=self.args.model, num_classes=self.num_classes, data_config=self.data_config,
                    class_names=list(self.class_names) if self.class_names else None)

    def check_resume(self, state: Mapping[str, Any]) -> None:
        from ...models.checkpoint import expect_kind

        expect_kind(state, ("classifier", "timm"), "The checkpoint to resume")
        check_classes(self.class_names, state, self.num_classes, "the training data")
