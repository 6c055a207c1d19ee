"""The option vocabulary of every ``fcvit`` subcommand: one name, default and meaning for each idea (``-b`` per
process, ``--seed`` 42, ``--output`` output/<command>/<model>); numbers go through the checked types below, so a
value out of range is one argparse line."""
from __future__ import annotations

import argparse
import logging
import math
import os
import reprlib
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

SEED = 42
WORKERS = 4


# -- value types: each flag's range is checked where it is read, so a wrong value ends in one argparse line
def _checked(kind: Callable[[str], Any], what: str, low: float = -math.inf, high: float = math.inf,
             strict: bool = False) -> Callable[[Any], Any]:
    """``kind`` (int or float) from ``low`` to ``high`` (``strict``: above ``low``); NaN and infinities never."""
    def check(text: Any) -> Any:
        text = str(text).strip()
        try:
            value = kind(text)
        except ValueError:
            try:
                shown = text if math.isfinite(float(text)) else repr(text)  # a number, but not a whole one
            except ValueError:
                shown = repr(text)
            raise argparse.ArgumentTypeError(f"expected {what}, got {shown}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if not low <= value <= high or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value:g}")
        return value
    return check


whole_number = _checked(int, "a whole number")
positive_int = _checked(int, "a whole number of at least 1", low=1)
non_negative_int = _checked(int, "a whole number of at least 0", low=0)
finite_float = _checked(float, "a finite number")
positive_float = _checked(float, "a finite number above 0", low=0, strict=True)
non_negative_float = _checked(float, "a finite number of at least 0", low=0)
probability = _checked(float, "a number from 0 to 1", low=0, high=1)  # probabilities, fractions, drop rates


# -- the parser: explicit flags recorded and defaults layered with argparse's public interface only
class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that remembers its flags; ``layers(parser, args)`` returns values (a preset, a YAML
    file) that become the defaults under a second parse of the command line. ``args._explicit``: the dests the
    command line gave, found by parsing into a namespace of markers, which argparse leaves where nothing is given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: Dict[str, List[argparse.Action]] = {}  # dest -> its actions, for checking config values
        self.layers: Optional[Callable[["CommandParser", argparse.Namespace], Dict[str, Any]]] = None
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._record(super().add_argument(*args, **kwargs))

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument
        group.add_argument = lambda *a, **kw: self._record(add(*a, **kw))
        return group

    def _record(self, action: argparse.Action) -> argparse.Action:
        self.flags.setdefault(action.dest, []).append(action)
        return action

    def run_shaping(self, names: Sequence[str], new_run_only: Sequence[str] = ()) -> None:
        """Declare the dests whose change makes a resumed run another run (refused unless --resume-override)
        and those only a new run may change, as ``args.run_shaping``/``args.new_run_only``."""
        unknown = sorted(set(names).union(new_run_only) - set(self.flags))
        if unknown:
            raise ValueError(f"run-shaping names without a flag: {', '.join(unknown)}")
        self.set_defaults(run_shaping=tuple(names), new_run_only=tuple(new_run_only))

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
                         ) -> Tuple[argparse.Namespace, List[str]]:
        if self.layers is None:
            return super().parse_known_args(args, namespace)
        argv = sys.argv[1:] if args is None else list(args)
        base = dict(vars(namespace)) if namespace is not None else {}
        parsed, rest = super().parse_known_args(argv, argparse.Namespace(**base))
        unset = object()
        marked, _ = super().parse_known_args(argv, argparse.Namespace(**{**dict.fromkeys(vars(parsed), unset),
                                                                          **base}))
        layered = self.layers(self, parsed)
        if layered:
            saved = {key: self.get_default(key) for key in layered}
            self.set_defaults(**layered)
            try:
                parsed, rest = super().parse_known_args(argv, argparse.Namespace(**base))
            finally:
                self.set_defaults(**saved)
        parsed._explicit = {k for k, v in vars(marked).items() if v is not unset and v is not None and k not in base}
        if namespace is not None:
            vars(namespace).update(vars(parsed))
            parsed = namespace
        return parsed, rest

    def config_value(self, key: str, value: Any) -> Any:
        """A YAML value for ``key`` as the command line would give it: its shape checked here (argparse cannot
        see YAML's types), then parsed by argparse with the flag's own type, choices and count."""
        from timm.utils import ParseKwargs

        action, shown = self.flags[key][0], reprlib.repr(value)
        option = max(action.option_strings, key=len) if action.option_strings else ""
        if action.nargs == 0 or isinstance(action, ParseKwargs):  # a switch, or KEY=VALUE pairs
            switch = action.nargs == 0
            if not isinstance(value, bool if switch else dict):
                expected = "true or false" if switch else "a mapping of names to values"
                raise argparse.ArgumentTypeError(f"expected {expected}, got {shown}")
            return value
        if value is None and (action.default is None or action.type is None):
            return action.default if action.default is None else ""  # null: unset, as '' on the command line
        listed = action.nargs not in (None, "?")
        items = value if isinstance(value, list) and listed else [value]
        if listed and (len(items) != action.nargs if isinstance(action.nargs, int) else not items):
            count = action.nargs if isinstance(action.nargs, int) else "one or more"
            raise argparse.ArgumentTypeError(f"expected a list of {count} values, got {shown}")
        for item in items:
            if isinstance(item, (list, dict)):
                raise argparse.ArgumentTypeError(f"expected {'plain values' if listed else 'one value'}, got {shown}")
            if action.type is None and not isinstance(item, str):
                raise argparse.ArgumentTypeError(f"expected text in quotes, got {reprlib.repr(item)}")
            if action.choices is not None and action.type is None and item not in action.choices:
                choices = ", ".join(repr(c) for c in action.choices)
                raise argparse.ArgumentTypeError(f"expected one of {choices}, got {reprlib.repr(item)}")
        texts = [str(item) for item in items]
        tokens = [option, *texts] if listed else [f"{option}={texts[0]}" if option else texts[0]]
        self.exit_on_error = False
        try:
            return getattr(super().parse_known_args(tokens, argparse.Namespace())[0], key)
        except argparse.ArgumentError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
        finally:
            self.exit_on_error = True


