"""``fcvit segment train|eval|predict`` end to end on a generated ADE20K-layout dataset (64 px, tiny backbone)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcvit.cli.main import main
from fcvit.engine import load_train_state
from synthetic_data import make_synthetic_dataset

NUM_CLASSES = 4
SMALL = ["--backbone", "fcvit_tiny", "--backbone-depths", "1", "1", "1", "1", "--backbone-dims", "16", "32", "64",
         "128", "--fpn-channels", "64", "--head-channels", "32", "--crop-size", "64", "-b", "4", "--lr", "2e-3",
         "--workers", "0", "--device", "cpu", "--log-interval", "10", "--seed", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(argv, capsys) -> tuple:
    """(exit status, stdout, stderr) of ``fcvit`` run in this process."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def read_summary(out: Path) -> list:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("seg") / "data", num_train=12, num_val=4, size=(64, 64),
                                  num_classes=NUM_CLASSES, seed=1)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory, one_thread) -> Path:
    """40 iterations with an evaluation every 10."""
    out = tmp_path_factory.mktemp("seg") / "run"
    torch.manual_seed(0)
    with pytest.raises(SystemExit) as info:
        main(["segment", "train", "--data", str(dataset), "--output", str(out), "--num-classes", str(NUM_CLASSES),
              "--iters", "40", "--eval-interval", "10", "--keep-best", "4", *SMALL])
    assert info.value.code == 0
    return out


def test_training_reduces_the_loss_and_learns_the_regions(trained):
    rows = read_summary(trained)
    assert [int(r["iter"]) for r in rows] == [10, 20, 30, 40]
    losses = [float(r["train_loss"]) for r in rows]  # mean loss of each 10 iterations
    assert losses[-1] < losses[0] * 0.75, losses
    assert float(rows[-1]["lr"]) == pytest.approx(2e-3 * (1 / 40) ** 0.9)  # the 40th step's lr: poly ends at 0
    miou = float(rows[-1]["mIoU"])
    assert miou > 40.0, rows  # predicting background everywhere scores 19.8 here
    assert float(rows[-1]["aAcc"]) > 70.0
    for name in ("last.pth.tar", "model_best.pth.tar", "log.txt", "results.json"):
        assert (trained / name).is_file(), name
    state = load_train_state(trained / "last.pth.tar")  # weights_only=True
    assert state["global_step"] == 40 and state["model_config"]["num_classes"] == NUM_CLASSES
    assert state["class_names"] == [f"class {i}" for i in range(NUM_CLASSES)]
    assert state["saver"]["metric"] == "mIoU"
    best = max(float(r["mIoU"]) for r in rows)
    assert load_train_state(trained / "model_best.pth.tar")["metric"] == pytest.approx(best, rel=1e-4)


def test_log_states_the_global_batch_and_the_checkpoint_its_resize(trained):
    assert load_train_state(trained / "last.pth.tar")["eval_antialias"] is False  # eval/predict resize the same way
    log = (trained / "log.txt").read_text()
    assert "40 iterations, global batch 4 (4 per process x 1 process(es) on cpu)" in log
    assert "lr (2e-4) is for 32 images per step (8 GPUs x -b 4); this run takes 4" in log
    assert "Final checkpoint (iteration 40" in log


def test_eval_reproduces_the_training_score(trained, dataset, tmp_path, capsys):
    results = tmp_path / "r.json"
    code, out, err = run_cli(["segment", "eval", "--data", dataset, "--checkpoint", trained / "last.pth.tar",
                              "--results-file", results, "--workers", "0", "--device", "cpu"], capsys)
    assert code == 0, err
    scores = json.loads(results.read_text())
    assert scores["mIoU"] == pytest.approx(float(read_summary(trained)[-1]["mIoU"]), abs=1e-3)
    assert set(scores["IoU"]) == {f"class {i}" for i in range(NUM_CLASSES)}
    assert "class 0" in out and "mIoU" in out.splitlines()[-1]


