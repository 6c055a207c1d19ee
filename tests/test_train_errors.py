"""Bad input to `fcvit train` / `fcvit validate` ends in one sentence (exit status 2), and loses nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import timm
import torch

from fcvit.cli.main import main
from fcvit.engine import LAST_NAME, atomic_save, build_train_state, load_train_state

from train_helpers import FAST, TINY_MODEL, clean_data, data  # noqa: F401 (the shared fixtures)


pytestmark = pytest.mark.usefixtures("one_thread")


def fcvit(capsys, *argv) -> tuple:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def train(capsys, data, out, *extra) -> tuple:
    return fcvit(capsys, "train", *([data] if data else []), *TINY_MODEL, *FAST, "--epochs", "1",
                 "--output", out, *extra)


def one_sentence(err: str) -> str:
    """The error line, checked to be a single line without a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("fcvit ")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_data(capsys, tmp_path):
    code, _, err = fcvit(capsys, "train", "--output", tmp_path)
    assert code == 2 and "No DATA folder given" in one_sentence(err) and "--dataset digits" in err
    code, _, err = train(capsys, tmp_path / "nowhere", tmp_path / "out")
    assert code == 2 and "does not exist" in one_sentence(err)


def test_missing_split(capsys, data, tmp_path):
    shutil.rmtree(data / "val")
    code, _, err = train(capsys, data, tmp_path / "out")
    assert code == 2 and "has no 'val' split" in one_sentence(err)


def test_validation_folder_named_validation_is_found(capsys, data, tmp_path):
    (data / "val").rename(data / "validation")
    code, _, err = train(capsys, data, tmp_path / "out")
    assert code == 0, err


def test_empty_class_folder(capsys, data, tmp_path):
    (data / "train" / "purple").mkdir()
    code, _, err = train(capsys, data, tmp_path / "out")
    assert code == 2 and "purple' has no images" in one_sentence(err)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_is_named_and_can_be_skipped(capsys, caplog, data, tmp_path, workers):
    bad = data / "train" / "red" / "red_1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    code, _, err = train(capsys, data, tmp_path / "out", "-j", workers)
    line = one_sentence(err)
    assert code == 2 and "red_1.png" in line and "--skip-bad-images" in line
    code, _, err = train(capsys, data, tmp_path / "out2", "-j", workers, "--skip-bad-images")
    assert code == 0, err
    if workers == "0":  # a worker process logs to its own stderr, out of caplog's reach
        assert "Skipping unreadable image" in caplog.text and "red_1.png" in caplog.text


def _tiny_checkpoint(path: Path, class_names) -> Path:
    model = timm.create_model("fcvit_tiny", num_classes=len(class_names), depths=(1, 1, 1, 1), dims=(16, 16, 32, 32))
    args = __import__("argparse").Namespace(model="fcvit_tiny", model_kwargs={"depths": (1, 1, 1, 1),
                                                                              "dims": (16, 16, 32, 32)})
    atomic_save(build_train_state(model, args=args, arch="fcvit_tiny", class_names=list(class_names)), path)
    return path


def test_checkpoint_classes_differ_from_data(capsys, data, tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "cats.pth.tar", ["cat", "dog", "eel"])
    code, _, err = fcvit(capsys, "validate", data, "--checkpoint", ckpt, "-b", "4", "-j", "0", "--device", "cpu",
                         "--img-size", "32")
    assert code == 2 and "differ from the 3 classes" in one_sentence(err)
    ckpt4 = _tiny_checkpoint(tmp_path / "four.pth.tar", ["blue", "green", "red", "white"])
    code, _, err = fcvit(capsys, "validate", data, "--checkpoint", ckpt4, "-b", "4", "-j", "0", "--device", "cpu")
    assert code == 2 and "4 classes" in one_sentence(err)
    # resuming a run on other data is refused the same way, before anything is overwritten
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(ckpt, out / LAST_NAME)
    before = (out / LAST_NAME).read_bytes()
    code, _, err = train(capsys, data, out)
    assert code == 2 and "differ from the 3 classes" in one_sentence(err)
    assert (out / LAST_NAME).read_bytes() == before


