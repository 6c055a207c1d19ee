"""Hub folders carry what training knew: `fcvit convert` of a 64 px run with named classes keeps its input size,
preprocessing, class names and architecture, and its card tells the run's story (and nothing more)."""
from __future__ import annotations

import json

import pytest
import timm

import fcvit  # noqa: F401  (registers the models)
from fcvit.cli.main import main
from fcvit.engine import load_train_state

from train_helpers import FAST, TINY_MODEL, make_folder_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def fcvit_cli(capsys, *argv) -> tuple:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def train_and_convert(capsys, data, root, name, *extra) -> tuple:
    run, hub = root / name, root / f"{name}-hub"
    code, _, err = fcvit_cli(capsys, "train", data, *TINY_MODEL, *FAST, "--img-size", "64", "--epochs", "1",
                             "--output", run, *extra)
    assert code == 0, err
    code, out, err = fcvit_cli(capsys, "convert", run / "model_best.pth.tar", "--output", hub)
    assert code == 0, err
    assert "max |difference| 0.0e+00" in out
    return run, hub


def test_a_converted_run_keeps_its_size_labels_architecture_and_story(capsys, tmp_path):
    data = make_folder_dataset(tmp_path / "photos")  # classes blue, green, red
    run, hub = train_and_convert(capsys, data, tmp_path, "scratch")
    best = load_train_state(run / "model_best.pth.tar")

    config = json.loads((hub / "config.json").read_text())
    assert config["label_names"] == ["blue", "green", "red"] and config["num_classes"] == 3
    assert config["model_args"]["depths"] == [1, 1, 1, 1] and config["model_args"]["dims"] == [16, 16, 32, 32]
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std"):
        assert config["pretrained_cfg"][key] == best["data_config"][key], key
    model = timm.create_model(f"local-dir:{hub}", pretrained=True)
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 64, 64)  # JSON keeps a list, timm reads it as such
    assert model.pretrained_cfg["label_names"] == ["blue", "green", "red"]

    image = sorted((data / "val" / "red").iterdir())[0]
    results = {}
    for source in (run / "model_best.pth.tar", hub):
        code, out, err = fcvit_cli(capsys, "predict", "--checkpoint", source, image, "--device", "cpu", "--json")
        assert code == 0, err
        results[source] = json.loads(out)[0]["top"]
    from_run, from_hub = results.values()
    assert [r["name"] for r in from_hub] == [r["name"] for r in from_run]
    assert {r["name"] for r in from_hub} == {"blue", "green", "red"}
    assert [r["prob"] for r in from_hub] == pytest.approx([r["prob"] for r in from_run], abs=1e-6)
    code, out, _ = fcvit_cli(capsys, "predict", "--checkpoint", hub, image, "--device", "cpu")
    assert code == 0 and "red" in out and "class 1" not in out

    card = (hub / "README.md").read_text()
    top1 = best["saver"]["best"][0]["value"]
    for needle in ("random initial weights", "image folder `photos`", "Epochs trained: 1.", "input 64x64",
                   f"Best validation top1 of the run: {top1:.2f}% (epoch 0)", "classes blue, green, red"):
        assert needle in card, needle
    assert "fine-tuned" not in card and "Published ImageNet" not in card

    # a run that starts from those weights says so, by file name only
    _, hub2 = train_and_convert(capsys, data, tmp_path, "tuned", "--initial-checkpoint", run / "model_best.pth.tar")
    card = (hub2 / "README.md").read_text()
    assert "Started from the weights of `model_best.pth.tar` (--initial-checkpoint)" in card
    assert "random" not in card and str(tmp_path) not in card
