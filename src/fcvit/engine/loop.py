"""The one training loop: a :class:`Task` says what is its own; the loop does what every run needs, in epochs or
iterations: the exact data position (a resumed run repeats the uninterrupted one), evaluations, saves and stops."""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.samplers import ShardSampler
from ..errors import UserError
from ..models.checkpoint import checkpoint_args
from .amp import AmpSettings, backward_step
from .checkpoint import (CheckpointSaver, build_train_state, load_resume_state, plain_args, rank_value,
                         resolve_resume, restore_train_state)
from .control import GracefulStop, check_step
from .distributed import DistContext, all_reduce, barrier, wrap_ddp
from .logs import ProgressBar, SummaryLog, rate
from .workers import ignore_stop_signals, user_errors_from_workers

__all__ = ["Task", "Settings", "run_training", "out_of_memory_as_user_error", "train_loader", "eval_loader"]

_logger = logging.getLogger(__name__)

#: (loss, {part name: value} logged beside it, images in the batch on this rank)
StepOutput = Tuple[torch.Tensor, Mapping[str, torch.Tensor], int]


class Task:
    """A task's objects, the loss of one batch and its evaluation; its loader's batch sampler seeks like
    :class:`fcvit.data.samplers.SeekableBatches`, and checkpoints rank by ``metric`` (``mode`` 'max': higher)."""

    describe = ""  # the start banner's detail
    oom_hint = "or --amp"  # what else frees memory, after a smaller -b
    metric_scale = 1.0  # the ranking metric times this in logs (100: a fraction such as COCO's AP shown in %)
    model_ema: Optional[nn.Module] = None
    clip_parameters: Optional[List[nn.Parameter]] = None  # None: the optimizer's

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, train_loader: DataLoader,
                 name: str = "Training", metric: str = "loss", mode: str = "max", unit: str = "epoch",
                 length: int = 1) -> None:
        if unit not in ("epoch", "iter"):
            raise ValueError(f"unit must be 'epoch' or 'iter', not {unit!r}")
        self.model, self.optimizer, self.scheduler, self.train_loader = model, optimizer, scheduler, train_loader
        self.name, self.metric, self.mode, self.unit, self.length = name, metric, mode, unit, length

    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        """The loss of one batch (run under autocast), with ``model`` the DDP-wrapped training model."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> Tuple[Dict[str, float], Dict[str, Any]]:
        """(the ranking, which holds ``metric``; the fields of the summary row)."""
        raise NotImplementedError

    def checkpoint_fields(self) -> Dict[str, Any]:
        """What every checkpoint carries besides the training state (architecture, classes)."""
        return {}

    def check_resume(self, state: Mapping[str, Any]) -> None:
        """Refuse a checkpoint of another model or data."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of each data epoch (also of a resumed one)."""

    def after_update(self, model: nn.Module, global_step: int) -> None:
        """After each optimizer step (an EMA update)."""

    def before_evaluate(self, model: nn.Module) -> None:
        """Before each evaluation (BatchNorm statistics made equal over ranks)."""


@dataclass
class Settings:
    """How the user runs it, from the task's flags. ``run_shaping`` maps the ``args`` whose change makes a resumed
    run another run to their flags: a change is refused unless ``resume_override`` (never for ``new_run_only``)."""

    output: str
    amp: AmpSettings
    args: Mapping[str, Any] = field(default_factory=dict)
    run_shaping: Mapping[str, str] = field(default_factory=dict)
    new_run_only: Tuple[str, ...] = ()
    resume: Optional[str] = "auto"
    resume_override: bool = False
    resume_optimizer: bool = True
    start_epoch: Optional[int] = None
    keep_best: int = 1
    eval_interval: int = 1  # epochs or iterations; 0: only at the end
    save_interval: int = 0  # extra saves of last.pth.tar every N steps (of an epoch, or iterations)
    log_interval: int = 50
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    tensorboard: bool = False
    broadcast_buffers: bool = True


