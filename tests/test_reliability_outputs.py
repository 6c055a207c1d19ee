"""No command writes over its inputs or an existing output without --overwrite; folders of images with a bad
file get results for the good ones (exit status 1); 16-bit photographs classify as their 8-bit originals;
``validate --skip-bad-images`` does not count the image it skipped."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fcvit.cli.main import main
from fcvit.engine import atomic_save, build_train_state
from fcvit.errors import UserError
from fcvit.files import check_outputs
from real_photos import sample_photos
from train_helpers import make_folder_dataset

TINY_BACKBONE = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))


pytestmark = pytest.mark.usefixtures("one_thread")


def fcvit(capsys, *argv) -> tuple:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("fcvit ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Two real photographs (small) and one corrupt file that looks like a JPEG by its name."""
    folder = tmp_path_factory.mktemp("photos")
    photos = sample_photos()
    for name in ("chelsea", "coffee"):
        Image.fromarray(photos[name]).resize((80, 64)).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes((folder / "coffee.png").read_bytes()[:100])
    return folder


@pytest.fixture
def photos(photo_folder, tmp_path) -> Path:
    """A private copy each test may write into."""
    return Path(shutil.copytree(photo_folder, tmp_path / "photos"))


# ---------------------------------------------------------------- the one rule

def test_check_outputs_refuses_inputs_through_links_and_existing_files(tmp_path):
    source = tmp_path / "photo.png"
    source.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(source)
    os.link(source, tmp_path / "hard.png")
    for output in (source, tmp_path / "link.png", tmp_path / "hard.png", tmp_path / "sub" / ".." / "photo.png"):
        with pytest.raises(UserError, match="would write over the input '.*photo.png' itself"):
            check_outputs([output], [source], overwrite=True)
    existing = tmp_path / "old.png"
    existing.write_bytes(b"y")
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        check_outputs([tmp_path / "new.png", existing], [source], overwrite=False)
    assert check_outputs([tmp_path / "new.png", existing], [source], overwrite=True) == [str(existing)]


# ---------------------------------------------------------------- detect predict

@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    from fcvit.tasks.detection.model import build_mask_rcnn

    config = dict(backbone="fcvit_tiny", num_classes=2, min_size=64, max_size=64, fpn_channels=32,
                  representation_size=128, backbone_kwargs=TINY_BACKBONE)
    torch.manual_seed(0)
    model = build_mask_rcnn(**config)
    path = tmp_path_factory.mktemp("detector") / "detector.pth.tar"
    torch.save(dict(model_config=config, categories=[dict(id=1, name="cat"), dict(id=2, name="cup")],
                    state_dict=model.state_dict()), path)
    return path


def test_detect_predict_never_writes_over_the_input_photograph(capsys, photos, detector):
    before = sha(photos / "chelsea.png")
    code, _, err = fcvit(capsys, "detect", "predict", photos / "chelsea.png", "--checkpoint", detector,
                         "--output", photos, "--device", "cpu", "--overwrite")
    assert code == 2 and "would write over the input image" in one_error(err) and "chelsea.png" in err
    assert sha(photos / "chelsea.png") == before
    assert not (photos / "detections.json").exists()


def test_detect_predict_folder_skips_a_bad_file_and_needs_overwrite_to_rerun(capsys, caplog, photos, detector,
                                                                              tmp_path):
    out = tmp_path / "drawn"
    code, stdout, err = fcvit(capsys, "detect", "predict", photos, "--checkpoint", detector, "--output", out,
                              "--device", "cpu", "--json")
    assert code == 1
    assert "broken.jpg" in err and "cannot be decoded" in err and "1 of 3 images skipped" in err
    results = json.loads(stdout)
    assert [Path(r["image"]).name for r in results] == ["chelsea.png", "coffee.png"]
    assert sorted(os.listdir(out)) == ["chelsea.png", "coffee.png", "detections.json"]
    drawn = sha(out / "chelsea.png")

    code, _, err = fcvit(capsys, "detect", "predict", photos / "chelsea.png", "--checkpoint", detector,
                         "--output", out, "--device", "cpu")
    assert code == 2 and "already exists" in one_error(err) and "--overwrite" in err
    assert sha(out / "chelsea.png") == drawn

    with caplog.at_level(logging.WARNING):
        code, _, err = fcvit(capsys, "detect", "predict", photos / "chelsea.png", "--checkpoint", detector,
                             "--output", out, "--device", "cpu", "--overwrite")
    assert code == 0, err
    assert "replaced 2 existing file(s)" in caplog.text and "chelsea.png" in caplog.text


# ---------------------------------------------------------------- segment predict

