"""Checkpoint faults (issues 24 and 21): weights a model would take silently wrong, every kind of checkpoint told
apart by every command that takes one, non-FCViT timm runs end to end, and hub folders as checkpoints."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import fcvit
from fcvit.cli.main import main
from fcvit.engine import atomic_save, build_train_state
from fcvit.errors import UserError
from fcvit.models.checkpoint import checkpoint_kind, read_checkpoint
from fcvit.tasks.detection.model import build_mask_rcnn
from synthetic_data import make_shapes_coco
from fcvit.tasks.segmentation.model import create_segmenter

from train_helpers import FAST, TINY_MODEL, make_folder_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32))
NAMES = ["blue", "green", "red"]


def fcvit_cli(capsys, *argv) -> tuple:
    """(exit code, stdout, stderr) of the CLI run in-process."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def one_sentence(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("fcvit ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def image(data) -> Path:
    return data / "val" / "red" / "red_0.png"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    """One checkpoint of each kind, written as each task's training writes it."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = {kind: root / f"{kind}.pth.tar" for kind in ("classifier", "detector", "segmenter", "backbone", "timm")}
    classifier = timm.create_model("fcvit_tiny", num_classes=3, **SHAPE)
    atomic_save(build_train_state(classifier, args={"model": "fcvit_tiny", "model_kwargs": SHAPE}, arch="fcvit_tiny",
                                  num_classes=3, class_names=NAMES), paths["classifier"])
    detector = build_mask_rcnn("fcvit_tiny", 3, min_size=64, max_size=64, fpn_channels=16, representation_size=32,
                               backbone_kwargs=SHAPE)
    config = dict(backbone="fcvit_tiny", num_classes=3, min_size=64, max_size=64, fpn_channels=16,
                  representation_size=32, backbone_kwargs=SHAPE)
    atomic_save(build_train_state(detector, args={"backbone": "fcvit_tiny"}, model_config=config,
                                  categories=[{"id": i + 1, "name": n} for i, n in enumerate(NAMES)],
                                  class_names=NAMES, arch="mask_rcnn_fcvit_tiny"), paths["detector"])
    segmenter = create_segmenter("fcvit_tiny", 3, fpn_channels=16, head_channels=8, backbone_kwargs=SHAPE)
    atomic_save(build_train_state(segmenter, args={"backbone": "fcvit_tiny"}, model_config=dict(segmenter.config),
                                  class_names=NAMES, arch="semantic_fpn_fcvit_tiny"), paths["segmenter"])
    torch.save({"state_dict": fcvit.create_backbone("fcvit_tiny", **SHAPE).state_dict()}, paths["backbone"])
    atomic_save(build_train_state(timm.create_model("resnet18", num_classes=3), args={"model": "resnet18"},
                                  arch="resnet18", num_classes=3), paths["timm"])
    return paths


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    """timm's hub layout, as `fcvit convert` (save_for_hf) writes it, of a 3-class tiny FCViT."""
    from timm.models import save_for_hf

    folder = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    save_for_hf(timm.create_model("fcvit_tiny", num_classes=3, **SHAPE).eval(), str(folder), safe_serialization=True,
                model_config={"label_names": NAMES})
    return folder


# -- weights checked when loaded ----------------------------------------------------------------------------------

def _full_state(tmp_path: Path, change) -> Path:
    state = {k: v.clone() for k, v in timm.create_model("fcvit_tiny", num_classes=3, **SHAPE).state_dict().items()}
    change(state)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_weights_of_another_dtype_are_refused_naming_key_and_dtype(tmp_path, image, capsys, dtype):
    path = _full_state(tmp_path, lambda s: s.update({k: v.to(dtype) for k, v in s.items() if v.is_floating_point()}))
    code, _, err = fcvit_cli(capsys, "predict", image, "--checkpoint", path, "--model", "fcvit_tiny")
    line = one_sentence(err)
    assert code == 2 and re.search(rf"weight '[\w.]+' has dtype {str(dtype)[6:]}, not a floating-point one", line)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_first_bad_key(tmp_path, image, capsys, bad):
    path = _full_state(tmp_path, lambda s: s["stages.1.blocks.0.layer_scale_1"].fill_(bad))
    code, _, err = fcvit_cli(capsys, "predict", image, "--checkpoint", path, "--model", "fcvit_tiny")
    assert code == 2 and "'stages.1.blocks.0.layer_scale_1' holds NaN or infinite values" in one_sentence(err)


