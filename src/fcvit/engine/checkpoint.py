"""Training checkpoints that survive kills: atomic writes, ``last.pth.tar`` plus the best k
(``checkpoint-<tag>.pth.tar``, ``model_best.pth.tar``: timm's names), and the full resume state as tensors
and plain values, so every file loads with ``weights_only=True``."""
from __future__ import annotations

import filecmp
import glob
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_copy, atomic_save, remove_stale_temporaries
from ..models.checkpoint import UnreadableCheckpoint, extract_state_dict, load_weights
from ..models.checkpoint import read_checkpoint as load_train_state  # weights_only=True; a bad file is one sentence
from .distributed import DistContext, batchnorm_statistics, gather_objects, unwrap_model
from .rng import get_rng_state, set_rng_state

__all__ = ["LAST_NAME", "BEST_NAME", "atomic_save", "atomic_copy", "plain_args", "build_train_state",
           "restore_train_state", "rank_value", "load_train_state", "load_resume_state", "resolve_resume",
           "CheckpointSaver"]

_logger = logging.getLogger(__name__)

LAST_NAME = "last.pth.tar"
BEST_NAME = "model_best.pth.tar"


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def plain_args(args: Any) -> Optional[Dict[str, Any]]:
    """The run's arguments as plain values (objects become text), so the checkpoint loads with weights_only=True."""
    if args is None:
        return None
    items = dict(args) if isinstance(args, Mapping) else vars(args)
    return {str(k): _plain(v) for k, v in items.items() if k != "func"}


def _objects(optimizer: Any, scheduler: Any, scaler: Any) -> Dict[str, Any]:
    return {key: obj for key, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler))
            if obj is not None}


def build_train_state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
                      scaler: Any = None, model_ema: Optional[nn.Module] = None, epoch: int = 0,
                      global_step: int = 0, args: Any = None, ctx: Optional[DistContext] = None,
                      per_rank: Optional[Mapping[str, Any]] = None, **extra: Any) -> Dict[str, Any]:
    """Everything needed to continue a run exactly; ``epoch`` counts COMPLETED epochs. ``per_rank`` values, the RNG
    states and BatchNorm statistics are also stored as every rank's under ``<key>_per_rank`` with a distributed
    ``ctx`` (every rank calls this together), so that every rank continues exactly on resume."""
    own = dict(per_rank or {}, rng=get_rng_state())
    state: Dict[str, Any] = dict(own, state_dict=unwrap_model(model).state_dict(), epoch=int(epoch),
                                 global_step=int(global_step), args=plain_args(args))
    if ctx is not None and ctx.distributed:
        own["batchnorm"] = [t.cpu() for t in batchnorm_statistics(model, model_ema)]
        gathered = gather_objects(own, ctx)
        state.update({f"{key}_per_rank": [g[key] for g in gathered] for key in own})
    state.update({key: obj.state_dict() for key, obj in _objects(optimizer, scheduler, scaler).items()})
    if model_ema is not None:
        state["state_dict_ema"] = unwrap_model(model_ema).state_dict()
    state.update(extra)
    return state


def rank_value(state: Mapping[str, Any], key: str, ctx: Optional[DistContext] = None) -> Any:
    """This rank's own ``key`` of a checkpoint (``<key>_per_rank`` from as many processes), else the stored one."""
    per_rank = state.get(f"{key}_per_rank")
    world_size, rank = (ctx.world_size, ctx.rank) if ctx is not None else (1, 0)
    if isinstance(per_rank, (list, tuple)) and len(per_rank) == world_size:
        return per_rank[rank]
    return state.get(key)


