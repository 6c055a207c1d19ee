#!/usr/bin/env python3
"""The paper's ``python3 validate.py DATA --model MODEL -b 128 --checkpoint CKPT``, run by ``fcvit validate``.

Kept at the repository root so that the original README's command line works verbatim; every flag of
the original (timm 0.5) validate.py is accepted, mapped or refused as docs/reproduction.md lists.
"""
import sys


def main() -> None:
    try:
        from fcvit.cli.main import main as fcvit_main
    except ImportError as exc:
        sys.exit(f"validate.py: the fcvit package cannot be imported ({exc}): run `make demo` once in this "
                 "folder, then `source .venv/bin/activate`, and run the command again.")
    fcvit_main(["validate", *sys.argv[1:]])


if __name__ == "__main__":
    main()
