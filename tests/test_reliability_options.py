"""Issue 13, part C: every option and config value checked where it is read, conflicts refused, data checked
before training starts. Each failure must end in exit status 2 and exactly one error line, never a traceback."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from fcvit.cli import options
from fcvit.cli.main import build_parser, main
from fcvit.errors import UserError
from fcvit.tasks.detection.dataset import CocoInstances, coco_split_paths
from synthetic_data import make_shapes_coco
from fcvit.tasks.segmentation.data import SegmentationFolder
from synthetic_data import make_synthetic_dataset

# a value each checked type refuses, and the words of its message
BAD_VALUE = {
    options.positive_int: ("0", "at least 1"),
    options.non_negative_int: ("-2", "at least 0"),
    options.positive_float: ("-1", "above 0"),
    options.non_negative_float: ("nan", "at least 0"),
    options.finite_float: ("inf", "finite"),
    options.probability: ("1.5", "from 0 to 1"),
}


def run_cli(capsys, *argv: str) -> str:
    """Run ``fcvit ARGV`` expecting a refusal: exit 2, one error line, no traceback; returns that line."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


# -- the reproduced cases of the issue ----------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["train", "--dataset", "digits", "--cooldown-epochs", "-5"], "argument --cooldown-epochs: expected a whole"),
    (["train", "--dataset", "digits", "--img-size", "0"], "argument --img-size: expected a whole number of at least 1"),
    (["train", "--dataset", "digits", "--lr", "-1"], "argument --lr: expected a finite number above 0, got -1"),
    (["train", "--dataset", "digits", "--lr", "nan"], "argument --lr: expected a finite number above 0, got 'nan'"),
    (["train", "--dataset", "digits", "-j", "-2"], "argument -j/--workers: expected a whole number of at least 0"),
    (["predict", "x.png", "--topk", "-1"], "argument --topk"),
    (["models", "--img-size", "0"], "argument --img-size"),
    (["segment", "train", "--data", "d", "--output", "o", "--num-classes", "0"], "argument --num-classes"),
    (["segment", "eval", "--data", "d", "--checkpoint", "c", "--short-side", "0"], "argument --short-side"),
    (["detect", "train", "--data", "d", "--output", "o", "--lr", "inf"], "argument --lr"),
    (["benchmark", "--iters", "0"], "argument --iters"),
    (["export", "--format", "onnx", "--opset", "x"], "argument --opset: expected a whole number"),
])
def test_bad_option_values_end_in_one_line(capsys, argv, words):
    assert words in run_cli(capsys, *argv)


