"""The paper README's command lines run verbatim, and every flag of the original train.py/validate.py is
accepted (mapped, implemented, obsolete with a note) or refused in one sentence, never "unrecognized".

- ``python3 validate.py DATA --model fcvit_tiny -b 128 --checkpoint CKPT`` and ``./distributed_train.sh 2
  DATA ... --apex-amp`` as subprocesses from the repository root, on real photographs (CPU, gloo);
- ``--dist-bn reduce|broadcast`` with two gloo processes: the statistics are the ranks' mean / rank 0's;
- the implemented flags (AugMix splits + JSD, --resplit, BCE, --no-resume-opt, EMA on CPU, recovery saves,
  --log-interval, --experiment, --start-epoch, scheduler options) on the tiny model in-process.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch
import timm
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from fcvit.cli.main import build_parser, main
from fcvit.cli.train import finalize_args
from fcvit.engine import LAST_NAME, load_train_state
from fcvit.errors import UserError

from train_helpers import FAST, TINY_MODEL, cli_env, make_folder_dataset

REPO = Path(__file__).resolve().parents[1]

# every flag of the original FCViT train.py (timm 0.5 era), with a value where it takes one
ORIGINAL_TRAIN_FLAGS = {
    "--dataset": "", "--train-split": "train", "--val-split": "validation", "--dataset-download": None,
    "--class-map": "", "--model": "fcvit_tiny", "--pretrained": None, "--initial-checkpoint": "",
    "--resume": "", "--no-resume-opt": None, "--num-classes": "3", "--gp": "avg", "--img-size": "32",
    "--input-size": ["3", "32", "32"], "--crop-pct": "0.9", "--mean": ["0.5", "0.5", "0.5"],
    "--std": ["0.5", "0.5", "0.5"], "--interpolation": "bicubic", "-b": "4", "-vb": "4", "--opt": "adamw",
    "--opt-eps": "1e-8", "--opt-betas": ["0.9", "0.999"], "--momentum": "0.9", "--weight-decay": "0.05",
    "--clip-grad": "1.0", "--clip-mode": "norm", "--sched": "cosine", "--lr": "1e-3", "--lr-noise": ["0.5"],
    "--lr-noise-pct": "0.67", "--lr-noise-std": "1.0", "--lr-cycle-mul": "1.0", "--lr-cycle-decay": "0.5",
    "--lr-cycle-limit": "1", "--lr-k-decay": "1.0", "--warmup-lr": "1e-6", "--min-lr": "1e-6", "--epochs": "2",
    "--epoch-repeats": "0", "--start-epoch": "0", "--decay-epochs": "100", "--warmup-epochs": "5",
    "--cooldown-epochs": "10", "--patience-epochs": "10", "--decay-rate": "0.1", "--dr": "0.1", "--no-aug": None,
    "--scale": ["0.08", "1.0"], "--ratio": ["0.75", "1.33"], "--hflip": "0.5", "--vflip": "0.0",
    "--color-jitter": "0.4", "--aa": "rand-m9-mstd0.5-inc1", "--aug-repeats": "0", "--aug-splits": "0",
    "--jsd-loss": None, "--jsd": None, "--bce-loss": None, "--bce-target-thresh": "0.2", "--reprob": "0.25",
    "--remode": "pixel", "--recount": "1", "--resplit": None, "--mixup": "0.8", "--cutmix": "1.0",
    "--cutmix-minmax": ["0.2", "0.8"], "--mixup-prob": "1.0", "--mixup-switch-prob": "0.5",
    "--mixup-mode": "batch", "--mixup-off-epoch": "0", "--smoothing": "0.1", "--train-interpolation": "random",
    "--drop": "0.0", "--drop-connect": "0.1", "--drop-path": "0.1", "--drop-block": "0.1", "--bn-tf": None,
    "--bn-momentum": "0.1", "--bn-eps": "1e-5", "--sync-bn": None, "--dist-bn": "reduce", "--split-bn": None,
    "--model-ema": None, "--model-ema-force-cpu": None, "--model-ema-decay": "0.9998", "--seed": "42",
    "--worker-seeding": "all", "--log-interval": "200", "--recovery-interval": "0", "--checkpoint-hist": "4",
    "-j": "0", "--save-images": None, "--amp": None, "--apex-amp": None, "--native-amp": None,
    "--no-ddp-bb": None, "--channels-last": None, "--pin-mem": None, "--no-prefetcher": None, "--output": "",
    "--experiment": "exp", "--eval-metric": "top1", "--tta": "0", "--local_rank": "0", "--local-rank": "0",
    "--use-multi-epochs-loader": None, "--torchscript": None, "--log-wandb": None, "--git-id": "abc",
}
# the row "flags of its train.py a user may pass" of docs/original-configs.md
LISTED_TRAIN_FLAGS = (
    "--apex-amp --native-amp --sync-bn --dist-bn --split-bn --no-prefetcher --pin-mem --channels-last "
    "--log-interval --recovery-interval --local_rank --torchscript --model-ema --model-ema-decay "
    "--model-ema-force-cpu --clip-grad --clip-mode --aa --reprob --remode --recount --resplit --mixup --cutmix "
    "--mixup-prob --mixup-switch-prob --mixup-mode --smoothing --train-interpolation --jsd --bce-loss "
    "--initial-checkpoint --resume --no-resume-opt --start-epoch --eval-metric --tta --output --experiment "
    "--checkpoint-hist").split()
# refused because they would change results in a way fcvit does not implement (one sentence each)
REFUSED_TRAIN = {"--split-bn": None, "--pretrained": None, "--drop-block": "0.1", "--bn-tf": None,
                 "--bn-momentum": "0.1", "--bn-eps": "1e-5", "--tta": "2", "--aug-repeats": "3",
                 "--gp": "max", "--class-map": "map.txt"}
# every flag of the original (timm 0.5) validate.py
ORIGINAL_VALIDATE_FLAGS = {
    "--dataset": "", "--split": "val", "--dataset-download": None, "--model": "fcvit_tiny", "-j": "0",
    "-b": "4", "--img-size": "32", "--input-size": ["3", "32", "32"], "--crop-pct": "0.9",
    "--mean": ["0.5", "0.5", "0.5"], "--std": ["0.5", "0.5", "0.5"], "--interpolation": "bicubic",
    "--num-classes": "2", "--class-map": "", "--gp": "avg", "--log-freq": "10", "--checkpoint": "x.pth",
    "--pretrained": None, "--num-gpu": "1", "--test-pool": None, "--no-prefetcher": None, "--pin-mem": None,
    "--channels-last": None, "--amp": None, "--apex-amp": None, "--native-amp": None,
    "--tf-preprocessing": None, "--use-ema": None, "--torchscript": None, "--legacy-jit": None,
    "--results-file": "r.csv", "--real-labels": "", "--valid-labels": "",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """An ImageFolder of real photographs: 2 classes, 4 train and 2 val images each, 256 px, and a
    published-style checkpoint ({'state_dict': ...}) of fcvit_tiny for those 2 classes."""
    import skimage.data
    import timm
    from sklearn.datasets import load_sample_images

    import fcvit.models  # noqa: F401  (registers the models)

    root = tmp_path_factory.mktemp("photos")
    china, flower = load_sample_images().images
    classes = {"person": [skimage.data.astronaut(), skimage.data.rocket(), skimage.data.coffee()],
               "scene": [skimage.data.chelsea(), flower, china]}
    for split, count, shrink in (("train", 4, 0), ("val", 2, 40)):
        for name, images in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                img = images[i % len(images)]
                side = min(img.shape[:2]) - shrink - 30 * (i // len(images))
                crop = img[:side, img.shape[1] - side:]
                Image.fromarray(crop).resize((256, 256), Image.BICUBIC).save(folder / f"{name}_{i}.jpg")
    torch.manual_seed(0)
    model = timm.create_model("fcvit_tiny", num_classes=2)
    torch.save({"state_dict": model.state_dict()}, root / "fcvit_tiny.pth.tar")
    return root


def _run(cmd: List[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=dict(cli_env(), **env), capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------- the README's command lines

def test_validate_py_runs_the_papers_command_verbatim(photos, tmp_path):
    proc = _run([sys.executable, "validate.py", str(photos), "--model", "fcvit_tiny", "-b", "128",
                 "--checkpoint", str(photos / "fcvit_tiny.pth.tar")], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fcvit_tiny on 4 images (val): top-1" in proc.stdout
    assert "224 px, crop_pct 0.9, bicubic, float32" in proc.stdout  # the model's own eval settings


def test_validate_py_takes_a_checkpoint_converted_to_timm_hub_format(photos, tmp_path):
    converted = tmp_path / "fcvit_tiny-hub"
    proc = _run([sys.executable, "-m", "fcvit", "convert", str(photos / "fcvit_tiny.pth.tar"), "--output",
                 str(converted)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = []
    for checkpoint in (photos / "fcvit_tiny.pth.tar", converted / "model.safetensors"):
        proc = _run([sys.executable, "validate.py", str(photos), "--model", "fcvit_tiny", "-b", "128",
                     "--checkpoint", str(checkpoint)], timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines.append(next(line for line in proc.stdout.splitlines() if "top-1" in line).split(" img/s")[0])
    assert lines[0].rsplit(" ", 1)[0] == lines[1].rsplit(" ", 1)[0]  # same top-1, top-5 and loss


def test_distributed_train_sh_two_processes_over_gloo_with_apex_amp(photos, tmp_path):
    out = tmp_path / "run"
    proc = _run(["./distributed_train.sh", "2", str(photos), "--model", "fcvit_tiny", "-b", "2", "--lr", "1e-3",
                 "--drop-path", "0.1", "--apex-amp",
                 "--epochs", "1", "--cooldown-epochs", "0", "--warmup-epochs", "0", "-j", "0", "--img-size", "64",
                 "--output", str(out)], timeout=600, PYTHON=sys.executable)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / LAST_NAME).exists() and (out / "model_best.pth.tar").exists()
    for note in ("--apex-amp: mixed precision as --amp --amp-dtype float16 (float16 autocast with a GradScaler",
                 "float16 autocast on CPU runs, but slower than float32",
                 "BatchNorm running statistics: averaged over the 2 processes after every epoch"):
        assert proc.stderr.count(note) == 1, note  # once: only rank 0 logs
    start = next(line for line in proc.stderr.splitlines() if "global batch" in line)
    for part in ("lr 0.001", "1 epochs", "global batch 4 (2 per process x 2 process(es) on cpu)",
                 "float16 autocast + GradScaler"):
        assert part in start, (part, start)
    state = load_train_state(out / LAST_NAME)
    assert state["args"]["amp"] and state["args"]["amp_dtype"] == "float16" and state["args"]["drop_path"] == 0.1
    assert "scaler" in state and state["global_step"] == 8 // 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_launchers_say_what_to_do_when_fcvit_is_missing():
    for script in ("train.py", "validate.py"):  # -S: no site-packages, so neither torch nor fcvit imports
        proc = subprocess.run([sys.executable, "-S", script, "DATA"], cwd=REPO, capture_output=True, text=True,
                              env={"PATH": os.environ.get("PATH", "")}, timeout=60)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "cannot be imported" in proc.stderr and "make demo" in proc.stderr
    proc = _run(["./distributed_train.sh", "eight", "DATA"], timeout=60)
    assert proc.returncode == 2 and "number of processes" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_distributed_train_sh_ends_a_user_error_in_its_sentence_not_a_traceback(tmp_path):
    proc = _run(["./distributed_train.sh", "1", str(tmp_path), "--split-bn"], timeout=300, PYTHON=sys.executable)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert "fcvit train: error: --split-bn is not implemented" in proc.stderr


def test_launch_refuses_a_bad_process_count():
    from fcvit.cli.launch import main as launch, torchrun_args

    assert torchrun_args(8, "train.py", ["DATA", "-b", "128"]) == [
        "--standalone", "--nproc_per_node=8", "train.py", "DATA", "-b", "128"]
    for argv in (["0", "train.py"], ["eight", "train.py"], ["2"]):
        with pytest.raises(SystemExit, match="NUM_PROC a positive number of processes"):
            launch(argv)


def test_launchers_are_committed_executable():
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-s", "validate.py", "train.py", "distributed_train.sh"],
                            cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    modes = {line.split()[-1]: line.split()[0] for line in listed}
    assert modes == {"validate.py": "100755", "train.py": "100755", "distributed_train.sh": "100755"}


# ------------------------------------------------------------------------------- every original flag

def _flag_argv(flag: str, value) -> List[str]:
    return [flag] + ([] if value is None else value if isinstance(value, list) else [value])


def _train_args(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(["train", "DATA", *argv])
    return finalize_args(args)


def test_the_listed_flags_are_all_original_train_flags():
    assert set(LISTED_TRAIN_FLAGS) <= set(ORIGINAL_TRAIN_FLAGS)


@pytest.mark.parametrize("flag", sorted(ORIGINAL_TRAIN_FLAGS))
def test_every_original_train_flag_parses(flag, capsys):
    argv = _flag_argv(flag, ORIGINAL_TRAIN_FLAGS[flag])
    if flag in ("--aug-splits", "--jsd-loss", "--jsd"):  # the original asserted these need each other
        argv = ["--aug-splits", "3", "--jsd-loss", "--mixup", "0", "--cutmix", "0"]
    args = build_parser().parse_args(["train", "DATA", *argv])  # unknown: exit 2, "unrecognized arguments"
    assert "unrecognized" not in capsys.readouterr().err
    if REFUSED_TRAIN.get(flag, "absent") == ORIGINAL_TRAIN_FLAGS[flag]:
        with pytest.raises(UserError):
            finalize_args(args)
        return
    args = finalize_args(args)
    assert all("\n" not in note for note in args.compat_notes)


@pytest.mark.parametrize("flag", sorted(REFUSED_TRAIN))
def test_refused_train_flags_say_why_in_one_sentence(flag):
    with pytest.raises(UserError) as exc:
        _train_args(*_flag_argv(flag, REFUSED_TRAIN[flag]))
    message = str(exc.value)
    assert flag in message and "\n" not in message and message.endswith(".")


def test_mapped_and_obsolete_train_flags_log_one_note_each():
    args = _train_args("--apex-amp", "--native-amp", "--local_rank", "3", "--no-prefetcher", "--pin-mem",
                       "--torchscript", "--drop-connect", "0.2", "--experiment", "e1", "--output", "runs")
    assert (args.amp, args.amp_dtype, args.drop_path, args.output) == (True, "float16", 0.2,
                                                                       os.path.join("runs", "e1"))
    assert len(args.compat_notes) == 7
    for start in ("--apex-amp --native-amp: mixed precision as --amp --amp-dtype float16", "--local_rank:",
                  "--no-prefetcher:", "--pin-mem:", "--torchscript:", "--drop-connect 0.2:", "--experiment e1:"):
        assert sum(n.startswith(start) for n in args.compat_notes) == 1, start
    assert _train_args("--apex-amp", "--amp-dtype", "bfloat16").amp_dtype == "bfloat16"  # explicit wins
    assert _train_args("--experiment", "e2").output == os.path.join("output", "train", "e2")
    assert _train_args().compat_notes == []  # the defaults need no note


@pytest.mark.parametrize("argv, words", [
    (["--jsd-loss"], "--aug-splits"),
    (["--aug-splits", "2"], "mixup"),
    (["--aug-splits", "1"], "no split"),
    (["--dist-bn", "average"], None),
])
def test_impossible_combinations_are_refused(argv, words, capsys):
    if words is None:  # not one of reduce, broadcast, '': argparse's one-line usage error
        with pytest.raises(SystemExit) as exc:
            _train_args(*argv)
        assert exc.value.code == 2 and "invalid choice: 'average'" in capsys.readouterr().err
        return
    with pytest.raises(UserError, match=words):
        _train_args(*argv)


@pytest.mark.parametrize("flag", sorted(ORIGINAL_VALIDATE_FLAGS))
def test_every_original_validate_flag_parses(flag, capsys):
    args = build_parser().parse_args(["validate", "DATA", *_flag_argv(flag, ORIGINAL_VALIDATE_FLAGS[flag])])
    assert args.command == "validate" and "unrecognized" not in capsys.readouterr().err


# -------------------------------------------------------------------------------------- --dist-bn

def _dist_bn_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from fcvit.engine import cleanup_distributed, init_distributed, wrap_ddp
    from fcvit.engine.distributed import convert_sync_batchnorm, distribute_bn

    ctx = init_distributed("cpu")
    torch.manual_seed(0)  # same initial weights; different data per rank below
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    ddp = wrap_ddp(model, ctx, broadcast_buffers=False)  # each rank keeps its own statistics while training
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1 + rank)
    for _ in range(3):
        optimizer.zero_grad()
        ddp(torch.randn(4, 3, 8, 8) * (1 + rank) + rank).sum().backward()
        optimizer.step()
    results = {"before": {k: v.clone() for k, v in model.state_dict().items() if "running" in k}}
    results["count"] = distribute_bn(ddp, ctx, reduce=True)
    results["reduced"] = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    for key, value in model.state_dict().items():  # make them differ again, then broadcast
        if "running" in key:
            value.add_(10.0 * (rank + 1))
    results["shifted"] = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    distribute_bn(ddp, ctx, reduce=False)
    results["broadcast"] = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    try:
        convert_sync_batchnorm(model, ctx)
    except UserError as exc:
        results["sync_bn"] = str(exc)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup_distributed()


def test_dist_bn_reduce_averages_and_broadcast_copies_rank0(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_dist_bn_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2))
    assert r0["count"] == 4 and set(r0["before"]) == {"1.running_mean", "1.running_var", "4.running_mean",
                                                      "4.running_var"}
    for key in r0["before"]:
        assert not torch.allclose(r0["before"][key], r1["before"][key]), "the ranks' statistics should differ"
        mean = (r0["before"][key].double() + r1["before"][key].double()) / 2
        for r in (r0, r1):
            torch.testing.assert_close(r["reduced"][key].double(), mean, rtol=1e-6, atol=1e-6)
            assert torch.equal(r["broadcast"][key], r0["shifted"][key])
    assert "--sync-bn needs CUDA GPUs" in r0["sync_bn"] and "\n" not in r0["sync_bn"]


def test_sync_bn_and_dist_bn_do_nothing_in_a_world_of_one():
    from fcvit.engine import DistContext
    from fcvit.engine.distributed import convert_sync_batchnorm, distribute_bn

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert convert_sync_batchnorm(model, DistContext()) is model
    assert distribute_bn(model, DistContext()) == 0


# ---------------------------------------------------------------------- implemented flags, in-process

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data"))


def fcvit_train(data: Path, out: Path, epochs: int, *extra: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", str(data), *TINY_MODEL, *FAST, "--epochs", str(epochs), "--output", str(out), *extra])
    assert exc.value.code == 0


def test_batch_erasing_spares_the_first_split():
    from fcvit.tasks.classification.train import _batch_erasing, _join_splits

    random.seed(0)
    torch.manual_seed(0)
    args = argparse.Namespace(resplit=True, reprob=1.0, remode="pixel", recount=1, aug_splits=3, no_aug=False)
    images, targets = _join_splits([torch.zeros(2, 3, 16, 16) for _ in range(3)], torch.tensor([0, 1]))
    assert images.shape[0] == 6 and targets.tolist() == [0, 1, 0, 1, 0, 1]
    erased = _batch_erasing(args, torch.device("cpu"))(images)
    assert (erased[:2] == 0).all() and all((erased[i] != 0).any() for i in range(2, 6))
    args.aug_splits = 0  # without splits the original spared the first half of the batch
    erased = _batch_erasing(args, torch.device("cpu"))(torch.zeros(4, 3, 16, 16))
    assert (erased[:2] == 0).all() and (erased[2:] != 0).any()
    per_image = argparse.Namespace(resplit=False, reprob=1.0, no_aug=False, erase_per_image=True)
    assert _batch_erasing(per_image, torch.device("cpu")) is None


def test_random_erasing_follows_mixup_as_the_original_prefetcher():
    """Default: erasing on the mixed batch (an erased patch is never blended); --erase-per-image and the
    original's --no-prefetcher erase each image in the loader, before mixup."""
    from fcvit.cli.train import build_parser, finalize_args
    from fcvit.tasks.classification.train import _batch_erasing, _transform_args

    model = timm.create_model("fcvit_tiny", num_classes=3)
    for extra, batch in (([], True), (["--erase-per-image"], False), (["--no-prefetcher"], False)):
        args = finalize_args(build_parser().parse_args(["DATA", "--reprob", "1", "--remode", "const", *extra]))
        erasing = _batch_erasing(args, torch.device("cpu"))
        assert (erasing is not None) == batch and _transform_args(args, model, True)["re_prob"] == (0 if batch else 1)
    args = finalize_args(build_parser().parse_args(["DATA", "--reprob", "1", "--remode", "const"]))
    torch.manual_seed(0)
    random.seed(0)
    mixed = 0.5 * torch.ones(4, 3, 32, 32) + 0.5 * torch.full((4, 3, 32, 32), 3.0)  # two images blended
    erased = _batch_erasing(args, torch.device("cpu"))(mixed)
    assert all((erased[i] == 0).any() for i in range(4))  # every sample erased, the patch exactly 0


