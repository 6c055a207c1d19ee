#!/usr/bin/env bash
# The CPU numbers of docs/benchmarks.md: fp32, batch 16, 224 px, 2 threads, all models interleaved per run.
# Run it on an otherwise idle machine: other processes on the cores move the ratios by 10-20%.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
mkdir -p "$OUT"
run() { echo "== $*" >&2; "$PY" benchmarks/compare_original.py --threads 2 "$@"; }
eager() {
  run --model fcvit_tiny --compare convnext_atto,poolformer_s12 --mode infer \
      --variants fast,previous,plain,original,original-cl --rounds 7 --json $OUT/tiny_infer_eager.json
  run --model fcvit_tiny --compare convnext_atto,poolformer_s12 --mode train \
      --variants fast,previous,original,original-cl --rounds 5 --json $OUT/tiny_train_eager.json
  run --model fcvit_b12 --compare convnext_nano,poolformer_s12 --mode infer \
      --variants fast,previous,plain,original-cl --rounds 7 --json $OUT/b12_infer_eager.json
  run --model fcvit_b12 --compare convnext_nano,poolformer_s12 --mode train \
      --variants fast,previous,original-cl --rounds 5 --json $OUT/b12_train_eager.json
}
compiled() {
  run --model fcvit_tiny --compare convnext_atto,poolformer_s12 --mode infer --compile --variants fast,original-cl \
      --rounds 5 --json $OUT/tiny_infer_compile.json
  run --model fcvit_b12 --compare convnext_nano,poolformer_s12 --mode infer --compile --variants fast \
      --rounds 5 --json $OUT/b12_infer_compile.json
}
issue15() {  # training memory and compiled mode against the peers, one process per table
  local models="--model fcvit_tiny,fcvit_b12 --compare convnext_atto,convnext_nano,poolformer_s12 --threads 2"
  local rounds="--iters 1 --rounds 5 --warmup 1"
  "$PY" -m fcvit.cli.main benchmark $models --mode train $rounds --results-file $OUT/issue15_after_train.json
  "$PY" -m fcvit.cli.main benchmark $models --mode infer $rounds --results-file $OUT/issue15_after_infer_eager.json
  "$PY" -m fcvit.cli.main benchmark $models --mode infer --compile $rounds \
      --results-file $OUT/issue15_after_infer_compile.json
  "$PY" benchmarks/memory_breakdown.py --model fcvit_tiny > $OUT/memory_tiny.md
  "$PY" benchmarks/memory_breakdown.py --model fcvit_b12 > $OUT/memory_b12.md
}
profiles() {
  "$PY" benchmarks/profile_ops.py --model fcvit_tiny --mode infer > $OUT/profile_tiny_infer.md
  "$PY" benchmarks/profile_ops.py --model fcvit_tiny --mode train > $OUT/profile_tiny_train.md
}
case "${1:-all}" in
  eager) eager ;;
  compiled) compiled ;;
  profiles) profiles ;;
  issue15) issue15 ;;
  all) eager; compiled; profiles ;;
esac