@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    from fcvit.tasks.segmentation.model import create_segmenter

    config = dict(backbone="fcvit_tiny", num_classes=3, backbone_kwargs=TINY_BACKBONE, fpn_channels=32,
                  head_channels=16)
    torch.manual_seed(0)
    model = create_segmenter(**config)
    path = tmp_path_factory.mktemp("segmenter") / "segmenter.pth.tar"
    torch.save(dict(segmenter=config, state_dict=model.state_dict(), eval_short_side=64), path)
    return path


def test_segment_predict_keeps_an_existing_mask_unless_overwrite(capsys, caplog, photos, segmenter, tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "chelsea_mask.png").write_bytes(b"the user's own mask")
    argv = ["segment", "predict", photos, "--checkpoint", segmenter, "--output", out, "--device", "cpu"]
    code, _, err = fcvit(capsys, *argv)
    assert code == 2 and "chelsea_mask.png' already exists" in one_error(err) and "--overwrite" in err
    assert (out / "chelsea_mask.png").read_bytes() == b"the user's own mask"
    assert os.listdir(out) == ["chelsea_mask.png"]

    with caplog.at_level(logging.WARNING):
        code, stdout, err = fcvit(capsys, *argv, "--overwrite", "--json")
    assert code == 1 and "broken.jpg" in err  # the corrupt file is reported and skipped, the others segmented
    assert [Path(r["image"]).name for r in json.loads(stdout)] == ["chelsea.png", "coffee.png"]
    assert Image.open(out / "chelsea_mask.png").mode == "P"
    assert "replaced 1 existing file(s)" in caplog.text

    code, _, err = fcvit(capsys, "segment", "predict", photos / "coffee.png", "--checkpoint", segmenter,
                         "--output", photos, "--device", "cpu")
    assert code == 0, err  # writing beside the input is fine: no input is replaced
    assert (photos / "coffee_mask.png").exists() and (photos / "coffee_overlay.png").exists()


# ---------------------------------------------------------------- export and convert

@pytest.fixture
def training_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "fcvit_tiny.pt"
    torch.save({"state_dict": timm.create_model("fcvit_tiny", num_classes=3).state_dict()}, path)
    return path


def test_export_never_replaces_the_checkpoint(capsys, training_checkpoint, monkeypatch):
    monkeypatch.chdir(training_checkpoint.parent)
    before = sha(training_checkpoint)
    for extra in ([], ["-o", str(training_checkpoint)], ["-o", "fcvit_tiny.pt", "--overwrite"]):
        code, _, err = fcvit(capsys, "export", "--checkpoint", "fcvit_tiny.pt", "--format", "torchscript", *extra)
        assert code == 2 and "would write over the checkpoint" in one_error(err)
        assert sha(training_checkpoint) == before


