"""Other processes of a distributed run: Ctrl-C to the launcher's group and a rank that dies end in one line each."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fcvit.files import RunLock
from train_helpers import cli_env

REPO = Path(__file__).resolve().parents[1]


def _launch(out: Path) -> subprocess.Popen:
    env = dict(cli_env(), PATH=f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.Popen([str(REPO / "distributed_train.sh"), "2", "--dataset", "digits", "--epochs", "3", "-j", "0",
                             "--output", str(out)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _training(run: subprocess.Popen, out: Path) -> None:
    """Wait until both ranks are past their start (the lock is taken, then a few steps)."""
    deadline = time.monotonic() + 180
    while not (out / RunLock.NAME).exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()[0]
    time.sleep(8)


def _ranks(launcher_pid: int) -> list:
    found = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout.splitlines()
    children = [line.split(None, 2) for line in found[1:]]
    torchrun = [int(pid) for pid, ppid, args in children if "fcvit.cli.launch" in args]
    return sorted(int(pid) for pid, ppid, args in children if int(ppid) in torchrun and "train.py" in args)


def _interrupted_run(out: Path, interrupt) -> tuple:
    """Launch a 2-process run, call ``interrupt(launcher)`` once it trains, and return (exit status, output)."""
    run = _launch(out)
    try:
        _training(run, out)
        interrupt(run)
        output, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    return run.returncode, output


def _kill_rank_1(run: subprocess.Popen) -> None:
    ranks = _ranks(run.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGKILL)


@pytest.mark.timeout(600)
def test_ctrl_c_to_the_launcher_saves_and_ends_in_one_line(tmp_path):
    out = tmp_path / "run"
    # as a terminal's Ctrl-C: the launcher and both ranks
    returncode, output = _interrupted_run(out, lambda run: os.killpg(run.pid, signal.SIGINT))
    assert returncode == 0, output
    assert "Traceback" not in output and "SignalException" not in output, output
    assert "stopped by SIGINT; rerun the same command" in output
    assert (out / "last.pth.tar").exists()


@pytest.mark.timeout(600)
def test_a_killed_rank_leaves_one_line_on_the_other(tmp_path):
    returncode, output = _interrupted_run(tmp_path / "run", _kill_rank_1)
    assert returncode != 0
    assert "Traceback" not in output, output
    assert "another process of this run stopped" in output and "ended with exit status -9" in output


@pytest.mark.parametrize("message", [
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234",
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:30954: "
    "Connection reset by peer. This is typically caused by a remote worker hanging",
    "[gloo/transport/tcp/pair.cc:598] Write error: Broken pipe",
])
def test_a_peer_lost_in_any_collective_is_recognised(message):
    """Where the surviving rank notices (the step's gradient reduction, the BatchNorm averaging before evaluation,
    a barrier) decides gloo's wording; each one is the one-line end, and other errors stay tracebacks."""
    from fcvit.engine.distributed import lost_peer

    assert lost_peer(RuntimeError(message))
    assert not lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