def test_integer_counters_of_batchnorm_still_load(ckpts):
    state = read_checkpoint(ckpts["classifier"])["state_dict"]
    counters = [k for k, v in state.items() if v.dtype == torch.int64]
    assert counters and all(k.endswith("num_batches_tracked") for k in counters)
    model = fcvit.create_classifier("fcvit_tiny", ckpts["classifier"])
    assert model.num_classes == 3


# -- every kind told apart ----------------------------------------------------------------------------------------

def test_checkpoint_kind_tells_every_kind_apart(ckpts, hub_folder):
    for kind, path in ckpts.items():
        assert checkpoint_kind(read_checkpoint(path)) == kind
    assert checkpoint_kind(read_checkpoint(hub_folder)) == "hub"
    assert checkpoint_kind(read_checkpoint(f"local-dir:{hub_folder}")) == "hub"


@pytest.mark.parametrize("kind,command,said", [
    ("detector", ["segment", "eval", "--data", "D"], "Mask R-CNN checkpoint; use it with `fcvit detect eval"),
    ("detector", ["segment", "predict", "IMG", "--output", "O"], "Mask R-CNN checkpoint; use it with `fcvit detect"),
    ("detector", ["predict", "IMG"], "Mask R-CNN checkpoint; use it with `fcvit detect eval/predict`"),
    ("detector", ["export", "--format", "torchscript", "-o", "O.pt"], "Mask R-CNN checkpoint"),
    ("segmenter", ["validate", "D"], "Semantic FPN checkpoint; use it with `fcvit segment eval/predict`"),
    ("segmenter", ["detect", "predict", "IMG", "--output", "O"], "Semantic FPN checkpoint; use it with `fcvit segment"),
    ("classifier", ["segment", "predict", "IMG", "--output", "O"], "image classifier; use it with `fcvit predict"),
    ("timm", ["detect", "predict", "IMG", "--output", "O"], "resnet18 image classifier (a timm model, not FCViT)"),
    ("backbone", ["predict", "IMG"], "an FCViT backbone without a classifier; use it as --pretrained-backbone"),
])
def test_each_command_names_the_kind_it_was_given_and_the_command_that_takes_it(ckpts, data, image, tmp_path,
                                                                                capsys, kind, command, said):
    swap = {"IMG": image, "D": data, "O": tmp_path / "out", "O.pt": tmp_path / "out.pt"}
    code, _, err = fcvit_cli(capsys, *[swap.get(a, a) for a in command], "--checkpoint", ckpts[kind])
    line = one_sentence(err)
    assert code == 2 and said in line and "was not written by" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.pt").exists()


def test_a_hub_folder_is_told_apart_by_the_detection_commands(hub_folder, image, tmp_path, capsys):
    code, _, err = fcvit_cli(capsys, "detect", "predict", image, "--checkpoint", hub_folder, "--output", tmp_path / "o")
    assert code == 2 and "is a timm hub folder of an image classifier" in one_sentence(err)


def test_resume_with_another_task_checkpoint_names_it_before_comparing_settings(ckpts, data, tmp_path, capsys):
    code, _, err = fcvit_cli(capsys, "train", data, *TINY_MODEL, *FAST, "--epochs", "1", "--output", tmp_path / "run",
                             "--resume", ckpts["detector"])
    line = one_sentence(err)
    assert code == 2 and "Mask R-CNN checkpoint" in line and "--resume-override" not in line
    shapes = make_shapes_coco(tmp_path / "shapes", num_train=2, num_val=1, size=(64, 64))
    ann, images = f"{shapes}/annotations/instances_train2017.json", f"{shapes}/train2017"
    code, _, err = fcvit_cli(capsys, "detect", "train", "--train-ann", ann, "--train-images", images, "--val-ann", ann,
                             "--val-images", images, "--output", tmp_path / "det", "--backbone", "fcvit_tiny",
                             "--backbone-depths", "1", "1", "1", "1", "--backbone-dims", "16", "16", "32", "32",
                             "--fpn-channels", "16", "--representation-size", "32", "--min-size", "64", "--max-size",
                             "64", "-b", "1", "--epochs", "1", "--workers", "0", "--device", "cpu",
                             "--resume", ckpts["segmenter"])
    line = one_sentence(err)
    assert code == 2 and "Semantic FPN checkpoint" in line and "already trained" not in line


# -- a non-FCViT timm model end to end ----------------------------------------------------------------------------