def restore_train_state(state: Mapping[str, Any], model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                        scheduler: Any = None, scaler: Any = None, model_ema: Optional[nn.Module] = None,
                        restore_rng: bool = True, ctx: Optional[DistContext] = None) -> Dict[str, int]:
    """Load what :func:`build_train_state` stored into live objects; returns ``epoch`` and ``global_step``.
    Plain weights (no optimizer or schedule) load with a warning; weights that do not fit are a UserError."""
    target = unwrap_model(model)
    model_name = getattr(target, "default_cfg", {}).get("architecture", type(target).__name__)
    load_weights(target, extract_state_dict(state, use_ema=False), model_name)
    for key, obj in _objects(optimizer, scheduler, scaler).items():
        if state.get(key) is None:
            _logger.warning("Checkpoint has no %s state: it starts fresh.", key)
        else:
            obj.load_state_dict(state[key])
    if model_ema is not None:
        ema_state = state.get("state_dict_ema")
        if isinstance(ema_state, Mapping):
            load_weights(unwrap_model(model_ema), extract_state_dict({"state_dict": ema_state}), model_name)
        else:
            _logger.warning("Checkpoint has no EMA weights: EMA restarts from the model's weights.")
            unwrap_model(model_ema).load_state_dict(target.state_dict())
    world_size = ctx.world_size if ctx is not None else 1
    if world_size > 1:
        statistics, live = rank_value(state, "batchnorm", ctx), batchnorm_statistics(model, model_ema)
        if isinstance(statistics, (list, tuple)) and len(statistics) == len(live):
            with torch.no_grad():
                for tensor, saved in zip(live, statistics):
                    tensor.copy_(saved)
    rng = rank_value(state, "rng", ctx)
    if restore_rng and isinstance(rng, Mapping):
        per_rank = state.get("rng_per_rank")
        if (isinstance(per_rank, (list, tuple)) or world_size > 1) and rng is state.get("rng"):
            _logger.warning("The checkpoint was written by %s process(es), this run has %d: random streams "
                            "continue from rank 0's, so the run will not repeat the original exactly.",
                            len(per_rank) if isinstance(per_rank, (list, tuple)) else 1, world_size)
        set_rng_state(rng)
    return {"epoch": int(state.get("epoch", 0)), "global_step": int(state.get("global_step", 0))}


def resolve_resume(resume: Optional[str], output_dir: str | os.PathLike) -> Optional[str]:
    """``'auto'``: ``output_dir/last.pth.tar`` if it exists; a path that must exist; empty: start fresh."""
    if not resume:
        return None
    if resume == "auto":
        candidate = os.path.join(os.fspath(output_dir), LAST_NAME)
        return candidate if os.path.isfile(candidate) else None
    if not os.path.isfile(resume):
        raise UserError(f"--resume '{resume}' does not exist: pass a checkpoint file, 'auto', or leave it out.")
    return resume


def load_resume_state(path: str, resume: Optional[str]) -> Dict[str, Any]:
    """The state to resume from; under ``--resume auto`` an unreadable ``last.pth.tar`` (a full disk) is refused
    with the way to continue, and left in place."""
    try:
        return load_train_state(path)
    except UnreadableCheckpoint as exc:
        if resume != "auto":
            raise
        folder = os.path.dirname(os.path.abspath(path))
        kept = sorted(glob.glob(os.path.join(glob.escape(folder), "checkpoint-*.pth.tar")), key=os.path.getmtime)
        way = (f"continue from the newest best checkpoint with --resume {kept[-1]}, or start over with --resume ''"
               if kept else "restore it from a copy, or start over with --resume ''")
        raise UserError(f"--resume auto cannot continue the run in {folder}: its {LAST_NAME} {exc.problem}; "
                        f"{way} (the file is left as it is until a new one replaces it).") from None


@dataclass
class _Entry:
    tag: int
    value: float
    path: str


