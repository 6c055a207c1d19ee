"""Flags of the original FCViT ``train.py``/``validate.py`` (timm 0.5) that are not fcvit's own: each is mapped
with one note (``--apex-amp``), accepted as obsolete with one note (``--no-prefetcher``) or refused with one
sentence (``--split-bn``), so that none that would change results is silently ignored (docs/reproduction.md)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Tuple

from ..errors import UserError
from .options import finite_float, non_negative_float, non_negative_int, positive_int, probability

_GROUP = "flags of the original train.py/validate.py (mapped, obsolete or refused: docs/reproduction.md)"
_SWITCH: Dict[str, Any] = dict(action="store_true")
_IGNORED_BN = ("is not supported: the original FCViT model silently ignored it, so the paper's runs kept "
               "PyTorch's BatchNorm defaults; leave it out.")
# flag, argparse keywords, help, and when its value is not one of `accepted` (default: the default):
# a note to log, or (refused) the sentence of the error; {value} is the value given
Row = Tuple[str, Dict[str, Any], str, bool, str]
_SHARED: List[Row] = [
    ("--torchscript", _SWITCH, "obsolete: the model runs as is (same results)", False,
     "--torchscript: the model runs without TorchScript (same results; --compile compiles it for training)."),
    ("--dataset-download", _SWITCH, "obsolete: fcvit never downloads data", False,
     "--dataset-download: fcvit never downloads data; DATA must already hold it."),
    ("--class-map", dict(default="", metavar="FILE"), "refused: classes follow the sorted folders", True,
     "--class-map is not supported: class indices follow the sorted class folder names (timm's default); name "
     "the folders in the wanted order or leave --class-map out."),
]
_TRAIN: List[Row] = [
    ("--no-prefetcher", _SWITCH, "random erasing per image, before mixup (= --erase-per-image)", False,
     "--no-prefetcher: random erasing runs per image in the loader, before mixup/cutmix, as the original's "
     "no-prefetcher path (--erase-per-image)."),
    ("--pretrained", _SWITCH, "refused: no weights are downloaded", True,
     "--pretrained is not supported (no weights are downloaded): pass --initial-checkpoint FILE with the "
     "published weights."),
    ("--local_rank", dict(type=int, default=None), "obsolete: torchrun sets LOCAL_RANK", False,
     "--local_rank: obsolete, each process takes the LOCAL_RANK that torchrun sets."),
    ("--split-bn", _SWITCH, "refused: per-split BatchNorm is not implemented", True,
     "--split-bn is not implemented (separate BatchNorm per augmentation split): leave it out; --aug-splits "
     "with --jsd-loss works without it."),
    ("--tta", dict(type=non_negative_int, default=0, metavar="N"), "refused above 1 (one center crop per image)", True,
     "--tta {value} is not supported: the original train.py averaged the logits of {value} consecutive different "
     "validation images (its loader made no augmented copies); leave it out, evaluation uses one center crop "
     "per image as the paper."),
    ("--aug-repeats", dict(type=non_negative_int, default=0, metavar="N"), "refused above 0 (repeated augmentation)",
     True, "--aug-repeats (repeated augmentation) is not supported: leave it out, the paper's recipe did not use it."),
    ("--epoch-repeats", dict(type=non_negative_float, default=0.0, metavar="N"),
     "no effect on map-style datasets, as in the original", False,
     "--epoch-repeats: no effect on image folders, as in the original (it only repeated streaming datasets)."),
    ("--drop-block", dict(type=probability, default=None, metavar="PCT"), "refused: FCViT has no DropBlock", True,
     "--drop-block is not supported: FCViT has no DropBlock layer; use --drop-path."),
    ("--bn-tf", _SWITCH, "refused: FCViT ignored it in the original", True, "--bn-tf " + _IGNORED_BN),
    ("--bn-momentum", dict(type=finite_float, default=None), "refused: FCViT ignored it in the original", True,
     "--bn-momentum " + _IGNORED_BN),
    ("--bn-eps", dict(type=finite_float, default=None), "refused: FCViT ignored it in the original", True,
     "--bn-eps " + _IGNORED_BN),
    ("--worker-seeding", dict(default=None), "obsolete: every sample's augmentation is seeded", False,
     "--worker-seeding: obsolete, fcvit seeds every sample's augmentation from (seed, epoch, position)."),
    ("--save-images", _SWITCH, "obsolete: input batches are not written", False,
     "--save-images: obsolete, input batches are not written (debug output only)."),
    ("--use-multi-epochs-loader", _SWITCH, "obsolete: loader workers persist across epochs", False,
     "--use-multi-epochs-loader: obsolete, loader workers already persist across epochs."),
    ("--log-wandb", _SWITCH, "obsolete: use --tensorboard", False,
     "--log-wandb: not supported, metrics go to summary.csv (and TensorBoard with --tensorboard)."),
    ("--git-id", dict(default=None), "obsolete: the original overwrote it too", False,
     "--git-id: ignored (the original overwrote it with the current commit)."),
]
_VALIDATE: List[Row] = [
    ("--no-prefetcher", _SWITCH, "obsolete: evaluation has no random erasing to place", False,
     "--no-prefetcher: no effect on evaluation (it only moved the original's random erasing)."),
    ("--pretrained", _SWITCH, "the weights of --checkpoint are evaluated", False,
     "--pretrained: the weights of --checkpoint are evaluated (nothing is downloaded)."),
    ("--legacy-jit", _SWITCH, "obsolete: TorchScript is not used", False,
     "--legacy-jit: obsolete, TorchScript is not used."),
    ("--tf-preprocessing", _SWITCH, "refused: needs TensorFlow", True,
     "--tf-preprocessing is not supported (it needs TensorFlow): leave it out; the PIL pipeline (resize, "
     "center crop of crop_pct) is the one the paper used."),
    ("--log-freq", dict(type=positive_int, default=None, metavar="N"), "obsolete: a progress bar shows progress",
     False, "--log-freq: obsolete, a progress bar shows the progress."),
    ("--num-gpu", dict(type=positive_int, default=1, metavar="N"), "obsolete above 1: use torchrun", False,
     "--num-gpu {value}: one device per process; for {value} GPUs run torchrun --nproc_per_node {value} -m fcvit "
     "validate (same results)."),
] + [(f"--{kind}-labels", dict(default="", metavar="FILE"), f"refused: {what}", True,
      f"--{kind}-labels is not supported: fcvit validate scores the labels of the class folders; use timm's "
      "validate.py for ImageNet-ReaL or class-subset scoring.")
     for kind, what in (("real", "ImageNet-ReaL scoring"), ("valid", "scoring a subset of classes"))]
_ACCEPTED = {"tta": (0, 1)}


def hidden(action: argparse.Action) -> argparse.Action:
    """An original flag: accepted, but listed by ``--help-all`` only (plain ``--help`` stays short)."""
    action.full_help, action.help = action.help, argparse.SUPPRESS
    return action


class _HelpAll(argparse.Action):
    """``--help-all``: the help with the original's flags that plain ``--help`` leaves out, then exit."""

    def __init__(self, option_strings: List[str], dest: str, help: str = "") -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        for action in parser._actions:
            action.help = getattr(action, "full_help", action.help)
        parser.print_help()
        parser.exit()


