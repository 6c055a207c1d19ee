"""Resumes that never silently keep or drop what was asked: changed settings, finished runs, best files."""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List

import pytest
import torch
from torch import nn

import fcvit.engine.checkpoint as engine_checkpoint
from fcvit.cli.main import main
from fcvit.data.samplers import EpochShardSampler, SeededSamples, SeekableBatches
from fcvit.engine import BEST_NAME, LAST_NAME, DistContext, Settings, Task, load_train_state, resolve_amp
from fcvit.engine import run_training, train_loader
from fcvit.errors import UserError

BATCHES = 4  # steps per epoch of the stand-in task


class _Task:
    """A stand-in task: one weight, a timm or torch schedule, scores from a list, and the lr of every step."""

    def __init__(self, lr: float, epochs: int, scores: Iterable[float] = (), torch_schedule: bool = False,
                 run_shaping=("lr", "epochs"), new_run_only=(), initial: str = "") -> None:
        self.model = nn.Linear(1, 1, bias=False)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        if torch_schedule:  # torch's kind (detection): per-step, x0.1 after 6 steps
            self.scheduler: Any = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=[6], gamma=0.1)
        else:  # timm's kind (classification): cosine over the epochs, down to 1e-6
            from timm.scheduler import CosineLRScheduler

            self.scheduler = CosineLRScheduler(self.optimizer, t_initial=epochs, lr_min=1e-6)
        self.scores = list(scores)
        self.lrs: List[float] = []
        self.args = argparse.Namespace(lr=lr, epochs=epochs, initial_checkpoint=initial)
        self.epochs, self.run_shaping, self.new_run_only = epochs, tuple(run_shaping), tuple(new_run_only)

    def step(self, model: nn.Module, batch: Any):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        images, _ = batch
        return (model(images.view(-1, 1)) ** 2).mean(), {}, images.shape[0]

    def evaluate(self, model: nn.Module):
        score = self.scores.pop(0) if self.scores else 0.0
        return {"score": score}, {"score": score}

    def run(self, out: Path, override: bool = False, keep_best: int = 3, resume: str = "auto") -> Dict[str, Any]:
        dataset = [(torch.ones(1), 0) for _ in range(BATCHES)]
        loader = train_loader(SeededSamples(dataset), SeekableBatches(EpochShardSampler(BATCHES, seed=0), 1), 0,
                              False)
        task = Task(self.model, self.optimizer, self.scheduler, loader, name="stand-in", metric="score",
                    unit="epoch", length=self.epochs)
        task.step, task.evaluate = self.step, self.evaluate
        settings = Settings(output=str(out), amp=resolve_amp(torch.device("cpu"), False), args=vars(self.args),
                            run_shaping={n: "--" + n.replace("_", "-") for n in self.run_shaping},
                            new_run_only=self.new_run_only, resume=resume, resume_override=override,
                            keep_best=keep_best, log_interval=0)
        return run_training(task, DistContext(), settings)