def test_predict_writes_masks_that_match_the_annotations(trained, dataset, tmp_path, capsys):
    images = sorted((dataset / "images" / "validation").glob("*.jpg"))[:2]
    code, out, err = run_cli(["segment", "predict", *images, "--checkpoint", trained / "model_best.pth.tar",
                              "--output", tmp_path / "pred"], capsys)
    assert code == 0, err
    for image in images:
        mask = Image.open(tmp_path / "pred" / f"{image.stem}_mask.png")
        assert (tmp_path / "pred" / f"{image.stem}_overlay.png").is_file()
        truth = np.asarray(Image.open(dataset / "annotations" / "validation" / f"{image.stem}.png"))
        predicted = np.asarray(mask)  # class + 1 = ADE20K annotation value
        labelled = truth > 0
        assert (predicted[labelled] == truth[labelled]).mean() > 0.7
    assert out.count("_mask.png") == 2


def test_plot_draws_a_segmentation_run_against_iterations(trained, tmp_path, capsys):
    code, out, err = run_cli(["plot", trained, "--output", tmp_path / "summary.png"], capsys)
    assert code == 0, err
    assert "against iter" in out and (tmp_path / "summary.png").stat().st_size > 10_000


def test_resume_mid_epoch_repeats_the_uninterrupted_run(trained, dataset, tmp_path, capsys):
    """Iteration 20 is 2 batches into the 7th pass over 12 images (3 batches of 4 each); the resumed run
    also loads data in a worker process, which must not change which samples come or how they are augmented."""
    checkpoint = load_train_state(trained / "checkpoint-20.pth.tar")
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (6, 2)
    out = tmp_path / "run"
    small = list(SMALL)
    small[small.index("--workers") + 1] = "1"
    code, _, err = run_cli(["segment", "train", "--data", dataset, "--output", out, "--num-classes", NUM_CLASSES,
                            "--iters", "40", "--eval-interval", "10", "--resume", trained / "checkpoint-20.pth.tar",
                            *small], capsys)
    assert code == 0, err
    assert "Resumed from" in (out / "log.txt").read_text()
    assert [int(r["iter"]) for r in read_summary(out)] == [30, 40]
    resumed, straight = load_train_state(out / "last.pth.tar"), load_train_state(trained / "last.pth.tar")
    assert resumed["global_step"] == 40
    for key, value in straight["state_dict"].items():  # same batches, augmentation and updates
        assert torch.allclose(resumed["state_dict"][key].float(), value.float(), atol=1e-5), key
    assert [r["train_loss"] for r in read_summary(out)] == [r["train_loss"] for r in read_summary(trained)[2:]]


def test_sigterm_saves_and_stops(dataset, tmp_path, capsys, monkeypatch):
    import fcvit.engine.loop as train_module  # the loop checks every loss

    original = train_module.check_step

    def signal_at_step_3(loss, step, *rest):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while GracefulStop is installed
        return original(loss, step, *rest)

    monkeypatch.setattr(train_module, "check_step", signal_at_step_3)
    out = tmp_path / "run"
    code, _, err = run_cli(["segment", "train", "--data", dataset, "--output", out, "--num-classes", NUM_CLASSES,
                            "--iters", "1000", *SMALL], capsys)
    assert code == 0, err
    assert load_train_state(out / "last.pth.tar")["global_step"] == 3
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored afterwards


def test_non_finite_loss_stops_before_the_step(dataset, tmp_path, capsys, monkeypatch):
    import fcvit.tasks.segmentation.train as train_module

    calls = {"n": 0}
    original = train_module.segmentation_loss

    def nan_on_third_call(logits, target):
        calls["n"] += 1
        loss = original(logits, target)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(train_module, "segmentation_loss", nan_on_third_call)
    out = tmp_path / "run"
    code, _, err = run_cli(["segment", "train", "--data", dataset, "--output", out, "--num-classes", NUM_CLASSES,
                            "--iters", "10", "--save-interval", "2", *SMALL], capsys)
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert "global step 3" in message and "last.pth.tar" in message
    assert load_train_state(out / "last.pth.tar")["global_step"] == 2