def _numeric_options() -> List[tuple]:
    """(command path, flag, type, values taken) for every option of every subcommand with a checked type."""
    found = []

    def walk(parser: argparse.ArgumentParser, path: List[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif action.type in BAD_VALUE and action.option_strings:
                count = action.nargs if isinstance(action.nargs, int) else 1
                found.append((tuple(path), max(action.option_strings, key=len), action.type, count))

    walk(build_parser(), [])
    return found


NUMERIC_OPTIONS = _numeric_options()


def test_every_subcommand_has_checked_numeric_options():
    commands = {path[0] for path, _, _, _ in NUMERIC_OPTIONS}
    assert {"train", "validate", "predict", "models", "detect", "segment", "benchmark", "export", "analyze",
            "visualize", "demo"} <= commands
    assert len(NUMERIC_OPTIONS) > 120


@pytest.mark.parametrize("path, flag, kind, count", NUMERIC_OPTIONS,
                         ids=[f"{' '.join(p)} {f}" for p, f, _, _ in NUMERIC_OPTIONS])
def test_every_numeric_option_refuses_a_bad_value(capsys, path, flag, kind, count):
    bad, words = BAD_VALUE[kind]
    line = run_cli(capsys, *path, flag, *[bad] * count)
    assert f"argument {flag}" in line or f"/{flag}" in line
    assert words in line


@pytest.mark.parametrize("text, kind, value", [
    ("3", options.positive_int, 3), ("0", options.non_negative_int, 0), ("1e-3", options.positive_float, 1e-3),
    ("0", options.non_negative_float, 0.0), ("-2.5", options.finite_float, -2.5), ("1", options.probability, 1.0),
])
def test_good_values_pass(text, kind, value):
    assert kind(text) == value


# -- the config file goes through the same checks ----------------------------------------------------------
@pytest.mark.parametrize("line, words", [
    ('lr: "abc"', "wrong value for lr (expected a finite number above 0, got 'abc'): write it as --lr"),
    ("epochs: ten", "wrong value for epochs (expected a whole number of at least 1, got 'ten')"),
    ("img_size: [32, 32]", "wrong value for img_size (expected one value, got [32, 32])"),
    ("model: 12", "wrong value for model (expected text in quotes, got 12)"),
    ("scale: [0.5]", "wrong value for scale (expected a list of 2 values"),
    ("amp: maybe", "wrong value for amp (expected true or false, got 'maybe')"),
    ("dist_bn: all", "wrong value for dist_bn (expected one of"),
    ("cooldown_epochs: -5", "wrong value for cooldown_epochs (expected a whole number of at least 0, got -5)"),
    ("seed: 4.5", "wrong value for seed (expected a whole number, got 4.5)"),
])
def test_config_values_are_checked_like_flags(capsys, tmp_path, line, words):
    config = tmp_path / "c.yaml"
    config.write_text(line + "\n")
    assert words in run_cli(capsys, "train", "--dataset", "digits", "-c", str(config), "--output", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_config_values_are_converted_as_on_the_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\nepochs: 3\nscale: [0.5, 1]\naa: null\namp: true\n")  # YAML reads 1e-3 as text
    parser = build_parser()
    args = parser.parse_args(["train", "--dataset", "digits", "-c", str(config)])  # the config is layered here
    assert args.lr == 1e-3 and isinstance(args.lr, float) and args.epochs == 3 and args.scale == [0.5, 1.0]
    assert args.aa == "" and args.amp is True


# -- conflicts and the cooldown ------------------------------------------------------------------------------
def test_data_folder_with_builtin_digits_is_refused(capsys, tmp_path):
    line = run_cli(capsys, "train", str(tmp_path), "--dataset", "digits", "--output", str(tmp_path / "o"))
    assert "--dataset digits is built in and reads no folder, but DATA" in line
    line = run_cli(capsys, "validate", str(tmp_path), "--dataset", "digits", "--checkpoint", "c.pth")
    assert "--dataset digits is built in" in line


def test_data_and_data_dir_naming_two_folders_are_refused(capsys, tmp_path):
    line = run_cli(capsys, "train", str(tmp_path / "a"), "--data-dir", str(tmp_path / "b"))
    assert "name two folders" in line


@pytest.mark.parametrize("sched, epochs, cooldown, expected", [
    ("cosine", 1, 10, ", 1 epoch + 10 cooldown epochs at --min-lr = 11 (--cooldown-epochs 0 for none)"),
    ("cosine", 3, 0, ""),
    ("step", 3, 10, ""),  # timm's step schedule has no cooldown: nothing is added, nothing is said
])
def test_start_banner_says_the_cooldown_epochs(sched, epochs, cooldown, expected):
    import torch
    from timm.scheduler import create_scheduler_v2

    from fcvit.tasks.classification.train import _epochs_note

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    _, num_epochs = create_scheduler_v2(optimizer, sched=sched, num_epochs=epochs, cooldown_epochs=cooldown)
    args = argparse.Namespace(epochs=epochs, cooldown_epochs=cooldown, lr_cycle_limit=1)
    assert _epochs_note(args, num_epochs) == expected


# -- ADE20K-layout labels: every annotation of both splits before training -----------------------------------
@pytest.fixture()
def ade(tmp_path) -> Path:
    root = tmp_path / "ade"
    make_synthetic_dataset(root, num_train=4, num_val=2, size=(32, 32), num_classes=4)
    return root


def _write_label(root: Path, split: str, value: int) -> Path:
    annotation = sorted((root / "annotations" / split).glob("*.png"))[-1]
    values = np.asarray(Image.open(annotation)).copy()
    values[0, 0] = value
    Image.fromarray(values).save(annotation)
    return annotation


def test_bad_validation_label_is_refused_before_training(capsys, ade, tmp_path):
    bad = _write_label(ade, "validation", 9)
    line = run_cli(capsys, "segment", "train", "--data", str(ade), "--output", str(tmp_path / "out"),
                   "--num-classes", "4", "--iters", "1", "-b", "2", "--workers", "0", "--device", "cpu")
    assert f"Annotation '{bad}' has label values 9 beyond the 4 classes" in line and line.endswith("annotations.")
    assert not any((tmp_path / "out").glob("*.pth.tar"))  # refused before the first step


def test_check_labels_accepts_ignore_and_names_every_bad_file(ade):
    _write_label(ade, "training", 255)  # the ignore label is fine
    SegmentationFolder(ade, "train", 4).check_labels()
    for annotation in sorted((ade / "annotations" / "training").glob("*.png"))[:2]:
        values = np.asarray(Image.open(annotation)).copy()
        values[1, 1] = 200
        Image.fromarray(values).save(annotation)
    with pytest.raises(UserError, match=r"\(and 1 more annotation\(s\) of this split\) has label values 200"):
        SegmentationFolder(ade, "train", 4).check_labels()


# -- COCO boxes and image sizes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    return make_shapes_coco(tmp_path_factory.mktemp("shapes"), num_train=3, num_val=1, size=(64, 48))


def _with(shapes: str, tmp_path: Path, change) -> str:
    with open(coco_split_paths(shapes, "train")[0]) as f:
        data = json.load(f)
    change(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("bbox, words", [
    ([float("nan"), 2.0, 10.0, 10.0], "which is not finite"),
    ([2.0, 2.0, -5.0, 10.0], "which has a negative width or height"),
    ([30.0, 2.0, 60.0, 10.0], "which reaches outside its 64x48 image"),
    ([2.0, -5.0, 10.0, 10.0], "which reaches outside its 64x48 image"),
])
def test_coco_box_problems_name_the_annotation_and_file(shapes, tmp_path, bbox, words):
    def change(data):
        data["annotations"][0]["bbox"] = bbox

    ann = _with(shapes, tmp_path, change)
    with open(ann) as f:
        ann_id = json.load(f)["annotations"][0]["id"]
    with pytest.raises(UserError, match=rf"Annotation {ann_id} in '{ann}' has bbox .*{words}"):
        CocoInstances(ann, coco_split_paths(shapes, "train")[1], train=True)


def test_coco_box_overshooting_by_rounding_is_kept(shapes, tmp_path):
    def change(data):
        x, y, w, h = data["annotations"][0]["bbox"]
        data["annotations"][0]["bbox"] = [x, y, 64.0 - x + 0.6, h]  # 0.6 px past the right edge

    ds = CocoInstances(_with(shapes, tmp_path, change), coco_split_paths(shapes, "train")[1], train=True)
    assert ds.report.degenerate_boxes_dropped == 0


def test_coco_image_size_differing_from_its_entry_is_refused_up_front(shapes, tmp_path):
    def change(data):
        data["images"][1]["width"] = 80

    ann = _with(shapes, tmp_path, change)
    with open(ann) as f:
        image = os.path.join(coco_split_paths(shapes, "train")[1], json.load(f)["images"][1]["file_name"])
    with pytest.raises(UserError, match=rf"Image '{image}' is 64x48 but '{ann}' says 80x48"):
        CocoInstances(ann, coco_split_paths(shapes, "train")[1], train=True)


def test_coco_image_entry_with_a_bad_size_is_refused(shapes, tmp_path):
    def change(data):
        data["images"][0]["height"] = "tall"

    with pytest.raises(UserError, match=r"has width 64 and height 'tall': give its real size"):
        CocoInstances(_with(shapes, tmp_path, change), coco_split_paths(shapes, "train")[1], train=True)
