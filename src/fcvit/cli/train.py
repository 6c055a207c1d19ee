"""``fcvit train``: the published ImageNet recipe as defaults, timm ``train.py`` flag names, torchrun-ready.
Precedence: command line > ``-c/--config`` YAML > dataset preset (``--dataset digits``) > the defaults below."""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Optional

from timm.utils import ParseKwargs  # KEY=VALUE pairs with Python literals, as timm's --model-kwargs

from ..errors import UserError
from .options import (CommandParser, add_batch_size, add_device, add_precision, add_training_options, add_valued,
                      add_workers, finite_float, is_main_process, non_negative_float, non_negative_int, positive_float,
                      positive_int, probability)
from .original_flags import add_original_flags, hidden, resolve_original_flags

#: timm's learning-rate schedules (``timm.scheduler.create_scheduler_v2``); ``none`` keeps the optimizer's lr
SCHEDULES = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "wsd", "rsqrt", "constant", "none")
_WARMING = tuple(name for name in SCHEDULES if name != "none")
_CYCLIC = ("cosine", "tanh", "poly")
#: each schedule option and the schedules that read it; given to another schedule it changes nothing
SCHEDULE_OPTIONS: Dict[str, tuple] = {
    "decay_epochs": ("step", "wsd", "rsqrt"), "decay_milestones": ("multistep",),
    "decay_rate": ("step", "multistep", "plateau", "poly"), "cooldown_epochs": _CYCLIC + ("wsd", "rsqrt"),
    "patience_epochs": ("plateau",), "min_lr": _CYCLIC + ("plateau", "wsd", "rsqrt"),
    "lr_cycle_mul": _CYCLIC, "lr_cycle_decay": _CYCLIC, "lr_cycle_limit": _CYCLIC, "lr_k_decay": ("cosine", "poly"),
    **dict.fromkeys(("warmup_epochs", "warmup_lr", "lr_noise", "lr_noise_pct", "lr_noise_std"), _WARMING),
}

# Small-data preset for the built-in digits (8x8 images): the ImageNet recipe's mixup, random erasing,
# flips and 300 epochs would only slow it down. Any flag given on the command line still wins.
DATASET_PRESETS: Dict[str, Dict[str, Any]] = {
    "digits": dict(
        model="fcvit_tiny", img_size=32, crop_pct=1.0, batch_size=64, lr=2e-3, epochs=10, warmup_epochs=2,
        cooldown_epochs=0, warmup_lr=1e-4, min_lr=1e-5, drop_path=0.05, mixup=0.0, cutmix=0.0, reprob=0.0,
        hflip=0.0, aa=None, color_jitter=0.0, scale=[0.75, 1.0], ratio=[0.85, 1.15], smoothing=0.1,
        train_interpolation="bicubic", workers=1, output="output/train/digits-fcvit_tiny",
    ),
}

# --finetune: a published checkpoint on a small dataset. A fixed lr (not scaled by the batch) an order below
# the recipe's 1e-3 for batch 1024, as AdamW fine-tuning of ImageNet models uses; one warmup epoch, no cooldown,
# no mixup/cutmix (they need many epochs to pay off), one best checkpoint. Flags and -c values still win.
FINETUNE_PRESET: Dict[str, Any] = dict(lr=1e-4, warmup_epochs=1, warmup_lr=1e-6, cooldown_epochs=0, min_lr=1e-6,
                                       mixup=0.0, cutmix=0.0, keep_best=1)