class CheckpointSaver:
    """Writes ``last.pth.tar`` each time and keeps the best ``keep_best`` files by ``metric`` (higher is
    better with ``mode`` 'max'). Only the main rank writes; the ranking travels in each file for a resume."""

    def __init__(self, output_dir: str | os.PathLike, metric: str, mode: str = "max", keep_best: int = 1,
                 ctx: Optional[DistContext] = None) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
        self.output_dir, self.metric, self.mode = os.fspath(output_dir), metric, mode
        self.keep_best = max(int(keep_best), 0)
        self.ctx = ctx or DistContext()
        self.best: List[_Entry] = []
        self._protected: set = set()  # best files of a resumed run that kept more of them
        if self.ctx.is_main and os.path.isdir(self.output_dir):
            removed = remove_stale_temporaries(self.output_dir)  # what a killed writer left
            if removed:
                _logger.info("Removed %d unfinished temporary file(s) a stopped run left in %s.", removed,
                             self.output_dir)

    @property
    def last_path(self) -> str:
        return os.path.join(self.output_dir, LAST_NAME)

    @property
    def best_path(self) -> str:
        return os.path.join(self.output_dir, BEST_NAME)

    def best_value(self) -> Optional[float]:
        return self.best[0].value if self.best else None

    def state_dict(self) -> Dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode,
                "best": [{"tag": e.tag, "value": e.value, "path": os.path.basename(e.path)} for e in self.best]}

    def load_state_dict(self, state: Mapping[str, Any], source: Optional[str] = None) -> None:
        """Continue the resumed run's ranking; its best files are never deleted because this run ranks by
        another metric or keeps fewer. Copies of ``source`` (this folder's ``last.pth.tar``) to its best
        files that a stop cut short are completed first."""
        if source is not None and self.ctx.is_main:
            self._complete_copies(state.get("copies"), source)
        stored = [_Entry(int(e["tag"]), float(e["value"]), os.path.join(self.output_dir, e["path"]))
                  for e in state.get("best", []) if os.path.exists(os.path.join(self.output_dir, e["path"]))]
        names = ", ".join(os.path.basename(e.path) for e in stored)
        if stored and (state.get("metric") != self.metric or state.get("mode") != self.mode):
            if self.ctx.is_main:
                _logger.info("The resumed run ranked its best checkpoints by %s (%s), this one by %s (%s): a new "
                             "ranking starts; %s stay as they are.", state.get("metric"), state.get("mode"),
                             self.metric, self.mode, names)
            return
        self.best = stored[:self.keep_best]
        if len(stored) > self.keep_best:  # the user asked to keep fewer from now on, not to delete these
            self._protected = {e.path for e in stored}
            if self.ctx.is_main:
                _logger.info("--keep-best %d keeps fewer best checkpoints than the resumed run (%d): its %s stay on "
                             "disk, never removed by this run's ranking.", self.keep_best, len(stored), names)

    def _complete_copies(self, copies: Any, source: str) -> None:
        """Finish the best copies a stop cut short: the resumed ``last.pth.tar`` IS that best checkpoint."""
        if not isinstance(copies, Mapping) or not os.path.isfile(self.last_path) \
                or not os.path.samefile(source, self.last_path):
            return
        targets = [os.path.join(self.output_dir, str(copies["entry"]))]
        for target in targets + [self.best_path] if copies.get("best") else targets:
            if not os.path.isfile(target) or not filecmp.cmp(source, target, shallow=False):
                atomic_copy(source, target)
                _logger.info("Completed the copy of %s to %s that a stop interrupted.", LAST_NAME,
                             os.path.basename(target))

    def save(self, state: Dict[str, Any], tag: int, metrics: Optional[Mapping[str, float]] = None) -> Optional[str]:
        """Write ``state`` as ``last`` and, if ``metrics[self.metric]`` ranks in the best k, as
        ``checkpoint-<tag>``; returns ``model_best.pth.tar``'s path when it became the new best."""
        if not self.ctx.is_main:
            return None
        value = (metrics or {}).get(self.metric)
        value = float(value) if value is not None and math.isfinite(float(value)) else None
        entry, ranking, dropped = None, list(self.best), []
        if value is not None and self.keep_best > 0 and (len(self.best) < self.keep_best or (
                value > self.best[-1].value if self.mode == "max" else value < self.best[-1].value)):
            # the ranking after this save, stored inside the file so a resume keeps it
            entry = _Entry(int(tag), value, os.path.join(self.output_dir, f"checkpoint-{tag}.pth.tar"))
            ranking = sorted([e for e in self.best if e.tag != entry.tag] + [entry], key=lambda e: e.value,
                             reverse=self.mode == "max")
            dropped, ranking = ranking[self.keep_best:], ranking[:self.keep_best]
        new_best = entry is not None and ranking[0] is entry
        previous, self.best = self.best, ranking
        state["saver"] = self.state_dict()
        if entry is not None:  # what this file is about to be copied to, so a resume can finish the copies
            state["saver"]["copies"] = {"entry": os.path.basename(entry.path), "best": new_best}
        if value is not None:
            state.setdefault("metric", value)
        try:
            atomic_save(state, self.last_path)
            if entry is not None:
                atomic_copy(self.last_path, entry.path)
            if new_best:
                atomic_copy(self.last_path, self.best_path)
        except BaseException:
            self.best = previous
            raise
        for old in dropped:
            if old.path in self._protected:
                _logger.info("%s leaves the best %d but stays: the resumed run kept it.",
                             os.path.basename(old.path), self.keep_best)
            elif old.path != entry.path and os.path.exists(old.path):
                os.remove(old.path)
        return self.best_path if new_best else None