def add_original_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The flags of the original ``command`` (train or validate), listed by ``--help-all`` only."""
    rows = _TRAIN if command == "train" else _VALIDATE
    p.add_argument("--help-all", action=_HelpAll,
                   help=f"show this help with the original {command}.py's flags too (accepted, mapped or refused; "
                        "docs/reproduction.md) and exit")
    g = p.add_argument_group(_GROUP)
    hidden(g.add_argument("--apex-amp", action="store_true", help="float16 autocast + GradScaler, the closest to "
                          "NVIDIA apex O1 (= --amp --amp-dtype float16)"))
    hidden(g.add_argument("--native-amp", action="store_true",
                          help="torch.cuda.amp's float16 (= --amp --amp-dtype float16)"))
    hidden(g.add_argument("--gp", default=None, metavar="POOL", help="global pool: only 'avg', FCViT's own, is accepted"))
    for flag, keywords, text, _, _ in _SHARED + rows:
        extra = ("--local-rank",) if flag == "--local_rank" else ()
        hidden(g.add_argument(flag, *extra, help=text, **keywords))
    if rows is _TRAIN:
        hidden(g.add_argument("--drop-connect", type=probability, default=None, metavar="PCT",
                              help="old name of --drop-path"))
    else:
        hidden(g.add_argument("--test-pool", action="store_true",
                              help="no effect at the model's own input size (as in the original); refused above it"))


def resolve_original_flags(args: argparse.Namespace, command: str) -> List[str]:
    """Apply the mappings to ``args``; return the one-line notes to log; raise UserError for refused flags."""
    rows = _TRAIN if command == "train" else _VALIDATE
    explicit = set(getattr(args, "_explicit", set()))
    notes: List[str] = []
    flags = [f for f in ("--apex-amp", "--native-amp") if getattr(args, f[2:].replace("-", "_"))]
    if flags:
        args.amp = True
        if "amp_dtype" not in explicit:
            args.amp_dtype = "float16"
        notes.append(f"{' '.join(flags)}: mixed precision as --amp --amp-dtype {args.amp_dtype}"
                     + (" (float16 autocast with a GradScaler, the closest to apex O1)"
                        if args.amp_dtype in ("float16", "fp16") else "") + ".")
    if "pin_mem" in explicit and args.pin_mem:
        notes.append("--pin-mem: pinned host memory is already on by default on CUDA.")
    if args.gp not in (None, "", "avg"):
        raise UserError(f"--gp {args.gp} is not supported: FCViT pools by average (--gp avg); leave --gp out.")
    if args.gp == "avg":
        notes.append("--gp avg: FCViT's own global average pooling.")
    for flag, keywords, _, refused, sentence in _SHARED + rows:
        dest = flag.lstrip("-").replace("-", "_")
        value = getattr(args, dest)
        if value in _ACCEPTED.get(dest, (keywords.get("default", False),)):
            continue
        if refused:
            raise UserError(sentence.format(value=value))
        notes.append(sentence.format(value=value))
    if getattr(args, "no_prefetcher", False) and command == "train":
        args.erase_per_image = True
    if getattr(args, "drop_connect", None) is not None:
        if "drop_path" in explicit:
            notes.append(f"--drop-connect: ignored, --drop-path {args.drop_path} is given (as the original).")
        else:
            args.drop_path = args.drop_connect
            notes.append(f"--drop-connect {args.drop_connect}: the old name of --drop-path, used as such.")
    return notes


