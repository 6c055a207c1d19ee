"""The one training loop: classification, detection and segmentation each hand it a :class:`TrainSpec`.

The loop owns what every run needs and what used to drift between three copies: the exact data
position (resume inside an epoch, with any number of loader workers), stop and save cadence,
evaluation cadence, ranking of the best checkpoints, the non-finite-loss stop, out-of-memory messages,
throughput and ``summary.csv`` rows, the learning-rate schedule's stepping, and every rank's own
random state in checkpoints. A task gives only what is its own: data, model, optimizer and scheduler,
the loss of one batch, its evaluation and the fields its checkpoints carry.

Runs are counted in epochs (classification, detection) or in iterations (segmentation); either way a
checkpoint records the data epoch in progress and how many of its batches are done, so a resumed run
continues with exactly the batches, augmentations and random streams an uninterrupted run would use.
"""
from __future__ import annotations

import copy
import logging
import os
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.samplers import ShardSampler
from ..errors import UserError
from .amp import AmpSettings, backward_step
from ..models.checkpoint import checkpoint_args
from .checkpoint import (CheckpointSaver, build_train_state, load_resume_state, plain_args, resolve_resume,
                         restore_train_state)
from .control import GracefulStop, check_finite
from .distributed import DistContext, all_reduce_mean, barrier, unwrap_model, wrap_ddp
from .logs import ProgressBar, SummaryLog
from .workers import ignore_stop_signals, user_errors_from_workers

__all__ = ["TrainSpec", "LoopSettings", "run_training", "is_out_of_memory", "train_loader", "eval_loader"]

_logger = logging.getLogger(__name__)

#: (loss, {part name: value}, images in the batch on this rank)
StepOutput = Tuple[torch.Tensor, Mapping[str, torch.Tensor], int]


@dataclass
class TrainSpec:
    """What a task gives the loop.

    ``train_loader`` must use a batch sampler with ``set_position(epoch, batches_done)`` and
    ``batches_per_epoch`` (:class:`fcvit.data.samplers.SeekableBatches` or the detection sampler).
    ``step(model, batch)`` computes the loss of one batch under autocast; ``evaluate(model)`` returns
    ``(ranking, row)``: the metrics the best checkpoints are ranked by (must hold ``metric``) and the
    fields its summary row gets. ``checkpoint_fields`` go into every checkpoint (architecture, classes);
    ``check_resume(state)`` refuses a checkpoint of another model or data. ``run_shaping`` names the
    arguments (``LoopSettings.args``) whose change makes a resumed run another run (model, data, lr,
    length, schedule, batch): a resume with other values is refused unless ``resume_override``, which
    applies them (optimizer settings and a schedule rebuilt for the new values). ``new_run_only`` are
    those of them only a new run can apply (initial weights): their change is refused even then.
    """

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    step: Callable[[nn.Module, Any], StepOutput]
    evaluate: Callable[[nn.Module], Tuple[Dict[str, float], Dict[str, Any]]]
    metric: str
    mode: str = "max"
    unit: str = "epoch"
    length: int = 1
    checkpoint_fields: Dict[str, Any] = field(default_factory=dict)
    check_resume: Optional[Callable[[Mapping[str, Any]], None]] = None
    after_update: Optional[Callable[[nn.Module, int], None]] = None
    before_evaluate: Optional[Callable[[nn.Module], None]] = None
    on_epoch_start: Optional[Callable[[int], None]] = None
    model_ema: Optional[nn.Module] = None
    clip_parameters: Optional[List[nn.Parameter]] = None
    oom_hint: str = "or add --amp"
    describe: str = ""
    run_shaping: Tuple[str, ...] = ()
    new_run_only: Tuple[str, ...] = ()


@dataclass
class LoopSettings:
    """The run options every task shares (one vocabulary: see ``fcvit.cli.options``)."""

    output: str
    amp: AmpSettings
    args: Any = None
    resume: Optional[str] = "auto"
    resume_optimizer: bool = True
    resume_override: bool = False
    keep_best: int = 1
    eval_interval: int = 1
    save_interval: int = 0  # extra saves of last.pth.tar: every N batches of an epoch, or N iterations
    log_interval: int = 50
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    tensorboard: bool = False
    start_epoch: Optional[int] = None
    broadcast_buffers: bool = True


