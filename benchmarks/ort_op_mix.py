"""Where ONNX Runtime spends a forward, by kind of operator, for FCViT and a ConvNeXt peer side by side.

    python benchmarks/ort_op_mix.py --model fcvit_tiny --compare convnext_atto -b 16 --threads 2

Both models are exported as ``fcvit export --format onnx`` writes files (``fcvit.tools.export.export_onnx``) and
run by ONNX Runtime's CPU provider as ``fcvit benchmark --runtime onnxruntime`` runs them (all graph
optimisations, spinning off). The profiler's kernel times are summed per kind (1x1, depth-wise and other
convolutions, GELU, norms, NCHWc reorders, the rest), and each convolution's MACs come from its input and weight
shapes, so the table shows each kind's rate. docs/benchmarks.md ("Same kernels, same rates, a different mix")
reads it: both models get the same rate per kind; what differs is how much of their work is depth-wise.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import tempfile
from typing import Dict, Tuple

import numpy as np
import onnxruntime as ort
import timm

import fcvit  # noqa: F401  (registers the models)
from fcvit.tools.export import export_onnx


def conv_kind_and_macs(shapes: list, output_shape: list) -> Tuple[str, int]:
    """The kind of a Conv node and its multiply-adds, from its input, weight and output shapes."""
    (_, channels, _, _), (_, in_per_group, kh, kw) = shapes[0], shapes[1]
    kind = "depth-wise conv" if in_per_group == 1 and channels > 1 else ("1x1 conv" if kh == kw == 1 else "other conv")
    return kind, math.prod(output_shape) * in_per_group * kh * kw


def kind_of(op: str) -> str:
    if op in ("Gelu", "LayerNormalization"):
        return op
    return "NCHWc reorders" if op.startswith("Reorder") else "the rest"


def profile(path: str, batch: int, threads: int, runs: int) -> Dict[str, Tuple[float, int]]:
    """Milliseconds per forward and MACs per forward for each kind of operator."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(os.path.dirname(path), "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, 3, 224, 224), np.float32)}
    for _ in range(runs + 1):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    first = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm_up_end = first["ts"] + first["dur"]  # the first run is a warm-up: its kernels are left out
    events = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
              and e["ts"] > warm_up_end]
    time_us, macs = collections.Counter(), collections.Counter()
    for event in events:
        args = event["args"]
        shapes = [next(iter(d.values())) for d in args.get("input_type_shape", [])]
        if args["op_name"] == "Conv":
            output = next(iter(args["output_type_shape"][0].values()))
            kind, count = conv_kind_and_macs(shapes, output)
            macs[kind] += count
        else:
            kind = kind_of(args["op_name"])
        time_us[kind] += event["dur"]
    return {k: (time_us[k] / runs / 1000, macs[k] // runs) for k in time_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="fcvit_tiny")
    parser.add_argument("--compare", default="convnext_atto")
    parser.add_argument("-b", "--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tables = {}
        for name in (args.model, args.compare):
            path = os.path.join(folder, f"{name}.onnx")
            export_onnx(timm.create_model(name), path)
            tables[name] = profile(path, args.batch_size, args.threads, args.runs)
    print(f"| kind, per batch of {args.batch_size} | " + " | ".join(f"{n}: ms, share | GMAC/s" for n in tables) + " |")
    print("|---|" + "---|---|" * len(tables))
    kinds = sorted({k for t in tables.values() for k in t}, key=lambda k: -tables[args.model].get(k, (0, 0))[0])
    totals = {n: sum(ms for ms, _ in t.values()) for n, t in tables.items()}
    for kind in kinds + ["whole forward"]:
        cells = []
        for name, table in tables.items():
            if kind == "whole forward":
                ms, macs = totals[name], sum(m for _, m in table.values())
            else:
                ms, macs = table.get(kind, (0.0, 0))
            rate = f"{macs / ms / 1e6:.0f} on {macs / 1e9:.2f} GMAC" if macs else ""
            cells.append(f"{ms:.1f}, {100 * ms / totals[name]:.0f}% | {rate}")
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