def train_loader(dataset: Dataset, batches: Sampler, workers: int, pin_memory: bool,
                 collate_fn: Optional[Callable] = None) -> DataLoader:
    """The loader the loop trains from: workers ignore stop signals (SIGTERM to the process group stops the run
    cleanly), and a private generator, so that starting an epoch draws nothing from the restored random state."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=collate_fn, persistent_workers=workers > 0, generator=torch.Generator(),
                      worker_init_fn=ignore_stop_signals if workers else None)


def eval_loader(dataset: Dataset, batch_size: int, ctx: DistContext, workers: int, pin_memory: bool = True,
                collate_fn: Optional[Callable] = None) -> DataLoader:
    """The evaluation loader of every task: each sample exactly once over all ranks, in file order."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
                      num_workers=workers, pin_memory=pin_memory and ctx.device.type == "cuda", collate_fn=collate_fn,
                      worker_init_fn=ignore_stop_signals if workers else None)


@contextlib.contextmanager
def out_of_memory_as_user_error(batch_size: int, device: torch.device, hint: str = "or --amp") -> Iterator[None]:
    """Running out of memory (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError; training or evaluation, every
    task) becomes one sentence with what to change."""
    try:
        yield
    except RuntimeError as exc:
        if not (isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)
                or "out of memory" in str(exc)):
            raise
        raise UserError(f"A batch of {batch_size} images does not fit in {device} memory: use a smaller -b "
                        f"(e.g. -b {max(batch_size // 2, 1)}), {hint}.") from None


class _Window:
    """Sums over the steps since the last summary row, and the lr the row reports; saved mid-window."""

    def __init__(self, saved: Optional[Mapping[str, Any]] = None) -> None:
        saved = dict(saved or {})
        self.steps, self.images = int(saved.pop("steps", 0)), int(saved.pop("images", 0))
        self.seconds, self.data_seconds = float(saved.pop("seconds", 0.0)), float(saved.pop("data_seconds", 0.0))
        self.lr = float(saved.pop("lr", float("nan")))
        self.losses: Dict[str, float] = defaultdict(float, {k: float(v) for k, v in saved.items()})

    def state(self) -> Dict[str, float]:
        return dict(self.losses, steps=self.steps, images=self.images, seconds=self.seconds,
                    data_seconds=self.data_seconds, lr=self.lr)

    def add(self, loss: float, parts: Mapping[str, torch.Tensor], images: int, lr: float) -> None:
        self.steps, self.images, self.lr = self.steps + 1, self.images + images, lr
        self.losses["loss"] += loss
        for name, part in parts.items():
            self.losses[name] += float(part.detach())

    def row(self, ctx: DistContext) -> Dict[str, float]:
        """Mean losses over ranks, throughput with and without waiting for data, the data-wait share."""
        names = sorted(self.losses)
        means = torch.tensor([self.losses[k] / max(self.steps, 1) for k in names], dtype=torch.float64)
        if names:
            means = (all_reduce(means.to(ctx.device), ctx) / ctx.world_size).cpu()
        row: Dict[str, float] = {("train_loss" if k == "loss" else k): float(v) for k, v in zip(names, means)}
        seconds = max(self.seconds, 1e-9)
        row.update(train_img_per_sec=self.images / seconds,
                   model_img_per_sec=self.images / max(self.seconds - self.data_seconds, 1e-9),
                   data_wait_share=self.data_seconds / seconds, seconds=self.seconds)
        return row


