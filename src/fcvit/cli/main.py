"""Entry point of the ``fcvit`` command.

Each subcommand lives in its own module with ``register(subparsers)``, which adds its parser and sets
``func``. Heavy imports stay inside the ``func`` so that ``fcvit --help`` starts fast. Errors the user
can fix (``UserError``) print as one sentence and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from ..errors import UserError

# subcommand modules, in the order `fcvit --help` lists them
COMMAND_MODULES = [
    "models",
    "predict",
    "train",
    "validate",
    "plot",
    "demo",
    "visualize",
    "analyze",
    "segment",
    "detect",
    "benchmark",
    "export",
    "convert",
]


# commands that run many training or inference steps in their own process: glibc keeps the memory
# they free between steps mapped (fcvit.engine.allocator; FCVIT_KEEP_FREED_MEMORY=0 turns it off)
MEMORY_HUNGRY_COMMANDS = {"train", "validate", "demo", "segment", "detect", "benchmark", "predict", "analyze"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcvit",
        description="FCViT: train, evaluate, benchmark and inspect fully convolutional vision transformers.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"fcvit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in MEMORY_HUNGRY_COMMANDS:
        from ..engine.allocator import keep_freed_memory

        keep_freed_memory()
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"fcvit {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"fcvit {args.command}: interrupted.", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(result or 0))


if __name__ == "__main__":
    main()
