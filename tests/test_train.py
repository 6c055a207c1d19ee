"""`fcvit train` / `fcvit validate` / `fcvit plot` end to end on a tiny generated folder dataset (CPU)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fcvit.cli.main import main
from fcvit.engine import LAST_NAME, load_train_state

from train_helpers import FAST, TINY_MODEL, cli_env, fcvit_cmd, make_folder_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data"))


def fcvit(capsys, *argv: str) -> tuple:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def train_argv(data: Path, out: Path, epochs: int, *extra: str) -> list:
    return ["train", str(data), *TINY_MODEL, *FAST, "--epochs", str(epochs), "--output", str(out), *extra]


def weights(path: Path) -> dict:
    state = load_train_state(path)
    return {"model": state["state_dict"], "ema": state.get("state_dict_ema") or {},
            "optimizer": state["optimizer"]["state"], "epoch": state["epoch"], "step": state["global_step"]}


def assert_same(a: dict, b: dict) -> None:
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part} {key} differs"
    for idx, slot in a["optimizer"].items():
        for name, value in slot.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"][idx][name]))


def test_train_then_validate_and_plot(data, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = fcvit(capsys, *train_argv(data, out, 2, "--model-ema", "--model-ema-decay", "0.5"))
    assert code == 0, err
    assert "outputs in" in stdout and "val top-1" in stdout
    files = set(os.listdir(out))
    assert {LAST_NAME, "model_best.pth.tar", "summary.csv", "log.txt"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for column in ("train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "train_img_per_sec",
                   "model_img_per_sec", "data_wait_share", "ema_eval_top1"):
        assert rows[-1][column] != ""
    last = load_train_state(out / LAST_NAME)
    assert last["class_names"] == ["blue", "green", "red"] and last["epoch"] == 2
    assert last["global_step"] == 2 * (12 // 4)
    assert last["args"]["model_kwargs"] == {"depths": (1, 1, 1, 1), "dims": (16, 16, 32, 32)}

    # validate the best checkpoint: same number the training run ranked it by (EMA weights, as trained)
    best = load_train_state(out / "model_best.pth.tar")
    results = tmp_path / "val.json"
    code, stdout, err = fcvit(capsys, "validate", data, "--checkpoint", out / "model_best.pth.tar", "--use-ema",
                              "-b", "4", "-j", "0", "--device", "cpu", "--results-file", results)
    assert code == 0, err
    metrics = json.loads(results.read_text())
    assert metrics["images"] == 6 and metrics["img_size"] == [3, 32, 32]
    assert metrics["top1"] == pytest.approx(best["metric"])
    assert {"top1", "top5", "loss", "img_per_sec"} <= set(metrics) and "top-1" in stdout

    code, stdout, _ = fcvit(capsys, "plot", out)
    assert code == 0 and (out / "summary.png").stat().st_size > 10_000


RESUME_EPOCHS = 4


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory) -> Path:
    """The reference: a run that was never interrupted."""
    out = tmp_path_factory.mktemp("straight")
    with pytest.raises(SystemExit) as exc:
        main(train_argv(data, out, RESUME_EPOCHS, "--model-ema"))
    assert exc.value.code == 0
    return out


def test_stop_mid_epoch_and_resume_gives_identical_weights(data, straight_run, tmp_path, capsys, monkeypatch):
    # stop after global step 4 (epoch 1, step 1 of 3) as a SIGTERM would; then resume with --resume auto
    from fcvit.engine.control import GracefulStop

    calls = {"n": 0}

    def stop_after_four(self, ctx=None):
        calls["n"] += 1
        return calls["n"] == 4  # the loop asks once per step: 3 steps of epoch 0, then the first of epoch 1

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(GracefulStop, "should_stop", stop_after_four)
        code, stdout, _ = fcvit(capsys, *train_argv(data, resumed, RESUME_EPOCHS, "--model-ema"))
    assert code == 0 and "Stopped early" in stdout
    partial = load_train_state(resumed / LAST_NAME)
    assert (partial["epoch"], partial["step_in_epoch"], partial["global_step"]) == (1, 1, 4)
    assert fcvit(capsys, *train_argv(data, resumed, RESUME_EPOCHS, "--model-ema"))[0] == 0
    assert_same(weights(straight_run / LAST_NAME), weights(resumed / LAST_NAME))
    rows = list(csv.DictReader(open(resumed / "summary.csv")))
    assert [r["epoch"] for r in rows] == [str(e) for e in range(RESUME_EPOCHS)]  # no duplicated epoch rows


def test_sigterm_then_resume_matches_straight_run(data, straight_run, tmp_path, capsys):
    killed = tmp_path / "killed"
    argv = train_argv(data, killed, RESUME_EPOCHS, "--model-ema")
    proc = subprocess.Popen(fcvit_cmd(*argv), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 90
    while not (killed / "summary.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # somewhere in epoch 1: mid-step, mid-eval or mid-save
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    state = load_train_state(killed / LAST_NAME)
    assert state["epoch"] < RESUME_EPOCHS, "the run finished before the signal arrived"
    assert "SIGTERM received" in stderr and "Stopped early" in stdout
    assert fcvit(capsys, *argv)[0] == 0  # --resume auto is the default
    assert_same(weights(straight_run / LAST_NAME), weights(killed / LAST_NAME))


def test_two_process_torchrun_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [fcvit_cmd()[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fcvit", *train_argv(data, out, 1)[:-2], "--output", str(out)]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted([LAST_NAME, "model_best.pth.tar", "checkpoint-0.pth.tar",
                                              "summary.csv", "log.txt"])
    state = load_train_state(out / LAST_NAME)
    assert state["args"]["batch_size"] == 4 and state["global_step"] == 12 // (4 * 2)
    assert "2 process(es)" in (out / "log.txt").read_text()
    rows = list(csv.DictReader(open(out / "summary.csv")))
    top1 = float(rows[0]["eval_top1"])
    assert len(rows) == 1 and min(abs(top1 - 100 * k / 6) for k in range(7)) < 1e-3  # over all 6 val images
