"""``python -m fcvit`` (and ``torchrun -m fcvit train ...``) run the ``fcvit`` command."""
from .cli.main import main

if __name__ == "__main__":
    main()