def test_a_timm_model_run_predicts_validates_and_exports(data, image, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = fcvit_cli(capsys, "train", data, "--model", "resnet18", *FAST, "--epochs", "1", "--output", out)
    assert code == 0, err
    ckpt = out / "last.pth.tar"
    code, stdout, err = fcvit_cli(capsys, "predict", image, "--checkpoint", ckpt, "--json")
    assert code == 0, err
    assert {t["name"] for t in json.loads(stdout)[0]["top"]} == set(NAMES)
    code, stdout, err = fcvit_cli(capsys, "validate", data, "--checkpoint", ckpt, "--num-classes", "3", "-b", "4",
                                  "-j", "0", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(stdout)["model"] == "resnet18" and json.loads(stdout)["images"] == 6
    code, stdout, err = fcvit_cli(capsys, "export", "--checkpoint", ckpt, "--format", "torchscript", "--img-size", "32",
                                  "-o", tmp_path / "r.pt")
    assert code == 0 and "(ok)" in stdout, err


# -- hub folders as checkpoints -----------------------------------------------------------------------------------

def test_a_hub_folder_is_a_checkpoint_of_predict_validate_and_export(hub_folder, data, image, tmp_path, capsys,
                                                                     caplog):
    reference = timm.create_model(f"local-dir:{hub_folder}", pretrained=True).eval()
    for given in (hub_folder, f"local-dir:{hub_folder}"):
        caplog.clear()
        code, stdout, err = fcvit_cli(capsys, "predict", image, "--checkpoint", given, "--json")
        assert code == 0, err
        assert f"Model fcvit_tiny, the architecture in '{hub_folder / 'config.json'}'" in caplog.text
        top = json.loads(stdout)[0]["top"]
        assert {t["name"] for t in top} == set(NAMES)
    from timm.data import create_transform, resolve_data_config

    pixels = create_transform(**resolve_data_config({}, model=reference))(Image.open(image).convert("RGB"))
    with torch.no_grad():
        probs = reference(pixels[None]).softmax(-1)[0]
    assert [t["prob"] for t in top] == pytest.approx(probs.sort(descending=True).values.tolist(), abs=1e-6)
    code, stdout, err = fcvit_cli(capsys, "validate", data, "--checkpoint", hub_folder, "-b", "4", "-j", "0",
                                  "--device", "cpu", "--img-size", "32", "--json")
    assert code == 0 and json.loads(stdout)["model"] == "fcvit_tiny", err
    code, stdout, err = fcvit_cli(capsys, "export", "--checkpoint", hub_folder, "--format", "torchscript",
                                  "--img-size", "32", "-o", tmp_path / "h.pt")
    assert code == 0 and "(ok)" in stdout, err


def test_without_model_the_variant_is_inferred_from_the_weights(tmp_path, image, capsys, caplog):
    path = tmp_path / "model.safetensors"
    save_file(timm.create_model("fcvit_tiny", num_classes=3).state_dict(), str(path))
    code, stdout, err = fcvit_cli(capsys, "predict", image, "--checkpoint", path)
    assert code == 0, err
    assert "Model fcvit_tiny: the checkpoint names none and its weights have that variant's shapes" in caplog.text


def test_a_folder_that_is_not_a_hub_folder_says_so(tmp_path, image, capsys):
    (tmp_path / "run").mkdir()
    code, _, err = fcvit_cli(capsys, "predict", image, "--checkpoint", tmp_path / "run")
    assert code == 2 and "is a folder without a timm hub folder's config.json" in one_sentence(err)
    (tmp_path / "run" / "config.json").write_text("{not json")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "run" / "model.safetensors"))
    with pytest.raises(UserError, match="config.json' is not timm's hub config"):
        read_checkpoint(tmp_path / "run")


def test_a_torch_file_named_safetensors_is_called_what_it_is(tmp_path):
    path = tmp_path / "weights.safetensors"
    torch.save({"head.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UserError, match=r"is a PyTorch \(torch.save\) file, not safetensors: rename it to end in .pth"):
        read_checkpoint(path)


def test_visualize_and_analyze_read_the_model_from_a_hub_folder(hub_folder, tmp_path, caplog):
    """Without --model the analysis commands take the architecture the folder's config.json names."""
    import logging

    from fcvit.cli.main import main
    from real_photos import sample_photos

    image = tmp_path / "cat.png"
    Image.fromarray(sample_photos()["chelsea"]).save(image)
    with caplog.at_level(logging.INFO):
        for argv in (["visualize", "similarity", str(image), "--checkpoint", str(hub_folder), "-o",
                      str(tmp_path / "sim.png"), "--img-size", "64"],
                     ["analyze", "similarity", str(image), "--checkpoint", str(hub_folder), "--img-size", "64"]):
            with pytest.raises(SystemExit) as exc:
                main(argv)
            assert exc.value.code == 0
    assert "Model fcvit_tiny, the architecture in" in caplog.text and (tmp_path / "sim.png").stat().st_size > 0
