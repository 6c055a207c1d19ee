"""`fcvit models` and `fcvit predict`, including the user errors they must explain in one sentence."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fcvit.cli.main import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = folder / "rgb.png"
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(rgb)
    gray = folder / "gray.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(gray)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(rgb.read_bytes()[:60])
    return {"rgb": str(rgb), "gray": str(gray), "corrupt": str(corrupt)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("fcvit_tiny", num_classes=3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth.tar"
    torch.save({"state_dict": model.state_dict(), "class_names": ["circle", "square", "triangle"]}, path)
    return str(path)


def test_models_lists_variants_with_params_and_gmacs(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    rows = {r["model"]: r for r in json.loads(out)}
    assert list(rows) == ["fcvit_tiny", "fcvit_b12", "fcvit_b24", "fcvit_b48"]
    assert rows["fcvit_b12"]["params"] == 14_701_832
    assert rows["fcvit_tiny"]["gmacs"] == pytest.approx(0.90, abs=0.01)
    assert rows["fcvit_b48"]["gmacs"] > rows["fcvit_b24"]["gmacs"] > rows["fcvit_b12"]["gmacs"]


def test_predict_prints_topk_with_checkpoint_class_names(capsys, images, checkpoint):
    code, out, _ = run_cli(capsys, "predict", images["rgb"], images["gray"], "--model", "fcvit_tiny",
                           "--checkpoint", checkpoint, "--json")
    assert code == 0
    results = json.loads(out)
    assert [r["image"] for r in results] == [images["rgb"], images["gray"]]
    for r in results:
        assert len(r["top"]) == 3  # top-5 capped at the number of classes
        assert {t["name"] for t in r["top"]} == {"circle", "square", "triangle"}
        assert sum(t["prob"] for t in r["top"]) == pytest.approx(1.0, abs=1e-4)
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True)


def test_predict_uses_imagenet_names_for_1000_classes(capsys, images, tmp_path):
    path = tmp_path / "in1k.pth"
    torch.save(timm.create_model("fcvit_tiny").state_dict(), path)
    code, out, _ = run_cli(capsys, "predict", images["rgb"], "--model", "fcvit_tiny", "--checkpoint", str(path))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == images["rgb"] and len(lines) == 6
    from timm.data import ImageNetInfo

    names = set(ImageNetInfo().label_descriptions())
    assert all(line.split(None, 2)[2] in names for line in lines[1:])


@pytest.mark.parametrize("case, expected", [
    ("corrupt", "cannot be decoded"),
    ("missing", "does not exist"),
    ("unknown_model", "did you mean fcvit_b12"),
    ("wrong_variant", "looks like fcvit_tiny"),
])
def test_predict_errors_are_one_sentence(capsys, images, checkpoint, case, expected):
    argv = ["predict", images["rgb"], "--model", "fcvit_tiny"]
    if case == "corrupt":
        argv[1] = images["corrupt"]
    elif case == "missing":
        argv[1] = "/no/such/image.jpg"
    elif case == "unknown_model":
        argv[3] = "fcvit_b13"
    elif case == "wrong_variant":
        argv[3] = "fcvit_b12"
        argv += ["--checkpoint", checkpoint]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_command_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "half.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    proc = subprocess.run([sys.executable, "-m", "fcvit", "predict", str(bad), "--checkpoint", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "cannot be decoded" in proc.stderr


def test_predict_follows_the_training_runs_arch_and_data_config(capsys, images, tmp_path, monkeypatch):
    import timm.data

    torch.manual_seed(0)
    model = timm.create_model("fcvit_tiny", num_classes=3)
    path = tmp_path / "digits_like.pth.tar"
    torch.save({"state_dict": model.state_dict(), "arch": "fcvit_tiny", "class_names": ["a", "b", "c"],
                "data_config": {"input_size": [3, 32, 32], "crop_pct": 1.0, "interpolation": "bilinear",
                                "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}, path)
    seen = {}
    original = timm.data.create_transform

    def recording(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(timm.data, "create_transform", recording)
    code, out, _ = run_cli(capsys, "predict", images["rgb"], "--checkpoint", str(path), "--json")  # no --model
    assert code == 0
    assert {t["name"] for t in json.loads(out)[0]["top"]} == {"a", "b", "c"}
    assert tuple(seen["input_size"]) == (3, 32, 32) and seen["interpolation"] == "bilinear"
    assert tuple(seen["mean"]) == (0.5, 0.5, 0.5)
