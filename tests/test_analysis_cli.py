"""`fcvit visualize` and `fcvit analyze` on a real photograph (scikit-image's cat), offline."""
import csv
import json
import logging
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fcvit.analysis import hub_reachable
from fcvit.cli.main import main

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "cat.png"
    Image.fromarray(skimage_data.chelsea()).save(path)  # 451 x 300 photograph
    return path


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "test_vit.pth"
    torch.save({"model": timm.create_model("test_vit").state_dict()}, path)
    return path


def run_cli(argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code


def assert_real_figure(path, min_width=400):
    img = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    assert img.shape[1] >= min_width
    assert img.std() > 30  # photograph, colour maps, colour bar: far from a blank page
    assert len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 1000  # many colours, not a flat drawing


def test_visualize_similarity_on_the_cat_warns_about_random_weights(cat, tmp_path, caplog):
    out = tmp_path / "sim.png"
    with caplog.at_level(logging.WARNING):
        code = run_cli(["visualize", "similarity", cat, "--model", "fcvit_tiny", "--img-size", "96",
                        "--block", "-2", "--output", out, "--dpi", "50"])
    assert code == 0
    assert "random weights" in caplog.text
    assert_real_figure(out)


def test_visualize_attention_with_a_local_checkpoint(cat, vit_checkpoint, tmp_path, caplog):
    out = tmp_path / "att.png"
    with caplog.at_level(logging.WARNING):
        code = run_cli(["visualize", "attention", cat, "--model", "test_vit", "--checkpoint",
                        vit_checkpoint, "--query", "150,120", "300,200", "--head", "all", "--block", "3",
                        "--output", out])
    assert code == 0
    assert "random weights" not in caplog.text
    assert_real_figure(out)


def test_visualize_compare_on_the_cat(cat, vit_checkpoint, tmp_path):
    out = tmp_path / "cmp.png"
    code = run_cli(["visualize", "compare", cat, "--vit", "test_vit", "--vit-checkpoint", vit_checkpoint,
                    "--fcvit", "fcvit_tiny", "--img-size", "96", "--random-queries", "3", "--output", out,
                    "--dpi", "60"])
    assert code == 0
    assert_real_figure(out)


def test_pretrained_without_a_hub_fails_at_once_in_one_sentence(cat, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    code = run_cli(["visualize", "attention", cat, "--model", "test_vit", "--pretrained",
                    "--output", tmp_path / "a.png"])
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "cannot be reached" in err and "--checkpoint" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "a.png").exists()


def test_hub_check_gives_up_quickly_on_an_unreachable_host(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    assert hub_reachable("hub.invalid", timeout=1.0) is False  # .invalid never resolves (RFC 2606)
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("argv, message", [
    (["visualize", "similarity", "{cat}", "--model", "fcvit_tiny", "--pretrained", "-o", "{tmp}/s.png"],
     "no published weights"),
    (["visualize", "attention", "{cat}", "--model", "test_vit", "--query", "900,10", "-o", "{tmp}/a.png"],
     "outside the 451x300 image"),
    (["visualize", "attention", "{cat}", "--model", "test_vit", "-o", "{tmp}/a.xyz"], "end its name"),
    (["visualize", "similarity", "{cat}", "--model", "test_vit", "-o", "{tmp}/s.png"], "not an FCViT"),
    (["analyze", "similarity", "{cat}", "--model", "test_vit"], "not an FCViT"),
    (["visualize", "attention", "{cat}", "--query", "12", "-o", "{tmp}/a.png"], "write pixel coordinates as X,Y"),
    (["visualize", "compare", "{cat}", "--random-queries", "-3", "-o", "{tmp}/c.png"], "--random-queries: expected a whole number of at least 1"),
    (["visualize", "attention", "{cat}", "--head", "some", "-o", "{tmp}/a.png"], "use mean, all, or a head index"),
    (["analyze", "attention", "{cat}", "--results-file", "{tmp}/r.txt"], "must end in .json or .csv"),
    (["analyze", "attention", "{tmp}/missing.jpg", "--model", "test_vit"], "does not exist"),
])
def test_user_errors_are_one_sentence(cat, tmp_path, capsys, argv, message):
    code = run_cli([a.format(cat=cat, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_analyze_attention_writes_json_and_plot(cat, vit_checkpoint, tmp_path, capsys):
    results, plot = tmp_path / "r.json", tmp_path / "depth.png"
    code = run_cli(["analyze", "attention", cat, cat, "--model", "test_vit", "--checkpoint",
                    vit_checkpoint, "--results-file", results, "--plot", plot])
    assert code == 0
    data = json.loads(results.read_text())
    assert data["kind"] == "attention" and data["num_prefix_tokens"] == 1 and len(data["images"]) == 2
    assert [b["block"] for b in data["blocks"]] == list(range(6))
    for row in data["blocks"]:
        for name in ("query_irrelevance", "head_irrelevance", "top1pct_mass", "top5pct_mass", "entropy"):
            assert 0.0 <= row[name] <= 1.0 + 1e-6
        assert row["std"]["entropy"] == pytest.approx(0.0, abs=1e-6)  # the same image twice
    assert "query_irrelevance" in capsys.readouterr().out
    pixels = np.asarray(Image.open(plot).convert("L"))
    assert pixels.shape[1] > 1000 and (pixels < 200).mean() > 0.01  # axes, lines and labels drawn


def test_analyze_fcvit_measures_its_group_similarity_maps(cat, tmp_path):
    results, table = tmp_path / "f.json", tmp_path / "f.csv"
    assert run_cli(["analyze", "attention", cat, "--model", "fcvit_tiny", "--img-size", "64",
                    "--results-file", results]) == 0
    data = json.loads(results.read_text())
    assert run_cli(["analyze", "similarity", cat, "--model", "fcvit_tiny", "--img-size", "64",
                    "--results-file", table]) == 0
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 26 and rows[1]["module"] == "gc2" and rows[25]["stage"] == "3"
    assert 0.0 < float(rows[0]["entropy"]) <= 1.0
    assert data["kind"] == "similarity" and data["weights"] == "random, untrained weights"
    assert len(data["blocks"]) == 2 * 13  # fcvit_tiny has 13 blocks, two global-context modules each
    assert {"group_irrelevance", "group_correlation", "top1pct_mass", "top5pct_mass", "entropy"} <= set(data["measures"])
    assert all(-1.0 <= r["group_correlation"] <= 1.0 for r in data["blocks"])


def test_analyze_leaves_autograd_on(tmp_path):
    import torch
    from PIL import Image

    from fcvit.cli.main import main

    image = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(image)
    with pytest.raises(SystemExit):
        main(["analyze", "similarity", str(image), "--model", "fcvit_tiny", "--img-size", "64"])
    assert torch.is_grad_enabled()