def test_loss_choice_follows_the_original():
    from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    from fcvit.tasks.classification.train import _train_loss

    def loss(mixup: bool, **kw):
        base = dict(jsd_loss=False, bce_loss=False, bce_target_thresh=None, smoothing=0.1, aug_splits=0)
        return _train_loss(argparse.Namespace(**{**base, **kw}), mixup)

    assert isinstance(loss(True), SoftTargetCrossEntropy) and isinstance(loss(False), LabelSmoothingCrossEntropy)
    assert isinstance(loss(True, bce_loss=True, bce_target_thresh=0.2), BinaryCrossEntropy)
    assert loss(True, bce_loss=True, bce_target_thresh=0.2).target_threshold == 0.2
    assert loss(False, bce_loss=True).smoothing == 0.1
    jsd = loss(False, jsd_loss=True, aug_splits=3)
    assert isinstance(jsd, JsdCrossEntropy) and jsd.num_splits == 3


def test_augmix_splits_with_jsd_and_resplit_train(data, tmp_path):
    out = tmp_path / "augmix"
    fcvit_train(data, out, 1, "--aug-splits", "3", "--jsd", "--resplit", "--mixup", "0", "--cutmix", "0",
                "--aa", "augmix-m5-w4-d2", "--log-interval", "1")
    row = next(csv.DictReader(open(out / "summary.csv")))
    assert float(row["train_loss"]) > 0 and float(row["train_img_per_sec"]) > 0
    log = (out / "log.txt").read_text()
    assert "epoch 0 [1/3]" in log and "epoch 0 [3/3]" in log  # --log-interval 1: a line per step


