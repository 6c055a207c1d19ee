"""Checkpoints that always open or say in one sentence why not, and run arguments stored as plain values."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fcvit.engine import LAST_NAME, CheckpointSaver, DistContext, atomic_save, build_train_state
from fcvit.errors import UserError
from fcvit.models.checkpoint import UnreadableCheckpoint, checkpoint_args, read_checkpoint


class _RunsCode:
    """Unpickling this calls a function: exactly what weights_only=True must refuse."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.fixture()
def good(tmp_path) -> Path:
    path = tmp_path / "good.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(64, 64)}}, path)
    return path


def _message(path: Path) -> str:
    with pytest.raises(UnreadableCheckpoint) as exc:
        read_checkpoint(path)
    text = str(exc.value)
    # one complete sentence that names the file and ends with what to do
    assert text.startswith(f"Checkpoint '{path}' ") and text.endswith(".") and "\n" not in text
    assert text.count(": ") >= 1 and " ()" not in text
    return text


def test_an_empty_file_is_called_empty(tmp_path):
    path = tmp_path / "empty.pth.tar"
    path.write_bytes(b"")
    assert "is empty (0 bytes)" in _message(path)


def test_a_truncated_file_is_called_incomplete(good, tmp_path):
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "is incomplete or damaged" in _message(path)


def test_a_truncated_old_format_file_is_called_incomplete(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"w": torch.ones(8)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:60])
    assert "is incomplete or damaged" in _message(path)


def test_random_bytes_are_not_a_checkpoint_rather_than_code(tmp_path):
    path = tmp_path / "noise.pth.tar"
    path.write_bytes(bytes(range(7, 256)) * 20)
    text = _message(path)
    assert "is not a PyTorch checkpoint" in text and "run code" not in text


def test_a_text_file_is_called_text(tmp_path):
    path = tmp_path / "page.pth.tar"
    path.write_text("<html><body>404 Not Found</body></html>\n")
    assert "is a text file (it starts with '<html><body>404')" in _message(path)


def test_an_unsafe_pickle_is_refused_and_never_run(tmp_path):
    path = tmp_path / "code.pth.tar"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, path)
    text = _message(path)
    assert "would run code" in text and ("posix.getcwd" in text or "nt.getcwd" in text)


def test_a_whole_module_is_refused_as_not_plain_weights(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), path)
    assert "torch.nn.modules.linear.Linear" in _message(path)


def test_a_tensor_file_is_the_wrong_kind(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.ones(3), path)
    assert "holds a Tensor, not a dict of weights" in _message(path)


def test_safetensors_data_under_another_name_is_recognised(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.bin"
    save_file({"w": torch.ones(2)}, str(path))
    assert "rename it to end in .safetensors" in _message(path)


def test_run_arguments_are_a_plain_dict_that_plain_torch_load_opens(tmp_path):
    args = argparse.Namespace(lr=0.1, model="m", img_size=(32, 32), act=nn.ReLU, func=print, kwargs={"a": (1, 2)})
    state = build_train_state(nn.Linear(2, 2), args=args)
    atomic_save(state, tmp_path / LAST_NAME)
    loaded = torch.load(tmp_path / LAST_NAME, weights_only=True)  # no allow-list needed
    assert loaded["args"] == {"lr": 0.1, "model": "m", "img_size": (32, 32), "act": str(nn.ReLU),
                              "kwargs": {"a": (1, 2)}}


def test_old_namespace_checkpoints_still_read(tmp_path):
    path = tmp_path / "timm_style.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": argparse.Namespace(model="fcvit_tiny", lr=0.5)}, path)
    state = read_checkpoint(path)
    assert checkpoint_args(state) == {"model": "fcvit_tiny", "lr": 0.5}
    assert checkpoint_args({"args": {"lr": 1}}) == {"lr": 1} and checkpoint_args({}) == {}


_KILLED_WRITER = """
import os, signal, sys
from fcvit.files import atomic_write

def half_then_die(f):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(sys.argv[1], half_then_die)
"""


def test_a_killed_last_write_leaves_no_temporary_after_the_next_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"epoch": 1}, out / LAST_NAME)
    before = (out / LAST_NAME).read_bytes()
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out / LAST_NAME)], capture_output=True)
    assert proc.returncode == -9
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and leftovers[0].startswith(f".{LAST_NAME}.")  # SIGKILL: no cleanup ran
    assert (out / LAST_NAME).read_bytes() == before  # the old complete file is still there
    CheckpointSaver(out, metric="top1", ctx=DistContext())
    assert sorted(p.name for p in out.iterdir()) == [LAST_NAME]


def test_user_error_is_the_parent_so_every_command_prints_one_line():
    assert issubclass(UnreadableCheckpoint, UserError)