def note(text: str) -> None:
    """Log a one-line note from the first process only (under torchrun every process parses the flags)."""
    if is_main_process():
        logging.getLogger("fcvit").info(text)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_results_file(args: argparse.Namespace) -> None:
    """Refuse an existing --results-file (without --overwrite) or one that is the checkpoint, before any work."""
    from ..files import check_outputs

    if args.results_file:
        check_outputs([args.results_file], [args.checkpoint], args.overwrite, "choose another --results-file",
                      "checkpoint")


# -- the shared flags
def add_valued(p: Any, rows: Sequence[tuple]) -> None:
    """Flags that take a value, one ``(flags, type, default, metavar, help[, nargs])`` row each, so that the
    long commands read as a table."""
    for flags, kind, default, metavar, text, *nargs in rows:
        p.add_argument(*flags.split(), type=kind, default=default, metavar=metavar, nargs=(nargs or [None])[0],
                       help=text)


def add_batch_size(p: Any, default: int, note: str = "") -> None:
    p.add_argument("-b", "--batch-size", type=positive_int, default=default,
                   help=f"images per step per process (default {default}{note}); the global batch is -b x processes")


def add_workers(p: Any) -> None:
    p.add_argument("-j", "--workers", type=non_negative_int, default=WORKERS,
                   help=f"data loading processes per process (default {WORKERS}; 0 loads in the main process)")