def test_export_replaces_an_existing_file_only_with_overwrite(capsys, training_checkpoint, tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"an older export")
    argv = ["export", "--checkpoint", training_checkpoint, "--format", "safetensors", "-o", target]
    code, _, err = fcvit(capsys, *argv)
    assert code == 2 and "already exists" in one_error(err) and target.read_bytes() == b"an older export"
    code, out, err = fcvit(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert f"replaced 1 existing file(s) (--overwrite): {target}" in out
    assert target.read_bytes() != b"an older export"


def test_convert_says_which_files_overwrite_replaced(capsys, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth.tar"
    torch.save({"arch": "fcvit_tiny", "state_dict": timm.create_model("fcvit_tiny").state_dict()}, checkpoint)
    out = tmp_path / "hub"
    assert fcvit(capsys, "convert", checkpoint, "-o", out)[0] == 0
    code, stdout, err = fcvit(capsys, "convert", checkpoint, "-o", out, "--overwrite")
    assert code == 0, err
    assert "replaced 3 existing file(s)" in stdout and "model.safetensors" in stdout


# ---------------------------------------------------------------- predict and analyze on folders

@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("classifier") / "tiny.pth.tar"
    model = timm.create_model("fcvit_tiny", num_classes=5)
    torch.save({"state_dict": model.state_dict(), "arch": "fcvit_tiny"}, path)
    return path


def test_predict_takes_a_folder_and_skips_its_corrupt_file(capsys, photos, classifier):
    code, out, err = fcvit(capsys, "predict", photos, "--checkpoint", classifier, "--device", "cpu", "--json")
    assert code == 1
    assert [Path(r["image"]).name for r in json.loads(out)] == ["chelsea.png", "coffee.png"]
    lines = err.strip().splitlines()
    assert any("broken.jpg" in line and "cannot be decoded" in line for line in lines)
    assert lines[-1].startswith("1 of 3 images skipped")


def test_predict_gives_a_16_bit_photo_the_class_of_its_8_bit_original(capsys, tmp_path, classifier):
    gray = np.asarray(Image.fromarray(sample_photos()["astronaut"]).convert("L").resize((96, 96)))
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    code, out, err = fcvit(capsys, "predict", tmp_path / "eight.png", tmp_path / "sixteen.png", "--checkpoint",
                           classifier, "--device", "cpu", "--json")
    assert code == 0, err
    eight, sixteen = json.loads(out)
    assert eight["top"][0]["index"] == sixteen["top"][0]["index"]
    assert [t["prob"] for t in eight["top"]] == pytest.approx([t["prob"] for t in sixteen["top"]], abs=1e-5)


def test_analyze_folder_skips_the_corrupt_file_and_never_plots_over_an_input(capsys, photos, tmp_path):
    results = tmp_path / "r.json"
    code, out, err = fcvit(capsys, "analyze", "similarity", photos, "--model", "fcvit_tiny", "--img-size", "64",
                           "--device", "cpu", "--results-file", results)
    assert code == 1 and "broken.jpg" in err and "2 image(s)" in out
    assert [Path(p).name for p in json.loads(results.read_text())["images"]] == ["chelsea.png", "coffee.png"]
    before = sha(photos / "coffee.png")
    code, _, err = fcvit(capsys, "analyze", "similarity", photos / "coffee.png", "--model", "fcvit_tiny",
                         "--img-size", "64", "--device", "cpu", "--plot", photos / "coffee.png")
    assert code == 2 and "would write over the input image" in one_error(err)
    assert sha(photos / "coffee.png") == before


# ---------------------------------------------------------------- validate --skip-bad-images

def _validate(capsys, data: Path, checkpoint: Path) -> dict:
    code, out, err = fcvit(capsys, "validate", data, "--checkpoint", checkpoint, "--img-size", "32", "-b", "4",
                           "-j", "0", "--device", "cpu", "--skip-bad-images", "--json")
    assert code == 0, err
    return json.loads(out)


def test_validate_does_not_count_a_skipped_image(capsys, tmp_path):
    data = make_folder_dataset(tmp_path / "data", train_per_class=1, val_per_class=3)
    torch.manual_seed(0)
    kwargs = dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32))
    model = timm.create_model("fcvit_tiny", num_classes=3, **kwargs)
    args = __import__("argparse").Namespace(model="fcvit_tiny", model_kwargs=kwargs)
    checkpoint = tmp_path / "tiny.pth.tar"
    atomic_save(build_train_state(model, args=args, arch="fcvit_tiny", class_names=["blue", "green", "red"]),
                checkpoint)
    bad = data / "val" / "green" / "green_1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    with_bad = _validate(capsys, data, checkpoint)
    bad.unlink()
    without = _validate(capsys, data, checkpoint)
    assert with_bad["images"] == without["images"] == 8 and with_bad["skipped"] == 1
    assert with_bad["top1"] == without["top1"] and with_bad["loss"] == pytest.approx(without["loss"])


# ---------------------------------------------------------------- files named by --results-file and -o

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "fcvit_tiny.pth.tar"
    torch.save({"state_dict": timm.create_model("fcvit_tiny", num_classes=2).state_dict()}, path)
    return path


def test_results_file_and_figures_are_replaced_only_when_asked(photos, tiny_checkpoint, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text("a user's earlier results")
    cases = [
        ["validate", "--dataset", "digits", "--model", "fcvit_tiny", "--checkpoint", tiny_checkpoint, "-j", "0",
         "--device", "cpu", "--results-file", results],
        ["analyze", "similarity", photos / "chelsea.png", "--model", "fcvit_tiny", "--results-file", results],
        ["visualize", "similarity", photos / "chelsea.png", "--model", "fcvit_tiny", "-o", results.with_suffix(".png")],
        ["benchmark", "--model", "fcvit_tiny", "--compare", "", "--results-file", results],
    ]
    results.with_suffix(".png").write_bytes(b"a user's figure")
    for argv in cases:
        code, _, err = fcvit(capsys, *argv)
        line = one_error(err)
        assert code == 2 and "already exists" in line and "--overwrite" in line, line
    assert results.read_text() == "a user's earlier results"
    assert results.with_suffix(".png").read_bytes() == b"a user's figure"
    code, _, err = fcvit(capsys, "visualize", "similarity", photos / "chelsea.png", "--model", "fcvit_tiny",
                         "-o", results.with_suffix(".png"), "--overwrite")
    assert code == 0, err
    assert results.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"  # asked for: replaced


def test_a_figure_is_never_written_over_its_input_image(photos, capsys):
    before = sha(photos / "chelsea.png")
    code, _, err = fcvit(capsys, "visualize", "similarity", photos / "chelsea.png", "--model", "fcvit_tiny",
                         "-o", photos / "chelsea.png", "--overwrite")
    assert code == 2 and "input image" in one_error(err)
    assert sha(photos / "chelsea.png") == before
