"""Whole-image evaluation: mIoU, mAcc and aAcc over a split, shared by training and ``fcvit segment eval``."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ...engine import AmpSettings, DistContext, ProgressBar, all_reduce, unwrap_model
from ...engine.workers import user_errors_from_workers
from ...errors import UserError
from ...models import extract_state_dict, load_weights, read_checkpoint
from ...models.checkpoint import expect_kind
from .metrics import ConfusionMatrix
from .model import SemanticFPN, create_segmenter

__all__ = ["CONFIG_KEY", "stored_config", "infer_logits", "evaluate", "load_segmenter"]

_logger = logging.getLogger(__name__)

CONFIG_KEY = "model_config"  # create_segmenter()'s arguments; detection stores build_mask_rcnn()'s under the same key
_LEGACY_CONFIG_KEY = "segmenter"  # checkpoints written before the tasks shared one key


def infer_logits(model: nn.Module, image: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
    """Class scores for a batch of (resized, normalised) images, resized bilinearly to ``output_size``."""
    logits = model(image)
    return F.interpolate(logits.float(), size=tuple(output_size), mode="bilinear", align_corners=False)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, ctx: Optional[DistContext] = None,
             amp: Optional[AmpSettings] = None, progress: bool = True) -> Dict[str, Any]:
    """Scores over everything ``loader`` yields on all ranks (confusion matrices summed across ranks)."""
    ctx = ctx or DistContext()
    net = unwrap_model(model)
    if ctx.distributed and dist.is_initialized():
        # every rank scores with rank 0's BatchNorm statistics (the ones its checkpoint holds); without
        # SyncBN each rank's running statistics drift apart after the last training forward
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)
    was_training = net.training
    net.eval()
    confusion = ConfusionMatrix(num_classes, device=ctx.device)
    started = time.perf_counter()
    with ProgressBar(len(loader), "eval", ctx, enabled=progress) as bar:
        for image, mask in user_errors_from_workers(loader):
            image = image.to(ctx.device, non_blocking=True)
            mask = mask.to(ctx.device, non_blocking=True)
            with amp.autocast() if amp is not None else contextlib.nullcontext():
                logits = infer_logits(net, image, mask.shape[-2:])
            confusion.update(logits.argmax(dim=1), mask)
            bar.update(image.shape[0])
    confusion.matrix = all_reduce(confusion.matrix, ctx, "sum")
    net.train(was_training)
    scores = confusion.compute()
    scores["eval_time"] = time.perf_counter() - started
    return scores


def stored_config(checkpoint: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """``create_segmenter()``'s arguments as training stored them (also from checkpoints of earlier versions)."""
    config = checkpoint.get(CONFIG_KEY, checkpoint.get(_LEGACY_CONFIG_KEY))
    return config if isinstance(config, Mapping) else None


def load_segmenter(path: str | os.PathLike, device: torch.device | str = "cpu") -> Tuple[SemanticFPN, Dict[str, Any]]:
    """Rebuild a Semantic FPN from a checkpoint written by ``fcvit segment train``; returns (model, checkpoint)."""
    checkpoint = read_checkpoint(path)
    expect_kind(checkpoint, ("segmenter",), f"Checkpoint '{path}'")
    config = stored_config(checkpoint)
    if not isinstance(config, Mapping):
        raise UserError(f"Checkpoint '{path}' has no '{CONFIG_KEY}' entry, so it was not written by "
                        "'fcvit segment train': pass a segmentation checkpoint (last.pth.tar or model_best.pth.tar).")
    config = dict(config, backbone_kwargs=dict(config.get("backbone_kwargs") or {}))
    model = create_segmenter(**config)
    load_weights(model, extract_state_dict(checkpoint, use_ema=False), f"Semantic FPN ({config['backbone']})")
    return model.to(device).eval(), checkpoint
