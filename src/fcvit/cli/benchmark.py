"""``fcvit benchmark``: images/s of FCViT models and timm peers, measured interleaved in one process."""
from __future__ import annotations

import argparse

from .options import add_device, add_overwrite, non_negative_int, positive_int


def positive_ints(text: str) -> list:
    """A comma-separated list of positive whole numbers (``1,16``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers separated by commas, got {text!r}")
    return list(dict.fromkeys(values))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "benchmark", help="images/s, ms/step, memory of models against timm peers",
        description="Measure inference or training throughput of FCViT models and timm peers, round-robin in "
                    "one process (warm-up, several rounds, median), with the ratio to the first peer, in PyTorch "
                    "eager, torch.compile (inductor's defaults, or frozen weights for CPU inference) or ONNX "
                    "Runtime on the file fcvit export writes.")
    p.add_argument("--model", default="fcvit_tiny", help="comma-separated models (default fcvit_tiny)")
    p.add_argument("--compare", default="convnext_atto",
                   help="comma-separated timm peers; ratios are to the first (default convnext_atto; '' for none)")
    p.add_argument("--mode", choices=["infer", "train"], default="infer",
                   help="infer (default): eval forward in inference mode; train: forward, cross-entropy, backward, AdamW")
    p.add_argument("-b", "--batch-size", type=positive_ints, default=[16],
                   help="batch size, or several comma-separated (1,16), each measured round-robin (default 16)")
    p.add_argument("--runtime", default=None,
                   help="comma-separated runtimes, one table: eager, compile (= compile-default and compile-frozen: "
                        "inductor's defaults, and its CPU inference mode with frozen weights), compile-default, "
                        "compile-frozen, onnxruntime (CPU, the file fcvit export --format onnx writes); "
                        "default eager")
    p.add_argument("--img-size", type=positive_int, default=224, help="input side (default 224)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs for all models")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model, inductor's defaults (the spelling of --runtime compile-default "
                        "before --runtime)")
    add_device(p)
    p.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="warm-up steps per model (default 2)")
    p.add_argument("--iters", type=positive_int, default=3, help="timed steps per model per round (default 3)")
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds; the median is reported (default 5)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", nargs="?", const=True, default=False, metavar="PATH",
                   help="print the results as JSON (--json PATH, the old spelling, writes them like --results-file)")
    p.add_argument("--results-file", default="", metavar="PATH", help="also write the results as JSON to PATH")
    add_overwrite(p, "an existing --results-file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import sys
    from dataclasses import replace

    from ..engine import resolve_device
    from ..errors import UserError
    from ..files import check_outputs, json_text, write_json
    from ..tools.benchmark import format_table, parse_runtimes, run_benchmark, timm_candidate

    if isinstance(args.json, str):  # --json PATH: the spelling of earlier versions
        if args.results_file:
            raise UserError("--json PATH and --results-file both name a file: keep --results-file.")
        args.results_file, args.json = args.json, False
    if args.results_file:
        check_outputs([args.results_file], [], args.overwrite, "choose another --results-file")
    args.device = str(resolve_device(args.device))
    models, compare = ([n.strip() for n in text.split(",") if n.strip()] for text in (args.model, args.compare))
    if not models:
        raise UserError("--model is empty: name at least one model, e.g. --model fcvit_tiny.")
    if args.compile and args.runtime:
        raise UserError("--compile is the older spelling of --runtime compile-default: give --runtime alone.")
    runtimes = parse_runtimes(args.runtime) if args.runtime else ["compile-default" if args.compile else "eager"]
    names = [p for p in compare if p not in models] + models
    candidates = [replace(timm_candidate(n), runtime=r) for r in runtimes for n in names]
    results = run_benchmark(
        candidates, mode=args.mode, batch_size=args.batch_size, img_size=args.img_size, device=args.device,
        amp=args.amp, channels_last=args.channels_last, warmup=args.warmup,
        iters=args.iters, rounds=args.rounds, threads=args.threads, peer=compare[0] if compare else None,
        measure_memory=not args.no_memory, log=logging.getLogger("fcvit.benchmark").info)
    import torch

    from ..engine.allocator import keep_freed_memory

    allocator = ("freed memory kept (glibc thresholds raised; FCVIT_KEEP_FREED_MEMORY=0 turns it off)"
                 if keep_freed_memory() else "C library defaults (FCVIT_KEEP_FREED_MEMORY=0 or not glibc)")
    payload = dict(command=" ".join(["fcvit"] + sys.argv[1:]), torch=torch.__version__, allocator=allocator,
                   runtimes=runtimes, results=[r.to_dict() for r in results])
    if "onnxruntime" in runtimes:
        import onnxruntime

        payload["onnxruntime"] = onnxruntime.__version__
    if args.json:
        print(json_text(payload))
        return 0
    batches = " and ".join(str(b) for b in args.batch_size)
    print(f"# {args.mode}, batch {batches}, {args.img_size}px, {args.device}, "
          f"{'bf16 autocast' if args.amp else 'fp32'}, {', '.join(runtimes)}, "
          f"{'channels-last' if args.channels_last else 'default memory format'}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds x {args.iters} steps")
    print(f"# allocator: {allocator}")
    if "onnxruntime" in runtimes:
        print(f"# onnxruntime {payload['onnxruntime']}: CPU provider, {torch.get_num_threads()} intra-op threads, "
              f"spin-waiting off, the files fcvit export --format onnx writes")
    print(format_table(results))
    if args.results_file:
        try:
            write_json(args.results_file, payload)
        except OSError as exc:
            raise UserError(f"Cannot write {args.results_file} ({exc.strerror}): choose a writable path for "
                            "--results-file.") from exc
    return 0
