"""Flags of the original FCViT ``train.py`` and ``validate.py`` (timm 0.5 era) that are not fcvit's own.

The paper's command lines pass them (``--apex-amp``), and so do scripts written for timm 0.5. Each one
is handled in exactly one way, so that none ends in "unrecognized argument" and none that would change
results is silently ignored:

- mapped onto fcvit's flags, with one logged note (``--apex-amp`` -> ``--amp --amp-dtype float16``);
- accepted as obsolete, with one note when given (``--no-prefetcher``, ``--local_rank``);
- refused with one sentence saying what to use instead (``--split-bn``, ``--tta 2``).

Flags that fcvit implements (``--dist-bn``, ``--sync-bn``, ``--no-resume-opt``, ``--jsd-loss``, ...) are
ordinary flags of ``fcvit train``. docs/reproduction.md ("Flags of the original train.py") has the table.
"""
from __future__ import annotations

import argparse
from typing import List, Set

from ..errors import UserError
from .options import finite_float, non_negative_float, non_negative_int, positive_int, probability

__all__ = ["add_original_train_flags", "add_original_validate_flags", "resolve_original_train_flags",
           "resolve_original_validate_flags"]

_GROUP = "flags of the original train.py/validate.py (mapped, obsolete or refused: docs/reproduction.md)"


def _add_shared(g: argparse._ArgumentGroup) -> None:
    """The flags both original scripts had."""
    g.add_argument("--apex-amp", action="store_true",
                   help="float16 autocast + GradScaler, the closest to NVIDIA apex O1 (= --amp --amp-dtype float16)")
    g.add_argument("--native-amp", action="store_true", help="torch.cuda.amp's float16 (= --amp --amp-dtype float16)")
    g.add_argument("--torchscript", action="store_true", help="obsolete: the model runs as is (same results)")
    g.add_argument("--no-prefetcher", action="store_true", help="obsolete: fcvit has no CUDA prefetcher")
    g.add_argument("--pretrained", action="store_true", help="refused: no weights are downloaded")
    g.add_argument("--gp", default=None, metavar="POOL", help="global pool: only 'avg', FCViT's own, is accepted")
    g.add_argument("--class-map", default="", metavar="FILE", help="refused: classes follow the sorted folders")
    g.add_argument("--dataset-download", action="store_true", help="obsolete: fcvit never downloads data")


def add_original_train_flags(p: argparse.ArgumentParser) -> None:
    """Add the train.py flags that are mapped, obsolete or refused (see the module docstring)."""
    g = p.add_argument_group(_GROUP)
    _add_shared(g)
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                   help="obsolete: torchrun sets LOCAL_RANK")
    g.add_argument("--split-bn", action="store_true", help="refused: per-split BatchNorm is not implemented")
    g.add_argument("--tta", type=non_negative_int, default=0, metavar="N", help="refused above 1 (one center crop per image)")
    g.add_argument("--aug-repeats", type=non_negative_int, default=0, metavar="N", help="refused above 0 (repeated augmentation)")
    g.add_argument("--epoch-repeats", type=non_negative_float, default=0.0, metavar="N",
                   help="no effect on map-style datasets, as in the original")
    g.add_argument("--drop-connect", type=probability, default=None, metavar="PCT", help="old name of --drop-path")
    g.add_argument("--drop-block", type=probability, default=None, metavar="PCT", help="refused: FCViT has no DropBlock")
    g.add_argument("--bn-tf", action="store_true", help="refused: FCViT ignored it in the original")
    g.add_argument("--bn-momentum", type=finite_float, default=None, help="refused: FCViT ignored it in the original")
    g.add_argument("--bn-eps", type=finite_float, default=None, help="refused: FCViT ignored it in the original")
    g.add_argument("--worker-seeding", default=None, help="obsolete: every sample's augmentation is seeded")
    g.add_argument("--save-images", action="store_true", help="obsolete: input batches are not written")
    g.add_argument("--use-multi-epochs-loader", action="store_true",
                   help="obsolete: loader workers persist across epochs")
    g.add_argument("--log-wandb", action="store_true", help="obsolete: use --tensorboard")
    g.add_argument("--git-id", default=None, help="obsolete: the original overwrote it too")


def add_original_validate_flags(p: argparse.ArgumentParser) -> None:
    """Add the validate.py flags that are mapped, obsolete or refused."""
    g = p.add_argument_group(_GROUP)
    _add_shared(g)
    g.add_argument("--legacy-jit", action="store_true", help="obsolete: TorchScript is not used")
    g.add_argument("--tf-preprocessing", action="store_true", help="refused: needs TensorFlow")
    g.add_argument("--test-pool", action="store_true",
                   help="no effect at the model's own input size (as in the original); refused above it")
    g.add_argument("--log-freq", type=positive_int, default=None, metavar="N", help="obsolete: a progress bar shows progress")
    g.add_argument("--num-gpu", type=positive_int, default=1, metavar="N", help="obsolete above 1: use torchrun")
    g.add_argument("--real-labels", default="", metavar="FILE", help="refused: ImageNet-ReaL scoring")
    g.add_argument("--valid-labels", default="", metavar="FILE", help="refused: scoring a subset of classes")


def _map_amp(args: argparse.Namespace, explicit: Set[str], notes: List[str]) -> None:
    flags = [flag for flag, dest in (("--apex-amp", "apex_amp"), ("--native-amp", "native_amp"))
             if getattr(args, dest, False)]
    if not flags:
        return
    args.amp = True
    if "amp_dtype" not in explicit:
        args.amp_dtype = "float16"
    notes.append(f"{' '.join(flags)}: mixed precision as --amp --amp-dtype {args.amp_dtype}"
                 + (" (float16 autocast with a GradScaler, the closest to apex O1)"
                    if args.amp_dtype in ("float16", "fp16") else "") + ".")


