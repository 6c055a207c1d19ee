"""The ``fcvit`` command: each subcommand's module ``register``s its parser and ``func``, whose heavy imports
stay inside so that ``fcvit --help`` starts fast; a ``UserError`` prints as one sentence, exit status 2."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from ..errors import UserError
from .options import CommandParser, cap_workers

# subcommand modules, in the order `fcvit --help` lists them
COMMAND_MODULES = ["models", "predict", "train", "validate", "plot", "demo", "visualize", "explore", "analyze",
                   "segment", "detect", "benchmark", "export", "convert"]

# commands of many steps: glibc keeps the memory they free mapped (fcvit.engine.allocator)
MEMORY_HUNGRY_COMMANDS = {"train", "validate", "demo", "segment", "detect", "benchmark", "predict", "analyze"}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fcvit", description="FCViT: train, evaluate, benchmark and inspect fully convolutional vision transformers.")
    parser.add_argument("--version", action="version", version=f"fcvit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser, required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if not word.startswith("-")), "")
    try:
        args = build_parser().parse_args(argv)  # a --config file is read (and may be refused) here
        cap_workers(args, argv)
        if args.command in MEMORY_HUNGRY_COMMANDS:
            from ..engine.allocator import keep_freed_memory

            keep_freed_memory()
        result = args.func(args)
    except UserError as exc:
        print(f"fcvit {command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:
        from ..engine.distributed import lost_peer

        if not lost_peer(exc):
            raise
        print(f"fcvit {command}: error: another process of this run stopped ({str(exc).splitlines()[0][:160]}); its "
              "own output says why: rerun the same command to continue from the last save.", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"fcvit {command}: interrupted.", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(result or 0))


if __name__ == "__main__":
    main()
