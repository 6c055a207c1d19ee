"""Task-agnostic training engine shared by classification, detection and segmentation: a task subclasses
:class:`~fcvit.engine.loop.Task` and hands it to :func:`~fcvit.engine.loop.run_training` with the run's
:class:`~fcvit.engine.loop.Settings`; the other modules are what every run needs (processes, checkpoints, stops,
mixed precision, random state, logs, loader workers)."""
from .amp import AmpSettings, backward_step, resolve_amp
from .checkpoint import (BEST_NAME, LAST_NAME, CheckpointSaver, atomic_copy, atomic_save, build_train_state,
                         load_train_state, plain_args, rank_value, resolve_resume, restore_train_state)
from .control import GracefulStop, NonFiniteLossError, check_finite, check_step
from .distributed import (DistContext, all_reduce, barrier, batchnorm_statistics, broadcast_object,
                          cleanup_distributed, convert_sync_batchnorm, distribute_bn, gather_objects, init_distributed,
                          resolve_device, run_distributed, unwrap_model, wrap_ddp)
from .logs import ProgressBar, SummaryLog, setup_logging
from .loop import Settings, Task, eval_loader, out_of_memory_as_user_error, run_training, train_loader
from .rng import get_rng_state, seed_everything, set_rng_state
from .workers import ignore_stop_signals, user_errors_from_workers

__all__ = [
    "AmpSettings", "backward_step", "resolve_amp",
    "BEST_NAME", "LAST_NAME", "CheckpointSaver", "atomic_copy", "atomic_save", "build_train_state",
    "load_train_state", "plain_args", "rank_value", "resolve_resume", "restore_train_state",
    "GracefulStop", "NonFiniteLossError", "check_finite", "check_step",
    "DistContext", "all_reduce", "barrier", "batchnorm_statistics", "broadcast_object",
    "cleanup_distributed", "convert_sync_batchnorm", "distribute_bn", "gather_objects", "init_distributed",
    "resolve_device", "run_distributed", "unwrap_model", "wrap_ddp",
    "ProgressBar", "SummaryLog", "setup_logging",
    "Settings", "Task", "eval_loader", "out_of_memory_as_user_error", "run_training", "train_loader",
    "get_rng_state", "seed_everything", "set_rng_state",
    "ignore_stop_signals", "user_errors_from_workers",
]