class _Schedule:
    """timm's schedulers (moved per update and per epoch) and torch's (one step per update) behind one interface."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler, self.timm = scheduler, hasattr(scheduler, "step_update")

    def update(self, global_step: int) -> None:
        if self.timm:  # per-update values (a no-op for per-epoch schedules)
            self.scheduler.step_update(num_updates=global_step)
        else:
            self.scheduler.step()

    def epoch_end(self, epoch: int, metric: Optional[float]) -> None:
        if self.timm:  # per-epoch values (and plateau on the ranking metric)
            self.scheduler.step(epoch + 1, metric)

    def place(self, epoch: int, global_step: int, replay: bool) -> None:
        """At a resumed position: timm's are set from it; torch's is already there, unless ``replay`` (its state was
        rebuilt for new settings)."""
        if self.timm and global_step:
            self.scheduler.step(epoch)
            self.scheduler.step_update(num_updates=global_step)
        elif not self.timm and replay:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "step() before optimizer.step()": replaying, not training
                for _ in range(global_step):
                    self.scheduler.step()


def _comparable(value: Any) -> Any:
    """Argument values as a checkpoint stores them, with tuples and lists alike."""
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _comparable(v) for k, v in value.items()}
    return value


def run_training(task: Task, ctx: DistContext, settings: Settings) -> Dict[str, Any]:
    """Train ``task`` to its end or to a stop request; returns the outputs and the last evaluation."""
    return _Run(task, ctx, settings).run()


class _Run:
    """One run: its position (global step, data epoch, batches of it done) and the open summary window."""

    def __init__(self, task: Task, ctx: DistContext, settings: Settings) -> None:
        self.task, self.ctx, self.settings = task, ctx, settings
        sampler = task.train_loader.batch_sampler
        self.per_epoch, self.batch_size = sampler.batches_per_epoch, sampler.batch_size
        if self.per_epoch < 1:
            raise UserError("The training data gives no full batch on each process: use a smaller -b or more images.")
        self.total = task.length * self.per_epoch if task.unit == "epoch" else task.length
        out = settings.output
        self.saver = CheckpointSaver(out, task.metric, task.mode, settings.keep_best, ctx)
        self.summary = SummaryLog(os.path.join(out, "summary.csv"), ctx, step_key=task.unit,
                                  tensorboard_dir=os.path.join(out, "tensorboard") if settings.tensorboard else None)
        self.schedule = _Schedule(task.scheduler)
        self.units = "iterations" if task.unit == "iter" else "epochs"
        # wrapped before a resume: DDP copies rank 0's buffers once, and each rank restores its own after that
        self.model = wrap_ddp(task.model, ctx, broadcast_buffers=settings.broadcast_buffers)
        self.step = self.epoch = self.done = 0
        self.window, self.ranking = _Window(), {}
        self.bar = ProgressBar(0, "", ctx, enabled=False)
        self.log_start, self.log_images = time.perf_counter(), 0

    def run(self) -> Dict[str, Any]:
        pending = self.resume()
        self.banner(pending)
        stop = GracefulStop()
        try:
            with stop:
                if pending is not None:  # a stop came where an evaluation was due: it runs first
                    self.epoch, self.done = int(pending["epoch"]), int(pending["done"])
                    self.evaluate()
                interrupted = self.train(stop)
        finally:
            self.bar.close()
            self.summary.close()
        barrier(self.ctx)
        if interrupted and self.ctx.is_main:
            _logger.warning("Stopped by %s at step %d; %s holds it: rerun the same command (--resume auto) to "
                            "continue.", stop.signal_name or "a signal on another rank", self.step,
                            self.saver.last_path)
        return {"output": self.settings.output, "last": self.saver.last_path,
                "best": self.saver.best_path if self.saver.best else None, "best_value": self.saver.best_value(),
                "metric": self.task.metric, "metrics": self.ranking, "interrupted": interrupted,
                "global_step": self.step, "epoch": self.epoch}

    def train(self, stop: GracefulStop) -> bool:
        """Steps until the end (False) or an agreed stop request (True)."""
        batches, started = self._batches(), None
        tick = time.perf_counter()
        while self.step < self.total:
            epoch, self.done, batch = next(batches)
            if epoch != started or self.bar.closed:
                self.bar.close()
                remaining = (self.per_epoch - self.done + 1) * self.batch_size * self.ctx.world_size
                self.bar = ProgressBar(remaining, f"epoch {epoch}", self.ctx, enabled=sys.stderr.isatty())
            if epoch != started:
                self.task.on_epoch_start(epoch)
            started = self.epoch = epoch
            self.window.data_seconds += time.perf_counter() - tick
            stop_now = self.train_step(batch, stop)
            self.window.seconds += time.perf_counter() - tick
            if self.boundary(stop_now):
                return True
            tick = time.perf_counter()
        return False

    def _batches(self) -> Iterator[Tuple[int, int, Any]]:
        """(data epoch, its batches done after this one, batch) forever, from the current position."""
        sampler, epoch, done = self.task.train_loader.batch_sampler, self.epoch, self.done
        while True:
            if done >= self.per_epoch:
                epoch, done = epoch + 1, 0
            sampler.set_position(epoch, done)
            for batch in user_errors_from_workers(self.task.train_loader):
                done += 1
                yield epoch, done, batch

    def train_step(self, batch: Any, stop: GracefulStop) -> bool:
        """Forward, the agreed loss check and stop request (a NaN never reaches the weights), backward, update."""
        task, settings = self.task, self.settings
        task.model.train()
        lr = task.optimizer.param_groups[0]["lr"]  # the one this step trains with
        last = self.saver.last_path if os.path.isfile(self.saver.last_path) else None  # named if the loss fails
        with out_of_memory_as_user_error(self.batch_size, self.ctx.device, task.oom_hint):
            with settings.amp.autocast():
                loss, parts, images = task.step(self.model, batch)
            value, stop_now = check_step(loss, self.step + 1, stop, self.ctx, last)
            task.optimizer.zero_grad(set_to_none=True)
            backward_step(loss, task.optimizer, settings.amp, settings.clip_grad, settings.clip_mode,
                          task.clip_parameters)
        self.step += 1
        self.schedule.update(self.step)
        task.after_update(task.model, self.step)
        images *= self.ctx.world_size
        self.window.add(value, parts, images, lr)  # a row reports the lr its last step trained with
        self.bar.update(images, loss=value, lr=lr)
        self.log(value, lr, images)
        return stop_now

    def log(self, loss: float, lr: float, images: int) -> None:
        self.log_images += images
        every = self.settings.log_interval
        if every and self.step % every == 0:
            now = time.perf_counter()
            _logger.info("epoch %d [%d/%d]: loss %.4g, lr %.3e, %s img/s (step %d)", self.epoch, self.done,
                         self.per_epoch, loss, lr, rate(self.log_images / max(now - self.log_start, 1e-9)), self.step)
            self.log_start, self.log_images = now, 0

    def boundary(self, stop_now: bool) -> bool:
        """The one cadence decision after each step: evaluate, close an epoch's row, or save; then stop if asked."""
        by_epoch, epoch_end = self.task.unit == "epoch", self.done >= self.per_epoch
        every, interval = self.settings.eval_interval, self.settings.save_interval
        if self.step >= self.total:
            due = True
        elif by_epoch:
            due = epoch_end and every > 0 and (self.epoch + 1) % every == 0
        else:
            due = every > 0 and self.step % every == 0
        if due and stop_now:  # an evaluation can outlast the notice before a kill: save, evaluate on resume
            self.save(self.step, with_window=True, pending=True)
        elif due:
            self.evaluate()
        elif by_epoch and epoch_end:
            self.bar.close()
            self.write_row({}, self.ranking)
            self.save(self.epoch)
        elif stop_now or (interval and (self.done if by_epoch else self.step) % interval == 0):
            self.save(self.step, with_window=True)
        return stop_now

    def evaluate(self) -> None:
        """Evaluate, write the summary row, then rank and save (a kill while saving keeps the row)."""
        task = self.task
        self.bar.close()
        task.before_evaluate(task.model)
        scores, eval_row = task.evaluate(task.model)
        train_row = self.write_row(eval_row, scores)
        tag = self.epoch if task.unit == "epoch" else self.step
        best = self.saver.save(self.state(), tag, {task.metric: scores[task.metric]})
        self.ranking = scores
        _logger.info("%s %d: %s %.4g%s%s; train loss %.4f, %s img/s (model alone %s, %.0f%% waiting for data)",
                     task.unit, tag, task.metric, scores[task.metric] * task.metric_scale,
                     "%" if task.metric_scale == 100 else "", " (new best)" if best else "",
                     train_row.get("train_loss", float("nan")), rate(train_row["train_img_per_sec"]),
                     rate(train_row["model_img_per_sec"]), 100 * train_row["data_wait_share"])

    def write_row(self, fields: Mapping[str, Any], ranking: Mapping[str, float]) -> Dict[str, float]:
        """The summary row of the window that ends here; an epoch's end moves timm's per-epoch schedules."""
        train_row = self.window.row(self.ctx)
        if self.done >= self.per_epoch:
            self.schedule.epoch_end(self.epoch, ranking.get(self.task.metric))
        position = {"epoch": self.epoch, "iter": self.step}
        position = {self.task.unit: position[self.task.unit], **position}  # the run's unit is the first column
        self.summary.append(dict(position, lr=self.window.lr, **train_row, **fields))
        self.window = _Window()
        return train_row

    def save(self, tag: int, with_window: bool = False, pending: bool = False) -> None:
        self.saver.save(self.state(with_window, pending), tag, None)

    def state(self, with_window: bool = False, pending: bool = False) -> Dict[str, Any]:
        """``epoch``: epochs of data completed; ``step_in_epoch``: batches of the next one done;
        ``pending_evaluation``: where the evaluation a stop put off belongs (done first on resume)."""
        task = self.task
        epoch, done = (self.epoch + 1, 0) if self.done >= self.per_epoch else (self.epoch, self.done)
        return build_train_state(
            task.model, task.optimizer, task.scheduler, self.settings.amp.scaler, task.model_ema, epoch=epoch,
            global_step=self.step, args=self.settings.args, ctx=self.ctx,
            per_rank={"epoch_progress": self.window.state() if with_window else None}, step_in_epoch=done,
            task=task.name, batches_per_epoch=self.per_epoch,
            pending_evaluation={"epoch": self.epoch, "done": self.done} if pending else None,
            **task.checkpoint_fields())

    def banner(self, pending: Optional[Mapping[str, Any]]) -> None:
        task, ctx, unit = self.task, self.ctx, self.units
        if self.step >= self.total and pending is None:
            _logger.info("Already trained for %d of %d %s: nothing to do.",
                         self.step if task.unit == "iter" else self.epoch, task.length, unit)
        length = f"{task.length} epochs of {self.per_epoch} steps" if task.unit == "epoch" else f"{task.length} {unit}"
        _logger.info("%s%s: %s, global batch %d (%d per process x %d process(es) on %s), %s.", task.name,
                     f" ({task.describe})" if task.describe else "", length, self.batch_size * ctx.world_size,
                     self.batch_size, ctx.world_size, ctx.device, self.settings.amp.describe())
        if pending is not None:
            _logger.info("Evaluating what the interrupted run had trained (%s %d) before continuing.",
                         "epoch" if task.unit == "epoch" else "iteration",
                         int(pending["epoch"]) if task.unit == "epoch" else self.step)

    def resume(self) -> Optional[Mapping[str, Any]]:
        """Continue the run in ``--resume``: its state and position; returns the evaluation a stop put off."""
        task, s, ctx = self.task, self.settings, self.ctx
        path = resolve_resume(s.resume, s.output)
        changed, pending, replay = [], None, False
        if path:
            state = load_resume_state(path, s.resume)
            task.check_resume(state)  # another task's checkpoint is refused before its settings are compared
            changed = self._changes(state, path)
            groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in task.optimizer.param_groups]
            schedule = copy.deepcopy(task.scheduler.state_dict())  # this run's, before the resumed run's replace them
            fresh = not s.resume_optimizer
            restore_train_state(state, task.model, None if fresh else task.optimizer, task.scheduler,
                                None if fresh else s.amp.scaler, task.model_ema, ctx=ctx)
            if changed:  # --resume-override: the optimizer settings and schedule of the new values (moments kept)
                for group, new in zip(task.optimizer.param_groups, groups):
                    group.update(new)
                task.scheduler.load_state_dict(schedule)
                replay = True
            self.saver.load_state_dict(state.get("saver") or {}, source=path)
            self.step, self.epoch = int(state.get("global_step", 0)), int(state.get("epoch", 0))
            self.done = int(state.get("step_in_epoch", state.get("epoch_batches_done", 0)))
            self.window = _Window(rank_value(state, "epoch_progress", ctx))
            pending = state.get("pending_evaluation")
            _logger.info("Resumed from %s: epoch %d, step %d of it, global step %d%s.", path, self.epoch, self.done,
                         self.step, " (fresh optimizer and loss scaler: --no-resume-opt)" if fresh else "")
            stored = state.get("batches_per_epoch")
            if task.unit == "epoch" and stored is not None and int(stored) != self.per_epoch:
                if self.done:
                    _logger.info("An epoch now has %d steps, not %d: epoch %d restarts from its first batch.",
                                 self.per_epoch, int(stored), self.epoch)
                self.step, self.done, self.window = self.epoch * self.per_epoch, 0, _Window()
        if s.start_epoch is not None and s.start_epoch != self.epoch:  # the original's rule: it always wins
            if path:
                _logger.info("--start-epoch %d overrides the resumed epoch %d.", s.start_epoch, self.epoch)
            self.epoch, self.done, self.window = s.start_epoch, 0, _Window()
            self.step = self.epoch * self.per_epoch
        self.summary.truncate(self.epoch if task.unit == "epoch" else self.step + 1)  # rows about to be rewritten
        self.schedule.place(self.epoch, self.step, replay)
        if changed:
            position = self.step if task.unit == "iter" else self.epoch
            if self.step >= self.total:
                _logger.info("--resume-override: the run has already trained %d %s and the new settings (%s) ask "
                             "for %d: nothing to train; its checkpoints and best files stay as they are.", position,
                             self.units, self._describe(changed), task.length)
            else:
                _logger.info("--resume-override: continuing with %s; the optimizer settings and the learning-rate "
                             "schedule follow the new values from global step %d.", self._describe(changed), self.step)
        return pending if isinstance(pending, Mapping) else None

    def _changes(self, state: Mapping[str, Any], path: str) -> List[Tuple[str, Any, Any]]:
        """(name, resumed run's value, this run's) of the run-shaping arguments that differ; refused unless
        ``resume_override`` (and even then for the new-run-only ones)."""
        s, stored, now = self.settings, checkpoint_args(state), plain_args(self.settings.args) or {}
        changed = [(name, stored[name], now[name]) for name in s.run_shaping
                   if name in stored and name in now and _comparable(stored[name]) != _comparable(now[name])]
        fixed = [c for c in changed if c[0] in s.new_run_only]
        if fixed:
            raise UserError(f"The run in '{path}' was started with other settings ({self._describe(fixed)}) that "
                            "only a new run can take: pass its values to continue it, or --resume '' or another "
                            "--output to start a new run.")
        if changed and not s.resume_override:
            position = int(state.get("global_step" if self.task.unit == "iter" else "epoch", 0))
            past = (f"; it has already trained {position} {self.units}, the new settings ask for {self.task.length}"
                    if position >= self.task.length else "")
            raise UserError(f"The run in '{path}' was started with other settings ({self._describe(changed)}){past}: "
                            "pass its values to continue it, add --resume-override to continue with the new ones, "
                            "or choose another --output.")
        return changed

    def _describe(self, changed: Iterable[Tuple[str, Any, Any]]) -> str:
        return "; ".join(f"{self.settings.run_shaping[name]} {old!r}, now {new!r}" for name, old, new in changed)
