#!/usr/bin/env bash
# The paper's launcher: ./distributed_train.sh NUM_PROC DATA [flags of train.py]
# Starts NUM_PROC processes of train.py (= fcvit train) through torchrun on this machine: one per GPU,
# or over gloo on the CPU when no GPU is visible. The published copy had a typo where `shift` belongs;
# this one runs. PYTHON (default python3, the active venv's) chooses the interpreter.
set -euo pipefail

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "distributed_train.sh: the first argument must be the number of processes, e.g. ./distributed_train.sh 8 /path/to/imagenet --model fcvit_tiny -b 128 --lr 1e-3 --drop-path 0.1 --apex-amp" >&2
    exit 2
fi
NUM_PROC=$1
shift
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('torch') and u.find_spec('fcvit')))" 2>/dev/null; then
    echo "distributed_train.sh: $PYTHON cannot import torch and fcvit: run \`make demo\` once in $HERE, then \`source $HERE/.venv/bin/activate\`, and run the command again." >&2
    exit 2
fi
# = python -m torch.distributed.run --standalone --nproc_per_node=NUM_PROC train.py ..., ending a failed run in
# the processes' own message (one sentence for a user error) instead of torchrun's summary traceback
exec "$PYTHON" -m fcvit.cli.launch "$NUM_PROC" "$HERE/train.py" "$@"
