"""Writes that the system refuses (disk full, read-only, a file in the way) and one writer per run folder."""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcvit import files
from fcvit.errors import UserError
from fcvit.files import RunLock, atomic_save, atomic_write, check_output_folder, unique_stems

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # chmod does not stop root


def _no_temporaries(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp"))


def test_disk_full_inside_torch_save_is_one_sentence_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pth.tar"
    atomic_save({"step": 1}, path)

    def fills_the_disk(f):
        class Full(io.RawIOBase):  # accepts 1 KB, then ENOSPC, which torch.save turns into a RuntimeError
            written = 0

            def writable(self):
                return True

            def write(self, data):
                self.written += len(data)
                if self.written > 1024:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return f.write(data)

        torch.save({"weights": torch.zeros(10_000)}, Full())

    with pytest.raises(UserError) as info:
        atomic_write(path, fills_the_disk)
    message = str(info.value)
    assert str(path) in message and "disk is full" in message and "\n" not in message
    assert torch.load(path)["step"] == 1 and _no_temporaries(tmp_path)


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission is denied")])
def test_an_injected_refusal_names_the_path_and_cause(tmp_path, monkeypatch, code, cause):
    path = tmp_path / "summary.csv"
    path.write_text("old")

    def refuse(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fsync", refuse)
    with pytest.raises(UserError, match=cause) as info:
        atomic_write(path, "new")
    assert str(path) in str(info.value)
    assert path.read_text() == "old" and _no_temporaries(tmp_path)


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "a.json").write_text("old")
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match="permission is denied"):
            atomic_write(folder / "a.json", "new")
        with pytest.raises(UserError, match="cannot be written"):
            check_output_folder(folder / "run")
        assert (folder / "a.json").read_text() == "old"
    finally:
        folder.chmod(0o755)


@contextlib.contextmanager
def _small_tmpfs(folder: Path, size: str):
    folder.mkdir()
    if not AS_ROOT or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                     capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_real_full_disk_and_a_read_only_file_system(tmp_path):
    with _small_tmpfs(tmp_path / "disk", "512k") as disk:
        path = disk / "last.pth.tar"
        atomic_save({"weights": torch.zeros(1000)}, path)
        with pytest.raises(UserError, match="disk is full"):
            atomic_save({"weights": torch.zeros(1_000_000)}, path)
        assert torch.load(path)["weights"].shape == (1000,) and _no_temporaries(disk)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(UserError, match="read-only"):
            atomic_save({"weights": torch.zeros(10)}, path)
        with pytest.raises(UserError, match="cannot be written"):
            check_output_folder(disk / "run")


def test_a_file_where_a_folder_must_be(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="a part of the path is a file, not a folder"):
        atomic_write(blocker / "a.json", "{}")
    with pytest.raises(UserError, match=f"Cannot write '{blocker / 'run'}'"):
        atomic_save({}, blocker / "run" / "last.pth.tar")
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(blocker)
    with pytest.raises(UserError, match="lies below the file"):
        check_output_folder(blocker / "a" / "b")
    check_output_folder(tmp_path / "new" / "run")  # not there yet: fine
    assert not (tmp_path / "new").exists()


def test_one_output_stem_per_input():
    assert unique_stems(["a/x.jpg", "b/x.jpg", "c/x_2.jpg", "d/X.png"]) == ["x", "x_2", "x_2_2", "X_3"]


_HOLD = ("import sys, time\nfrom fcvit.files import RunLock\nlock = RunLock(sys.argv[1]).acquire()\n"
         "print('locked', flush=True)\ntime.sleep(120)\n")


def test_one_writer_per_run_folder_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as info:
            RunLock(run).acquire()
        assert f"process {holder.pid} on host" in str(info.value) and "in use by another run" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    assert (run / RunLock.NAME).exists()  # killed: its lock file stays behind, with its pid
    with caplog.at_level(logging.WARNING, logger="fcvit.files"):
        with RunLock(run) as lock:
            assert f"{os.getpid()} " in (run / RunLock.NAME).read_text()
            with pytest.raises(UserError, match=f"process {os.getpid()}"):
                RunLock(run).acquire()
    assert f"left by process {holder.pid}" in caplog.text and "no longer runs" in caplog.text
    assert not (run / RunLock.NAME).exists() and lock._file is None
    RunLock(run).acquire().release()  # free again
    shutil.rmtree(run)


def test_two_training_commands_into_one_folder_the_second_is_refused(tmp_path):
    """The second `fcvit train` into a folder in use stops before it writes anything; the first goes on, and
    each epoch has one row in summary.csv."""
    import csv
    import signal
    import time

    from train_helpers import cli_env, fcvit_cmd

    out = tmp_path / "run"
    command = fcvit_cmd("train", "--dataset", "digits", "--epochs", "3", "-j", "0", "--output", str(out))
    first = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / RunLock.NAME).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / RunLock.NAME).exists(), first.communicate()[1]
        second = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another run (process {first.pid} on host" in second.stderr
        assert "Traceback" not in second.stderr
        first.send_signal(signal.SIGTERM)  # the first run saves and stops cleanly
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    log = (out / "log.txt").read_text()
    assert "in use by another run" not in log  # the refused run wrote nothing into the folder
    assert not (out / RunLock.NAME).exists()  # released at the end
    if (out / "summary.csv").exists():
        with open(out / "summary.csv") as f:
            epochs = [row["epoch"] for row in csv.DictReader(f)]
        assert len(epochs) == len(set(epochs))


def test_a_training_run_whose_disk_fills_stops_in_one_sentence_and_resumes(tmp_path, monkeypatch, capsys):
    """A save that runs out of space ends the run (exit 2, one sentence); last.pth.tar still holds the previous
    epoch, and the same command continues from it once there is space."""
    from fcvit.cli.main import main
    from train_helpers import FAST, TINY_MODEL, make_folder_dataset

    data, out = make_folder_dataset(tmp_path / "data"), tmp_path / "run"
    command = ["train", str(data), *TINY_MODEL, *FAST, "--epochs", "3", "--output", str(out)]
    real_save = torch.save

    def full_at_epoch_two(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_epoch_two)
    with pytest.raises(SystemExit) as exc:
        main(command)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "disk is full" in err and "Traceback" not in err, err
    assert torch.load(out / "last.pth.tar", weights_only=True)["epoch"] == 1 and _no_temporaries(out)
    monkeypatch.setattr(torch, "save", real_save)
    with pytest.raises(SystemExit) as exc:
        main(command)
    assert exc.value.code == 0
    assert torch.load(out / "last.pth.tar", weights_only=True)["epoch"] == 3
