"""Reading FCViT weights from every form the published and timm-trained files take.

Files are opened with ``weights_only=True`` (plus ``argparse.Namespace``, which timm-style training
scripts store under ``'args'``): a file whose unpickling would run code is refused, never executed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import zipfile
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import UserError
from .configs import MODEL_CONFIGS
from .fcvit import FCViT, remap_state_dict, strip_wrapper_prefixes

__all__ = ["read_checkpoint", "checkpoint_args", "UnreadableCheckpoint", "extract_state_dict", "guess_variant",
           "load_weights", "checkpoint_kind", "expect_kind", "model_name_for", "stored_arch", "stored_preprocessing",
           "classifier_kwargs", "CLASSIFIER_KINDS", "DATA_CONFIG_KEYS"]

_logger = logging.getLogger(__name__)
_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
DATA_CONFIG_KEYS = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


class UnreadableCheckpoint(UserError):
    """A checkpoint file that cannot be opened: ``problem`` (what is wrong, reusable in a caller's own
    sentence, as ``--resume auto`` does) and ``fix`` (what to do)."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"Checkpoint '{path}' {problem}: {fix}.")


#: what ``torch.save(..., _use_new_zipfile_serialization=False)`` files start with (a pickled magic number)
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:14]
_COPY_AGAIN = "copy or download it again, or use another checkpoint"


def read_checkpoint(path: str | os.PathLike) -> Dict[str, object]:
    """Open a checkpoint file safely (``.safetensors`` too), or a timm hub folder (or ``local-dir:DIR``) as its
    weights with config.json's fields. Every way a file can fail to open ends in one sentence telling the
    cases apart: empty (a write cut short), incomplete or damaged, not a checkpoint, unsafe, or not a dict."""
    path = os.fspath(path).removeprefix("local-dir:")  # timm's name for a hub folder
    if not os.path.exists(path):
        raise UserError(f"Checkpoint '{path}' does not exist: check the path.")
    if os.path.isdir(path):
        return _read_hub_folder(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise UnreadableCheckpoint(path, f"cannot be opened ({exc.strerror or exc})",
                                   "check its permissions or copy it somewhere readable") from None
    if size == 0:
        raise UnreadableCheckpoint(path, "is empty (0 bytes), as a write cut short (e.g. by a full disk) leaves "
                                   "it", _COPY_AGAIN)
    if path.endswith(".safetensors"):
        return _read_safetensors(path, head)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise UnreadableCheckpoint(
                path, f"was refused because loading it would run code or build objects that are not plain "
                      f"weights (it names {refused[0]})",
                "re-save its state dict with torch.save or as .safetensors from a trusted environment") from None
        raise _not_loadable(path, head, size) from None
    except MemoryError:
        raise
    except Exception:  # torch.load fails on damaged files with many error types (EOF, zip, key, index...)
        raise _not_loadable(path, head, size) from None
    if isinstance(obj, Mapping):
        return dict(obj)
    raise UnreadableCheckpoint(path, f"holds a {type(obj).__name__}, not a dict of weights",
                               "save model.state_dict() instead of the object")


def _read_safetensors(path: str, head: bytes) -> Dict[str, object]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(path, device="cpu"))
    except Exception:  # safetensors raises its own error types
        if head.startswith(b"PK\x03\x04"):  # a zip: torch.save's format under a .safetensors name
            raise UnreadableCheckpoint(path, "is a PyTorch (torch.save) file, not safetensors",
                                       "rename it to end in .pth or .pt") from None
        raise UnreadableCheckpoint(path, "is not a complete safetensors file (it may be truncated)",
                                   _COPY_AGAIN) from None


