"""``fcvit convert``: a published ``.pth.tar`` as timm's hub folder (what ``save_for_hf`` writes and
``push_to_hf_hub`` uploads), so that ``timm.create_model("local-dir:DIR", pretrained=True)`` loads it."""
from __future__ import annotations

import argparse
import logging
import os
from typing import List, Mapping, Optional

from ..errors import UserError
from .options import add_overwrite

OUTPUT_FILES = ("model.safetensors", "config.json", "README.md")
CHECK_SIZE = 96  # input side of the logits check: any size shows whether the weights arrived unchanged

CITATION = """@article{ma2022fcvit,
  author = {Ma, Xu and Wang, Huan and Qin, Can and Li, Kunpeng and Zhao, Xingchen and Fu, Jie and Fu, Yun},
  title = {A Close Look at Spatial Modeling: From Attention to Convolution},
  publisher = {arXiv},
  year = {2022},
}"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="write a checkpoint as a timm hub-format folder (timm.create_model('local-dir:DIR'))",
        description="Write an FCViT checkpoint as a timm hub-format folder (model.safetensors, config.json, "
                    "README.md) that timm.create_model('local-dir:DIR', pretrained=True) loads, then check "
                    "that the folder gives the checkpoint's logits.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.pth, .pth.tar or .safetensors)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="folder to write (new or empty)")
    p.add_argument("--model", help="FCViT variant (default: the checkpoint's 'arch' field, else its shapes)")
    p.add_argument("--use-ema", action="store_true", help="convert the EMA weights stored in the checkpoint")
    add_overwrite(p, "the files of a folder that is not empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..files import replaced_note
    from ..models import extract_state_dict, read_checkpoint

    output = os.path.abspath(args.output)
    replaced = _check_output(args.checkpoint, output, args.overwrite)
    checkpoint = read_checkpoint(args.checkpoint)
    state_dict = extract_state_dict(checkpoint, use_ema=args.use_ema)
    name = _model_name(args.checkpoint, checkpoint, state_dict, args.model)
    model = _build(name, checkpoint, state_dict)
    diff = _write_folder(model, output, args.checkpoint, checkpoint)
    print(f"wrote {output} ({name}, {model.num_classes} classes)")
    print(f"check: timm.create_model('local-dir:{args.output}', pretrained=True) (after 'import fcvit') gives "
          f"the checkpoint's logits, max |difference| {diff:.1e}")
    if replaced:
        print(replaced_note(replaced))
    return 0


def _check_output(checkpoint: str, output: str, overwrite: bool) -> List[str]:
    """Refuse what cannot be the folder before any work; return the files that will be replaced."""
    from ..files import check_outputs

    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--output '{output}' is a file: pass a folder to create (or an empty one).")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise UserError(f"--output '{output}' is not empty: choose a new folder or pass --overwrite.")
    parent = os.path.dirname(output)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--output '{output}' lies under the file '{parent}': choose a folder path.")
    return check_outputs([os.path.join(output, name) for name in OUTPUT_FILES], [checkpoint], overwrite,
                         choose="choose another --output folder", input_name="checkpoint")


def _metadata_arch(path: str) -> Optional[str]:
    """``arch`` in a safetensors file's metadata (what ``fcvit export`` writes)."""
    if not path.endswith(".safetensors"):
        return None
    from safetensors import safe_open

    from ..models.checkpoint import stored_arch

    with safe_open(path, framework="pt") as f:
        return stored_arch(f.metadata() or {})


def _model_name(path: str, checkpoint: Mapping[str, object], state_dict: Mapping[str, object],
                requested: Optional[str]) -> str:
    """``--model``, else the checkpoint's ``arch``, else the variant with the weights' shapes."""
    from ..models import MODEL_CONFIGS, check_model_name, guess_variant
    from ..models.checkpoint import stored_arch

    if requested:
        return check_model_name(requested)
    arch = stored_arch(checkpoint) or _metadata_arch(path)
    if arch is not None:
        if arch not in MODEL_CONFIGS:
            raise UserError(f"Checkpoint '{path}' holds '{arch}' weights (its 'arch' field), not FCViT: "
                            f"convert a checkpoint of {', '.join(MODEL_CONFIGS)}.")
        return arch
    guessed = guess_variant(state_dict)
    if guessed is None:
        raise UserError(f"Checkpoint '{path}' does not have the shapes of any FCViT variant "
                        f"({', '.join(MODEL_CONFIGS)}): pass --model NAME if it is one, else convert an FCViT "
                        "checkpoint.")
    return guessed


def _build(name: str, checkpoint: Mapping[str, object], state_dict: Mapping[str, object]):
    """The classifier with the checkpoint's weights, number of classes and the run's ``--model-kwargs`` (one
    sentence if they do not fit); timm records the kwargs, so config.json's ``model_args`` rebuilds it."""
    import timm

    from ..models import load_weights
    from ..models.checkpoint import classifier_kwargs

    model = timm.create_model(name, **classifier_kwargs(checkpoint, state_dict, name))
    load_weights(model, state_dict, name)
    return model.eval()


