"""Where the time goes: torch.profiler operator tables (self CPU %) for FCViT implementations.

    python benchmarks/profile_ops.py --model fcvit_tiny --threads 2 > benchmarks/results/profile_tiny.md

Profiles two forward passes (batch 16, 224 px, eval, inference mode) of the original-style model in
channels-last and of the default fcvit model, and prints the top operators of each as Markdown.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import timm  # noqa: E402
import fcvit  # noqa: E402,F401
from fcvit.ops import set_fused_ops  # noqa: E402
from original_fcvit import create_original  # noqa: E402


def op_table(model: torch.nn.Module, x: torch.Tensor, mode: str, rows: int) -> str:
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = torch.zeros(x.shape[0], dtype=torch.long)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), target).backward()
            opt.step()
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"Profiled total: {total / 2e3:.0f} ms per step (self CPU time, profiler overhead included).", "",
             "| operator | self CPU % | ms per step | calls per step |", "|---|---|---|---|"]
    for e in events[:rows]:
        lines.append(f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f} | "
                     f"{e.self_cpu_time_total / 2e3:.0f} | {e.count // 2} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="fcvit_tiny")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(16, 3, 224, 224)
    original = create_original(args.model, channels_last=True)
    state = original.state_dict()  # published-layout keys; FCViT remaps them when it loads

    def fcvit_model(fused: bool) -> torch.nn.Module:
        previous = set_fused_ops(fused)  # modules read the switch when they are built
        try:
            model = timm.create_model(args.model)
        finally:
            set_fused_ops(previous)
        model.load_state_dict(state)
        return model

    variants = [("original, channels-last", original.to(memory_format=torch.channels_last)),
                ("fcvit (default model)", fcvit_model(True))]
    if args.mode == "infer":
        variants.append(("fcvit, fused path off", fcvit_model(False)))
    for title, model in variants:
        print(f"\n#### {args.model} {args.mode}: {title}\n")
        print(op_table(model, x, args.mode, args.rows))


if __name__ == "__main__":
    main()
