"""Creating FCViT models by name, with clear errors for names and checkpoints that do not fit."""
from __future__ import annotations

import difflib
import logging
import os
from typing import Any, Mapping, Optional

import timm
from torch import nn

from ..errors import UserError
from .checkpoint import (CLASSIFIER_KINDS, classifier_kwargs, expect_kind, extract_state_dict, load_weights,
                         model_name_for, read_checkpoint)
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


def create_classifier(name: Optional[str], checkpoint_path: Optional[str | os.PathLike] = None, use_ema: bool = True,
                      checkpoint: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` where unknown names and wrong checkpoints give one sentence. The checkpoint (a file,
    a hub folder, or ``checkpoint`` as read from ``checkpoint_path``) names the model when ``name`` is None
    (else fcvit_b12) and gives its number of classes and the run's --model-kwargs unless ``kwargs`` do."""
    checkpoint = read_checkpoint(checkpoint_path) if checkpoint is None and checkpoint_path is not None else checkpoint
    if checkpoint is None:
        return timm.create_model(check_model_name(name or "fcvit_b12", allow_timm=True), **kwargs)
    expect_kind(checkpoint, CLASSIFIER_KINDS, f"Checkpoint '{checkpoint_path}'")
    state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    name = check_model_name(name or model_name_for(checkpoint, "fcvit_b12"), allow_timm=True)
    model = timm.create_model(name, **{**classifier_kwargs(checkpoint, state_dict, name), **kwargs})
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
        checkpoint = read_checkpoint(checkpoint_path)
        expect_kind(checkpoint, ("classifier", "backbone", "hub"), f"Checkpoint '{checkpoint_path}'")
        state_dict = extract_state_dict(checkpoint)
        missing, unexpected = load_weights(model, state_dict, name, allow_partial=True)
        if missing or unexpected:
            _logger.warning(
                "Backbone %s from '%s': skipped %d checkpoint keys (%s), kept %d model keys at their "
                "initial values (%s).", name, checkpoint_path, len(unexpected), ", ".join(unexpected[:6]),
                len(missing), ", ".join(missing[:6]))
        model.skipped_keys = unexpected
        model.missing_keys = missing
    return model
