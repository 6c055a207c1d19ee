#!/usr/bin/env python3
"""The paper's ``train.py DATA ...`` that ``distributed_train.sh`` starts in every process, run by ``fcvit train``.

Kept at the repository root so that the original README's command line works verbatim; every flag of
the original (timm 0.5) train.py is accepted, mapped or refused as docs/reproduction.md lists.
"""
import sys


def main() -> None:
    try:
        from fcvit.cli.main import main as fcvit_main
    except ImportError as exc:
        sys.exit(f"train.py: the fcvit package cannot be imported ({exc}): run `make demo` once in this "
                 "folder, then `source .venv/bin/activate`, and run the command again.")
    fcvit_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