def test_batch_too_large_for_memory(capsys, data, tmp_path, monkeypatch):
    from fcvit.models.fcvit import FCViT

    def out_of_memory(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(FCViT, "forward", out_of_memory)
    code, _, err = train(capsys, data, tmp_path / "out")
    line = one_sentence(err)
    assert code == 2 and "does not fit" in line and "-b 2" in line


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(capsys, data, tmp_path, monkeypatch):
    import fcvit.tasks.classification.train as cls

    real_loss = cls._train_loss

    class NanFromStep4(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, logits, target):
            self.calls += 1
            loss = self.inner(logits, target)
            return loss * float("nan") if self.calls >= 5 else loss

    monkeypatch.setattr(cls, "_train_loss", lambda args, mixup: NanFromStep4(real_loss(args, mixup)))
    out = tmp_path / "out"
    code, _, err = fcvit(capsys, "train", data, *TINY_MODEL, *FAST, "--epochs", "3", "--output", out)
    line = one_sentence(err)
    assert code == 2 and "global step 5" in line and f"'{out / LAST_NAME}' was kept" in line
    kept = load_train_state(out / LAST_NAME)  # the checkpoint of epoch 0 (3 steps), untouched
    assert kept["epoch"] == 1 and kept["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_config_file_and_unknown_keys(capsys, data, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 1\nweight-decay: 0.01\nbatch_size: 6\n")
    code, _, err = train(capsys, data, tmp_path / "out", "--config", good, "-b", "4")
    assert code == 0, err
    args = load_train_state(tmp_path / "out" / LAST_NAME)["args"]
    assert args["weight_decay"] == 0.01 and args["batch_size"] == 4  # the command line beats the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nlearning_rate: 0.1\n")
    code, _, err = train(capsys, data, tmp_path / "out2", "--config", bad)
    assert code == 2 and "unknown keys (learning_rate)" in one_sentence(err)


def test_recipe_files_use_known_flags():
    """Every YAML recipe in configs/ loads (a renamed flag would make it fail here, not on a cluster)."""
    from fcvit.cli.train import build_parser, load_config

    parser = build_parser()
    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(recipes) >= 5
    for path in recipes:
        values = load_config(str(path), parser)
        assert values["model"].startswith("fcvit_")
    tiny = load_config(str(recipes[-1].parent / "fcvit_tiny.yaml"), parser)
    defaults = vars(parser.parse_args(["x"]))
    assert all(defaults[k] == v or k in ("model", "img_size", "workers", "drop_path")
               for k, v in tiny.items()), "the tiny recipe file drifted from the defaults"


def test_fp16_grad_scaler_channels_last_and_grad_checkpointing(capsys, data, tmp_path):
    """The memory/speed options train and store the grad scaler's state for resume."""
    out = tmp_path / "out"
    code, _, err = train(capsys, data, out, "--amp", "--amp-dtype", "float16", "--channels-last",
                         "--grad-checkpointing", "--clip-grad", "1.0", "--tensorboard")
    assert code == 0, err
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    state = load_train_state(out / LAST_NAME)
    assert state["scaler"]["scale"] > 0 and state["args"]["amp_dtype"] == "float16"
    assert "float16 autocast + GradScaler" in (out / "log.txt").read_text()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_unexpected_error_in_the_loop_exits_instead_of_waiting_for_workers(data, tmp_path, workers):
    """Loader workers ignore SIGTERM (so a stop reaches the main process first); an exception raised by the
    training loop itself used to leave the process waiting for them forever after its traceback."""
    import subprocess
    import sys

    from train_helpers import cli_env

    script = (
        "import fcvit.engine.loop as loop\n"
        "def fail(*args, **kwargs):\n"
        "    raise RuntimeError('an unexpected failure inside the loop')\n"
        "loop._Schedule.update = fail\n"
        "from fcvit.cli.main import main\n"
        f"main({['train', str(data), *TINY_MODEL, *FAST, '-j', workers, '--epochs', '1', '--output', str(tmp_path / 'o')]!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "RuntimeError: an unexpected failure inside the loop" in done.stderr
