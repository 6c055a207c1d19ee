"""Resuming under torchrun (2 gloo processes) repeats the uninterrupted run, for every task on the loop.

Each rank keeps its own random stream (dropout, drop path); a checkpoint stores all of them and each
rank takes back its own. Resuming every rank with rank 0's stream, as detection and segmentation once
did, changes the dropout masks of rank 1 and with them the weights.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

from fcvit.engine import load_train_state

from train_helpers import cli_env

TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "fcvit"]


def _torchrun(argv: List[str]) -> None:
    proc = subprocess.Popen(TWO_PROCESSES + [str(a) for a in argv], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
        raise
    assert proc.returncode == 0, stderr[-3000:]


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_train_state(a), load_train_state(b)
    assert first["global_step"] == second["global_step"]
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key


def _assert_distinct_rank_streams(checkpoint: Path) -> None:
    per_rank = load_train_state(checkpoint)["rng_per_rank"]
    assert len(per_rank) == 2
    assert not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])


@pytest.fixture(scope="module")
def segmentation_data(tmp_path_factory) -> Path:
    from synthetic_data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("seg") / "data", num_train=8, num_val=2, size=(64, 64),
                                  num_classes=3, seed=1)


SEGMENT_SMALL = ["--backbone", "fcvit_tiny", "--backbone-depths", "1", "1", "1", "1", "--backbone-dims", "16", "32",
                 "64", "128", "--fpn-channels", "32", "--head-channels", "16", "--crop-size", "64", "-b", "2",
                 "--workers", "0", "--device", "cpu", "--num-classes", "3", "--drop-path", "0.2", "--iters", "6",
                 "--eval-interval", "3", "--keep-best", "2", "--log-interval", "0"]


def test_segmentation_resumes_under_two_processes_with_each_ranks_stream(segmentation_data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _torchrun(["segment", "train", "--data", segmentation_data, "--output", straight, *SEGMENT_SMALL])
    middle = straight / "checkpoint-3.pth.tar"  # iteration 3: one and a half passes over 8 images
    _assert_distinct_rank_streams(middle)
    _torchrun(["segment", "train", "--data", segmentation_data, "--output", resumed, "--resume", middle,
               *SEGMENT_SMALL])
    _assert_same_weights(straight / "last.pth.tar", resumed / "last.pth.tar")


DETECT_SMALL = ["--backbone", "fcvit_tiny", "--backbone-depths", "1", "1", "1", "1", "--backbone-dims", "16", "32",
                "64", "128", "--fpn-channels", "32", "--representation-size", "128", "--min-size", "64",
                "--max-size", "64", "-b", "1", "--epochs", "3", "--warmup-iters", "2", "--drop-path", "0.2",
                "--eval-interval", "1", "--keep-best", "3", "--workers", "0", "--device", "cpu", "--log-interval", "0"]


def test_detection_resumes_under_two_processes_with_each_ranks_stream(tmp_path):
    from synthetic_data import make_shapes_coco

    data = make_shapes_coco(tmp_path / "shapes", num_train=4, num_val=2, size=(64, 64))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _torchrun(["detect", "train", "--data", data, "--output", straight, *DETECT_SMALL])
    checkpoints = sorted(straight.glob("checkpoint-*.pth.tar"))
    middle = straight / "checkpoint-0.pth.tar"  # after the first of three epochs (2 steps of 1 image per rank)
    assert middle in checkpoints, checkpoints
    _assert_distinct_rank_streams(middle)
    _torchrun(["detect", "train", "--data", data, "--output", resumed, "--resume", middle, *DETECT_SMALL])
    _assert_same_weights(straight / "last.pth.tar", resumed / "last.pth.tar")


STOP_ON_RANK_1 = """
import os, sys
from fcvit.engine.control import GracefulStop
calls = {"n": 0}
def stop_at(self, ctx=None):  # as a SIGINT reaching rank 1 alone during global step STEP
    calls["n"] += 1
    return calls["n"] == STEP and os.environ["RANK"] == "1"
GracefulStop.should_stop = stop_at
from fcvit.cli.main import main
main(sys.argv[1:])
"""
TIMINGS = {"train_img_per_sec", "model_img_per_sec", "data_wait_share", "seconds", "eval_img_per_sec"}


def test_classification_stopped_at_an_epochs_last_step_resumes_exactly_under_two_processes(tmp_path):
    """The stop is where an evaluation is due: the resumed run evaluates first, with each rank's own BatchNorm
    statistics (averaged by --dist-bn as the uninterrupted run did) and each rank's part of the epoch's row."""
    import csv

    from train_helpers import FAST, TINY_MODEL, make_folder_dataset

    data = make_folder_dataset(tmp_path / "data")  # 12 images: 3 steps of 2 per rank
    script = tmp_path / "stop_on_rank_1.py"
    script.write_text(STOP_ON_RANK_1.replace("STEP", "6"))  # the last step of epoch 1
    argv = ["train", data, *TINY_MODEL, *FAST, "-b", "2", "--epochs", "3", "--drop-path", "0.1", "--model-ema",
            "--log-interval", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _torchrun([*argv, "--output", straight])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    done = subprocess.run(launcher + [str(a) for a in argv] + ["--output", str(stopped)], env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_train_state(stopped / "last.pth.tar")["pending_evaluation"] == {"epoch": 1, "done": 3}
    _torchrun([*argv, "--output", stopped])
    rows = [[{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(open(out / "summary.csv"))]
            for out in (straight, stopped)]
    assert [r["epoch"] for r in rows[0]] == ["0", "1", "2"] and rows[0] == rows[1]
    _assert_same_weights(straight / "last.pth.tar", stopped / "last.pth.tar")
    ema = [load_train_state(out / "last.pth.tar")["state_dict_ema"] for out in (straight, stopped)]
    assert all(torch.equal(ema[0][k], ema[1][k]) for k in ema[0])
