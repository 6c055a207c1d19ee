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
profiles() {
  "$PY" benchmarks/profile_ops.py --model fcvit_tiny --mode infer > $OUT/profile_tiny_infer.md
  "$PY" benchmarks/profile_ops.py --model fcvit_tiny --mode train > $OUT/profile_tiny_train.md
}
case "${1:-all}" in
  eager) eager ;;
  compiled) compiled ;;
  profiles) profiles ;;
  all) eager; compiled; profiles ;;
esac
