"""Issue 24, flags and paths: a wrong --eval-metric, --opset, --model-kwargs or --dpi, a config that is a folder
and DATA that is a file end in one sentence (exit status 2) before any work, and a refused run leaves no folder."""
from __future__ import annotations

import argparse
import shutil

import pytest

from fcvit.cli.main import main
from fcvit.errors import UserError
from fcvit.tasks.classification.train import create_model

from train_helpers import FAST, TINY_MODEL, clean_data, data  # noqa: F401 (the shared fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def refused(capsys, *argv) -> str:
    """Run ``fcvit ARGV`` expecting a refusal: exit 2, one error line, no traceback; returns that line."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("fcvit ")]
    assert len(lines) == 1, err
    return lines[0]


def train(capsys, data, out, *extra) -> str:
    return refused(capsys, "train", data, *TINY_MODEL, *FAST, "--epochs", "1", "--output", out, *extra)


def test_eval_metric_is_checked_before_any_work(capsys, data, tmp_path):
    line = train(capsys, data, tmp_path / "out", "--eval-metric", "foo")
    assert "--eval-metric" in line and all(name in line for name in ("top1", "top5", "loss"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("opset", ["99", "5", "8"])
def test_opset_outside_what_torch_writes_is_one_line(capsys, tmp_path, opset):
    line = refused(capsys, "export", "--format", "onnx", "--opset", opset, "--output", tmp_path / "m.onnx")
    assert "argument --opset" in line and "from 9 to" in line
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kwargs, words", [
    (["foo=1"], "foo is not an argument of fcvit_tiny: use depths, dims"),
    (["depths=3"], "depths=3 does not fit"),
    (["depths=(1,1,1)", "dims=(16,16,32,32)"], "one per stage"),
    (["depths=(1,"], "depths='(1,' does not fit"),
    (["dims=(12,12,12,12)"], "divisible by 8"),
    (["drop_path_rate=0.3"], "pass --drop-path instead"),
    (["depths"], "expected KEY=VALUE pairs"),
])
def test_model_kwargs_are_refused_in_one_sentence(capsys, data, tmp_path, kwargs, words):
    line = refused(capsys, "train", data, *FAST, "--output", tmp_path / "out", "--model-kwargs", *kwargs)
    assert words in line
    assert not (tmp_path / "out").exists()


def test_model_kwargs_another_timm_model_does_not_take():
    args = argparse.Namespace(model="resnet18", model_kwargs={"foo": 1}, drop_path=None)
    with pytest.raises(UserError, match="resnet18 does not take --model-kwargs foo"):
        create_model(args, 2)


def test_dpi_is_bounded(capsys, tmp_path):
    line = refused(capsys, "visualize", "similarity", tmp_path / "cat.jpg", "--dpi", "100000",
                   "--output", tmp_path / "sim.png")
    assert "argument --dpi" in line and "from 10 to 1200" in line


def test_config_folder_and_data_file_say_what_they_are(capsys, data, tmp_path):
    assert "is a folder, not a YAML file" in train(capsys, data, tmp_path / "out", "-c", tmp_path)
    (tmp_path / "data.txt").write_text("not a folder")
    assert "is a file, not a folder" in train(capsys, tmp_path / "data.txt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refused_run_leaves_no_new_folder(capsys, data, tmp_path):
    shutil.rmtree(data / "val")
    assert "has no 'val' split" in train(capsys, data, tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()
    line = train(capsys, data, data / "train" / "run")  # would be read as an empty class, now and later
    assert "lies inside the 'train' split" in line and not (data / "train" / "run").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")  # a folder the command did not make is left as it is
    train(capsys, data, tmp_path / "kept" / "run")
    assert (tmp_path / "kept" / "notes.txt").read_text() == "mine" and not (tmp_path / "kept" / "run").exists()
