"""Task-agnostic training engine shared by classification, detection and segmentation.

A task builds its data, model, optimizer and scheduler and hands them, with the loss of one batch and
its evaluation, to the one loop (:mod:`fcvit.engine.loop`)::

    ctx = init_distributed(args.device); setup_logging(ctx, out); seed_everything(args.seed, ctx.rank)
    batches = SeekableBatches(EpochShardSampler(len(dataset), args.seed, ctx.rank, ctx.world_size), args.batch_size)
    spec = TrainSpec(name, model, optimizer, scheduler, train_loader(dataset, batches, workers, pin),
                     step=loss_of_one_batch, evaluate=scores, metric="top1", unit="epoch", length=epochs)
    result = run_training(spec, ctx, LoopSettings(output=out, amp=resolve_amp(ctx.device, args.amp)))

The loop resumes at the exact batch (with every rank's random state), stops cleanly on SIGTERM,
saves and evaluates on its cadence, ranks the best checkpoints, refuses a non-finite loss before it
reaches the weights and turns out-of-memory into one sentence. ``fcvit.tasks.classification.train``
is the fullest example; docs/architecture.md says how a new task plugs in.

API (``from fcvit.engine import ...``):

distributed
- ``DistContext``: rank, world_size, local_rank, device; ``.is_main``, ``.distributed``.
- ``init_distributed(device=None)``: join torchrun's group (NCCL on CUDA, gloo on CPU) or a world of one.
- ``all_reduce(t, ctx, op='sum'|'max'|'min')`` / ``all_reduce_mean(t, ctx)``: reduced copy of a metric tensor.
- ``barrier(ctx)``, ``broadcast_object(obj, ctx)``, ``gather_objects(obj, ctx)``, ``cleanup_distributed()``;
  ``run_distributed(main, args)``: ``main(args, ctx)`` inside the process group, always cleaned up.
- ``wrap_ddp(model, ctx)``: DDP when distributed, else the model; ``unwrap_model(m)``: strip DDP/compile.

checkpoints
- ``atomic_save(obj, path)`` / ``atomic_copy(src, dst)``: temp file + fsync + os.replace, never a half file.
- ``build_train_state(model, optimizer, scheduler, scaler, model_ema, epoch, global_step, args, ctx, **extra)``:
  one dict of tensors/plain values incl. RNG states (python, numpy, torch, cuda; every rank's when ``ctx``
  is distributed, so all ranks call it); ``epoch`` = completed epochs.
- ``restore_train_state(state, model, optimizer, scheduler, scaler, model_ema, ctx=ctx)``: load it all
  back (each rank its own RNG), returns {'epoch', 'global_step'}.
- ``load_train_state(path)``: read with weights_only=True (argparse.Namespace allowed), clear UserError.
- ``resolve_resume(resume, output_dir)``: 'auto' -> output_dir/last.pth.tar if present; a path; None.
- ``CheckpointSaver(output_dir, metric, mode='max'|'min', keep_best=k, ctx)``: ``.save(state, tag,
  metrics)`` writes last.pth.tar and keeps checkpoint-<tag>.pth.tar for the best k plus model_best.pth.tar
  (main rank only; metrics=None for iteration saves); ``.state_dict()``/``.load_state_dict()`` for resume.
- ``plain_args(args)``: a dict of plain values (stored under ``args``), safe for plain weights_only loading.
- ``LAST_NAME``, ``BEST_NAME``: 'last.pth.tar', 'model_best.pth.tar'.

control
- ``GracefulStop()``: context manager; SIGTERM/SIGINT set ``.requested``; ``.should_stop(ctx)`` agrees over ranks.
- ``check_finite(loss, step, ctx, checkpoint)``: float loss or ``NonFiniteLossError`` (a UserError naming
  the global step and the kept checkpoint); call before optimizer.step().

precision
- ``resolve_amp(device, enabled, dtype='auto'|'bfloat16'|'float16')`` -> ``AmpSettings`` with
  ``.autocast()``, ``.scaler`` (GradScaler for fp16 only), ``.describe()``.
- ``backward_step(loss, optimizer, amp, clip_grad=None, clip_mode='norm')``: backward, clip, step (scaler-aware).

data loader workers (``fcvit.engine.workers``)
- ``ignore_stop_signals``: ``worker_init_fn`` so SIGTERM/SIGINT reach only the main process (clean stop).
- ``user_errors_from_workers(loader)``: iterate a loader; a worker's UserError comes back as one sentence.

reproducibility
- ``seed_everything(seed, rank)``, ``get_rng_state()``, ``set_rng_state(state)``.

reporting
- ``setup_logging(ctx, output_dir)``: console INFO on the main rank only (+ output_dir/log.txt).
- ``SummaryLog(path, ctx, tensorboard_dir=None, step_key='epoch')``: ``.append(row)`` to summary.csv
  (flushed per row, widens the header if needed), ``.truncate(keep_below)`` on resume, optional TensorBoard.
- ``ProgressBar(total_images, desc, ctx)``: tqdm on the main rank, ETA and img/s; ``.update(n, **postfix)``.

the loop (``fcvit.engine.loop``)
- ``TrainSpec``: what a task gives; ``LoopSettings``: the shared run options; ``run_training(spec, ctx, settings)``.
- ``train_loader(dataset, batches, workers, pin_memory)`` / ``eval_loader(dataset, batch_size, ctx, workers)``.
- ``is_out_of_memory(exc)``: CUDA or CPU allocation failure.
"""
from .amp import AmpSettings, backward_step, resolve_amp
from .checkpoint import (
    BEST_NAME,
    LAST_NAME,
    CheckpointSaver,
    atomic_copy,
    atomic_save,
    build_train_state,
    load_train_state,
    plain_args,
    resolve_resume,
    restore_train_state,
)
from .control import GracefulStop, NonFiniteLossError, check_finite
from .distributed import (
    DistContext,
    all_reduce,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    convert_sync_batchnorm,
    distribute_bn,
    run_distributed,
    gather_objects,
    init_distributed,
    resolve_device,
    unwrap_model,
    wrap_ddp,
)
from .logs import ProgressBar, SummaryLog, setup_logging
from .loop import LoopSettings, TrainSpec, eval_loader, is_out_of_memory, run_training, train_loader
from .rng import get_rng_state, seed_everything, set_rng_state
from .workers import ignore_stop_signals, user_errors_from_workers

__all__ = [
    "AmpSettings", "backward_step", "resolve_amp",
    "BEST_NAME", "LAST_NAME", "CheckpointSaver", "atomic_copy", "atomic_save", "build_train_state",
    "load_train_state", "plain_args", "resolve_resume", "restore_train_state",
    "GracefulStop", "NonFiniteLossError", "check_finite",
    "DistContext", "all_reduce", "all_reduce_mean", "barrier", "broadcast_object", "cleanup_distributed", "run_distributed",
    "gather_objects",
    "init_distributed", "resolve_device", "unwrap_model", "wrap_ddp", "convert_sync_batchnorm", "distribute_bn",
    "LoopSettings", "TrainSpec", "eval_loader", "is_out_of_memory", "run_training", "train_loader",
    "ProgressBar", "SummaryLog", "setup_logging",
    "get_rng_state", "seed_everything", "set_rng_state",
    "ignore_stop_signals", "user_errors_from_workers",
]