def train_loader(dataset: Dataset, batches: Sampler, workers: int, pin_memory: bool,
                 collate_fn: Optional[Callable] = None) -> DataLoader:
    """The loader the loop trains from: ``batches`` seeks (``set_position``), workers ignore stop signals
    (SIGTERM to the process group stops the run cleanly), and a private generator, so that starting an
    epoch draws nothing from the random state a checkpoint restores."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=collate_fn, persistent_workers=workers > 0, generator=torch.Generator(),
                      worker_init_fn=ignore_stop_signals if workers else None)


def eval_loader(dataset: Dataset, batch_size: int, ctx: DistContext, workers: int, pin_memory: bool = True,
                collate_fn: Optional[Callable] = None) -> DataLoader:
    """Every sample exactly once over all ranks, in file order, so summed metrics are exact."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
                      num_workers=workers, pin_memory=pin_memory and ctx.device.type == "cuda", collate_fn=collate_fn,
                      worker_init_fn=ignore_stop_signals if workers else None)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


class _Window:
    """Sums over the steps since the last summary row; saved in a checkpoint written mid-window."""

    def __init__(self, saved: Optional[Mapping[str, Any]] = None) -> None:
        saved = dict(saved or {})
        self.steps = int(saved.pop("steps", 0))
        self.images = int(saved.pop("images", 0))
        self.seconds = float(saved.pop("seconds", 0.0))
        self.data_seconds = float(saved.pop("data_seconds", 0.0))
        self.losses: Dict[str, float] = defaultdict(float, {k: float(v) for k, v in saved.items()})

    def state(self) -> Dict[str, float]:
        return dict(self.losses, steps=self.steps, images=self.images, seconds=self.seconds,
                    data_seconds=self.data_seconds)

    def add(self, loss: float, parts: Mapping[str, torch.Tensor], images: int) -> None:
        self.steps += 1
        self.images += images
        self.losses["loss"] += loss
        for name, part in parts.items():
            self.losses[name] += float(part.detach())

    def row(self, ctx: DistContext) -> Dict[str, float]:
        """Mean losses over ranks, throughput with and without waiting for data, the data-wait share."""
        names = sorted(self.losses)
        means = torch.tensor([self.losses[k] / max(self.steps, 1) for k in names], dtype=torch.float64)
        if names:
            means = all_reduce_mean(means.to(ctx.device), ctx).cpu()
        row: Dict[str, float] = {("train_loss" if k == "loss" else k): float(v) for k, v in zip(names, means)}
        compute = max(self.seconds - self.data_seconds, 1e-9)
        row.update(train_img_per_sec=self.images / max(self.seconds, 1e-9),
                   model_img_per_sec=self.images / compute,
                   data_wait_share=self.data_seconds / max(self.seconds, 1e-9),
                   seconds=self.seconds)
        return row


def _batches(loader: DataLoader, epoch: int, done: int) -> Iterator[Tuple[int, int, Any]]:
    """(data epoch, batches of it done after this one, batch) forever, starting after ``done`` of ``epoch``."""
    sampler = loader.batch_sampler
    while True:
        if done >= sampler.batches_per_epoch:
            epoch, done = epoch + 1, 0
        sampler.set_position(epoch, done)
        for batch in user_errors_from_workers(loader):
            done += 1
            yield epoch, done, batch


def _step_schedule(scheduler: Any, global_step: int) -> None:
    if hasattr(scheduler, "step_update"):  # timm: per-update values (a no-op for per-epoch schedules)
        scheduler.step_update(num_updates=global_step)
    else:  # torch: one step per optimizer update
        scheduler.step()


