#!/usr/bin/env bash
# GPU numbers (not yet run: the machine these docs were written on has no GPU). All four FCViT variants,
# inference and training, bf16 autocast + channels-last, against convnext_nano and poolformer_s12 in one run each.
set -euo pipefail
cd "$(dirname "$0")/.."
FCVIT=${FCVIT:-.venv/bin/fcvit}
OUT=benchmarks/results
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu_card.txt"
for mode in infer train; do
  "$FCVIT" benchmark --device cuda --amp --channels-last --mode "$mode" -b 128 --rounds 5 --iters 10 \
      --model fcvit_tiny,fcvit_b12,fcvit_b24,fcvit_b48 --compare convnext_nano,poolformer_s12 \
      --json "$OUT/gpu_${mode}_bf16.json"
done
