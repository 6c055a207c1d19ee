"""A user's first day: fine-tuning on a few photographs works with one flag, and a schedule longer than the run
is said at the start."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import fcvit  # noqa: F401  (registers the models)
from fcvit.cli.main import main

from real_photos import sample_photos


@pytest.fixture(scope="module")
def photo_classes(tmp_path_factory) -> Path:
    """Three classes of random crops from three photographs (cat, coffee, rocket), 24 train / 12 val each."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    photos = sample_photos()
    for split, count in (("train", 24), ("val", 12)):
        for name in ("chelsea", "coffee", "rocket"):
            folder = root / split / name
            folder.mkdir(parents=True)
            image = photos[name]
            height, width = image.shape[:2]
            for i in range(count):
                side = int(rng.integers(120, min(height, width)))
                y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                Image.fromarray(image[y:y + side, x:x + side]).resize((80, 80)).save(folder / f"{i}.jpg")
    return root


def _train(data: Path, out: Path, *extra: str) -> list:
    with pytest.raises(SystemExit) as exc:
        main(["train", str(data), "--img-size", "64", "-b", "16", "-j", "0", "--device", "cpu", "--output", str(out),
              *extra])
    assert exc.value.code == 0
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # two 52-step runs at 64 px: about a minute and a half on 2 cores
def test_the_finetune_preset_beats_the_default_recipe_in_the_same_steps(photo_classes, tmp_path, caplog):
    torch.manual_seed(0)
    initial = tmp_path / "initial.pth.tar"
    torch.save({"state_dict": timm.create_model("fcvit_tiny", num_classes=3).state_dict()}, initial)
    with caplog.at_level(logging.INFO):
        # the default recipe: 3 epochs + 10 cooldown = 13 epochs of 4 steps, said in a warning
        default = _train(photo_classes, tmp_path / "default", "--epochs", "3", "--initial-checkpoint", str(initial))
    assert len(default) == 13
    assert "below its scheduled value for most of the run" in caplog.text and "13 epochs of 4 steps" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        tuned = _train(photo_classes, tmp_path / "tuned", "--epochs", "13", "--finetune", "--initial-checkpoint",
                       str(initial))
    assert len(tuned) == 13  # no cooldown: the same 52 steps
    assert "--finetune: --lr 0.0001, --warmup-epochs 1" in caplog.text and "--keep-best 1" in caplog.text
    assert "below its scheduled value" not in caplog.text
    final_default, final_tuned = default[-1], tuned[-1]
    assert float(final_tuned["eval_top1"]) > float(final_default["eval_top1"])
    assert float(final_tuned["eval_loss"]) < float(final_default["eval_loss"])
    assert len(list((tmp_path / "tuned").glob("checkpoint-*.pth.tar"))) == 1  # one best kept


def test_flags_given_win_over_the_preset():
    from fcvit.cli.train import build_parser, finalize_args

    args = finalize_args(build_parser().parse_args(["DATA", "--finetune", "--lr", "3e-4", "--mixup", "0.2"]))
    assert (args.lr, args.mixup, args.cutmix, args.cooldown_epochs, args.keep_best) == (3e-4, 0.2, 0.0, 0, 1)
    assert "--lr 0.0003" in args.compat_notes[-1] and "--mixup 0.2" in args.compat_notes[-1]


def test_default_workers_are_capped_at_the_cpus(monkeypatch, caplog):
    from fcvit.cli.options import cap_workers
    import argparse

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    args = argparse.Namespace(workers=4)
    with caplog.at_level(logging.INFO):
        cap_workers(args, ["train", "DATA"])
    assert args.workers == 2 and "-j 4: 2 CPU(s) here" in caplog.text
    args = argparse.Namespace(workers=4)
    cap_workers(args, ["train", "DATA", "-j", "4"])  # asked for: kept
    assert args.workers == 4
