"""The measurement scripts in benchmarks/ run against today's package (they once imported modules a redesign removed).

Each runs once with the smallest settings it takes; the tables they print are read for their shape only, the
numbers belong to docs/benchmarks.md.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALL_RUNS = {
    "compare_original.py": ["--model", "fcvit_tiny", "--compare", "convnext_atto", "--variants", "fast,plain,original",
                            "-b", "1", "--img-size", "64", "--warmup", "0", "--iters", "1", "--rounds", "1"],
    "memory_breakdown.py": ["--model", "fcvit_tiny", "--batch-size", "1", "--img-size", "64"],
    "training_parts.py": ["--model", "fcvit_tiny", "--batch-size", "1", "--rounds", "1"],
    "components_ab.py": ["--rounds", "1"],
    "profile_ops.py": ["--model", "fcvit_tiny", "--rows", "3"],
    "ort_op_mix.py": ["--model", "fcvit_tiny", "--compare", "convnext_atto", "-b", "1", "--runs", "1"],
}
EXPECTED = {  # a line each script's table must hold
    "compare_original.py": "fcvit_tiny plain",
    "memory_breakdown.py": "| stages.0 |",
    "training_parts.py": "| 4 | 320 x 7x7 |",
    "components_ab.py": "| token mixer | 160 ch 14x14 | new, fast path |",
    "profile_ops.py": "fcvit, fused path off",
    "ort_op_mix.py": "| depth-wise conv |",
}


def test_every_script_has_a_small_run():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"original_fcvit.py"}  # a module, not a script
    assert scripts == set(SMALL_RUNS)


SLOW = {"profile_ops.py", "ort_op_mix.py"}  # batch 16 at 224 px, or two ONNX exports: make test-full


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s
                                    for s in sorted(SMALL_RUNS)])
def test_script_runs(script, tmp_path):
    if script == "ort_op_mix.py":
        pytest.importorskip("onnxruntime")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *SMALL_RUNS[script]], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert EXPECTED[script] in proc.stdout, proc.stdout[-3000:]

