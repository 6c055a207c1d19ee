"""Distributed set-up from torchrun's environment (NCCL on CUDA, gloo on CPU, a world of one without it),
reductions, DDP and BatchNorm across ranks; every collective is a no-op in a world of one."""
from __future__ import annotations

import datetime
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, TypeVar

import torch
import torch.distributed as dist
from timm.utils import unwrap_model  # the plain module under DDP, ModelEma and torch.compile wrappers
from torch import nn

from ..errors import UserError

__all__ = ["DistContext", "init_distributed", "resolve_device", "all_reduce", "barrier", "broadcast_object",
           "gather_objects", "cleanup_distributed", "run_distributed", "wrap_ddp", "unwrap_model", "distribute_bn",
           "convert_sync_batchnorm", "batchnorm_statistics"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job and which device it drives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and logs to the console."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


T = TypeVar("T")


def resolve_device(requested: Optional[str], local_rank: int = 0) -> torch.device:
    """'auto' (CUDA if present), 'cpu', 'cuda' or 'cuda:N' as a device; an absent CUDA asked for is a UserError."""
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = torch.device("meta")  # refused below
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"Unknown device '{requested}': use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"Device '{requested}' was asked for but no CUDA GPU is visible: "
                            "pass --device cpu or run on a GPU machine.")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device: Optional[str] = None, timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group torchrun describes (each process on GPU ``LOCAL_RANK``), or a world of one."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": resolved} if backend == "nccl" else {}))
        _logger.debug("rank %d/%d joined with %s on %s", rank, world_size, backend, resolved)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def _active(ctx: DistContext) -> bool:
    return ctx.distributed and dist.is_available() and dist.is_initialized()


def all_reduce(tensor: torch.Tensor, ctx: DistContext, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` over ranks ('sum', 'max' or 'min') and return it; a copy, the input is kept."""
    out = tensor.detach().clone()
    if _active(ctx):
        out = out.to(ctx.device)
        dist.all_reduce(out, op=getattr(dist.ReduceOp, op.upper()))
    return out


def barrier(ctx: DistContext) -> None:
    if _active(ctx):
        dist.barrier(**({"device_ids": [ctx.device.index]} if ctx.device.type == "cuda" else {}))


def broadcast_object(obj: object, ctx: DistContext, src: int = 0) -> object:
    """Send a small picklable value (a path, a decision) from ``src`` to every rank."""
    if not _active(ctx):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: object, ctx: DistContext) -> list:
    """Every rank's value of a small picklable object, in rank order, on every rank."""
    if not _active(ctx):
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_distributed(main: Callable[[Any, DistContext], T], args: Any) -> T:
    """Call ``main(args, ctx)`` inside torchrun's process group (or a world of one), always leaving it."""
    ctx = init_distributed(args.device)
    try:
        return main(args, ctx)
    finally:
        cleanup_distributed()


def wrap_ddp(model: nn.Module, ctx: DistContext, broadcast_buffers: bool = True) -> nn.Module:
    """DDP around a model on ``ctx.device`` (the model itself in a world of one); ``broadcast_buffers`` (DDP's
    default) copies rank 0's BatchNorm statistics to every rank before each forward."""
    if not _active(ctx):
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    kwargs: dict = {}
    if not broadcast_buffers:  # newer PyTorch renamed the option (both still sync once, at construction)
        renamed = "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
        kwargs["forward_sync_buffers" if renamed else "broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def batchnorm_statistics(*models: Optional[nn.Module]) -> List[torch.Tensor]:
    """The running mean and variance of every BatchNorm (SyncBatchNorm included) in ``models``."""
    stats: List[torch.Tensor] = []
    for model in models:
        for module in unwrap_model(model).modules() if model is not None else ():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                stats.extend(t for t in (module.running_mean, module.running_var) if t is not None)
    return stats


@torch.no_grad()
def distribute_bn(model: nn.Module, ctx: DistContext, reduce: bool = True) -> int:
    """BatchNorm running statistics made equal on every rank (``--dist-bn``): their mean (``reduce``) or rank
    0's; returns how many tensors (0 in a world of one). DDP averages gradients, not these buffers."""
    stats = batchnorm_statistics(model)
    if not _active(ctx) or not stats:
        return 0
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in stats]).to(ctx.device)
    if reduce:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= ctx.world_size
    else:
        dist.broadcast(flat, src=0)
    for t, part in zip(stats, flat.split([t.numel() for t in stats])):
        t.copy_(part.view_as(t))
    return len(stats)


def convert_sync_batchnorm(model: nn.Module, ctx: DistContext, required: bool = True) -> nn.Module:
    """BatchNorm -> SyncBatchNorm under torchrun on GPUs, for every task; a world of one is left as it is. On
    CPU (gloo has no SyncBatchNorm) a request (``required``) is refused, a task's default keeps plain BN."""
    if not ctx.distributed:
        if required:
            _logger.info("--sync-bn: no effect with one process (as in the original).")
        return model
    if ctx.device.type != "cuda":
        if not required:
            return model
        raise UserError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on CPU or over gloo): "
                        "leave it out; --dist-bn reduce (the default) still averages BatchNorm statistics "
                        "over the processes after every epoch.")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process of the run died (gloo's closed
    connection, NCCL's or the store's errors): that process's own output says why."""
    signs = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport/")
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(s in str(exc) for s in signs))
