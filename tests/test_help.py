"""`--help` a person can scan: every option of every subcommand (nested ones too) has help text, and the original
train.py/validate.py's flags are accepted but listed only by `--help-all`."""
from __future__ import annotations

import argparse

import pytest

from fcvit.cli.main import build_parser
from fcvit.cli.original_flags import _GROUP

TRAIN_HELP_LINES_BEFORE = 279  # `fcvit train --help` at 80 columns while it listed the original's flags


def parsers(parser: argparse.ArgumentParser, path: tuple = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, path + (name,))


def help_text(capsys, path: tuple, flag: str = "--help") -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*path, flag])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_every_option_of_every_subcommand_has_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option, so a help text is found whole
    found = dict(parsers(build_parser()))
    assert {("train",), ("validate",), ("detect", "train"), ("segment", "eval"), ("visualize", "attention")} <= set(found)
    missing = []
    for path, parser in found.items():
        help_all = None
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            if action.help == argparse.SUPPRESS:  # counts only if --help-all shows it, with its text
                if help_all is None:
                    has_flag = any("--help-all" in a.option_strings for a in parser._actions)
                    help_all = help_text(capsys, path, "--help-all") if has_flag else ""
                text = getattr(action, "full_help", "")
                ok = text.strip() and text in help_all and all(o in help_all for o in action.option_strings)
            else:
                ok = bool(action.help and action.help.strip())
            if not ok:
                missing.append(f"fcvit {' '.join(path)} {action.option_strings[0]}")
    assert not missing, missing


@pytest.mark.parametrize("command", ["train", "validate"])
def test_original_flags_only_under_help_all_and_still_accepted(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "80")
    plain, full = help_text(capsys, (command,)), help_text(capsys, (command,), "--help-all")
    legacy = ["--apex-amp", "--native-amp", "--gp", "--torchscript", "--class-map", "--no-prefetcher", "--pretrained"]
    legacy += ["--local_rank", "--split-bn", "--tta", "--drop-connect"] if command == "train" else ["--test-pool"]
    for flag in legacy:
        assert f"  {flag} " in full, flag
        assert f"{flag} " not in plain and f"[{flag}]" not in plain, flag
    assert _GROUP.split(" (")[0] in full and _GROUP.split(" (")[0] not in plain
    assert "--help-all" in plain and len(plain.splitlines()) < len(full.splitlines()) - len(legacy)
    if command == "train":
        assert len(plain.splitlines()) < TRAIN_HELP_LINES_BEFORE
        helps = {o: a.help for a in dict(parsers(build_parser()))[("train",)]._actions for o in a.option_strings}
        for flag in ("--epochs", "--warmup-epochs", "--smoothing", "--scale", "--ratio", "--hflip", "--no-aug"):
            assert helps[flag], flag
        for flag in ("--cooldown-epochs", "--weight-decay", "--mixup", "--cutmix", "--min-lr", "--warmup-lr", "--aa"):
            assert "(default" in helps[flag] and "timm's" in helps[flag], flag  # the paper's recipe, and timm's
    args = build_parser().parse_args([command, "DATA", "--apex-amp", "--no-prefetcher", "--pin-mem"])
    assert args.apex_amp and args.no_prefetcher and args.pin_mem
