"""What training keeps for backward, per stage and per tensor, with FCViT's fast paths on and off.

    python benchmarks/memory_breakdown.py --model fcvit_tiny --batch-size 16 > benchmarks/results/memory_tiny.md

Runs one training-mode forward pass per setting and prints Markdown: the bytes saved per stage
(``fcvit.tools.profile.saved_activations``: every tensor autograd keeps, once per storage, no
parameters), and the tensors one block of the first stage keeps, in the order they are saved.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Dict, List

import timm
import torch

import fcvit  # noqa: F401  (registers the models)
from fcvit.ops import set_fused_ops
from fcvit.tools.profile import SavedTensor, saved_activations

MB = 2 ** 20


def _per_stage(records: List[SavedTensor]) -> Dict[str, float]:
    totals: Dict[str, float] = defaultdict(float)
    for r in records:
        parts = r.module.split(".")
        key = ".".join(parts[:2]) if parts[0] == "stages" else (parts[0] or "(top level)")
        totals[key] += r.nbytes / MB
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fcvit_tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--block", default="stages.0.blocks.0", help="the block whose tensors are listed")
    args = parser.parse_args()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    runs = {}
    for label, enabled in (("plain ops (fast paths off)", False), ("fast paths", True)):
        previous = set_fused_ops(enabled)  # modules read the switch when they are built
        try:
            model = timm.create_model(args.model).train()
        finally:
            set_fused_ops(previous)
        runs[label] = saved_activations(model, x, depth=6)
    stages = {label: _per_stage(records) for label, records in runs.items()}
    labels = list(runs)
    print(f"## {args.model}, batch {args.batch_size}, {args.img_size} px: MB saved for backward\n")
    print("| part | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for key in stages[labels[0]]:
        print(f"| {key} | " + " | ".join(f"{stages[label].get(key, 0.0):.1f}" for label in labels) + " |")
    print("| **total** | " + " | ".join(f"**{sum(stages[label].values()):.0f}**" for label in labels) + " |")
    for label, records in runs.items():
        mine = [r for r in records if r.module == args.block or r.module.startswith(args.block + ".")]
        print(f"\n### {args.block}, {label}: {sum(r.nbytes for r in mine) / MB:.1f} MB\n")
        print("| saved inside | shape | MB |")
        print("|---|---|---|")
        small = [r for r in mine if r.nbytes < MB / 2]
        for r in mine:
            if r.nbytes >= MB / 2:
                print(f"| {r.module[len(args.block) + 1:] or '(the block: operators)'} | "
                      f"{'x'.join(map(str, r.shape))} | {r.nbytes / MB:.2f} |")
        print(f"| {len(small)} tensors under 0.5 MB (statistics, global tokens) | - | "
              f"{sum(r.nbytes for r in small) / MB:.2f} |")


if __name__ == "__main__":
    main()
