"""The fcvit commands keep freed CPU memory mapped between steps (glibc), and say so."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fcvit.cli import main as cli_main

PROBE = """
import resource, sys, torch
from fcvit.engine.allocator import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():  # a training step's worth of activations, freed at its end
    blocks = [torch.ones(2 * 1024 * 1024) for _ in range(64)]  # 64 x 8 MiB
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def _probe(mode: str, **env: str) -> tuple:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@linux_only
def test_freed_memory_is_reused_instead_of_faulted_back():
    kept, faults_kept = _probe("keep")
    _, faults_default = _probe("default")
    assert kept
    # 3 x 512 MiB re-touched: with glibc's defaults the freed heap top goes back to the kernel each time
    assert faults_default > 50_000, faults_default
    assert faults_kept < faults_default / 20, (faults_kept, faults_default)


@linux_only
def test_environment_variable_keeps_the_c_library_defaults():
    kept, _ = _probe("keep", FCVIT_KEEP_FREED_MEMORY="0")
    assert not kept


def test_training_commands_ask_for_it_and_others_do_not(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("fcvit.engine.allocator.keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        cli_main.main(["predict", str(tmp_path / "missing.jpg")])
    assert calls == [1]
    with pytest.raises(SystemExit):
        cli_main.main(["models"])
    assert calls == [1]
    assert {"train", "detect", "segment", "benchmark"} <= cli_main.MEMORY_HUNGRY_COMMANDS
