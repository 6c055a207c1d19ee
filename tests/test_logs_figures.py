"""Logs and figures a person reads (issue 21): rates, AP units, progress lines, detection summaries, attention
figures, measure plots, overlays' legends, training sizes, the models table and `fcvit plot`."""
from __future__ import annotations

import argparse
import itertools
import logging
import re
import types

import numpy as np
import pytest
import torch
from PIL import Image

from fcvit.cli.main import main
from fcvit.data.samplers import EpochShardSampler, SeededSamples, SeekableBatches
from fcvit.engine import DistContext, ProgressBar, Settings, Task, resolve_amp, run_training, train_loader
from fcvit.engine.logs import rate


def run_cli(capsys, *argv) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# ---------------------------------------------------------------- logs

def test_rates_keep_three_significant_digits_below_100():
    assert [rate(v) for v in (0.0123456, 0.5, 4.5678, 45.678, 1234.4)] == ["0.0123", "0.5", "4.57", "45.7", "1234"]


def test_slow_runs_log_rates_and_a_fraction_metric_in_percent(tmp_path, monkeypatch, caplog):
    """A detection-like run below 1 img/s: rates keep their digits, AP (a fraction) is printed in percent."""
    from fcvit.engine import loop

    clock = itertools.count(0.0, 3.0)  # every reading of the clock 3 s later: about 0.2 img/s
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    model = torch.nn.Linear(1, 1)
    dataset = [(torch.zeros(1), 0) for _ in range(2)]
    loader = train_loader(SeededSamples(dataset), SeekableBatches(EpochShardSampler(2, seed=0), 1), 0, False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    task = Task(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), loader,
                metric="bbox_AP", length=1)
    task.metric_scale = 100.0
    task.step = lambda m, batch: (m(batch[0]).sum(), {}, 1)
    task.evaluate = lambda m: ({"bbox_AP": 0.007143}, {"bbox_AP": 0.007143})
    with caplog.at_level(logging.INFO):
        run_training(task, DistContext(), Settings(output=str(tmp_path), amp=resolve_amp(torch.device("cpu"), False),
                                                   log_interval=1))
    text = caplog.text
    assert re.search(r"epoch 0 \[1/2\]: .* 0\.\d+ img/s", text)
    assert "bbox_AP 0.7143%" in text and re.search(r", 0\.\d+ img/s \(model alone 0\.\d+,", text)
    assert " 0 img/s" not in text and "alone 0," not in text


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch, capsys, caplog):
    monkeypatch.setattr(ProgressBar, "quiet_seconds", 0.0)
    with caplog.at_level(logging.INFO, logger="fcvit.engine.logs"):
        with ProgressBar(100, "eval") as bar:  # pytest's stderr is no terminal
            for _ in range(20):
                bar.update(5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0].startswith("eval: 10/100 images") and "img/s" in lines[0]
    assert "\r" not in capsys.readouterr().err
    caplog.clear()
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    with ProgressBar(100, "eval") as bar:
        bar.update(100)
    assert not caplog.records  # the bar itself shows it


def test_detect_predict_summarises_and_hints_at_the_threshold():
    from fcvit.cli.detect import _summary

    found = [{"name": n, "score": s} for n, s in
             [("dog", 0.9), ("cat", 0.8), ("dog", 0.7), ("dog", 0.65), ("cat", 0.6), ("bird", 0.55), ("dog", 0.52)]]
    line = _summary({"detections": found, "best_score": 0.9}, 0.5)
    assert line == "7 detections (4 dog, 2 cat, 1 bird); top 5: dog 0.90, cat 0.80, dog 0.70, dog 0.65, cat 0.60"
    line = _summary({"detections": [], "best_score": 0.0734}, 0.5)
    assert "none at score >= 0.5" in line and "0.073" in line and "--score-threshold 0.07" in line
    assert _summary({"detections": [], "best_score": None}, 0.5) == "no detections"


# ---------------------------------------------------------------- attention figures

def _near_uniform_maps(queries: int = 2, heads: int = 2) -> list:
    torch.manual_seed(0)
    return [(1 + 0.02 * torch.rand(heads, 4, 6)) / 24 for _ in range(queries)]


