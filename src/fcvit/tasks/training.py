"""What the three training commands share on the task side: their flags, translated into the loop's settings."""
from __future__ import annotations

from typing import Any

from ..engine import AmpSettings, Settings

__all__ = ["loop_settings"]


def loop_settings(args: Any, amp: AmpSettings, **task_values: Any) -> Settings:
    """The loop's settings from a training command's namespace (one vocabulary: ``fcvit.cli.options``), with
    ``args.run_shaping``/``args.new_run_only`` declared beside the flags; ``task_values`` adds the task's own."""
    values = dict(output=args.output, amp=amp, args=vars(args), resume=args.resume,
                  resume_override=args.resume_override, keep_best=args.keep_best, save_interval=args.save_interval,
                  log_interval=args.log_interval, clip_grad=args.clip_grad, tensorboard=args.tensorboard,
                  run_shaping={name: "--" + name.replace("_", "-") for name in args.run_shaping},
                  new_run_only=tuple(args.new_run_only))
    return Settings(**dict(values, **task_values))
