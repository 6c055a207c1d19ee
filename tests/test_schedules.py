"""``fcvit train --sched``: every timm schedule runs, impossible settings are refused in one sentence, and a
schedule option the chosen schedule does not read is named in a note instead of being dropped in silence."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Tuple

import pytest
import torch

from fcvit.cli.main import main
from fcvit.cli.train import SCHEDULE_OPTIONS, SCHEDULES, build_parser, finalize_args, schedule_reads
from fcvit.errors import UserError
from fcvit.tasks.classification.train import _create_schedule


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["--dataset", "digits", *argv])


def base_args(sched: str) -> argparse.Namespace:
    """Parser defaults shrunk to a 40-epoch run whose every phase (warmup, decays, cooldown) shows."""
    args = parse("--sched", sched)
    args.epochs, args.warmup_epochs, args.cooldown_epochs = 40, 5, 10
    args.decay_epochs = 0.2 if sched in ("wsd", "rsqrt") else 15
    args.decay_milestones, args.patience_epochs = [10, 30], 10
    return args


# a second value for each option, and settings under which the option can act at all
CHANGED: Dict[str, Any] = {
    "decay_epochs": 7, "decay_milestones": [5], "decay_rate": 0.5, "cooldown_epochs": 3, "patience_epochs": 2,
    "min_lr": 1e-3, "lr_cycle_mul": 2.0, "lr_cycle_decay": 0.1, "lr_cycle_limit": 2, "lr_k_decay": 2.0,
    "warmup_epochs": 2, "warmup_lr": 1e-3, "lr_noise": [0.5], "lr_noise_pct": 0.3, "lr_noise_std": 0.2,
}
ENABLING: Dict[str, Dict[str, Any]] = {
    "lr_cycle_mul": {"lr_cycle_limit": 2}, "lr_cycle_decay": {"lr_cycle_limit": 2},
    "lr_noise_pct": {"lr_noise": [0.5]}, "lr_noise_std": {"lr_noise": [0.5]},
}


def trajectory(args: argparse.Namespace) -> Tuple[List[float], int]:
    """The lr of every epoch (and the epochs the schedule asks for) as the training loop steps it."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    args.lr = 1e-2
    scheduler, num_epochs = _create_schedule(optimizer, args, updates_per_epoch=10)
    lrs = []
    for epoch in range(num_epochs + 10):
        scheduler.step(epoch, 1.0)  # a metric that never improves: the plateau schedule decays
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs, num_epochs


@pytest.mark.parametrize("sched", SCHEDULES)
def test_the_option_table_says_which_schedule_reads_what(sched):
    """For every option, changing it changes the lr the run gets exactly when the table says it is read."""
    for option, value in CHANGED.items():
        base = base_args(sched)
        for key, enabling in ENABLING.get(option, {}).items():
            setattr(base, key, enabling)
        if option == "decay_epochs" and sched in ("wsd", "rsqrt"):
            value = 0.5
        changed = argparse.Namespace(**vars(base))
        setattr(changed, option, value)
        differs = trajectory(base) != trajectory(changed)
        assert differs == schedule_reads(base, option), (sched, option)


def test_every_schedule_runs_with_the_default_flags():
    for sched in SCHEDULES:
        args = finalize_args(parse("--sched", sched))
        lrs, num_epochs = trajectory(args)
        assert num_epochs >= args.epochs and all(lr > 0 for lr in lrs), sched


def test_none_keeps_the_lr_the_optimizer_starts_with():
    lrs, _ = trajectory(finalize_args(parse("--sched", "none")))
    assert set(lrs) == {1e-2}


def test_wsd_decays_over_the_last_fifth_by_default():
    args = finalize_args(parse("--sched", "wsd", "--epochs", "50", "--warmup-epochs", "0"))
    assert args.decay_epochs == 0.2
    lrs, _ = trajectory(args)
    assert lrs[39] == pytest.approx(1e-2) and lrs[41] < 1e-2


def test_unread_schedule_options_given_on_the_command_line_are_named():
    notes = finalize_args(parse("--sched", "step", "--cooldown-epochs", "3", "--lr-k-decay", "2",
                                "--decay-rate", "0.5")).compat_notes
    assert notes == ["--sched step does not read --cooldown-epochs, --lr-k-decay here: they have no effect on this "
                     "run (docs/reproduction.md lists which schedule reads which option)."]
    notes = finalize_args(parse("--lr-cycle-mul", "2")).compat_notes
    assert any("does not read --lr-cycle-mul here: it has no effect" in note for note in notes)
    # read, or not given: nothing said (the digits preset's cooldown is not the user's)
    assert finalize_args(parse("--sched", "cosine", "--cooldown-epochs", "3")).compat_notes == []
    assert finalize_args(parse("--sched", "step")).compat_notes == []


def test_the_table_covers_every_schedule_option_of_the_parser():
    args = parse()
    assert set(SCHEDULE_OPTIONS) <= set(vars(args))
    assert all(set(readers) <= set(SCHEDULES) for readers in SCHEDULE_OPTIONS.values())


@pytest.mark.parametrize("argv, words", [
    (["--sched", "foo"], "argument --sched: invalid choice: 'foo'"),
    (["--sched", "plateau", "--sched-on-updates"], "--sched plateau steps once per epoch"),
])
def test_impossible_schedules_are_refused_in_one_line(capsys, tmp_path, argv, words):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "digits", "--output", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line][0].split("error: ", 1)[1].startswith(words)


def test_a_decay_longer_than_the_run_is_refused_in_one_sentence():
    args = finalize_args(parse("--sched", "wsd", "--decay-epochs", "50", "--epochs", "20"))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    with pytest.raises(UserError, match=r"^--sched wsd: .*decay 50.*; change --decay-epochs, --warmup-epochs or "
                                        r"--epochs\.$"):
        _create_schedule(optimizer, args, updates_per_epoch=10)