def _rows(out: Path) -> List[Dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(out: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.endswith(".pth.tar")}


def test_other_lr_and_epochs_are_refused_with_the_list_of_differences(tmp_path):
    _Task(lr=1e-3, epochs=2).run(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(UserError) as exc:
        _Task(lr=0.1, epochs=4).run(tmp_path)
    text = str(exc.value)
    assert "(--lr 0.001, now 0.1; --epochs 2, now 4)" in text and "add --resume-override" in text
    assert "\n" not in text and _files(tmp_path) == before  # nothing written


def test_override_applies_the_new_lr_and_length_to_a_timm_schedule(tmp_path):
    _Task(lr=1e-3, epochs=2).run(tmp_path)
    resumed = _Task(lr=0.1, epochs=4)
    result = resumed.run(tmp_path, override=True)
    from timm.scheduler import CosineLRScheduler  # what a fresh 4-epoch run has at epoch 2

    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    CosineLRScheduler(optimizer, t_initial=4, lr_min=1e-6).step(2)
    assert resumed.lrs[0] == pytest.approx(optimizer.param_groups[0]["lr"])  # 0.05, not the old end's 1e-6
    assert len(resumed.lrs) == 2 * BATCHES and result["epoch"] == 3
    assert [int(r["epoch"]) for r in _rows(tmp_path)] == [0, 1, 2, 3]
    assert load_train_state(tmp_path / LAST_NAME)["args"]["lr"] == 0.1  # the file now tells the new story


def test_override_steps_a_torch_schedule_to_the_resumed_step(tmp_path):
    _Task(lr=1e-2, epochs=1, torch_schedule=True).run(tmp_path)
    resumed = _Task(lr=0.2, epochs=2, torch_schedule=True)
    resumed.run(tmp_path, override=True)
    assert resumed.lrs[:2] == pytest.approx([0.2, 0.2]) and resumed.lrs[2:] == pytest.approx([0.02, 0.02])


def test_a_finished_run_with_fewer_epochs_is_refused_then_left_alone(tmp_path):
    _Task(lr=1e-3, epochs=3, scores=[0.1, 0.3, 0.2]).run(tmp_path)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    with pytest.raises(UserError, match="it has already trained 3 epochs, the new settings ask for 2"):
        _Task(lr=1e-3, epochs=2).run(tmp_path)
    shorter = _Task(lr=1e-3, epochs=2)
    result = shorter.run(tmp_path, override=True, keep_best=1)
    assert shorter.lrs == [] and not result["interrupted"]
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir() if p.name != "log.txt"}
    assert after == {k: v for k, v in before.items() if k != "log.txt"}  # no best file pruned or renamed


def test_fewer_kept_best_files_never_deletes_those_of_the_resumed_run(tmp_path, caplog):
    _Task(lr=1e-3, epochs=3, scores=[0.1, 0.2, 0.3], run_shaping=()).run(tmp_path, keep_best=3)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-*.pth.tar"))
    assert kept == ["checkpoint-0.pth.tar", "checkpoint-1.pth.tar", "checkpoint-2.pth.tar"]
    with caplog.at_level("INFO", logger="fcvit.engine.checkpoint"):
        _Task(lr=1e-3, epochs=5, scores=[0.9, 0.95], run_shaping=()).run(tmp_path, keep_best=1)
    assert "never removed by this run's ranking" in caplog.text
    # the new run's own best files follow --keep-best 1; the resumed run's three stay
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth.tar")) == kept + ["checkpoint-4.pth.tar"]


def test_a_stop_during_the_best_copy_keeps_the_row_and_the_resume_finishes_the_copy(tmp_path, monkeypatch):
    real_copy = engine_checkpoint.atomic_copy

    def killed_at_epoch_1_best(src, dst):
        if os.path.basename(dst) == BEST_NAME and os.path.exists(os.path.join(os.path.dirname(dst),
                                                                              "checkpoint-1.pth.tar")):
            raise KeyboardInterrupt  # as a kill between the two copies
        real_copy(src, dst)

    monkeypatch.setattr(engine_checkpoint, "atomic_copy", killed_at_epoch_1_best)
    with pytest.raises(KeyboardInterrupt):
        _Task(lr=1e-3, epochs=3, scores=[0.1, 0.5, 0.2]).run(tmp_path)
    assert [int(r["epoch"]) for r in _rows(tmp_path)] == [0, 1]  # epoch 1's row was written first
    assert load_train_state(tmp_path / BEST_NAME)["epoch"] == 1  # still epoch 0's weights
    monkeypatch.setattr(engine_checkpoint, "atomic_copy", real_copy)
    _Task(lr=1e-3, epochs=3, scores=[0.2]).run(tmp_path)
    rows = _rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and float(rows[1]["score"]) == 0.5
    assert load_train_state(tmp_path / BEST_NAME)["epoch"] == 2  # epoch 1 (2 epochs done) is the best


def test_resume_auto_with_an_empty_last_checkpoint_says_how_to_continue(tmp_path):
    _Task(lr=1e-3, epochs=2, scores=[0.1, 0.2]).run(tmp_path)
    (tmp_path / LAST_NAME).write_bytes(b"")  # a full disk
    with pytest.raises(UserError) as exc:
        _Task(lr=1e-3, epochs=2).run(tmp_path)
    text = str(exc.value)
    assert f"--resume auto cannot continue the run in {tmp_path}: its {LAST_NAME} is empty (0 bytes)" in text
    assert f"--resume {tmp_path / 'checkpoint-1.pth.tar'}" in text and "--resume ''" in text and "\n" not in text
    assert (tmp_path / LAST_NAME).exists() and (tmp_path / LAST_NAME).stat().st_size == 0  # left for the user


def test_an_explicit_damaged_checkpoint_keeps_its_own_sentence(tmp_path):
    bad = tmp_path / "noise.pth.tar"
    bad.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(UserError, match=r"is not a PyTorch checkpoint .*: pass a file written by torch.save"):
        _Task(lr=1e-3, epochs=1).run(tmp_path / "run", resume=str(bad))


def test_another_initial_checkpoint_cannot_be_applied_to_a_run_under_way(tmp_path):
    _Task(lr=1e-3, epochs=1, initial="a.pth", new_run_only=("initial_checkpoint",),
          run_shaping=("initial_checkpoint",)).run(tmp_path)
    again = _Task(lr=1e-3, epochs=2, initial="a.pth", new_run_only=("initial_checkpoint",),
                  run_shaping=("initial_checkpoint",))
    again.run(tmp_path)  # the same command continues (the epoch count is not run-shaping here)
    assert len(again.lrs) == BATCHES
    with pytest.raises(UserError, match="only a new run can take"):
        _Task(lr=1e-3, epochs=3, initial="b.pth", new_run_only=("initial_checkpoint",),
              run_shaping=("initial_checkpoint",)).run(tmp_path, override=True)


def _cli(capsys, *argv: Any) -> tuple:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_explicit_resume_with_initial_checkpoint_is_a_conflict(tmp_path, capsys):
    ckpt = tmp_path / "some.pth.tar"
    torch.save({"state_dict": {}}, ckpt)
    code, _, err = _cli(capsys, "train", tmp_path / "data", "--output", tmp_path / "out", "--resume", ckpt,
                        "--initial-checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and "--initial-checkpoint and --resume" in err and "conflict" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["train"], ["detect", "train"], ["segment", "train"]])
def test_every_training_command_takes_resume_override(command, capsys):
    code, out, _ = _cli(capsys, *command, "--help")
    assert code == 0 and "--resume-override" in out


def test_classification_refuses_then_applies_a_new_lr(tmp_path, capsys):
    from train_helpers import FAST, TINY_MODEL, make_folder_dataset

    data = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["train", data, *TINY_MODEL, *FAST, "--output", out, "--sched", "cosine", "--warmup-epochs", "0"]
    code, _, err = _cli(capsys, *argv, "--epochs", "1")
    assert code == 0, err
    code, _, err = _cli(capsys, *argv, "--epochs", "2", "--lr", "0.05")
    assert code == 2 and "--lr 0.002, now 0.05; --epochs 1, now 2" in err and "--resume-override" in err
    code, _, err = _cli(capsys, *argv, "--epochs", "2", "--lr", "0.05", "--resume-override")
    assert code == 0, err
    rows = _rows(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1] and float(rows[1]["lr"]) > 0.01  # not the old 1e-5 end
