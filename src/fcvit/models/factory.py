"""Creating FCViT models by name, with clear errors for names and checkpoints that do not fit."""
from __future__ import annotations

import difflib
import logging
import os
from typing import Any, Optional

import timm
from torch import nn

from ..errors import UserError
from .checkpoint import extract_state_dict, load_weights, read_checkpoint
from .fcvit import MODEL_CONFIGS, FCViTBackbone

__all__ = ["create_backbone", "create_classifier", "check_model_name"]

_logger = logging.getLogger(__name__)


def check_model_name(name: str, allow_timm: bool = False) -> str:
    """Return ``name`` if it is a known model, else raise with the closest names."""
    known = list(dict.fromkeys(list(MODEL_CONFIGS) + (timm.list_models() if allow_timm else [])))
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(MODEL_CONFIGS)}."
    raise UserError(f"Unknown model '{name}': {hint}")


def create_classifier(name: str, checkpoint_path: Optional[str | os.PathLike] = None, use_ema: bool = True,
                      **kwargs: Any) -> nn.Module:
    """``timm.create_model`` where unknown names and wrong checkpoints give one sentence; without
    ``num_classes`` the model takes the checkpoint classifier's number of classes."""
    check_model_name(name, allow_timm=True)
    state_dict = None
    if checkpoint_path is not None:
        state_dict = extract_state_dict(read_checkpoint(checkpoint_path), use_ema=use_ema)
        head = state_dict.get("head.weight")
        if head is not None and "num_classes" not in kwargs:
            kwargs["num_classes"] = int(head.shape[0])
    model = timm.create_model(name, **kwargs)
    if state_dict is not None:
        load_weights(model, state_dict, name)
    return model


def create_backbone(name: str, checkpoint_path: Optional[str | os.PathLike] = None, **kwargs: Any) -> FCViTBackbone:
    """An FCViT dense-prediction backbone returning the four GroupNorm-ed stage outputs.

    ``checkpoint_path`` may also be an ImageNet classifier's: its ``norm`` and ``head`` are skipped (and
    logged), the stage norms keep their initial values."""
    check_model_name(name)
    cfg = MODEL_CONFIGS[name]
    model = FCViTBackbone(**{"depths": cfg.depths, "dims": cfg.dims, "mlp_ratios": cfg.mlp_ratios, **kwargs})
    if checkpoint_path is not None:
        state_dict = extract_state_dict(read_checkpoint(checkpoint_path))
        missing, unexpected = load_weights(model, state_dict, name, allow_partial=True)
        if missing or unexpected:
            _logger.warning(
                "Backbone %s from '%s': skipped %d checkpoint keys (%s), kept %d model keys at their "
                "initial values (%s).", name, checkpoint_path, len(unexpected), ", ".join(unexpected[:6]),
                len(missing), ", ".join(missing[:6]))
        model.skipped_keys = unexpected
        model.missing_keys = missing
    return model