def _training(state: Mapping[str, object]) -> str:
    """The card's lines on the training run, from what a training checkpoint stores (nothing when it is not one)."""
    args = state.get("args") if isinstance(state.get("args"), Mapping) else {}
    if "epochs" not in args or "epoch" not in state:
        return ""
    start, resume = args.get("initial_checkpoint"), args.get("resume")
    start = (f"Started from the weights of `{os.path.basename(start)}` (--initial-checkpoint)" if start else
             f"Continued from the checkpoint `{os.path.basename(resume)}` (--resume)"
             if resume not in (None, "", "auto") else "Started from random initial weights (no --initial-checkpoint)")
    folder = args.get("data") or args.get("data_dir")
    where = f"folder `{os.path.basename(os.path.normpath(str(folder)))}`" if folder else ""
    data = (f"dataset `{args['dataset']}`" + (f" in the {where}" if where else "")) if args.get("dataset") \
        else f"the image {where}"
    names = state.get("class_names")
    lines = [f"- {start}" + (", with the --finetune preset" if args.get("finetune") else "") + ".",
             f"- Data: {data}" + (f", classes {', '.join(map(str, names))}" if names else "") + ".",
             f"- Epochs trained: {state['epoch']}."]
    saver = state.get("saver") if isinstance(state.get("saver"), Mapping) else {}
    best = saver.get("best") or []
    if best:
        metric, value = saver.get("metric"), float(best[0]["value"])
        shown = f"{value:.2f}%" if str(metric).startswith("top") else f"{value:.4g}"
        lines.append(f"- Best validation {metric} of the run: {shown} (epoch {best[0]['tag']}).")
    return "\n## Training\n\n" + "\n".join(lines) + "\n"


def model_card(model, checkpoint: str, cfg: Optional[Mapping[str, object]] = None,
               state: Optional[Mapping[str, object]] = None) -> str:
    """A short hub model card: what the weights are, where they came from (what the training checkpoint
    knew, nothing more), how to load and cite them; ``cfg``: config.json's pretrained_cfg."""
    import hashlib

    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from ..models import MODEL_CONFIGS

    cfg = dict(model.pretrained_cfg, **(cfg or {}))
    name = model.pretrained_cfg["architecture"]
    sha = ""
    if os.path.isfile(checkpoint):  # a hub folder given as the checkpoint has no one file to hash
        with open(checkpoint, "rb") as f:
            sha = f" (sha256 `{hashlib.file_digest(f, 'sha256').hexdigest()}`)"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    size = f"{cfg['input_size'][1]}x{cfg['input_size'][2]}"
    norm = ("ImageNet mean and std" if (list(cfg["mean"]), list(cfg["std"])) == (
        list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)) else f"mean {list(cfg['mean'])}, std {list(cfg['std'])}")
    training = _training(state or {})
    published = MODEL_CONFIGS[name].published_top1
    if model.num_classes == 1000 and published is not None and not training:
        accuracy = (f"- Published ImageNet-1k top-1 of {name}: {published}% (the paper's checkpoint; other "
                    "1000-class weights score their own).\n")
    else:
        accuracy = f"- A {model.num_classes}-class classifier (its own classes: the ImageNet top-1 does not apply).\n"
    return f"""---
license: apache-2.0
library_name: timm
tags:
- image-classification
- timm
- fcvit
---
# {name}

FCViT, the fully convolutional vision transformer of "A Close Look at Spatial Modeling: From Attention
to Convolution" (Ma et al., 2022, arXiv:2212.12552), in timm's format.

- Source checkpoint: `{os.path.basename(os.path.normpath(checkpoint))}`{sha}, converted with `fcvit convert`.
- {params:.2f}M parameters, {model.num_classes} classes, input {size}, crop_pct {cfg['crop_pct']}, {cfg['interpolation']} resize, {norm}.
{accuracy}- License: apache-2.0.
{training}
## Use

```python
import timm
import fcvit  # registers the FCViT architectures in timm

model = timm.create_model("local-dir:/path/to/this/folder", pretrained=True).eval()
```

## Citation

```bibtex
{CITATION}
```
"""


def _check_folder(model, folder: str) -> float:
    """Load ``folder`` the way a user would and return the largest logit difference to ``model``."""
    import timm
    import torch

    timm_logger = logging.getLogger("timm")
    level = timm_logger.level
    timm_logger.setLevel(logging.WARNING)  # its "loading from <staging folder>" lines would only confuse
    try:
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    finally:
        timm_logger.setLevel(level)
    inputs = torch.randn(2, 3, CHECK_SIZE, CHECK_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((loaded(inputs) - model(inputs)).abs().max())
    if diff != 0.0:
        raise UserError(f"The converted folder gives logits {diff:.2e} away from the checkpoint's: nothing "
                        "was written; report the checkpoint and the timm version.")
    return diff


def _write_folder(model, output: str, checkpoint: str, state: Mapping[str, object]) -> float:
    """Write the folder beside ``output`` (with the preprocessing and class names the checkpoint stores), check
    it loads, then move its files in (each rename atomic)."""
    import json
    import shutil
    import tempfile

    from timm.models import save_for_hf

    from ..models.checkpoint import stored_preprocessing

    parent, base = os.path.split(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes an owner-only folder; it may become DIR itself
    try:
        data = stored_preprocessing(state)
        names = state.get("class_names")
        labels = {"label_names": list(names)} if names and len(names) == model.num_classes else {}
        save_for_hf(model, staging, model_config=labels, safe_serialization=True, data_config=data or None)
        with open(os.path.join(staging, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)["pretrained_cfg"]
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(model, checkpoint, cfg, state))
        for name in os.listdir(staging):
            os.chmod(os.path.join(staging, name), 0o666 & ~umask)  # safetensors writes owner-only files
        diff = _check_folder(model, staging)
        if not os.path.exists(output):
            os.rename(staging, output)
        else:
            for name in sorted(os.listdir(staging)):
                os.replace(os.path.join(staging, name), os.path.join(output, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return diff