def run_training(spec: TrainSpec, ctx: DistContext, settings: LoopSettings) -> Dict[str, Any]:
    """Train ``spec`` to its end or to a stop request; returns the outputs and the last evaluation."""
    if spec.unit not in ("epoch", "iter"):
        raise ValueError(f"unit must be 'epoch' or 'iter', not {spec.unit!r}")
    out = settings.output
    amp = settings.amp
    sampler = spec.train_loader.batch_sampler
    per_epoch, batch_size = sampler.batches_per_epoch, sampler.batch_size
    if per_epoch < 1:
        raise UserError("The training data gives no full batch on each process: use a smaller -b or more images.")
    total_steps = spec.length * per_epoch if spec.unit == "epoch" else spec.length
    saver = CheckpointSaver(out, metric=spec.metric, mode=spec.mode, keep_best=settings.keep_best, ctx=ctx)
    step_key = "epoch" if spec.unit == "epoch" else "iter"
    summary = SummaryLog(os.path.join(out, "summary.csv"), ctx, step_key=step_key,
                         tensorboard_dir=os.path.join(out, "tensorboard") if settings.tensorboard else None)

    global_step, epoch, done, window_state, pending = 0, 0, 0, None, None
    resume_path = resolve_resume(settings.resume, out)
    if resume_path:
        global_step, epoch, done, window_state, pending = _resume(spec, settings, resume_path, saver, ctx,
                                                                  per_epoch, total_steps)
    if settings.start_epoch is not None and settings.start_epoch != epoch:  # the original's rule: it always wins
        if resume_path:
            _logger.info("--start-epoch %d overrides the resumed epoch %d.", settings.start_epoch, epoch)
        epoch, done, window_state = settings.start_epoch, 0, None
        global_step = epoch * per_epoch
    # rows at or after the resume point are about to be written again
    summary.truncate(epoch if spec.unit == "epoch" else global_step + 1)
    if global_step:  # put the learning rate where the resumed run left it (timm's rule)
        if hasattr(spec.scheduler, "step_update"):
            spec.scheduler.step(epoch)
            spec.scheduler.step_update(num_updates=global_step)

    train_model = wrap_ddp(spec.model, ctx, broadcast_buffers=settings.broadcast_buffers)
    if global_step >= total_steps and pending is None:
        _logger.info("Already trained for %d of %d %s: nothing to do.", global_step if spec.unit == "iter" else epoch,
                     spec.length, "iterations" if spec.unit == "iter" else "epochs")
    length = f"{spec.length} epochs of {per_epoch} steps" if spec.unit == "epoch" else f"{spec.length} iterations"
    _logger.info("%s%s: %s, global batch %d (%d per process x %d process(es) on %s), %s.", spec.name,
                 f" ({spec.describe})" if spec.describe else "", length, batch_size * ctx.world_size, batch_size,
                 ctx.world_size, ctx.device, amp.describe())

    def state_at(step: int, data_epoch: int, batches_done: int, window: Optional[_Window],
                 pending_evaluation: bool = False) -> Dict[str, Any]:
        """``epoch``: epochs of data completed; ``step_in_epoch``: batches of the next one done;
        ``pending_evaluation``: where the evaluation a stop put off belongs (done first on resume)."""
        pending_at = {"epoch": data_epoch, "done": batches_done} if pending_evaluation else None
        if batches_done >= per_epoch:
            data_epoch, batches_done = data_epoch + 1, 0
        return build_train_state(
            spec.model, spec.optimizer, spec.scheduler, amp.scaler, spec.model_ema, epoch=data_epoch,
            global_step=step, args=settings.args, ctx=ctx, step_in_epoch=batches_done,
            epoch_progress=window.state() if window is not None else None, task=spec.name,
            batches_per_epoch=per_epoch, pending_evaluation=pending_at,
            **spec.checkpoint_fields)

    def last_checkpoint() -> Optional[str]:
        return saver.last_path if os.path.isfile(saver.last_path) else None

    def evaluation_due(step: int, epoch_end: bool) -> bool:
        if step >= total_steps:
            return True
        if spec.unit == "epoch":
            return epoch_end and settings.eval_interval > 0 and (step // per_epoch) % settings.eval_interval == 0
        return settings.eval_interval > 0 and step % settings.eval_interval == 0

    def evaluate_and_save(step: int, data_epoch: int, batches_done: int, window: _Window) -> Dict[str, float]:
        """Evaluate, write the summary row, then rank and save (a kill while saving keeps the row)."""
        if spec.before_evaluate is not None:
            spec.before_evaluate(spec.model)
        train_row, lr = window.row(ctx), _lr(spec)
        scores, eval_row = spec.evaluate(spec.model)
        _step_epoch_schedule(spec, batches_done >= per_epoch, data_epoch, scores)
        summary.append(dict(_position_row(spec, data_epoch, step), lr=lr, **train_row, **eval_row))
        tag = data_epoch if spec.unit == "epoch" else step
        best = saver.save(state_at(step, data_epoch, batches_done, None), tag, {spec.metric: scores[spec.metric]})
        _log_evaluation(spec, tag, scores, train_row, best)
        return scores

    ranking: Dict[str, float] = {}
    interrupted = False
    window = _Window(window_state)
    if pending is not None:  # a stop came where an evaluation was due: it runs now, before training goes on
        _logger.info("Evaluating what the interrupted run had trained (%s %d) before continuing.",
                     "epoch" if spec.unit == "epoch" else "iteration",
                     int(pending["epoch"]) if spec.unit == "epoch" else global_step)
        ranking = evaluate_and_save(global_step, int(pending["epoch"]), int(pending["done"]), window)
        window = _Window()
    batches = _batches(spec.train_loader, epoch, done)
    bar = _epoch_bar(ctx, epoch, done, per_epoch, batch_size)
    log_start, log_images = time.perf_counter(), 0
    try:
        with GracefulStop() as stop:
            tick = time.perf_counter()
            started: Optional[int] = None
            while global_step < total_steps:
                epoch, done, batch = next(batches)
                if epoch != started and spec.on_epoch_start is not None:
                    spec.on_epoch_start(epoch)
                started = epoch
                window.data_seconds += time.perf_counter() - tick
                spec.model.train()
                value, parts, images = _one_step(spec, train_model, batch, amp, settings, ctx, global_step,
                                                 last_checkpoint())
                global_step += 1
                _step_schedule(spec.scheduler, global_step)
                if spec.after_update is not None:
                    spec.after_update(spec.model, global_step)
                window.add(value, parts, images * ctx.world_size)
                log_images += images * ctx.world_size
                bar.update(images * ctx.world_size, loss=value, lr=_lr(spec))
                if settings.log_interval and global_step % settings.log_interval == 0:
                    _logger.info("epoch %d [%d/%d]: loss %.4g, lr %.3e, %.0f img/s (step %d)", epoch, done, per_epoch,
                                 value, _lr(spec), log_images / max(time.perf_counter() - log_start, 1e-9),
                                 global_step)
                    log_start, log_images = time.perf_counter(), 0
                window.seconds += time.perf_counter() - tick

                # boundaries: evaluation, end of an epoch, periodic save; the summary row before the checkpoint
                stop_now = stop.should_stop(ctx)  # once per step on every rank: the ranks agree
                epoch_end = done >= per_epoch
                saved = True
                if evaluation_due(global_step, epoch_end) and stop_now:
                    # an evaluation can outlast the notice before a kill: save, and evaluate on resume
                    saver.save(state_at(global_step, epoch, done, window, pending_evaluation=True), global_step, None)
                elif evaluation_due(global_step, epoch_end):
                    bar.close()
                    ranking = evaluate_and_save(global_step, epoch, done, window)
                    window = _Window()
                elif spec.unit == "epoch" and epoch_end:
                    bar.close()
                    row = dict(_position_row(spec, epoch, global_step), lr=_lr(spec), **window.row(ctx))
                    _step_epoch_schedule(spec, epoch_end, epoch, ranking)
                    summary.append(row)
                    saver.save(state_at(global_step, epoch, done, None), epoch, None)
                    window = _Window()
                elif settings.save_interval and (done if spec.unit == "epoch" else global_step) % settings.save_interval == 0:
                    saver.save(state_at(global_step, epoch, done, window), global_step, None)
                else:
                    saved = False
                if stop_now:
                    if not saved:
                        saver.save(state_at(global_step, epoch, done, window), global_step, None)
                    interrupted = True
                    break
                if epoch_end and not bar.closed:
                    bar.close()
                if bar.closed and global_step < total_steps:
                    bar = _epoch_bar(ctx, epoch + int(epoch_end), 0 if epoch_end else done, per_epoch, batch_size)
                tick = time.perf_counter()
    finally:
        bar.close()
        summary.close()
    barrier(ctx)
    if interrupted:
        _logger.warning("Stopped by %s at step %d; %s holds it: rerun the same command (--resume auto) to continue.",
                        stop.signal_name or "a signal on another rank", global_step, saver.last_path)
    return {"output": out, "last": saver.last_path, "best": saver.best_path if saver.best else None,
            "best_value": saver.best_value(), "metric": spec.metric, "metrics": ranking,
            "interrupted": interrupted, "global_step": global_step, "epoch": epoch}


def _resume(spec: TrainSpec, settings: LoopSettings, path: str, saver: CheckpointSaver, ctx: DistContext,
            per_epoch: int, total_steps: int
            ) -> Tuple[int, int, int, Optional[Mapping[str, Any]], Optional[Mapping[str, int]]]:
    """Load the run to continue; returns (global step, data epoch, batches of it done, partial row sums, the
    evaluation a stop put off: its epoch and batches done, or None).

    Run-shaping arguments that differ from the resumed run's are refused, or with ``--resume-override``
    applied: the optimizer takes the new settings and the schedule the new lr and length.
    """
    state = load_resume_state(path, settings.resume)
    changed = _changed_arguments(spec.run_shaping, checkpoint_args(state), settings.args)
    position = int(state.get("global_step", 0)) if spec.unit == "iter" else int(state.get("epoch", 0))
    unit = "iterations" if spec.unit == "iter" else "epochs"
    fixed = [c for c in changed if c[0] in spec.new_run_only]
    if fixed:
        raise UserError(f"The run in '{path}' was started with other settings ({_describe_changes(fixed)}) that "
                        "only a new run can take: pass its values to continue it, or --resume '' or another "
                        "--output to start a new run.")
    if changed and not settings.resume_override:
        past = (f"; it has already trained {position} {unit}, the new settings ask for {spec.length}"
                if position >= spec.length else "")
        raise UserError(f"The run in '{path}' was started with other settings ({_describe_changes(changed)}){past}: "
                        "pass its values to continue it, add --resume-override to continue with the new ones, or "
                        "choose another --output.")
    if spec.check_resume is not None:
        spec.check_resume(state)
    new_schedule = _schedule_snapshot(spec) if changed else None
    fresh = not settings.resume_optimizer
    counters = restore_train_state(state, spec.model, None if fresh else spec.optimizer, spec.scheduler,
                                   None if fresh else settings.amp.scaler, spec.model_ema, ctx=ctx)
    global_step, epoch = counters["global_step"], counters["epoch"]
    done = int(state.get("step_in_epoch", state.get("epoch_batches_done", 0)))
    window_state = state.get("epoch_progress")
    saver.load_state_dict(state.get("saver") or {}, source=path)
    _logger.info("Resumed from %s: epoch %d, step %d of it, global step %d%s.", path, epoch, done,
                 global_step, " (fresh optimizer and loss scaler: --no-resume-opt)" if fresh else "")
    stored_per_epoch = state.get("batches_per_epoch")
    if spec.unit == "epoch" and stored_per_epoch is not None and int(stored_per_epoch) != per_epoch:
        if done:
            _logger.info("An epoch now has %d steps, not %d: epoch %d restarts from its first batch.", per_epoch,
                         int(stored_per_epoch), epoch)
        global_step, done, window_state = epoch * per_epoch, 0, None
    if new_schedule is not None:
        _apply_schedule(spec, new_schedule, global_step)
        if global_step >= total_steps:
            _logger.info("--resume-override: the run has already trained %d %s and the new settings (%s) ask for "
                         "%d: nothing to train; its checkpoints and best files stay as they are.", position, unit,
                         _describe_changes(changed), spec.length)
        else:
            _logger.info("--resume-override: continuing with %s; the optimizer settings and the learning-rate "
                         "schedule follow the new values from global step %d.", _describe_changes(changed),
                         global_step)
    pending = state.get("pending_evaluation")
    return global_step, epoch, done, window_state, pending if isinstance(pending, Mapping) else None


def _comparable(value: Any) -> Any:
    """Argument values as a checkpoint stores them, with tuples and lists alike."""
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _comparable(v) for k, v in value.items()}
    return value


