"""Shared pieces of the training tests: a tiny generated image-folder dataset and a tiny FCViT."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
from PIL import Image

# a 4-block FCViT (one block per stage) so a CPU step takes milliseconds
TINY_MODEL = ["--model", "fcvit_tiny", "--model-kwargs", "depths=(1,1,1,1)", "dims=(16,16,32,32)"]
# deterministic and small: no workers, 32 px, few images, flags of the recipe that need bigger data off
FAST = ["--img-size", "32", "-b", "4", "-j", "0", "--device", "cpu", "--warmup-epochs", "1", "--cooldown-epochs", "0",
        "--lr", "2e-3", "--reprob", "0.25", "--checkpoint-hist", "2"]

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_folder_dataset(root: Path, classes: Sequence[str] = tuple(COLOURS), train_per_class: int = 4,
                        val_per_class: int = 2, size: int = 36) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``: noisy images tinted by class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array(COLOURS.get(name, (128, 128, 128)), dtype=np.float32)
            for i in range(count):
                pixels = colour + rng.normal(0, 30, size=(size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{name}_{i}.png")
    return root


def cli_env() -> dict:
    """Environment for `fcvit` subprocesses: one thread, the source tree importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def fcvit_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "fcvit", *args]


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory) -> Path:
    """One generated dataset per test module (import ``clean_data, data`` to use them)."""
    return make_folder_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def data(clean_data, tmp_path) -> Path:
    """A private copy each test may break."""
    return Path(shutil.copytree(clean_data, tmp_path / "data"))
