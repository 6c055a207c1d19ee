"""Models and images for the analysis tools: local checkpoints, timm's hub, or random weights (said loudly)."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import UserError

__all__ = ["hub_reachable", "create_analysis_model", "input_size_of", "image_to_tensor", "is_fcvit"]

_logger = logging.getLogger(__name__)

HF_HOST = "huggingface.co"


def hub_reachable(host: str = HF_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:443`` opens within ``timeout`` seconds (``HF_HUB_OFFLINE=1``: no at once).
    The look-up runs in a daemon thread because name resolution ignores socket time-outs."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    result = {"ok": False}

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, 443), timeout=timeout):
            result["ok"] = True

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result["ok"]


def _cached_hub_file(hf_hub_id: str) -> Optional[str]:
    """A copy of the model's weights already in the Hugging Face cache, if any."""
    from huggingface_hub import try_to_load_from_cache  # a dependency of timm

    names = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    found = (try_to_load_from_cache(hf_hub_id, name) for name in names)
    return next((path for path in found if isinstance(path, str) and os.path.isfile(path)), None)


def _create_pretrained(name: str, **kwargs) -> Tuple[nn.Module, str]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)  # None for a name without published weights
    hf_hub_id, url = getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)
    if not hf_hub_id and not url:
        raise UserError(f"timm has no published weights for {name}: pass a local file with --checkpoint.")
    if hf_hub_id and (cached := _cached_hub_file(hf_hub_id)):
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=cached), **kwargs)
        return model, f"pretrained {hf_hub_id} (from the local cache)"
    host, source = (HF_HOST, hf_hub_id) if hf_hub_id else (urlparse(url).hostname or url, url)
    if not hub_reachable(host):
        raise UserError(f"--pretrained needs to download {name} from {host}, which cannot be reached from this "
                        "machine: download the weights where there is a network and pass the file with --checkpoint.")
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # network and hub errors come in many types
        raise UserError(f"Downloading the pretrained weights of {name} failed ({str(exc).splitlines()[0][:160]}): "
                        "retry, or pass a local file with --checkpoint.") from None
    return model, f"pretrained {source}"


def read_once(path: str) -> Dict[str, Any]:
    """The checkpoint at ``path``, read once while unchanged: a command's model name, size and weights share it."""
    try:
        stat = os.stat(path)
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None  # read_checkpoint says what is wrong with the path
    return _read(path, version)


@functools.lru_cache(maxsize=2)  # a command loads at most two models
def _read(path: str, version: Any) -> Dict[str, Any]:
    from ..models.checkpoint import read_checkpoint

    return read_checkpoint(path)


def model_name(name: Optional[str], checkpoint: Optional[str], default: str) -> str:
    """``--model`` if given; else the checkpoint's (a hub folder's config.json, a run's stored model, or the FCViT
    variant its weights' shapes match, said in a log line), as ``fcvit predict`` infers it; else ``default``."""
    if name or not checkpoint:
        return name or default
    from ..models.checkpoint import model_name_for

    return model_name_for(read_once(checkpoint), default)


def create_analysis_model(name: str, checkpoint: Optional[str] = None, pretrained: bool = False, flag: str = "--",
                          **kwargs) -> Tuple[nn.Module, str]:
    """The model in eval mode and a phrase naming its weights; without ``checkpoint`` or ``pretrained`` (timm's hub
    or its cache) they are random and a warning says so. ``flag`` begins the option names in messages (``--vit-``)."""
    import timm

    from ..models import check_model_name, create_classifier

    check_model_name(name, allow_timm=True)
    if checkpoint and pretrained:
        raise UserError(f"Pass either {flag}checkpoint or {flag}pretrained, not both.")
    if checkpoint:
        model = create_classifier(name, checkpoint_path=checkpoint, checkpoint=read_once(checkpoint), **kwargs)
        weights = f"checkpoint {os.path.basename(checkpoint)}"
    elif pretrained:
        model, weights = _create_pretrained(name, **kwargs)
    else:
        model = timm.create_model(name, **kwargs)
        weights = "random, untrained weights"
        _logger.warning("No %scheckpoint or %spretrained given: %s has random weights, so its maps show an "
                        "untrained network, not what a trained model sees.", flag, flag, name)
    return model.eval(), weights


def is_fcvit(model: nn.Module) -> bool:
    from ..models.similarity import fcvit_blocks

    return bool(fcvit_blocks(model))


def input_size_of(model: nn.Module, img_size: Optional[int] = None,
                  image_size: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """(height, width) the image is resized to: a ViT's own size; for FCViT, the aspect ratio of ``image_size``
    (width, height), shorter side ``img_size`` (default: the model's 224), sides rounded to multiples of 32."""
    if getattr(getattr(model, "patch_embed", None), "img_size", None) is not None and not is_fcvit(model):
        return tuple(int(s) for s in model.patch_embed.img_size)
    if img_size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
        img_size = min(int(size[1]), int(size[2]))
    if image_size is None or not is_fcvit(model):
        return int(img_size), int(img_size)
    scale = img_size / min(image_size)
    return tuple(max(32, round(side * scale / 32) * 32) for side in reversed(image_size))  # as (height, width)


def image_to_tensor(image: Image.Image, model: nn.Module, size: Tuple[int, int]) -> torch.Tensor:
    """The whole image resized to ``size`` (not cropped: the maps are drawn stretched back over all of it) and
    normalised with the model's mean and std."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
    resized = image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    # left channels-last in memory: FCViT's kernels round differently on a contiguous NCHW input
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((x - mean[:, None, None]) / std[:, None, None]).unsqueeze(0)
