"""`fcvit demo` (what `make demo` runs), shortened to one epoch: it trains, validates, plots, and runs again."""
from __future__ import annotations

import json

import pytest

from fcvit.cli.main import main


def test_demo_trains_validates_plots_and_runs_again_on_its_own_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    for attempt in ("first", "again"):  # the second run finds the finished run: validates and plots it anew
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--epochs", "1", "--output", str(out), "--device", "cpu"])
        stdout = capsys.readouterr().out
        assert exc.value.code == 0, (attempt, stdout)
        assert "held-out digits: top-1" in stdout
    results = json.loads((out / "validate.json").read_text())
    assert results["images"] == 360 and results["top1"] > 50  # one epoch on digits is well above chance (10%)
    assert (out / "summary.png").stat().st_size > 10_000 and (out / "model_best.pth.tar").is_file()