# ---------------------------------------------------------------- bad input through the CLI

def _bad_copy(dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(dataset, root)
    return root


def _expect_one_sentence(argv, capsys, *fragments) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("fcvit segment: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_image_without_annotation_is_one_sentence(dataset, tmp_path, capsys):
    root = _bad_copy(dataset, tmp_path)
    next((root / "annotations" / "training").glob("*.png")).unlink()
    _expect_one_sentence(["segment", "train", "--data", root, "--output", tmp_path / "o", "--num-classes",
                          NUM_CLASSES, *SMALL], capsys, "no annotation PNG", "add the annotations")


def test_annotation_without_image_is_one_sentence(dataset, tmp_path, capsys):
    root = _bad_copy(dataset, tmp_path)
    next((root / "images" / "validation").glob("*.jpg")).unlink()
    _expect_one_sentence(["segment", "eval", "--data", root, "--checkpoint", tmp_path / "none.pth", "--device",
                          "cpu"], capsys, "does not exist")  # the checkpoint is checked first
    _expect_one_sentence(["segment", "train", "--data", root, "--output", tmp_path / "o", "--num-classes",
                          NUM_CLASSES, *SMALL], capsys, "no image of the same name")


def test_annotation_of_another_size_is_one_sentence(dataset, tmp_path, capsys):
    root = _bad_copy(dataset, tmp_path)
    annotation = next((root / "annotations" / "validation").glob("*.png"))
    Image.fromarray(np.ones((64, 60), dtype=np.uint8)).save(annotation)
    _expect_one_sentence(["segment", "train", "--data", root, "--output", tmp_path / "o", "--num-classes",
                          NUM_CLASSES, *SMALL], capsys, annotation.name, "60x64", "64x64")


def test_labels_beyond_the_classes_are_one_sentence_even_from_a_worker(dataset, tmp_path, capsys):
    root = _bad_copy(dataset, tmp_path)
    for annotation in (root / "annotations" / "training").glob("*.png"):
        values = np.asarray(Image.open(annotation)).copy()
        values[10:20, 10:20] = 7
        Image.fromarray(values).save(annotation)
    argv = ["segment", "train", "--data", root, "--output", tmp_path / "o", "--num-classes", NUM_CLASSES,
            "--iters", "2", *SMALL, "--workers", "1"]
    _expect_one_sentence(argv, capsys, "label values 7 beyond the 4 classes", "--num-classes")


def test_option_mistakes_are_one_sentence(dataset, tmp_path, capsys):
    base = ["segment", "train", "--data", dataset, "--output", tmp_path / "o", "--num-classes", NUM_CLASSES]
    _expect_one_sentence([*base, *SMALL, "--pretrained-backbone", tmp_path / "x.pth"], capsys,
                         "--pretrained-backbone", "--backbone-depths")
    _expect_one_sentence([*base, *SMALL, "-b", "3", "--batch-size", "100"], capsys, "fewer than one step", "-b 100")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    _expect_one_sentence([*base, *SMALL, "--class-names", names], capsys, "2 names but --num-classes is 4")


def test_checkpoints_of_earlier_versions_keep_loading(trained, tmp_path):
    """The model's arguments were stored under 'segmenter' before every task used 'model_config'."""
    from fcvit.tasks.segmentation.evaluate import load_segmenter

    state = load_train_state(trained / "last.pth.tar")
    state["segmenter"] = state.pop("model_config")
    torch.save(state, tmp_path / "old.pth.tar")
    model, _ = load_segmenter(tmp_path / "old.pth.tar")
    assert model.num_classes == NUM_CLASSES
