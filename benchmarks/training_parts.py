"""Where a training step goes, part by part: forward + backward of each piece of a block, per stage.

    python benchmarks/training_parts.py --model fcvit_b12 --threads 2

For every stage of the model it times (median of --rounds, batch 16 at the stage's input size, the
fast paths as training runs them) the block's first norm, one global context, one token-mixer round,
the round that carries the residual, the channel mixer and the whole block, and prints them with the
stage's depth and the channel mixer's arithmetic rate: the multiply-adds of its two 1x1 products
forward, twice that backward, plus the first product again where backward recomputes it
(``fcvit.ops.mixers.keep_mixer_hidden``). docs/benchmarks.md reads the rates: the early stages' mixers,
whose products have 32-128 channels on one side, run at about half the rate of the later ones.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict

import torch

import timm
import fcvit  # noqa: F401  (registers the models)
from fcvit.engine.allocator import keep_freed_memory
from fcvit.ops import conv_mlp
from fcvit.ops.mixers import keep_mixer_hidden
from fcvit.models.layers import FCViTBlock


def time_step(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rounds: int) -> float:
    """Median milliseconds of ``fn(x).sum().backward()``."""
    for _ in range(2):
        fn(x).sum().backward()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(x).sum().backward()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="fcvit_tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    model = timm.create_model(args.model).train()
    print(f"#### {args.model}: forward + backward per piece, batch {args.batch_size}, {args.threads} threads (ms)\n")
    print("| stage | channels x map | depth | norm1 | global context | token round | token round + residual "
          "| channel mixer | block | mixer GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals: Dict[str, float] = {}
    size = 224 // 4
    for index, stage in enumerate(model.stages):
        blocks = [m for m in stage.modules() if isinstance(m, FCViTBlock)]
        block, depth = blocks[0], len(blocks)
        dim = block.norm1.num_channels
        x = torch.randn(args.batch_size, dim, size, size).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        tm, mixer = block.token_mixer, block.channel_mixer
        pieces = {
            "norm1": lambda t: block.norm1(t),
            "global context": lambda t: tm.gc1.add_context(t),
            "token round": lambda t: conv_mlp(t, *tm._round_weights(tm.dw1, tm.fc1)),
            "token round + residual": lambda t: conv_mlp(t, *tm._round_weights(tm.dw2, tm.fc2), residual=t,
                                                         scale=block.layer_scale_1),
            "channel mixer": lambda t: mixer.fused_forward(t, block.norm2, block.layer_scale_2),
            "block": lambda t: block(t),
        }
        ms = {name: time_step(fn, x, args.rounds) for name, fn in pieces.items()}
        hidden = mixer.fc1.out_channels
        product = args.batch_size * size * size * dim * hidden  # multiply-adds of one 1x1 product
        macs = 2 * product * 3 + (0 if keep_mixer_hidden(dim) else product) + 3 * args.batch_size * size * size * hidden * 9
        rate = 2 * macs / (ms["channel mixer"] * 1e-3) / 1e9
        cells = " | ".join(f"{ms[name]:.1f}" for name in pieces)
        print(f"| {index + 1} | {dim} x {size}x{size} | {depth} | {cells} | {rate:.0f} |")
        for name, value in ms.items():
            totals[name] = totals.get(name, 0.0) + depth * value
        size //= 2
    print("\nWhole model, each piece times its stage's depth (ms): " + ", ".join(
        f"{name} {value:.0f}" for name, value in totals.items()) +
        " (a block has two global contexts and two token rounds, one of them with the residual).")


if __name__ == "__main__":
    main()