def _changed_arguments(names: Tuple[str, ...], stored: Mapping[str, Any], given: Any
                       ) -> List[Tuple[str, Any, Any]]:
    """(name, resumed run's value, this run's value) for each run-shaping argument both know and that differs."""
    now = plain_args(given) or {}
    return [(name, stored[name], now[name]) for name in names
            if name in stored and name in now and _comparable(stored[name]) != _comparable(now[name])]


def _describe_changes(changed: List[Tuple[str, Any, Any]]) -> str:
    return "; ".join(f"--{name.replace('_', '-')} {old!r}, now {new!r}" for name, old, new in changed)


def _schedule_snapshot(spec: TrainSpec) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """The optimizer settings and schedule this run built from its arguments, before a resume replaces them."""
    groups = [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
              for group in spec.optimizer.param_groups]
    return groups, copy.deepcopy(spec.scheduler.state_dict())


def _apply_schedule(spec: TrainSpec, snapshot: Tuple[List[Dict[str, Any]], Dict[str, Any]], global_step: int
                    ) -> None:
    """Put this run's optimizer settings and schedule back over the resumed ones (moments are kept) and move
    the schedule to ``global_step``: timm's schedules are placed by the loop, torch's are stepped there."""
    groups, schedule = snapshot
    for group, new in zip(spec.optimizer.param_groups, groups):
        group.update(copy.deepcopy(new))
    spec.scheduler.load_state_dict(copy.deepcopy(schedule))
    if not hasattr(spec.scheduler, "step_update"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "step() before optimizer.step()": replaying, not training
            for _ in range(global_step):
                spec.scheduler.step()


def _one_step(spec: TrainSpec, model: nn.Module, batch: Any, amp: AmpSettings, settings: LoopSettings,
              ctx: DistContext, global_step: int, last_checkpoint: Optional[str]
              ) -> Tuple[float, Mapping[str, torch.Tensor], int]:
    """Forward, loss check on every rank (a NaN never reaches the weights), backward, optimizer step."""
    try:
        with amp.autocast():
            loss, parts, images = spec.step(model, batch)
        value = check_finite(loss, global_step + 1, ctx, last_checkpoint)
        spec.optimizer.zero_grad(set_to_none=True)
        backward_step(loss, spec.optimizer, amp, settings.clip_grad, settings.clip_mode,
                      spec.clip_parameters if spec.clip_parameters is not None
                      else unwrap_model(spec.model).parameters())
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if is_out_of_memory(exc):
            size = spec.train_loader.batch_sampler.batch_size
            raise UserError(f"A batch of {size} images does not fit in {ctx.device} memory: use a smaller -b "
                            f"(e.g. -b {max(size // 2, 1)}) {spec.oom_hint}.") from None
        raise
    return value, parts, images


def _step_epoch_schedule(spec: TrainSpec, epoch_end: bool, epoch: int, ranking: Mapping[str, float]) -> None:
    """timm's per-epoch schedules (and plateau on the ranking metric) move at the end of each epoch."""
    if epoch_end and hasattr(spec.scheduler, "step_update"):
        spec.scheduler.step(epoch + 1, ranking.get(spec.metric))


def _log_evaluation(spec: TrainSpec, tag: int, ranking: Mapping[str, float], train_row: Mapping[str, float],
                    best: Any) -> None:
    _logger.info("%s %d: %s %.4g%s; train loss %.4f, %.0f img/s (model alone %.0f, %.0f%% waiting for data)",
                 "epoch" if spec.unit == "epoch" else "iter", tag, spec.metric, ranking[spec.metric],
                 " (new best)" if best else "", train_row.get("train_loss", float("nan")),
                 train_row["train_img_per_sec"], train_row["model_img_per_sec"], 100 * train_row["data_wait_share"])


def _lr(spec: TrainSpec) -> float:
    return spec.optimizer.param_groups[0]["lr"]


def _position_row(spec: TrainSpec, epoch: int, global_step: int) -> Dict[str, Any]:
    """Epoch tasks count rows by epoch (from 0, as timm), iteration tasks by iteration; both carry both."""
    return {"epoch": epoch, "iter": global_step} if spec.unit == "epoch" else {"iter": global_step, "epoch": epoch}


def _epoch_bar(ctx: DistContext, epoch: int, done: int, per_epoch: int, batch_size: int) -> ProgressBar:
    remaining = max(per_epoch - done, 0) * batch_size * ctx.world_size
    return ProgressBar(remaining, f"epoch {epoch}", ctx, enabled=sys.stderr.isatty())