def test_recovery_save_resumes_to_the_step(data, tmp_path, monkeypatch):
    from fcvit.engine import CheckpointSaver

    straight = tmp_path / "straight"
    fcvit_train(data, straight, 2, "--model-ema")
    saves = []
    original_save = CheckpointSaver.save

    def recording_save(self, state, tag, metrics=None):
        path = original_save(self, state, tag, metrics)
        if metrics is None:  # a mid-epoch save: keep a copy of each
            saves.append((state["epoch"], state["step_in_epoch"]))
            shutil.copyfile(self.last_path, tmp_path / f"recovery-{state['epoch']}-{state['step_in_epoch']}.pth.tar")
        return path

    monkeypatch.setattr(CheckpointSaver, "save", recording_save)
    fcvit_train(data, tmp_path / "recovering", 2, "--model-ema", "--recovery-interval", "2")
    assert saves == [(0, 2), (1, 2)]  # step 2 of the 3 of each epoch; the epoch end saves anyway
    monkeypatch.setattr(CheckpointSaver, "save", original_save)
    resumed = tmp_path / "resumed"
    fcvit_train(data, resumed, 2, "--model-ema", "--resume", str(tmp_path / "recovery-1-2.pth.tar"))
    a, b = load_train_state(straight / LAST_NAME), load_train_state(resumed / LAST_NAME)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 6)
    for part in ("state_dict", "state_dict_ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part} {key}"


def test_no_resume_opt_keeps_weights_and_starts_a_fresh_optimizer(data, tmp_path):
    out = tmp_path / "run"
    fcvit_train(data, out, 1)
    first = load_train_state(out / LAST_NAME)
    fcvit_train(data, out, 2, "--no-resume-opt", "--resume-override")  # 1 -> 2 epochs: a changed length
    log = (out / "log.txt").read_text()
    assert "fresh optimizer and loss scaler: --no-resume-opt" in log
    second = load_train_state(out / LAST_NAME)
    steps = {int(slot["step"]) for slot in second["optimizer"]["state"].values()}
    assert steps == {3} and {int(s["step"]) for s in first["optimizer"]["state"].values()} == {3}
    assert second["global_step"] == 6  # the schedule and counters did continue


def test_ema_on_cpu_is_kept_but_not_evaluated(data, tmp_path):
    out = tmp_path / "ema"
    fcvit_train(data, out, 1, "--model-ema", "--model-ema-force-cpu")
    row = next(csv.DictReader(open(out / "summary.csv")))
    assert "ema_eval_top1" not in row
    assert load_train_state(out / LAST_NAME)["state_dict_ema"]


def test_start_epoch_overrides_a_resumed_epoch(data, tmp_path):
    out = tmp_path / "run"
    fcvit_train(data, out, 1)
    fcvit_train(data, out, 3, "--start-epoch", "2", "--resume-override")  # 1 -> 3 epochs: a changed length
    state = load_train_state(out / LAST_NAME)
    assert (state["epoch"], state["global_step"]) == (3, 9)
    assert "--start-epoch 2 overrides the resumed epoch 1" in (out / "log.txt").read_text()


def test_scheduler_options_reach_timm():
    from timm.scheduler import create_scheduler_v2

    from fcvit.tasks.classification.train import _schedule_extras

    args = _train_args("--lr-noise", "0.4", "0.9", "--lr-cycle-limit", "2", "--lr-k-decay", "2",
                       "--sched", "cosine", "--epochs", "10")
    extras = _schedule_extras(args)
    assert extras["noise"] == [0.4, 0.9] and extras["cycle_limit"] == 2 and extras["k_decay"] == 2.0
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, epochs = create_scheduler_v2(optimizer, sched="cosine", num_epochs=10, cooldown_epochs=0,
                                            **extras)
    assert scheduler.noise_range_t == [4, 9] and scheduler.cycle_limit == 2 and epochs == 20


# ------------------------------------------------------------------------------------ fcvit validate

@pytest.fixture(scope="module")
def tiny_checkpoint(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    fcvit_train(data, out, 1, "--mixup", "0", "--cutmix", "0")
    return out / LAST_NAME


def _validate(capsys, data: Path, checkpoint: Path, *extra: str) -> tuple:
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(data), "--checkpoint", str(checkpoint), "-b", "4", "-j", "0", "--device", "cpu",
              *extra])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_validate_accepts_original_flags_and_writes_csv(data, tiny_checkpoint, tmp_path, capsys):
    results = tmp_path / "results.csv"
    code, out, err = _validate(capsys, data, tiny_checkpoint, "--apex-amp", "--no-prefetcher", "--pin-mem",
                               "--torchscript", "--legacy-jit", "--log-freq", "5", "--test-pool", "--gp", "avg",
                               "--num-classes", "3", "--results-file", str(results))
    assert code == 0, err
    assert "float16 autocast" in out
    rows = list(csv.DictReader(open(results)))
    assert len(rows) == 1 and rows[0]["model"] == "fcvit_tiny" and rows[0]["img_size"] == "3 32 32"
    assert float(rows[0]["top1"]) == pytest.approx(float(out.split("top-1 ")[1].split("%")[0]), abs=0.01)


@pytest.mark.parametrize("argv, words", [
    (["--num-classes", "5"], "--num-classes 5 does not match the checkpoint"),
    (["--tf-preprocessing"], "--tf-preprocessing is not supported"),
    (["--real-labels", "real.json"], "--real-labels is not supported"),
    (["--test-pool", "--img-size", "288"], "--test-pool above the model's 224 px"),
    (["--gp", "max"], "--gp max is not supported"),
])
def test_validate_refuses_what_it_cannot_honour(data, tiny_checkpoint, capsys, argv, words):
    code, _, err = _validate(capsys, data, tiny_checkpoint, *argv)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