def test_attention_maps_are_scaled_per_map_with_a_note_numbered_unclipped_stars_and_titles_that_fit():
    from fcvit.analysis.plots import draw_attention

    image = np.zeros((40, 60, 3), dtype=np.uint8)
    title = "deit_tiny_distilled_patch16_224, block 11: attention of each query over the patches — weights: random"
    fig = draw_attention(image, [(0.0, 0.0), (59.0, 39.0)], _near_uniform_maps(), ["head 0", "head 1"], title=title)
    fig.canvas.draw()
    overlays = [ax.get_images()[1] for ax in fig.axes if len(ax.get_images()) == 2]
    assert len(overlays) == 4
    for im in overlays:  # each map stretched over the whole colour scale
        assert im.get_clim() == (0.0, 1.0) and np.asarray(im.get_array()).min() == 0.0
        assert np.asarray(im.get_array()).max() == pytest.approx(1.0)
    assert "nearly uniform" in fig._supxlabel.get_text()
    stars = [line for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 6 and not any(line.get_clip_on() for line in stars)
    numbers = sorted(t.get_text() for ax in fig.axes for t in ax.texts)
    assert numbers == ["1", "1", "1", "2", "2", "2"]
    lines = fig._suptitle.get_text().splitlines()
    assert all(len(line.split()) > 1 for line in lines)  # no word alone on a line
    assert max(map(len, lines)) - min(map(len, lines)) < 15  # balanced

    flat = draw_attention(image, [(10.0, 10.0)], _near_uniform_maps(1, 1), ["mean"], scale="figure")
    assert [ax.get_images()[1].get_clim()[0] for ax in flat.axes if len(ax.get_images()) == 2] == [0.0]
    assert "--scale map" in flat._supxlabel.get_text()


def test_compare_warns_with_its_own_flag_names(caplog):
    from fcvit.cli.visualize import _load

    args = argparse.Namespace(vit_checkpoint=None, vit_pretrained=False, device="cpu")
    with caplog.at_level(logging.WARNING):
        _load(args, "deit_tiny_patch16_224", "vit_")
    assert "No --vit-checkpoint or --vit-pretrained given" in caplog.text


def test_similarity_uses_the_checkpoints_training_size(tmp_path, capsys, caplog):
    from fcvit.cli.visualize import _trained_side

    import timm

    model = timm.create_model("fcvit_tiny", num_classes=3)
    stored = tmp_path / "run64.pth.tar"
    torch.save({"state_dict": model.state_dict(), "data_config": {"input_size": [3, 64, 64]}}, stored)
    torch.save({"state_dict": model.state_dict(), "args": {"img_size": 96}}, tmp_path / "args96.pth.tar")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    sides = [_trained_side(str(tmp_path / n)) for n in ("run64.pth.tar", "args96.pth.tar", "plain.pth")]
    assert sides == [64, 96, None]
    Image.fromarray(np.full((60, 90, 3), 128, dtype=np.uint8)).save(tmp_path / "img.png")
    with caplog.at_level(logging.INFO):
        code, out, err = run_cli(capsys, "visualize", "similarity", tmp_path / "img.png", "--model", "fcvit_tiny",
                                 "--checkpoint", stored, "-o", tmp_path / "sim.png", "--dpi", "40")
    assert code == 0, err
    assert "shorter side 64, the checkpoint's training size" in caplog.text


# ---------------------------------------------------------------- analyze plots

def test_uniform_baseline_is_what_the_measures_give_for_uniform_attention():
    from fcvit.analysis.measures import attention_measures
    from fcvit.analysis.plots import uniform_values

    tokens, prefix = 196, 2
    whole = torch.full((3, tokens, tokens + prefix), 1.0 / (tokens + prefix))  # heads x queries x all keys
    spatial = whole[..., prefix:] / whole[..., prefix:].sum(-1, keepdim=True)
    measured = attention_measures(spatial, whole[..., :prefix].sum(-1))
    expected = uniform_values(tokens, prefix)
    for name, value in measured.items():
        assert value == pytest.approx(expected[name], abs=1e-6), name


def test_measure_plots_have_readable_titles_axis_labels_a_grid_and_the_baseline():
    from fcvit.analysis.plots import draw_measures, uniform_values

    names = ["query_irrelevance", "head_irrelevance", "top1pct_mass", "top5pct_mass", "entropy", "prefix_mass"]
    rows = [dict(block=b, **{n: 0.5 for n in names}) for b in range(4)]
    fig = draw_measures(rows, names, baselines=[uniform_values(196, 2)] * 4)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 6 and len({round(ax.get_position().y0, 2) for ax in axes}) == 2  # two rows of three
    assert "top1pct_mass" not in {ax.get_title() for ax in axes} and "mass on the top 1% of tokens" in {
        ax.get_title() for ax in axes}
    assert all(ax.get_ylabel() and ax.get_xlabel() == "block" for ax in axes)
    dashed = {ax.get_title(): ax.get_lines()[-1] for ax in axes}
    assert all(line.get_linestyle() == "--" for line in dashed.values())
    assert dashed["mass on the top 1% of tokens"].get_ydata()[0] == pytest.approx(2 / 196)
    assert dashed["mass on class/distillation tokens"].get_ydata()[0] == pytest.approx(2 / 198)


# ---------------------------------------------------------------- segmentation overlays

def test_segmentation_overlays_carry_a_legend_of_the_classes_present(tmp_path):
    from fcvit.tasks.segmentation import create_segmenter
    from fcvit.tasks.segmentation.predict import color_palette, draw_legend, predict_images

    image = Image.new("RGB", (200, 120), (128, 128, 128))
    drawn = np.asarray(draw_legend(image, [2, 0], ["wall", "sky", "cat"]))
    palette = color_palette()
    swatches = [tuple(drawn[6 + i * 14 + 4, 8]) for i in range(2)]  # size 10: pad 5, a row every 14 px
    assert swatches == [tuple(palette[3]), tuple(palette[1])]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    torch.manual_seed(0)
    model = create_segmenter("fcvit_tiny", num_classes=3,
                             backbone_kwargs=dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)))
    result = predict_images(model, [tmp_path / "x.png"], tmp_path / "out", ["a", "b", "c"], short_side=64)[0]
    overlay = np.asarray(Image.open(result["overlay"]))
    first = result["classes"][0]["index"]
    assert tuple(overlay[6 + 4, 8]) == tuple(palette[first + 1])


