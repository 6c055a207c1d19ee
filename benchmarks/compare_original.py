"""Before/after: the fast FCViT against the original-style implementation and timm peers, interleaved.

Usage (from the repository root):

    python benchmarks/compare_original.py --model fcvit_tiny --compare convnext_atto,poolformer_s12 \
        --mode infer --threads 2 --json benchmarks/results/tiny_infer.json

Candidates, measured round-robin in this one process (see fcvit.tools.benchmark.run_benchmark):
the timm peers; ``MODEL`` (the default model, fast paths on); ``MODEL plain`` (the same
model with the fast paths switched off, i.e. plain PyTorch ops); ``MODEL previous`` (the default model
of the first release: no channel-mixer batch slices, oneDNN's own depth-wise weight gradient); ``MODEL original`` (the original code
style, NCHW) and ``MODEL original-cl`` (the same converted to channels-last). All FCViT candidates load
the same random weights so they compute the same function.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fcvit  # noqa: E402,F401  (registers the models)
import timm  # noqa: E402
from fcvit.tools.benchmark import Candidate, format_table, run_benchmark, timm_candidate  # noqa: E402
from original_fcvit import create_original  # noqa: E402


def fcvit_candidates(name: str, variants: list[str]) -> list[Candidate]:
    # the original's published-layout keys (network.N); FCViT remaps them when it loads
    state = create_original(name, channels_last=False).state_dict()

    def new_model() -> torch.nn.Module:
        model = timm.create_model(name)
        model.load_state_dict(state)
        return model

    def original(channels_last: bool):
        def build() -> torch.nn.Module:
            model = create_original(name, channels_last=channels_last)
            model.load_state_dict(state)
            return model.to(memory_format=torch.channels_last) if channels_last else model
        return build

    table = {
        "fast": Candidate(name, new_model),
        "plain": Candidate(f"{name} plain", new_model, fast_paths=False),
        "previous": Candidate(f"{name} previous", new_model, cpu_shortcuts=False),
        "original": Candidate(f"{name} original", original(False)),
        "original-cl": Candidate(f"{name} original-cl", original(True)),
    }
    return [table[v] for v in variants]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fcvit_tiny")
    p.add_argument("--compare", default="convnext_atto,poolformer_s12")
    p.add_argument("--variants", default="fast,plain,original,original-cl",
                   help="which FCViT implementations to include (fast, plain, original, original-cl)")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json")
    args = p.parse_args()

    peers = [n for n in args.compare.split(",") if n]
    candidates = [timm_candidate(n) for n in peers] + fcvit_candidates(args.model, args.variants.split(","))
    results = run_benchmark(
        candidates, mode=args.mode, batch_size=args.batch_size, img_size=args.img_size,
        compile_model=args.compile, warmup=args.warmup, iters=args.iters, rounds=args.rounds,
        threads=args.threads, peer=peers[0] if peers else None, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"# {args.mode}, batch {args.batch_size}, {args.img_size}px, fp32, "
          f"{'torch.compile' if args.compile else 'eager'}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds x {args.iters} steps")
    print(format_table(results))
    if args.json:
        payload = dict(command="python " + " ".join(sys.argv), torch=torch.__version__,
                       results=[r.to_dict() for r in results])
        with open(args.json + ".tmp", "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