def _read_hub_folder(path: str) -> Dict[str, object]:
    """A timm hub folder (``fcvit convert``, ``save_for_hf``) as a training checkpoint: its weights, and config.json's
    architecture, classes, label names, eval settings and model arguments under the fields training writes."""
    config_path, files = os.path.join(path, "config.json"), ("model.safetensors", "pytorch_model.bin")
    weights = [os.path.join(path, name) for name in files if os.path.isfile(os.path.join(path, name))]
    if not os.path.isfile(config_path) or not weights:
        raise UserError(f"Checkpoint '{path}' is a folder without a timm hub folder's config.json and "
                        "model.safetensors: pass the checkpoint file inside it, or a folder `fcvit convert` wrote.")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        cfg = dict(config.get("pretrained_cfg") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        raise UnreadableCheckpoint(config_path, "is not timm's hub config (a JSON object)", _COPY_AGAIN) from None
    arch, names = config.get("architecture"), config.get("label_names", cfg.get("label_names"))
    described = config.get("label_descriptions", cfg.get("label_descriptions"))
    if isinstance(names, list) and isinstance(described, dict):  # ImageNet's synsets read as their descriptions
        names = [described.get(n, n) for n in names]
    return dict(state_dict=read_checkpoint(weights[0]), arch=arch, hub_folder=path,
                num_classes=config.get("num_classes", cfg.get("num_classes")), class_names=names,
                data_config={k: cfg[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std") if k in cfg},
                args=dict(model=arch, model_kwargs=dict(config.get("model_args") or {})))


def _not_loadable(path: str, head: bytes, size: int) -> UnreadableCheckpoint:
    """Why ``torch.load`` failed, told from the file's first bytes: damaged PyTorch file or another kind."""
    if head.startswith(b"PK\x03\x04"):
        if zipfile.is_zipfile(path):
            return UnreadableCheckpoint(path, "is a zip archive but not a PyTorch checkpoint",
                                        "pass a file written by torch.save or a .safetensors file")
        return UnreadableCheckpoint(path, f"is incomplete or damaged (a PyTorch zip file of {size} bytes whose "
                                          "archive ends early), as a copy or write cut short leaves it", _COPY_AGAIN)
    if head.startswith(_LEGACY_MAGIC) or _LEGACY_MAGIC.startswith(head):
        return UnreadableCheckpoint(path, f"is incomplete or damaged (an old-format PyTorch file of {size} bytes "
                                          "that does not decode to the end)", _COPY_AGAIN)
    if head.startswith(b"\x80"):  # a pickle protocol opcode without PyTorch's magic number
        return UnreadableCheckpoint(path, "is a plain Python pickle, not a PyTorch checkpoint",
                                    "save the weights with torch.save or as .safetensors")
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return UnreadableCheckpoint(path, "holds safetensors data without the .safetensors extension",
                                    "rename it to end in .safetensors")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        start = text.strip().splitlines()[0][:16] if text.strip() else ""
        return UnreadableCheckpoint(path, f"is a text file (it starts with {start!r}), not a checkpoint, as a "
                                          "failed download can leave", "download or copy the checkpoint again")
    return UnreadableCheckpoint(path, f"is not a PyTorch checkpoint (it starts with bytes {head[:8].hex(' ')})",
                                "pass a file written by torch.save or a .safetensors file")


def checkpoint_args(checkpoint: Mapping[str, object]) -> Dict[str, object]:
    """The run arguments a checkpoint stores under ``'args'`` as a dict: fcvit writes a dict of plain
    values, timm-style scripts (and fcvit before) an ``argparse.Namespace``; neither means ``{}``."""
    stored = checkpoint.get("args")
    stored = vars(stored) if isinstance(stored, argparse.Namespace) else stored
    return dict(stored) if isinstance(stored, Mapping) else {}


def _weights(checkpoint: Mapping[str, object], use_ema: bool = True) -> Dict[str, object]:
    """The weights inside a checkpoint dict, unchecked (EMA weights first when present and wanted)."""
    order = _STATE_DICT_KEYS if use_ema else ("state_dict", "model", "state_dict_ema", "model_ema")
    for key in order:
        value = checkpoint.get(key)
        if isinstance(value, Mapping) and value:
            return strip_wrapper_prefixes(value)
    return strip_wrapper_prefixes({k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)})


def extract_state_dict(checkpoint: Mapping[str, object], use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The weights inside a checkpoint dict, refused when a model would take them silently wrong: integer or
    complex values (``load_state_dict`` casts them into float parameters) and NaN or infinity; every load
    passes here. 0-dim integers are counters (BatchNorm's ``num_batches_tracked``) and stay."""
    weights = _weights(checkpoint, use_ema)
    if not weights:
        raise UserError("The checkpoint holds no weights (no 'state_dict', 'model' or tensors at its top level).")
    for key, value in ((k, v) for k, v in weights.items() if isinstance(v, torch.Tensor)):
        if value.dim() == 0 and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
            continue  # an integer counter
        if not value.is_floating_point():
            raise UserError(f"The checkpoint's weight '{key}' has dtype {str(value.dtype).replace('torch.', '')}, "
                            "not a floating-point one: save the weights as float32, float16 or bfloat16.")
        if not bool(torch.isfinite(value).all()):
            raise UserError(f"The checkpoint's weight '{key}' holds NaN or infinite values, as a diverged run or a "
                            "damaged file leaves them: use an earlier checkpoint of the run or another file.")
    return weights


#: what each kind of checkpoint is, and which commands take it (``checkpoint_kind``)
_KINDS = {
    "classifier": ("an image classifier", "use it with `fcvit predict/validate/export`, `fcvit train --resume`, "
                                          "or as --pretrained-backbone of `fcvit detect/segment train`"),
    "timm": ("a {arch} image classifier (a timm model, not FCViT)",
             "use it with `fcvit predict/validate/export` or `fcvit train --resume`"),
    "hub": ("a timm hub folder of an image classifier", "use it with `fcvit predict/validate/export`, as "
            "--initial-checkpoint of `fcvit train`, or as --pretrained-backbone of `fcvit detect/segment train`"),
    "detector": ("a Mask R-CNN checkpoint", "use it with `fcvit detect eval/predict` or `fcvit detect train --resume`"),
    "segmenter": ("a Semantic FPN checkpoint",
                  "use it with `fcvit segment eval/predict` or `fcvit segment train --resume`"),
    "backbone": ("an FCViT backbone without a classifier",
                 "use it as --pretrained-backbone of `fcvit detect/segment train`"),
}
_WRITERS = {"classifier": "fcvit train", "detector": "fcvit detect train", "segmenter": "fcvit segment train"}
CLASSIFIER_KINDS = ("classifier", "timm", "hub")


def checkpoint_kind(checkpoint: Mapping[str, object]) -> str:
    """Which of ``_KINDS`` a checkpoint is, from the fields each task's training writes (``arch``,
    ``model_config``, ``categories``) or a hub folder's config, else from its weights' keys."""
    arch, config = checkpoint.get("arch"), checkpoint.get("model_config", checkpoint.get("segmenter"))
    arch = arch if isinstance(arch, str) else checkpoint_args(checkpoint).get("model")
    arch, config = arch.split(".")[0] if isinstance(arch, str) else "", config if isinstance(config, Mapping) else None
    if arch.startswith("mask_rcnn_") or "categories" in checkpoint or "min_size" in (config or {}):
        return "detector"
    if arch.startswith("semantic_fpn_") or config is not None:
        return "segmenter"
    if checkpoint.get("hub_folder"):
        return "hub"
    if arch and arch not in MODEL_CONFIGS:
        return "timm"
    weights = _weights(checkpoint)
    if "head.weight" not in weights and _shape_of({FCViT.published_key(k): v for k, v in weights.items()}):
        return "backbone"
    return "classifier"


def expect_kind(checkpoint: Mapping[str, object], kinds: Tuple[str, ...], name: str) -> str:
    """The kind of ``checkpoint`` if one of ``kinds`` (the first names the command that writes them), else one
    sentence saying what ``name`` is and which commands take it: before any model is built."""
    kind = checkpoint_kind(checkpoint)
    if kind not in kinds:
        what, use = _KINDS[kind]
        arch = str(checkpoint.get("arch") or checkpoint_args(checkpoint).get("model"))
        raise UserError(f"{name} was not written by '{_WRITERS[kinds[0]]}': it is {what.format(arch=arch)}; {use}.")
    return kind


def model_name_for(checkpoint: Mapping[str, object], default: str) -> str:
    """The model a checkpoint holds when --model is absent: its 'arch' (a hub folder's architecture), else the
    FCViT variant its weights' shapes match (as ``fcvit convert`` infers it), else ``default``; said when inferred."""
    arch = stored_arch(checkpoint)
    if arch:
        if checkpoint.get("hub_folder"):
            _logger.info("Model %s, the architecture in '%s'.", arch,
                         os.path.join(str(checkpoint["hub_folder"]), "config.json"))
        return arch
    guessed = guess_variant(_weights(checkpoint)) if checkpoint else None
    if guessed:
        _logger.info("Model %s: the checkpoint names none and its weights have that variant's shapes (--model "
                     "chooses another).", guessed)
    return guessed or default


def stored_arch(checkpoint: Mapping[str, object]) -> Optional[str]:
    """The model a checkpoint's ``arch`` names, without a pretrained tag such as '.in1k'; None for none."""
    arch = checkpoint.get("arch")
    return arch.split(".")[0] if isinstance(arch, str) and arch else None


def stored_preprocessing(checkpoint: Mapping[str, object]) -> Dict[str, object]:
    """The preprocessing (``DATA_CONFIG_KEYS``) a run stored in ``data_config``, unset values left out."""
    stored = checkpoint.get("data_config")
    return {k: stored[k] for k in DATA_CONFIG_KEYS if stored.get(k) is not None} if isinstance(stored, Mapping) else {}


def classifier_kwargs(checkpoint: Mapping[str, object], state_dict: Mapping[str, torch.Tensor],
                      name: str) -> Dict[str, object]:
    """``num_classes`` (the FCViT head's rows, else what training stored, as a timm model's head is named its own
    way) and the run's ``--model-kwargs`` when it trained ``name``: what rebuilds the classifier of these weights."""
    stored, head = checkpoint_args(checkpoint), state_dict.get("head.weight")
    kwargs = dict(stored.get("model_kwargs") or {}) if stored.get("model") == name else {}
    classes = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else \
        checkpoint.get("num_classes") or stored.get("num_classes")
    if isinstance(classes, int) and classes > 0:
        kwargs["num_classes"] = classes
    return kwargs


_BLOCK_SCALE = re.compile(r"(?:trunk\.)?stages\.(\d+)\.blocks\.(\d+)\.layer_scale_1")


def _shape_of(state_dict: Mapping[str, torch.Tensor]) -> Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """(blocks per stage, channels per stage) of a classifier's or backbone's keys, or None if not FCViT-like."""
    channels: Dict[int, Dict[int, int]] = {}  # stage -> block -> channels
    for key, value in state_dict.items():
        match = _BLOCK_SCALE.fullmatch(key)
        if match:
            channels.setdefault(int(match[1]), {})[int(match[2])] = int(value.shape[0])
    if sorted(channels) != [0, 1, 2, 3]:
        return None
    stages = [channels[i] for i in range(4)]
    return tuple(max(s) + 1 for s in stages), tuple(next(iter(s.values())) for s in stages)


def guess_variant(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The FCViT variant whose shape these weights (in either layout) have, or None."""
    shape = _shape_of({FCViT.published_key(k): v for k, v in state_dict.items()})
    for name, cfg in MODEL_CONFIGS.items():
        if shape == (tuple(cfg.depths), tuple(cfg.dims)):
            return name
    return None


def _describe_mismatch(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], name: str,
                       wrong_shape: List[str], missing: List[str]) -> str:
    differing = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in wrong_shape]
    more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
    detail = f"differing shapes (file vs model): {', '.join(differing[:3])}{more}" if differing else ""
    shape = _shape_of(state_dict)
    if _shape_of(own) is None:  # not an FCViT model (e.g. a timm ViT): describe keys and shapes only
        detail = detail or f"it lacks {len(missing)} of the model's keys ({', '.join(missing[:3])})"
        return f"The checkpoint does not fit {name}: {detail}. Pass a checkpoint saved from {name}."
    variant = guess_variant(state_dict)
    if shape is None:
        what = "does not look like FCViT weights (no 'stages.N.blocks.j.layer_scale_1' keys)"
    elif variant is not None:
        what = f"looks like {variant} (blocks {list(shape[0])}, channels {list(shape[1])})"
    else:
        what = f"has an FCViT shape of its own (blocks {list(shape[0])}, channels {list(shape[1])})"
    detail = f"; {detail}" if detail else ""
    suggestion = f"use --model {variant}" if variant and variant != name else "pass the checkpoint of this model"
    return f"The checkpoint does not fit {name}: it {what}{detail}. {suggestion.capitalize()}."


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], model_name: str,
                 allow_partial: bool = False) -> Tuple[List[str], List[str]]:
    """Load weights (the published layout's keys renamed) with a one-sentence error on a mismatch. With
    ``allow_partial`` (backbones from classifiers) keys the model lacks are skipped and keys the file lacks
    keep their initial values; both lists are returned."""
    state_dict = remap_state_dict(model, state_dict)
    own = model.state_dict()
    wrong_shape = [k for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if wrong_shape or (missing and not allow_partial) or (allow_partial and len(missing) == len(own)):
        raise UserError(_describe_mismatch(own, state_dict, model_name, wrong_shape, missing))
    if not allow_partial and unexpected:
        listed = ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else "")
        raise UserError(f"The checkpoint does not fit {model_name}: it has keys the model lacks ({listed}).")
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=not allow_partial)
    return missing, unexpected