# ---------------------------------------------------------------- fcvit models

def test_models_table_is_what_the_profiler_counts_for_fcvit_tiny():
    import timm

    from fcvit.cli.models import AT_224
    from fcvit.tools.profile import count_gmacs, count_params

    model = timm.create_model("fcvit_tiny")
    assert AT_224["fcvit_tiny"] == (count_params(model), round(count_gmacs(model, (3, 224, 224)), 3))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcvit_b12", "fcvit_b24", "fcvit_b48"])
def test_models_table_is_what_the_profiler_counts(name):
    import timm

    from fcvit.cli.models import AT_224
    from fcvit.tools.profile import count_gmacs, count_params

    model = timm.create_model(name)
    assert AT_224[name] == (count_params(model), round(count_gmacs(model, (3, 224, 224)), 3))


def test_models_builds_no_model_at_224(capsys, monkeypatch):
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("built a model"))
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "fcvit_b48" in out and "9.88" in out and "51,477,032" in out


# ---------------------------------------------------------------- fcvit plot

SUMMARY = ("epoch,iter,lr,train_loss,train_img_per_sec,model_img_per_sec,data_wait_share,seconds,eval_loss,eval_top1\n"
           + "".join(f"{e},{3 * e + 3},0.001,{1 - 0.1 * e},40,50,0.1,12,{1 - 0.1 * e},{40 + e}\n" for e in range(3)))


def _plot(tmp_path, capsys, monkeypatch, text):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    (tmp_path / "summary.csv").write_text(text)
    return run_cli(capsys, "plot", tmp_path, "-o", tmp_path / "s.png"), figures


def test_plot_has_integer_epoch_ticks_and_titled_panels(tmp_path, capsys, monkeypatch):
    (code, out, err), figures = _plot(tmp_path, capsys, monkeypatch, SUMMARY)
    assert code == 0, err
    axes = [ax for ax in figures[0].axes if ax.has_data()]
    assert all(float(t).is_integer() for ax in axes for t in ax.get_xticks())
    titles = {ax.get_title() for ax in axes}
    assert {"training time per epoch (s)", "share of time waiting for data"} <= titles and "seconds" not in titles


@pytest.mark.parametrize("text", ["epoch,iter\n0,3\n", "foo,bar\nx,y\n", "\xff\xfe garbage\n"])
def test_plot_refuses_a_malformed_summary_in_one_sentence(tmp_path, capsys, monkeypatch, text):
    (tmp_path / "summary.csv").write_bytes(text.encode("latin-1"))
    code, _, err = run_cli(capsys, "plot", tmp_path)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_plot_keeps_the_last_row_of_a_repeated_epoch_and_says_so(tmp_path, capsys, monkeypatch, caplog):
    rows = SUMMARY.splitlines(keepends=True)
    repeated = rows[0] + rows[1] + rows[2] + rows[1].replace(",40,50,", ",99,50,") + rows[2] + rows[3]
    with caplog.at_level(logging.WARNING):
        (code, _, err), figures = _plot(tmp_path, capsys, monkeypatch, repeated)
    assert code == 0, err
    assert "several rows for epoch 0, 1" in caplog.text and "last row of each" in caplog.text
    images = next(ax for ax in figures[0].axes if ax.get_title() == "images/s")
    assert list(images.get_lines()[0].get_xdata()) == [0, 1, 2]
    assert list(images.get_lines()[0].get_ydata()) == [99, 40, 40]


def test_plot_shows_coco_ap_in_percent_and_its_undefined_values_as_gaps(tmp_path):
    from fcvit.cli.plot import read_summary

    (tmp_path / "summary.csv").write_text("epoch,bbox_AP,bbox_APl\n0,0.007,-1\n1,0.25,0.5\n")
    columns = read_summary(str(tmp_path))
    assert columns["bbox_AP"] == pytest.approx([0.7, 25.0]) and np.isnan(columns["bbox_APl"][0])