class ModelKwargs(ParseKwargs):
    """timm's KEY=VALUE pairs; an item without '=' is one argparse line, not a ValueError traceback."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Optional[str] = None) -> None:
        bad = next((value for value in values if value and "=" not in value), None)
        if bad is not None:
            raise argparse.ArgumentError(self, f"expected KEY=VALUE pairs such as depths='(1,1,1,1)', got {bad!r}")
        super().__call__(parser, namespace, values, option_string)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("data", nargs="?", metavar="DATA",
                   help="folder holding train/<class>/* and val/<class>/* (or the root timm's --dataset expects)")
    g.add_argument("--data-dir", dest="data_dir", help="same as DATA (timm's spelling)")
    add_valued(g, [
        ("--dataset -d", None, "", None,
         "'' (image folder, default), 'digits' (built-in), or any timm.data.create_dataset name"),
        ("--model -m", None, "fcvit_tiny", None, "model name (default fcvit_tiny)"),
        ("--img-size", positive_int, None, None, "input image size (default: the model's 224)"),
        ("--input-size", positive_int, None, "N", "C H W, overrides --img-size", 3),
        ("--crop-pct", positive_float, None, None, "eval center-crop fraction (default: the model's)"),
        ("--mean", finite_float, None, "MEAN", "normalisation mean per channel (default: the model's, ImageNet's)",
         "+"),
        ("--std", positive_float, None, "STD", "normalisation std per channel (default: the model's, ImageNet's)", "+"),
        ("--interpolation", None, "", None, "eval resize interpolation (default: the model's bicubic)")])
    add_workers(g)
    hidden(g.add_argument("--pin-mem", action="store_true", default=True,
                          help="pin host memory (the original's flag: already the default on CUDA)"))
    g.add_argument("--no-pin-mem", dest="pin_mem", action="store_false",
                   help="do not pin host memory (pinned by default on CUDA)")
    g.add_argument("--skip-bad-images", action="store_true", help="log and skip images that cannot be decoded")
    g.add_argument("--num-classes", type=positive_int, default=None, help="classes (default: from the data)")
    add_device(g)
    add_precision(g)
    g.add_argument("--channels-last", action="store_true", help="channels-last memory layout")


def _add_model_and_optimizer(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("splits and model")
    add_valued(g, [
        ("--train-split", None, "train", None, "training split folder (default train)"),
        ("--val-split", None, "val", None, "validation split folder (default val; 'validation' also found)"),
        ("--drop", probability, 0.0, None, "dropout before the classifier (default 0)"),
        ("--drop-path", probability, None, None, "stochastic depth (default 0.1 for fcvit_tiny/b12/b24, 0.2 for b48)")])
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ModelKwargs, metavar="KEY=VALUE",
                   help="extra model constructor arguments, e.g. depths='(1,1,1,1)'")
    g.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")
    g.add_argument("--compile", "--torchcompile", dest="compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("optimization")
    add_batch_size(g, 128, ", the paper's: 8 GPUs x 128 = 1024 per step")
    add_valued(g, [
        ("-vb --validation-batch-size", positive_int, None, None, "eval batch size (default -b)"),
        ("--opt", None, "adamw", None, "timm optimizer name (default adamw, the paper's; timm's sgd)"),
        ("--opt-eps", positive_float, None, "EPS", "optimizer epsilon (default: the optimizer's)"),
        ("--opt-betas", probability, None, "BETA", "optimizer betas (default: the optimizer's)", "+"),
        ("--momentum", non_negative_float, 0.9, "M", "SGD-type momentum (default %(default)s)"),
        ("--weight-decay", non_negative_float, 0.05, "WD", "weight decay (default 0.05, the paper's; timm's 2e-5)"),
        ("--clip-grad", positive_float, None, None, "gradient clipping threshold (default off)"),
        ("--clip-mode", None, "norm", None, "norm (default), value or agc")])


def _add_schedule(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("learning rate schedule")
    g.add_argument("--sched", default="cosine", choices=SCHEDULES, metavar="NAME",
                   help=f"timm lr schedule: {', '.join(SCHEDULES)} (default cosine)")
    g.add_argument("--sched-on-updates", action="store_true", help="step the schedule per update, not per epoch")
    add_valued(g, [
        ("--lr", positive_float, None, None, "learning rate (default lr-base x global batch / lr-base-size)"),
        ("--lr-base", positive_float, 1e-3, "LR", "lr for a global batch of --lr-base-size (default 1e-3; timm's 0.1)"),
        ("--lr-base-size", positive_int, 1024, "N", "global batch of --lr-base (default 1024; timm's 256)"),
        ("--lr-base-scale", None, "linear", "RULE", "linear (default) or sqrt (timm's default: by optimizer)"),
        ("--warmup-lr", non_negative_float, 1e-6, "LR", "lr the warmup starts at (default 1e-6; timm's 1e-5)"),
        ("--min-lr", non_negative_float, 1e-6, "LR", "lr at the schedule's end (default 1e-6; timm's 0)"),
        ("--epochs", positive_int, 300, "N", "epochs of the schedule, before cooldown (default 300)"),
        ("--start-epoch", non_negative_int, None, "N", "epoch to start at (default: 0 or the resumed one)"),
        ("--decay-epochs", positive_float, 90, None,
         "step schedule's period (default 90); wsd/rsqrt: decay length, below 1 a fraction (0.2 there)"),
        ("--decay-milestones", positive_int, [90, 180, 270], "EPOCH",
         "multistep schedule's epochs (default 90 180 270)", "+"),
        ("--decay-rate --dr", positive_float, 0.1, "RATE", "lr factor at each decay (default 0.1)"),
        ("--warmup-epochs", non_negative_int, 5, "N", "epochs of linear warmup (default 5)"),
        ("--cooldown-epochs", non_negative_int, 10, "N", "epochs at --min-lr after --epochs (default 10, the paper's; "
         "timm's 0)"),
        ("--patience-epochs", non_negative_int, 10, "N", "plateau scheduler's patience (default 10)"),
        ("--lr-noise", non_negative_float, None, "PCT", "lr noise on/off as fractions of the epochs (timm)", "+"),
        ("--lr-noise-pct", non_negative_float, 0.67, "PCT", "lr noise limit (default %(default)s)"),
        ("--lr-noise-std", non_negative_float, 1.0, "STD", "lr noise std (default %(default)s)"),
        ("--lr-cycle-mul", positive_float, 1.0, "MUL", "cycle length factor (default %(default)s)"),
        ("--lr-cycle-decay", positive_float, 0.5, "MUL", "lr factor per cycle (default %(default)s)"),
        ("--lr-cycle-limit", positive_int, 1, "N", "schedule cycles (default %(default)s)"),
        ("--lr-k-decay", positive_float, 1.0, "K", "k-decay of cosine/poly (default %(default)s)")])


def _add_augmentation(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("augmentation and regularization")
    g.add_argument("--no-aug", action="store_true", help="no training augmentation (overrides the flags below)")
    add_valued(g, [
        ("--scale", positive_float, [0.08, 1.0], "PCT", "random crop's area range (default 0.08 1)", 2),
        ("--ratio", positive_float, [3 / 4, 4 / 3], "R", "random crop's aspect range (default 3/4 4/3)", 2),
        ("--hflip", probability, 0.5, "P", "horizontal flip chance (default 0.5)"),
        ("--vflip", probability, 0.0, "P", "vertical flip chance (default 0)"),
        ("--color-jitter", non_negative_float, 0.4, "F", "colour jitter, unused with --aa (default 0.4)"),
        ("--aa", None, "rand-m9-mstd0.5-inc1", None,
         "timm auto-augment policy, '' off (default rand-m9-mstd0.5-inc1, the paper's; timm's off)"),
        ("--reprob", probability, 0.25, "P", "random erasing (default 0.25, the paper's; timm's 0)"),
        ("--remode", None, "pixel", None, "random erasing fill: pixel (default), rand or const"),
        ("--recount", positive_int, 1, "N", "erased boxes per image (default 1)"),
        ("--aug-splits", non_negative_int, 0, "N", "N augmentation splits per image (AugMix-style: the first clean)")])
    g.add_argument("--jsd-loss", "--jsd", dest="jsd_loss", action="store_true",
                   help="Jensen-Shannon divergence + cross-entropy over the splits (needs --aug-splits)")
    g.add_argument("--resplit", action="store_true", help="no random erasing on the first (clean) split")
    g.add_argument("--erase-per-image", action="store_true",
                   help="random erasing on each image in the loader, before mixup/cutmix (default: on the "
                        "normalised batch after them, as the original's prefetcher)")
    g.add_argument("--bce-loss", action="store_true", help="binary cross-entropy instead of softmax cross-entropy")
    add_valued(g, [
        ("--bce-target-thresh", probability, None, None, "binarize BCE targets above this value"),
        ("--mixup", non_negative_float, 0.8, "A", "mixup alpha (default 0.8, the paper's; timm's 0)"),
        ("--cutmix", non_negative_float, 1.0, "A", "cutmix alpha (default 1.0, the paper's; timm's 0)"),
        ("--cutmix-minmax", probability, None, "PCT", "cutmix box range, replaces the alpha (default off)", "+"),
        ("--mixup-prob", probability, 1.0, "P", "chance of mixup/cutmix per batch (default 1.0)"),
        ("--mixup-switch-prob", probability, 0.5, "P", "chance of cutmix when both are on (default 0.5)"),
        ("--mixup-mode", None, "batch", None, "batch (default), pair or elem"),
        ("--mixup-off-epoch", non_negative_int, 0, "N", "epoch mixup/cutmix stop at (default 0: never)"),
        ("--smoothing", probability, 0.1, "EPS", "label smoothing (default 0.1)"),
        ("--train-interpolation", None, "random", None, "random (default), bilinear or bicubic")])
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (evaluated and ranked)")
    g.add_argument("--model-ema-decay", type=probability, default=0.9998, metavar="D",
                   help="EMA decay per step (default 0.9998)")
    g.add_argument("--model-ema-force-cpu", action="store_true", help="keep the EMA on the CPU, not evaluated (as the original)")


def _add_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("BatchNorm across processes")
    g.add_argument("--dist-bn", default="reduce", choices=["reduce", "broadcast", ""],
                   help="before each evaluation: average BatchNorm statistics over processes (reduce, default as "
                        "the original), copy rank 0's (broadcast) or leave them ('')")
    g.add_argument("--no-ddp-bb", action="store_true", help="DDP does not broadcast rank 0's BatchNorm buffers")
    g = p.add_argument_group("run")
    add_training_options(g, "train", 4, "--eval-metric, as the original train.py", save_interval=0)
    g.add_argument("--experiment", default="", metavar="NAME", help="write to OUTPUT/NAME (default output/train/NAME)")
    g.add_argument("--initial-checkpoint", default="", metavar="CKPT",
                   help="start from these weights (default: random); a classifier for another number of classes "
                        "is re-initialised")
    g.add_argument("--no-resume-opt", action="store_true", help="resume the weights but a fresh optimizer and scaler")
    g.add_argument("--finetune", action="store_true",
                   help="fine-tuning preset for a small dataset: " + ", ".join(
                       f"--{k.replace('_', '-')} {v:g}" for k, v in FINETUNE_PRESET.items()) + " (flags given win)")
    g.add_argument("--eval-metric", default="top1", choices=("top1", "top5", "loss"),
                   help="metric ranking the best checkpoints (top1, top5, loss; default top1)")


#: flags whose change makes a resumed run another run (refused unless --resume-override, which applies them)
RUN_SHAPING = (
    "model", "model_kwargs", "num_classes", "dataset", "data", "train_split", "img_size", "input_size",
    "initial_checkpoint", "batch_size", "opt", "opt_eps", "opt_betas", "momentum", "weight_decay", "lr", "lr_base",
    "lr_base_size", "lr_base_scale", "sched", "sched_on_updates", "epochs", "warmup_lr", "warmup_epochs", "min_lr",
    "cooldown_epochs", "decay_epochs", "decay_milestones", "decay_rate", "patience_epochs", "lr_noise",
    "lr_noise_pct", "lr_noise_std", "lr_cycle_mul", "lr_cycle_decay", "lr_cycle_limit", "lr_k_decay", "seed", "drop",
    "drop_path", "smoothing", "mixup", "cutmix", "aa", "reprob", "erase_per_image", "aug_splits", "jsd_loss",
    "bce_loss", "model_ema", "model_ema_decay", "eval_metric")


def build_parser(parser: Optional[CommandParser] = None) -> CommandParser:
    """The ``fcvit train`` flags; parsing layers the dataset preset and ``--config`` under the command line."""
    p = parser or CommandParser(prog="fcvit train")
    p.add_argument("-c", "--config", default="", metavar="FILE", help="YAML file of flag values (keys as dest names)")
    add_data_arguments(p)
    _add_model_and_optimizer(p)
    _add_schedule(p)
    _add_augmentation(p)
    _add_run(p)
    add_original_flags(p, "train")
    p.run_shaping(RUN_SHAPING, new_run_only=("initial_checkpoint",))
    p.layers = layered_defaults
    return p


def layered_defaults(parser: CommandParser, args: argparse.Namespace) -> Dict[str, Any]:
    layered: Dict[str, Any] = dict(DATASET_PRESETS.get(args.dataset, {}))
    config = load_config(args.config, parser) if args.config else {}
    if args.finetune or config.get("finetune"):
        layered.update(FINETUNE_PRESET)
    return dict(layered, **config)


def load_config(path: str, parser: CommandParser) -> Dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        what = "is a folder, not a YAML file" if os.path.isdir(path) else "does not exist"
        raise UserError(f"Config file '{path}' {what}: check the path.")
    with open(path) as f:
        try:
            values = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"Config file '{path}' is not valid YAML ({str(exc).splitlines()[0]}): fix it.") from None
    if not isinstance(values, dict):
        raise UserError(f"Config file '{path}' must map flag names to values.")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in values if k not in parser.flags or k in ("help", "config"))
    if unknown:
        raise UserError(f"Config file '{path}' has unknown keys ({', '.join(unknown)}): use the flag names, "
                        "e.g. batch_size or weight_decay.")
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = parser.config_value(key, value)
        except argparse.ArgumentTypeError as exc:
            flag = max(parser.flags[key][0].option_strings, key=len, default=key.upper())
            raise UserError(f"Config file '{path}' has a wrong value for {key} ({exc}): write it as {flag} takes "
                            "it on the command line.") from None
    return checked


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    resolve_data_source(args, "train/<class>/* and val/<class>/*, or --dataset digits for the built-in dataset")
    notes = resolve_original_flags(args, "train")
    if args.finetune:
        notes.append("--finetune: " + ", ".join(f"--{k.replace('_', '-')} {getattr(args, k):g}" for k in FINETUNE_PRESET)
                     + " (the preset, with the values given on the command line or in -c).")
    if args.experiment:
        args.output = os.path.join(args.output or os.path.join("output", "train"), args.experiment)
        notes.append(f"--experiment {args.experiment}: outputs in {args.output} (OUTPUT/NAME, as timm).")
    if not args.output:
        args.output = os.path.join("output", "train", args.model)
    _check_splits(args)
    from ..tasks.classification.train import check_model_kwargs

    check_model_kwargs(args.model, args.model_kwargs)
    notes.extend(_check_schedule_options(args))
    args.compat_notes = notes
    if args.aa in ("", "none", "None"):
        args.aa = None
    args.resume = "" if args.resume in ("", "none", "None") else args.resume
    return args


def resolve_data_source(args: argparse.Namespace, holding: str) -> None:
    """DATA and --data-dir are one setting, and the built-in digits read no folder: contradictions are refused, and
    an image folder dataset without DATA (which ``holding`` describes)."""
    if args.data and args.data_dir and os.path.abspath(args.data) != os.path.abspath(args.data_dir):
        raise UserError(f"DATA '{args.data}' and --data-dir '{args.data_dir}' name two folders: pass one of them.")
    args.data = args.data or args.data_dir
    if args.dataset == "digits" and args.data:
        raise UserError(f"--dataset digits is built in and reads no folder, but DATA '{args.data}' is given too: "
                        "leave out --dataset digits to use the folder, or DATA to use the digits.")
    if args.dataset in ("", "folder", "imagefolder") and not args.data:
        raise UserError(f"No DATA folder given: pass a folder holding {holding}.")


def _check_schedule_options(args: argparse.Namespace) -> list:
    """Refuse what timm's schedules cannot do; note the options given that the schedule does not read (timm
    would drop them without a word)."""
    explicit = set(getattr(args, "_explicit", set()))
    if args.sched == "plateau" and args.sched_on_updates:
        raise UserError("--sched plateau steps once per epoch, on the validation metric: leave out "
                        "--sched-on-updates, or pick a schedule that steps per update.")
    if args.sched in ("wsd", "rsqrt") and "decay_epochs" not in explicit and args.decay_epochs == 90:
        args.decay_epochs = 0.2  # timm's default there: decay over the last fifth of the run
    unused = [name for name in SCHEDULE_OPTIONS if name in explicit and not schedule_reads(args, name)]
    if not unused:
        return []
    flags = ", ".join("--" + name.replace("_", "-") for name in unused)
    return [f"--sched {args.sched} does not read {flags} here: {'it has' if len(unused) == 1 else 'they have'} no "
            "effect on this run (docs/reproduction.md lists which schedule reads which option)."]


def schedule_reads(args: argparse.Namespace, option: str) -> bool:
    """Whether the schedule uses ``option``: the cycle options act from a second cycle on, the noise shape only
    with ``--lr-noise``."""
    if args.sched not in SCHEDULE_OPTIONS[option]:
        return False
    if option in ("lr_cycle_mul", "lr_cycle_decay"):
        return args.lr_cycle_limit > 1
    if option in ("lr_noise_pct", "lr_noise_std"):
        return bool(args.lr_noise)
    return True


def _check_splits(args: argparse.Namespace) -> None:
    """An --output inside DATA's train or val folder would be read as an empty class, by this run and the next;
    the augmentation split options must fit together."""
    image_folder = args.data and args.dataset in ("", "folder", "imagefolder")
    for split in (args.train_split, args.val_split) if image_folder else ():
        folder = os.path.abspath(os.path.join(args.data, split))
        if os.path.commonpath([folder, os.path.abspath(args.output)]) == folder:
            raise UserError(f"--output '{args.output}' lies inside the '{split}' split of DATA, where it would be "
                            f"read as a class: choose an --output outside '{folder}'.")
    if args.aug_splits == 1:
        raise UserError(f"--aug-splits {args.aug_splits} makes no split: pass 0 (off) or at least 2.")
    if args.jsd_loss and args.aug_splits < 2:
        raise UserError("--jsd-loss compares augmentation splits: add --aug-splits 3 (e.g. with --aa "
                        "augmix-m5-w4-d2), as the original required.")
    if args.aug_splits and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        raise UserError("--aug-splits cannot be combined with mixup/cutmix (as in the original): add --mixup 0 "
                        "--cutmix 0.")
    if args.aug_splits and args.no_aug:
        raise UserError("--aug-splits needs augmentation: leave out --no-aug.")
    if args.jsd_loss and args.bce_loss:
        raise UserError("--jsd-loss and --bce-loss are two different losses: pass one of them.")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a classifier (image folder, timm dataset or built-in digits); torchrun-ready",
        description="Train with the published FCViT recipe (AdamW, cosine, RandAugment, mixup/cutmix, ...). "
                    "Run under torchrun for DDP. Killed runs continue with --resume auto.")
    build_parser(p).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return report(train_from_args(finalize_args(args)))


def train_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    from ..tasks.classification.train import train

    vars(args).pop("func", None), vars(args).pop("_explicit", None)
    return train(args)


def report(result: Dict[str, Any]) -> int:
    if not is_main_process():
        return 0
    if result.get("interrupted"):
        print(f"Stopped early; resume with --resume auto. Last checkpoint: {result['last']}")
        return 0
    metrics = result.get("metrics")
    if metrics:
        print(f"val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}")
    best = result.get("best_value")
    if best is not None:
        print(f"best {result['metric']} {best:.2f} -> {result['best']}")
    print(f"outputs in {result['output']} (last.pth.tar, summary.csv)")
    return 0
