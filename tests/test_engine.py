"""The shared training engine: atomic checkpoints, best-k saving, full resume state, clean stops,
non-finite loss guard, mixed precision, summary logging and collectives over two gloo processes."""
from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from fcvit.engine import (
    BEST_NAME,
    LAST_NAME,
    CheckpointSaver,
    DistContext,
    GracefulStop,
    NonFiniteLossError,
    SummaryLog,
    all_reduce,
    atomic_save,
    backward_step,
    build_train_state,
    check_finite,
    init_distributed,
    load_train_state,
    resolve_amp,
    resolve_resume,
    restore_train_state,
    seed_everything,
    wrap_ddp,
)
from fcvit.errors import UserError


def _tiny_setup(seed: int = 0):
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=5, warmup_epochs=1)
    ema = ModelEmaV3(model, decay=0.9)
    return model, optimizer, scheduler, ema


def _train_steps(model, optimizer, scheduler, ema, start: int, stop: int) -> None:
    for step in range(start, stop):
        x = torch.randn(5, 4)
        noise = float(np.random.rand()) + random.random()
        loss = model(x).pow(2).mean() + noise * 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model, step=step)
        scheduler.step(step + 1)


def test_atomic_save_killed_midway_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / LAST_NAME
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")  # partial bytes, then the process 'dies'
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = load_train_state(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == [LAST_NAME]  # no temp file left behind


def test_atomic_write_text_bytes_and_writer_leave_no_temporary(tmp_path):
    from fcvit.files import atomic_write

    atomic_write(tmp_path / "a.txt", "text")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"written"))
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "a.txt", lambda f: (f.write(b"half"), int("not a number")))
    assert (tmp_path / "a.txt").read_text() == "text"  # the old file survives a failed write
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01" and (tmp_path / "c.bin").read_bytes() == b"written"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.bin"]
    with pytest.raises(UserError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.txt", "text")


def test_saver_removes_temporaries_a_killed_run_left(tmp_path):
    stale = tmp_path / f".{LAST_NAME}.k1ll3d00.tmp"
    stale.write_bytes(b"")  # what SIGKILL during a checkpoint write leaves
    (tmp_path / "notes.tmp").write_text("a user's file, not ours")
    CheckpointSaver(tmp_path, metric="top1")
    assert not stale.exists()
    assert (tmp_path / "notes.tmp").exists()


def test_saver_keeps_best_k_by_named_metric(tmp_path):
    saver = CheckpointSaver(tmp_path, metric="top1", mode="max", keep_best=2)
    values = {0: 50.0, 1: 70.0, 2: 60.0, 3: 65.0, 4: 10.0}
    for epoch, top1 in values.items():
        best = saver.save({"epoch": epoch + 1, "w": torch.tensor([float(epoch)])}, epoch, {"top1": top1})
        assert (best is not None) == (epoch in (0, 1))
    files = sorted(p for p in os.listdir(tmp_path))
    assert files == sorted([LAST_NAME, BEST_NAME, "checkpoint-1.pth.tar", "checkpoint-3.pth.tar"])
    assert load_train_state(tmp_path / LAST_NAME)["epoch"] == 5
    assert load_train_state(tmp_path / BEST_NAME)["w"].item() == 1.0
    assert [e["tag"] for e in saver.state_dict()["best"]] == [1, 3]
    # the ranking travels inside the checkpoint and comes back on resume
    again = CheckpointSaver(tmp_path, metric="top1", mode="max", keep_best=2)
    again.load_state_dict(load_train_state(tmp_path / LAST_NAME)["saver"])
    assert again.best_value() == 70.0


def test_saver_min_mode_iteration_saves_and_non_main_rank(tmp_path):
    saver = CheckpointSaver(tmp_path, metric="loss", mode="min", keep_best=1)
    saver.save({"global_step": 100}, 100, None)  # iteration save: last only
    assert sorted(os.listdir(tmp_path)) == [LAST_NAME]
    saver.save({"global_step": 200}, 200, {"loss": 2.0})
    saver.save({"global_step": 300}, 300, {"loss": 1.0})
    saver.save({"global_step": 400}, 400, {"loss": float("nan")})
    assert sorted(os.listdir(tmp_path)) == sorted([LAST_NAME, BEST_NAME, "checkpoint-300.pth.tar"])
    other = tmp_path / "other"
    CheckpointSaver(other, "loss", "min", ctx=DistContext(rank=1, world_size=2)).save({"a": 1}, 1, {"loss": 0.0})
    assert not other.exists()


def test_train_state_round_trip_continues_identically(tmp_path):
    seed_everything(3)
    straight = _tiny_setup()
    _train_steps(*straight, 0, 6)

    seed_everything(3)
    first = _tiny_setup()
    _train_steps(*first, 0, 3)
    args = argparse.Namespace(lr=1e-2, model="tiny", func=print, act=nn.ReLU, img_size=(32, 32))
    state = build_train_state(first[0], first[1], first[2], None, first[3], epoch=3, global_step=3, args=args,
                              class_names=["a", "b", "c"])
    atomic_save(state, tmp_path / LAST_NAME)
    random.random(), np.random.rand(), torch.randn(7)  # disturb every generator after saving

    loaded = load_train_state(tmp_path / LAST_NAME)  # weights_only=True
    assert isinstance(loaded["args"], dict) and loaded["args"]["act"] == str(nn.ReLU)  # plain, not a Namespace
    assert loaded["args"]["img_size"] == (32, 32) and "func" not in loaded["args"]
    assert loaded["class_names"] == ["a", "b", "c"]
    assert set(loaded["state_dict_ema"]) == set(straight[0].state_dict())  # timm's layout: no 'module.'
    resumed = _tiny_setup(seed=99)  # different initial weights: everything must come from the file
    model, optimizer, scheduler, ema = resumed
    counters = restore_train_state(loaded, model, optimizer, scheduler, None, ema)
    assert counters == {"epoch": 3, "global_step": 3}
    _train_steps(*resumed, 3, 6)
    for a, b in zip(straight[0].state_dict().values(), resumed[0].state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight[3].state_dict().values(), resumed[3].state_dict().values()):
        assert torch.equal(a, b)
    assert straight[1].param_groups[0]["lr"] == resumed[1].param_groups[0]["lr"]


def test_restore_refuses_weights_of_another_model():
    model = nn.Linear(4, 3)
    with pytest.raises(UserError, match="does not fit"):
        restore_train_state({"state_dict": nn.Linear(4, 5).state_dict()}, model)


def test_resolve_resume(tmp_path):
    assert resolve_resume("auto", tmp_path) is None
    assert resolve_resume(None, tmp_path) is None
    atomic_save({"epoch": 1}, tmp_path / LAST_NAME)
    assert resolve_resume("auto", tmp_path) == str(tmp_path / LAST_NAME)
    with pytest.raises(UserError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope.pth.tar"), tmp_path)


def test_truncated_checkpoint_is_one_sentence(tmp_path):
    path = tmp_path / LAST_NAME
    atomic_save({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_train_state(path)


def test_graceful_stop_turns_sigterm_into_a_flag():
    previous = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)  # would kill the test process without the handler
        assert stop.should_stop() and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == previous


def test_check_finite_names_the_step_and_checkpoint():
    assert check_finite(torch.tensor(1.5), step=3) == 1.5
    with pytest.raises(NonFiniteLossError, match=r"nan at global step 17,.*'out/last.pth.tar' was kept"):
        check_finite(torch.tensor(float("nan")), step=17, checkpoint="out/last.pth.tar")
    with pytest.raises(UserError, match="inf at global step 2"):
        check_finite(float("inf"), step=2)


def test_amp_settings_and_backward_step():
    off = resolve_amp(torch.device("cpu"), enabled=False)
    assert not off.enabled and off.scaler is None
    bf16 = resolve_amp(torch.device("cpu"), enabled=True)
    assert bf16.dtype is torch.bfloat16 and bf16.scaler is None
    model = nn.Linear(4, 2)
    with bf16.autocast():
        assert model(torch.randn(2, 4)).dtype is torch.bfloat16
    fp16 = resolve_amp(torch.device("cpu"), enabled=True, dtype="float16")
    assert fp16.dtype is torch.float16 and fp16.scaler is not None
    with pytest.raises(UserError, match="amp-dtype"):
        resolve_amp(torch.device("cpu"), enabled=True, dtype="float8")
    # a named dtype is a request for mixed precision even without --amp
    implied = resolve_amp(torch.device("cpu"), enabled=False, dtype="bfloat16")
    assert implied.enabled and implied.dtype is torch.bfloat16
    # clipping by norm limits the update applied by plain SGD
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.full((2, 4), 100.0)).sum() * 1000
    backward_step(loss, optimizer, off, clip_grad=0.5)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert moved.item() == pytest.approx(0.5, rel=1e-4)


def test_summary_log_appends_widens_and_truncates(tmp_path):
    log = SummaryLog(str(tmp_path / "summary.csv"))
    log.append({"epoch": 0, "train_loss": 2.0})
    log.append({"epoch": 1, "train_loss": 1.5})
    log.append({"epoch": 2, "train_loss": 1.0, "top1": 50.0})
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[0]["top1"] == "" and rows[2]["top1"] == "50"
    log.truncate(1)
    assert [r["epoch"] for r in log.read()] == ["0"]
    SummaryLog(str(tmp_path / "x.csv"), ctx=DistContext(rank=1, world_size=2)).append({"epoch": 0})
    assert not (tmp_path / "x.csv").exists()


def test_single_process_context_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, ctx) is model
    t = torch.tensor([2.0])
    assert all_reduce(t, ctx).item() == 2.0
    with pytest.raises(UserError, match="no CUDA GPU") if not torch.cuda.is_available() else _null():
        init_distributed("cuda")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from fcvit.engine import cleanup_distributed

    ctx = init_distributed("cpu")
    results = {"sum": all_reduce(torch.tensor([rank + 1.0]), ctx).item()}
    stop = GracefulStop()
    stop.requested = rank == 1  # only rank 1 was signalled; both must agree to stop
    results["stop"] = stop.should_stop(ctx)
    try:
        check_finite(torch.tensor(float("nan") if rank == 1 else 1.0), step=5, ctx=ctx)
        results["finite"] = True
    except NonFiniteLossError as exc:
        results["finite"] = str(exc)
    model = wrap_ddp(nn.Linear(2, 1), ctx)
    results["ddp"] = type(model).__name__
    seed_everything(0, rank)  # each rank its own stream, saved and restored per rank
    state = build_train_state(model, ctx=ctx)
    draw = torch.rand(1)
    restore_train_state(state, model, ctx=ctx)
    results.update(per_rank=len(state["rng_per_rank"]), draw=draw.item(), redraw=torch.rand(1).item())
    CheckpointSaver(out_dir, "top1", ctx=ctx).save({"rank": rank}, 0, {"top1": 1.0})
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup_distributed()


def test_two_gloo_processes_agree(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children reuse the imported modules instead of starting Python twice more
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert r["sum"] == 3.0 and r["stop"] is True and r["ddp"] == "DistributedDataParallel"
        assert "global step 5" in r["finite"]
        assert r["per_rank"] == 2 and r["draw"] == r["redraw"]
    assert torch.load(tmp_path / "rank0.pt")["draw"] != torch.load(tmp_path / "rank1.pt")["draw"]
    assert load_train_state(tmp_path / LAST_NAME)["rank"] == 0  # only the main rank wrote


def test_atomic_save_gives_the_users_usual_permissions(tmp_path):
    import os
    import stat

    from fcvit.engine import atomic_save

    umask = os.umask(0o022)
    try:
        atomic_save({"w": torch.zeros(1)}, tmp_path / "last.pth.tar")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "last.pth.tar").stat().st_mode) == 0o644


def test_amp_dtype_is_checked_and_conflicts_with_no_amp(capsys, tmp_path):
    from fcvit.cli.main import main
    from fcvit.tasks.detection.train import detection_amp

    for argv in (["train", "--dataset", "digits", "--amp-dtype", "half"],
                 ["validate", "--dataset", "digits", "--checkpoint", "c.pth", "--amp-dtype", "float8"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "argument --amp-dtype: invalid choice" in err and "Traceback" not in err
    with pytest.raises(UserError, match=r"^--no-amp and --amp-dtype bfloat16 conflict: drop --no-amp"):
        detection_amp(torch.device("cpu"), False, "bfloat16")
    assert not detection_amp(torch.device("cpu"), False).enabled
    assert detection_amp(torch.device("cpu"), None, "bfloat16").dtype is torch.bfloat16
