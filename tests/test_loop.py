"""The engine's one training loop, driven by a stand-in task: its guards, its stops and its positions."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import pytest
import torch
from torch import nn

from fcvit.data.samplers import EpochShardSampler, SeededSamples, SeekableBatches
from fcvit.engine import (
    LAST_NAME,
    DistContext,
    GracefulStop,
    NonFiniteLossError,
    Settings,
    Task,
    load_train_state,
    resolve_amp,
    run_training,
    train_loader,
)


class _LossModel(nn.Module):
    """Stands in for a task's model in train mode: a loss from one parameter, NaN at one call."""

    def __init__(self, bad_at_call: int = -1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.calls = 0
        self.bad_at_call = bad_at_call

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.calls += 1
        loss = (self.weight ** 2).sum()
        if self.calls == self.bad_at_call:
            loss = loss * float("nan")
        return {"loss_a": loss, "loss_b": 0.5 * loss}


def _step(model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], int]:
    images, _ = batch
    parts = model(images)
    return sum(parts.values()), parts, images.shape[0]


def _run(tmp_path, model: _LossModel, batches: int = 5, start_epoch: int = 0, epochs: int = 3,
         evaluations: Any = None) -> Dict[str, Any]:
    dataset = [(torch.zeros(3, 8, 8), 0) for _ in range(batches)]
    loader = train_loader(SeededSamples(dataset), SeekableBatches(EpochShardSampler(batches, seed=0), 1), 0, False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    task = Task(model, optimizer, scheduler, loader, name="stand-in", metric="score", unit="epoch", length=epochs)
    task.step, task.evaluate = _step, evaluations or (lambda m: ({"score": 1.0}, {"score": 1.0}))
    settings = Settings(output=str(tmp_path), amp=resolve_amp(torch.device("cpu"), False), log_interval=0,
                        start_epoch=start_epoch or None)
    return run_training(task, DistContext(), settings)


def test_non_finite_loss_stops_before_the_weights_change(tmp_path):
    model = _LossModel(bad_at_call=3)
    with pytest.raises(NonFiniteLossError, match="global step 13"):
        _run(tmp_path, model, start_epoch=2)  # 5 batches per epoch: step 10 is where epoch 2 starts
    assert torch.isfinite(model.weight).all()
    assert model.weight.item() == pytest.approx(0.7 ** 2)  # two good SGD steps on 1.5 w^2: w -= 0.1 * 3w


def test_stop_request_ends_the_run_after_the_current_step(tmp_path, monkeypatch):
    monkeypatch.setattr(GracefulStop, "should_stop", lambda self, ctx=None: True)  # as SIGTERM would set it
    result = _run(tmp_path, _LossModel(), start_epoch=2)
    assert result["interrupted"] and result["global_step"] == 11
    state = load_train_state(tmp_path / LAST_NAME)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 1, 11)
    assert state["epoch_progress"]["loss"] == pytest.approx(1.5)  # the part of the epoch's row already done


def test_rows_are_written_per_epoch_and_the_best_is_ranked(tmp_path):
    scores = iter([0.2, 0.9, 0.5])
    result = _run(tmp_path, _LossModel(), evaluations=lambda m: ({"score": next(scores)}, {}))
    assert result["best_value"] == pytest.approx(0.9) and not result["interrupted"]
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,iter,") and [r.split(",")[:2] for r in rows[1:]] == [
        ["0", "5"], ["1", "10"], ["2", "15"]]
    assert load_train_state(tmp_path / "model_best.pth.tar")["global_step"] == 10


def test_a_stop_where_an_evaluation_is_due_saves_first_and_evaluates_on_resume(tmp_path, monkeypatch):
    """A stop notice (SIGTERM before a kill) may be shorter than an evaluation: save, evaluate when resumed."""
    calls = {"steps": 0}
    real = GracefulStop.should_stop

    def stop_at_step_10(self, ctx=None):  # the last step of epoch 1 (5 batches per epoch)
        calls["steps"] += 1
        return calls["steps"] == 10 or real(self, ctx)

    evaluated = []

    def scores(model):
        value = float(model.weight.detach())
        evaluated.append(value)
        return {"score": value}, {"score": value}

    straight = _run(tmp_path / "straight", _LossModel(), evaluations=scores)
    assert len(evaluated) == 3
    evaluated.clear()
    with monkeypatch.context() as m:
        m.setattr(GracefulStop, "should_stop", stop_at_step_10)
        stopped = _run(tmp_path / "resumed", _LossModel(), evaluations=scores)
    assert stopped["interrupted"] and len(evaluated) == 1  # epoch 0 only: epoch 1's evaluation was put off
    state = load_train_state(tmp_path / "resumed" / LAST_NAME)
    assert state["pending_evaluation"] == {"epoch": 1, "done": 5} and state["global_step"] == 10
    resumed = _run(tmp_path / "resumed", _LossModel(), evaluations=scores)
    assert len(evaluated) == 3 and not resumed["interrupted"]  # epoch 1's evaluation first, then epoch 2's
    rows = (tmp_path / "resumed" / "summary.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["0", "5"], ["1", "10"], ["2", "15"]]
    assert straight["best_value"] == pytest.approx(resumed["best_value"])
    a = load_train_state(tmp_path / "straight" / LAST_NAME)["state_dict"]["weight"]
    assert torch.equal(a, load_train_state(tmp_path / "resumed" / LAST_NAME)["state_dict"]["weight"])
