"""The option vocabulary of every ``fcvit`` subcommand: one name, default and meaning for each idea.

- ``-b/--batch-size``: images per step PER PROCESS (as timm and torchvision); runs log the global batch.
- ``-j/--workers``: data-loading processes per process (``--workers`` alone is the same flag).
- ``--device``: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
- ``--seed``: 42 everywhere (the original ``train.py``'s).
- ``--resume``: ``auto`` continues from ``OUTPUT/last.pth.tar`` when it exists; a path; ``''`` starts fresh;
  ``--resume-override`` accepts run-shaping flags that differ from the resumed run's.
- ``--overwrite``: replace an existing output (an input is never written over).
- ``--keep-best``: best checkpoints to keep (``--checkpoint-hist`` is timm's spelling of the same flag).
- ``--json`` prints results as JSON on stdout; ``--results-file PATH`` writes them to a file.
- ``--amp``/``--amp-dtype``: mixed precision; ``--tensorboard``: mirror ``summary.csv`` to TensorBoard.
- Numbers go through the checked types below, so a value out of range is one argparse line, exit 2.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Optional

SEED = 42
WORKERS = 4


# -- value types: each flag's range is checked where it is read, so a wrong value ends in one argparse line
def _number(text: Any, kind: Callable[[str], Any], what: str) -> Any:
    """``text`` as ``kind`` (int or float); NaN and infinities are never a setting."""
    try:
        value = kind(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {str(text)!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {str(text)!r}")
    return value


def positive_int(text: Any) -> int:
    """A whole number of at least 1 (sizes, counts, epochs)."""
    value = _number(text, int, "a whole number of at least 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def non_negative_int(text: Any) -> int:
    """A whole number of at least 0 (0 usually meaning off)."""
    value = _number(text, int, "a whole number of at least 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {value}")
    return value


def finite_float(text: Any) -> float:
    """Any finite number (no NaN or infinity)."""
    return _number(text, float, "a finite number")


def positive_float(text: Any) -> float:
    """A finite number above 0 (learning rates, powers, thresholds)."""
    value = _number(text, float, "a finite number above 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {value:g}")
    return value


def non_negative_float(text: Any) -> float:
    """A finite number of at least 0 (weight decay, rates that 0 turns off)."""
    value = _number(text, float, "a finite number of at least 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of at least 0, got {value:g}")
    return value


def probability(text: Any) -> float:
    """A number in [0, 1] (probabilities, fractions, drop rates)."""
    value = _number(text, float, "a number from 0 to 1")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value:g}")
    return value


def add_batch_size(p: argparse.ArgumentParser, default: int, note: str = "") -> None:
    p.add_argument("-b", "--batch-size", type=positive_int, default=default,
                   help=f"images per step per process (default {default}{note}); the global batch is -b x processes")


def add_workers(p: argparse.ArgumentParser, default: int = WORKERS) -> None:
    p.add_argument("-j", "--workers", type=non_negative_int, default=default,
                   help=f"data loading processes per process (default {default}; 0 loads in the main process)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default auto); under torchrun "
                        "each process takes its own GPU")


def add_overwrite(p: argparse.ArgumentParser, what: str = "existing output files") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} (without it the command refuses; an input file is never written over)")


def add_seed(p: argparse.ArgumentParser, what: str = "random seed") -> None:
    p.add_argument("--seed", type=int, default=SEED, help=f"{what} (default {SEED})")


def add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", default="auto", metavar="auto|CKPT|''",
                   help="'auto' (default) continues from OUTPUT/last.pth.tar when it exists, a path continues from "
                        "that checkpoint, '' starts fresh")
    p.add_argument("--resume-override", action="store_true",
                   help="continue a run with settings that differ from its own (lr, length, schedule, batch, "
                        "data, model): without it such a resume is refused; with it the new values apply")


def add_keep_best(p: argparse.ArgumentParser, default: int, metric: str) -> None:
    p.add_argument("--keep-best", "--checkpoint-hist", dest="keep_best", type=non_negative_int, default=default,
                   help=f"best checkpoints to keep by {metric} (default {default}; --checkpoint-hist is timm's name)")


def add_results(p: argparse.ArgumentParser, what: str, file_help: Optional[str] = None) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")
    p.add_argument("--results-file", default="", metavar="PATH", help=file_help or f"also write {what} to PATH")
    add_overwrite(p, "an existing --results-file")


def add_precision(p: argparse.ArgumentParser, training: bool) -> None:
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (bfloat16 where supported, else float16)" if training
                   else "mixed precision inference")
    p.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "bf16", "float16", "fp16"),
                   metavar="DTYPE", help="auto, bfloat16 or float16 (float16 adds a GradScaler in training; default "
                                         "auto); bfloat16 or float16 turn mixed precision on without --amp")


def add_tensorboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs to OUTPUT/tensorboard")


def add_runtime_options(p: argparse.ArgumentParser, training: bool) -> None:
    """What every dense-prediction command takes: precision, workers, device; training also resume, seed,
    TensorBoard."""
    if training:
        add_resume(p)
    add_precision(p, training)
    add_workers(p)
    add_device(p)
    if training:
        add_seed(p)
        add_tensorboard(p)

