"""``python -m fcvit.cli.launch NUM_PROC SCRIPT [ARGS...]``: torchrun on this machine (distributed_train.sh);
a failed run ends in the processes' own messages and one line naming the rank (none after a user error), a
stop (Ctrl-C, SIGTERM) in one line and exit status 0, as ``fcvit train`` itself."""
from __future__ import annotations

import sys
from typing import List, Optional

_USAGE = "usage: python -m fcvit.cli.launch NUM_PROC SCRIPT [ARGS...], NUM_PROC a positive number of processes"
_USER_ERROR_STATUS = 2


def torchrun_args(num_proc: int, script: str, script_args: List[str]) -> List[str]:
    """torchrun's arguments: one machine, a free port (several runs may share the machine)."""
    return ["--standalone", f"--nproc_per_node={num_proc}", script, *script_args]


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        sys.exit(_USAGE)
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    script = argv[1]
    try:
        run(parse_args(torchrun_args(int(argv[0]), script, argv[2:])))
    except SignalException as exc:  # Ctrl-C or SIGTERM: the processes got it too, saved and stopped (above)
        print(f"{script}: stopped by {exc.sigval.name}; rerun the same command to continue from the saved state.",
              file=sys.stderr)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode == _USER_ERROR_STATUS:
            sys.exit(_USER_ERROR_STATUS)  # the processes said why, one sentence each
        print(f"{script}: the process of rank {rank} ended with exit status {failure.exitcode} "
              "(its output is above).", file=sys.stderr)
        sys.exit(failure.exitcode if failure.exitcode > 0 else 1)


if __name__ == "__main__":
    main()