def cap_workers(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """The default ``-j`` above this process's share of the CPUs only makes the workers compete (PyTorch warns
    each run): capped to the share, with a note; a ``-j`` the user gives is kept."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    given = any(w.startswith(("-j", "--workers")) for w in argv)
    if getattr(args, "workers", 0) > share and not given:
        note(f"-j {args.workers}: {cpus} CPU(s) here, so {share} loader worker(s) per process (the most that do "
             "not compete); pass -j to choose.")
        args.workers = share


def add_device(p: Any) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (default: CUDA if present, else CPU), cpu, cuda or cuda:N; under torchrun each process "
                        "takes its own GPU")


def add_overwrite(p: Any, what: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} (without it the command refuses; an input file is never written over)")


def add_seed(p: Any, what: str = "random seed") -> None:
    p.add_argument("--seed", type=whole_number, default=SEED, help=f"{what} (default {SEED})")


def add_results(p: Any, what: str, file_help: Optional[str] = None) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")
    p.add_argument("--results-file", default="", metavar="PATH", help=file_help or f"also write {what} to PATH")
    add_overwrite(p, "an existing --results-file")


def add_images(p: Any) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images; one that cannot "
                                                               "be read is reported and skipped (exit status 1)")


def add_weights(p: Any, what: str, prefix: str = "") -> None:
    """``--checkpoint`` and ``--pretrained`` (``--PREFIX-checkpoint``... where a command loads two models)."""
    flag = f"--{prefix}-" if prefix else "--"
    p.add_argument(f"{flag}checkpoint", metavar="FILE", help=f"local {what} checkpoint (.pth, .pth.tar, .safetensors)")
    p.add_argument(f"{flag}pretrained", action="store_true",
                   help=f"{what} weights from timm's hub (needs a network; fails at once without one)")


def add_backbone(p: Any, stages: Any) -> None:
    """The backbone flags of ``detect train`` and ``segment train``; ``stages`` is the nargs of its shape flags."""
    p.add_argument("--backbone", default="fcvit_b12", help="FCViT variant (default fcvit_b12)")
    p.add_argument("--pretrained-backbone", metavar="CKPT",
                   help="ImageNet FCViT checkpoint to start the backbone from (strongly recommended)")
    p.add_argument("--backbone-depths", type=positive_int, nargs=stages, metavar="N",
                   help="custom blocks per stage instead of the variant's (small experiments)")
    p.add_argument("--backbone-dims", type=positive_int, nargs=stages, metavar="C", help="custom channels per stage")
    p.add_argument("--drop-path", type=probability, default=0.0, help="backbone drop-path rate (default 0)")
    p.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--clip-grad", type=positive_float, default=None, help="clip the gradient norm (default off, as the paper)")


def add_precision(p: Any, amp_help: str = "mixed precision (bfloat16 where supported, else float16)",
                  dtype_help: str = "auto (default), bfloat16 or float16 (float16 adds a GradScaler in training); "
                                    "bfloat16 or float16 turn mixed precision on without --amp") -> None:
    p.add_argument("--amp", action="store_true", help=amp_help)
    p.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "bf16", "float16", "fp16"),
                   metavar="DTYPE", help=dtype_help)


def add_runtime_options(p: Any, **precision: str) -> None:
    """Precision, workers and device: what every evaluating or training command takes."""
    add_precision(p, **precision)
    add_workers(p)
    add_device(p)


def add_training_options(p: Any, command: str, keep_best: int, metric: str, save_interval: int,
                         eval_interval: Optional[Tuple[int, str]] = None, sync_bn: Optional[str] = "") -> None:
    """The flags every training command shares. ``sync_bn``: a note for the help of ``--sync-bn``; None: the
    command defines that flag itself."""
    p.add_argument("--output", default="", metavar="DIR",
                   help=f"folder for checkpoints, summary.csv and log.txt (default output/{command}/<model>)")
    p.add_argument("--resume", default="auto", metavar="auto|CKPT|''",
                   help="'auto' (default) continues from OUTPUT/last.pth.tar when it exists, a path continues from "
                        "that checkpoint, '' starts fresh")
    p.add_argument("--resume-override", action="store_true",
                   help="continue a run with settings that differ from its own (lr, length, schedule, batch, "
                        "data, model): without it such a resume is refused; with it the new values apply")
    p.add_argument("--keep-best", "--checkpoint-hist", dest="keep_best", type=non_negative_int, default=keep_best,
                   help=f"best checkpoints to keep by {metric} (default {keep_best}; --checkpoint-hist is timm's name)")
    if eval_interval is not None:
        default, unit = eval_interval
        p.add_argument("--eval-interval", type=non_negative_int, default=default, metavar="N",
                       help=f"evaluate and rank checkpoints by {metric} every N {unit} (default {default}; "
                            "0 = at the end)")
    p.add_argument("--save-interval", "--recovery-interval", dest="save_interval", type=non_negative_int,
                   default=save_interval, metavar="N",
                   help=f"also save OUTPUT/last.pth.tar every N steps (default {save_interval}; 0 = at evaluations "
                        "and the end); --recovery-interval is timm's name")
    p.add_argument("--log-interval", type=non_negative_int, default=50, metavar="N",
                   help="log the running losses every N steps (default 50; 0 = at evaluations only)")
    if sync_bn is not None:
        p.add_argument("--sync-bn", action="store_true",
                       help=f"every BatchNorm a SyncBatchNorm under torchrun: statistics over all GPUs{sync_bn}")
    add_seed(p)
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs to OUTPUT/tensorboard")
