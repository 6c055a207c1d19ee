"""The pieces, interleaved: global context, channel mixer and token mixer, new (fast path / plain) vs original-cl.

    python benchmarks/components_ab.py --threads 2

fcvit_tiny's stage-1 (32 ch, 56x56) and stage-3 (160 ch, 14x14) shapes, batch 16, eval, inference mode;
prints the median and best time of each variant over the rounds, every variant timed in turn.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fcvit.ops import set_fused_ops  # noqa: E402
from fcvit.models.layers import ChannelMixer, GlobalContext, GroupNorm1, TokenMixer  # noqa: E402
from original_fcvit import GlobalContext as OriginalGC, Mlp, TokenMixer as OriginalTM  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cl = torch.channels_last
    print("| piece | shape | variant | median ms | best ms |\n|---|---|---|---|---|")
    for dim, size, ratio in [(32, 56, 8), (160, 14, 4)]:
        x = torch.randn(16, dim, size, size).contiguous(memory_format=cl)
        gc, ogc = GlobalContext(dim).eval(), OriginalGC(dim).eval()
        ogc.load_state_dict(gc.state_dict())
        cm, ocm = ChannelMixer(dim, ratio).eval(), Mlp(dim, dim * ratio).eval()
        ocm.load_state_dict(cm.state_dict())
        tm, otm = TokenMixer(dim).eval(), OriginalTM(dim).eval()
        otm.load_state_dict(tm.state_dict())
        previous = set_fused_ops(False)  # modules read the switch when they are built
        plain_tm = TokenMixer(dim).eval()
        set_fused_ops(previous)
        plain_tm.load_state_dict(tm.state_dict())
        ocm, otm = ocm.to(memory_format=cl), otm.to(memory_format=cl)
        scale = torch.ones(dim)
        norm = GroupNorm1(dim).eval()

        variants = {
            ("global context + residual", "new"): lambda: gc.add_context(x),
            ("global context + residual", "original-cl"): lambda: x + ogc(x),
            ("norm + channel mixer", "new, fast path"): lambda: cm.fused_forward(x, norm, scale),
            ("norm + channel mixer", "new, plain"): lambda: scale.reshape(-1, 1, 1) * cm(norm(x)),
            ("norm + channel mixer", "original-cl"): lambda: ocm(norm(x)),
            ("token mixer", "new, fast path"): lambda: tm.fused_forward(x),
            ("token mixer", "new, plain"): lambda: plain_tm(x),
            ("token mixer", "original-cl"): lambda: otm(x),
        }
        times = {k: [] for k in variants}
        with torch.inference_mode():
            for f in variants.values():
                f()
            for _ in range(args.rounds):
                for k, f in variants.items():
                    start = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - start)
        for (piece, variant), t in times.items():
            print(f"| {piece} | {dim} ch {size}x{size} | {variant} | {statistics.median(t) * 1e3:.0f} | "
                  f"{min(t) * 1e3:.0f} |")


if __name__ == "__main__":
    main()