def _resolve_shared(args: argparse.Namespace, explicit: Set[str], notes: List[str]) -> None:
    _map_amp(args, explicit, notes)
    if args.torchscript:
        notes.append("--torchscript: the model runs without TorchScript (same results; --compile compiles it "
                     "for training).")
    if args.no_prefetcher:
        notes.append("--no-prefetcher: fcvit always loads with a plain DataLoader (there is no prefetcher).")
    if "pin_mem" in explicit and args.pin_mem:
        notes.append("--pin-mem: pinned host memory is already on by default on CUDA.")
    if args.dataset_download:
        notes.append("--dataset-download: fcvit never downloads data; DATA must already hold it.")
    if args.gp not in (None, "", "avg"):
        raise UserError(f"--gp {args.gp} is not supported: FCViT pools by average (--gp avg); leave --gp out.")
    if args.gp == "avg":
        notes.append("--gp avg: FCViT's own global average pooling.")
    if args.class_map:
        raise UserError("--class-map is not supported: class indices follow the sorted class folder names "
                        "(timm's default); name the folders in the wanted order or leave --class-map out.")


def resolve_original_train_flags(args: argparse.Namespace) -> List[str]:
    """Apply the mappings to ``args``; return the one-line notes to log; raise UserError for refused flags."""
    explicit = set(getattr(args, "_explicit", set()))
    notes: List[str] = []
    _resolve_shared(args, explicit, notes)
    if args.pretrained:
        raise UserError("--pretrained is not supported (no weights are downloaded): pass --initial-checkpoint "
                        "FILE with the published weights.")
    if args.local_rank is not None:
        notes.append("--local_rank: obsolete, each process takes the LOCAL_RANK that torchrun sets.")
    if args.split_bn:
        raise UserError("--split-bn is not implemented (separate BatchNorm per augmentation split): leave it "
                        "out; --aug-splits with --jsd-loss works without it.")
    if args.tta > 1:
        raise UserError(f"--tta {args.tta} is not supported: the original train.py averaged the logits of "
                        f"{args.tta} consecutive different validation images (its loader made no augmented "
                        "copies); leave it out, evaluation uses one center crop per image as the paper.")
    if args.aug_repeats > 0:
        raise UserError("--aug-repeats (repeated augmentation) is not supported: leave it out, the paper's "
                        "recipe did not use it.")
    if args.epoch_repeats > 0:
        notes.append("--epoch-repeats: no effect on image folders, as in the original (it only repeated "
                     "streaming datasets).")
    if args.drop_connect is not None:
        if "drop_path" in explicit:
            notes.append(f"--drop-connect: ignored, --drop-path {args.drop_path} is given (as the original).")
        else:
            args.drop_path = args.drop_connect
            notes.append(f"--drop-connect {args.drop_connect}: the old name of --drop-path, used as such.")
    if args.drop_block is not None:
        raise UserError("--drop-block is not supported: FCViT has no DropBlock layer; use --drop-path.")
    for flag, dest in (("--bn-tf", "bn_tf"), ("--bn-momentum", "bn_momentum"), ("--bn-eps", "bn_eps")):
        if getattr(args, dest) not in (None, False):
            raise UserError(f"{flag} is not supported: the original FCViT model silently ignored it, so the paper's "
                            "runs kept PyTorch's BatchNorm defaults; leave it out.")
    if args.worker_seeding is not None:
        notes.append("--worker-seeding: obsolete, fcvit seeds every sample's augmentation from (seed, epoch, "
                     "position).")
    if args.save_images:
        notes.append("--save-images: obsolete, input batches are not written (debug output only).")
    if args.use_multi_epochs_loader:
        notes.append("--use-multi-epochs-loader: obsolete, loader workers already persist across epochs.")
    if args.log_wandb:
        notes.append("--log-wandb: not supported, metrics go to summary.csv (and TensorBoard with --tensorboard).")
    if args.git_id is not None:
        notes.append("--git-id: ignored (the original overwrote it with the current commit).")
    return notes


def resolve_original_validate_flags(args: argparse.Namespace) -> List[str]:
    """As :func:`resolve_original_train_flags`, for ``fcvit validate``."""
    explicit = set(getattr(args, "_explicit", set()))
    notes: List[str] = []
    _resolve_shared(args, explicit, notes)
    if args.pretrained:
        notes.append("--pretrained: the weights of --checkpoint are evaluated (nothing is downloaded).")
    if args.legacy_jit:
        notes.append("--legacy-jit: obsolete, TorchScript is not used.")
    if args.tf_preprocessing:
        raise UserError("--tf-preprocessing is not supported (it needs TensorFlow): leave it out; the PIL "
                        "pipeline (resize, center crop of crop_pct) is the one the paper used.")
    if args.log_freq is not None:
        notes.append("--log-freq: obsolete, a progress bar shows the progress.")
    if args.num_gpu > 1:
        notes.append(f"--num-gpu {args.num_gpu}: one device per process; for {args.num_gpu} GPUs run "
                     f"torchrun --nproc_per_node {args.num_gpu} -m fcvit validate (same results).")
    if args.real_labels or args.valid_labels:
        flag = "--real-labels" if args.real_labels else "--valid-labels"
        raise UserError(f"{flag} is not supported: fcvit validate scores the labels of the class folders; "
                        "use timm's validate.py for ImageNet-ReaL or class-subset scoring.")
    return notes
