"""Throughput of FCViT against timm peers: inference or training steps, interleaved in one process.

Timings on a shared or throttling machine drift; measuring every model in turn, round after round, and
reporting medians and ratios to a peer measured the same way keeps the comparison fair where absolute
numbers are not. Each candidate runs in one of :data:`RUNTIMES` (issue 22): PyTorch eager, ``torch.compile``
(inductor's defaults, or its CPU inference mode with frozen weights) or ONNX Runtime (CPU) on the file
``fcvit export --format onnx`` writes, each on a model instance of its own: torch.compile shares compiled
graphs between instances of one class, and a frozen graph holds its instance's weights.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union
from unittest import mock

import torch
from torch import nn

from ..engine.distributed import resolve_device
from ..errors import UserError
from ..ops import depthwise, mixers, set_fused_ops
from .profile import count_gmacs, count_params

__all__ = ["BenchmarkResult", "Candidate", "timm_candidate", "run_benchmark", "format_table", "RUNTIMES",
           "parse_runtimes"]

MODES = ("infer", "train")
RUNTIMES = ("eager", "compile-default", "compile-frozen", "onnxruntime")
_RUNTIME_ALIASES = {"compile": ("compile-default", "compile-frozen"), "ort": ("onnxruntime",)}


@dataclass
class Candidate:
    """A model to measure: a label and how to build it (called once, before the rounds). ``fast_paths``
    builds it with :mod:`fcvit.ops`' fast paths on or off (``None``: as the switch stands);
    ``cpu_shortcuts=False`` runs it without the CPU batch slices and the faster depth-wise weight gradient."""

    label: str
    build: Callable[[], nn.Module]
    fast_paths: Optional[bool] = None
    cpu_shortcuts: Optional[bool] = None
    runtime: str = "eager"  # one of RUNTIMES


def parse_runtimes(text: str) -> List[str]:
    """Comma-separated runtimes in order, ``compile`` standing for both compiled ones."""
    out: List[str] = []
    for word in filter(None, (w.strip() for w in text.split(","))):
        for name in _RUNTIME_ALIASES.get(word, (word,)):
            if name not in RUNTIMES:
                raise UserError(f"Unknown runtime '{word}': choose from eager, compile (both of compile-default "
                                "and compile-frozen), compile-default, compile-frozen, onnxruntime.")
            if name not in out:
                out.append(name)
    if not out:
        raise UserError("--runtime is empty: name at least one, e.g. --runtime eager,onnxruntime.")
    return out


@dataclass
class BenchmarkResult:
    model: str
    mode: str
    device: str
    batch_size: int
    img_size: int
    amp: bool
    channels_last: bool
    compiled: bool
    params: int
    gmacs: float  # forward pass, one image
    step_ms: float  # median over rounds
    step_ms_best: float  # fastest round: the least disturbed one on a shared machine
    images_per_s: float
    peak_memory_mb: Optional[float]  # allocated during one step, beyond what was allocated before it
    step_ms_rounds: List[float] = field(default_factory=list)
    compile_s: Optional[float] = None
    ratio: Optional[float] = None  # images/s relative to `peer`, from the medians
    ratio_best: Optional[float] = None  # the same from the fastest rounds
    peer: Optional[str] = None
    runtime: str = "eager"
    vs_eager: Optional[float] = None  # images/s relative to the same model in eager, same batch size
    max_diff: Optional[float] = None  # largest |output - eager output| of this runtime on the benchmark input

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def timm_candidate(name: str, num_classes: int = 1000) -> Candidate:
    """Any timm model by name (FCViT models register on ``import fcvit``)."""
    import timm

    from ..models.factory import check_model_name

    check_model_name(name, allow_timm=True)
    return Candidate(name, lambda: timm.create_model(name, num_classes=num_classes))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(candidate: Candidate) -> nn.Module:
    """The candidate's model, built with the fast paths as it asks (modules read the switch when built)."""
    if candidate.fast_paths is None:
        return candidate.build()
    previous = set_fused_ops(candidate.fast_paths)
    try:
        return candidate.build()
    finally:
        set_fused_ops(previous)


@contextlib.contextmanager
def _cpu_shortcuts_setting(value: Optional[bool]) -> Iterator[None]:
    if value is None or value:
        yield
        return
    with mock.patch.dict(mixers.CPU_SLICE_BYTES, grad=0, no_grad=0, mlp=0), \
            mock.patch.object(depthwise, "_pick_method", lambda x: "native"):
        yield


class _Runner:
    """One candidate ready to run: its model (kept across batch sizes, as is its ONNX file) on the device,
    fixed inputs, and a ``step``."""

    def __init__(self, candidate: Candidate, model: nn.Module, onnx_path: str, mode: str, batch_size: int,
                 img_size: int, device: torch.device, amp: bool, channels_last: bool, compile_model: bool,
                 num_classes: int) -> None:
        self.candidate, self.device, self.mode = candidate, device, mode
        self.runtime = "compile-default" if compile_model and candidate.runtime == "eager" else candidate.runtime
        layout = torch.channels_last if channels_last else torch.preserve_format
        self.module = model = model.to(device, memory_format=layout)
        self.params = count_params(model)
        self.gmacs = count_gmacs(model, (3, img_size, img_size))
        self.inputs = torch.randn(batch_size, 3, img_size, img_size, device=device).to(memory_format=layout)
        self.targets = torch.randint(0, num_classes, (batch_size,), device=device)
        self.frozen = self.runtime == "compile-frozen"
        model.train(mode == "train")
        self.session = None
        if self.runtime == "onnxruntime":
            if not os.path.exists(onnx_path):
                from .export import export_onnx

                export_onnx(model, onnx_path, img_size=img_size)
            self.session = _onnx_session(onnx_path)
            self.feed = {self.session.get_inputs()[0].name: self.inputs.detach().cpu().numpy()}
        # a distinct backend for frozen graphs: none shares the other's cache
        self.model = (torch.compile(model, dynamic=False, options={"freezing": True} if self.frozen else None)
                      if self.runtime.startswith("compile") else model)
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        if mode == "train":
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            self.loss_fn = nn.CrossEntropyLoss()

    @property
    def name(self) -> str:
        return self.candidate.label if self.runtime == "eager" else f"{self.candidate.label} ({self.runtime})"

    def _forward(self):
        if self.session is not None:
            return self.session.run(None, self.feed)[0]
        if self.frozen:  # read when dynamo traces (weights as constants) and when inductor compiles
            import torch._inductor.config as inductor_config

            with inductor_config.patch(freezing=True):
                return self.model(self.inputs)
        return self.model(self.inputs)

    def step(self) -> None:
        with _cpu_shortcuts_setting(self.candidate.cpu_shortcuts):
            if self.mode == "infer":
                with torch.inference_mode(), self.autocast():
                    self._forward()
            else:
                self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    loss = self.loss_fn(self.model(self.inputs), self.targets)
                loss.backward()
                self.optimizer.step()

    def max_diff(self) -> Optional[float]:
        """Largest difference between this runtime's output and the model's eager output (inference, not eager)."""
        if self.mode != "infer" or self.runtime == "eager":
            return None
        with _cpu_shortcuts_setting(self.candidate.cpu_shortcuts), torch.inference_mode(), self.autocast():
            out = torch.as_tensor(self._forward()).to(self.device)
            expected = self.module(self.inputs)
        return float((out.float() - expected.float()).abs().max())

    def time_steps(self, iters: int) -> float:
        """Seconds per step over ``iters`` consecutive steps."""
        _synchronize(self.device)
        start = time.perf_counter()
        for _ in range(iters):
            self.step()
        _synchronize(self.device)
        return (time.perf_counter() - start) / iters

    def peak_memory_mb(self) -> Optional[float]:
        """Memory allocated by one step at its peak, beyond what was allocated before the step."""
        if self.device.type == "cuda":
            _synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            _synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - before) / 2 ** 20
        return _cpu_peak_memory_mb(self.step)


# what the profiler's C++ side prints on its own (kineto's USDT trace points, allocator notes, its CUDA probe)
_PROFILER_NOISE = re.compile(
    r"USDT:|profiler_(start|stop)|ActivityProfiler|Memory block of unknown size|gpuGetDeviceCount|"
    r"DeviceProperties\.cpp")


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Capture what native code writes to stdout/stderr (file descriptors 1 and 2) meanwhile; pass on
    every line except the profiler's own chatter, so a benchmark's output stays a table."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(fd) for fd in (1, 2)]
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines()
                    if line.strip() and not _PROFILER_NOISE.search(line)]
    for line in kept:
        print(line, file=sys.stderr)


def _cpu_peak_memory_mb(step: Callable[[], None]) -> Optional[float]:
    """Peak of the CPU allocator's running total during ``step``, from the profiler's memory events (the one
    CPU allocator statistic PyTorch offers)."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        with _quiet_native_output():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
            prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    return max(0, max(totals)) / 2 ** 20 if totals else None


def _onnx_session(path: str):
    """An ONNX Runtime CPU session with PyTorch's thread count and no spin-waiting, which on a shared machine
    takes the cores the next model needs."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UserError("--runtime onnxruntime needs onnxruntime: pip install onnxruntime onnx.") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _check_runtimes(candidates: Sequence[Candidate], mode: str, device: torch.device, amp: bool) -> None:
    runtimes = {c.runtime for c in candidates}
    unknown = runtimes - set(RUNTIMES)
    if unknown:
        raise UserError(f"Unknown runtime '{sorted(unknown)[0]}': choose from {', '.join(RUNTIMES)}.")
    if mode == "train" and runtimes & {"compile-frozen", "onnxruntime"}:
        raise UserError("compile-frozen and onnxruntime are inference runtimes: use --mode infer, or eager and "
                        "compile-default for training.")
    if "onnxruntime" in runtimes and (device.type != "cpu" or amp):
        raise UserError("--runtime onnxruntime measures ONNX Runtime's CPU provider in fp32: use --device cpu "
                        "without --amp.")


def run_benchmark(
        candidates: Sequence[Candidate],
        mode: str = "infer",
        batch_size: Union[int, Sequence[int]] = 16,
        img_size: int = 224,
        device: str = "cpu",
        amp: bool = False,
        channels_last: bool = False,
        compile_model: bool = False,
        warmup: int = 2,
        iters: int = 3,
        rounds: int = 5,
        threads: Optional[int] = None,
        peer: Optional[str] = None,
        measure_memory: bool = True,
        num_classes: int = 1000,
        log: Optional[Callable[[str], None]] = None,
) -> List[BenchmarkResult]:
    """Time every candidate round-robin: ``rounds`` rounds of ``iters`` steps each, after ``warmup`` steps,
    the first candidate rotating. Results are median step times; ``ratio`` divides images/s by ``peer``'s (a
    label) in the same runtime and batch size, ``vs_eager`` by the same model's eager run. Several batch
    sizes run one after the other, each round-robin of its own, with the same model instances."""
    if mode not in MODES:
        raise UserError(f"Unknown mode '{mode}': use infer or train.")
    if not candidates:
        raise UserError("Nothing to benchmark: give at least one model.")
    sizes = [batch_size] if isinstance(batch_size, int) else list(batch_size)
    if not sizes or min(sizes + [img_size, iters, rounds]) < 1 or warmup < 0:
        raise UserError("Batch size, image size, iterations and rounds must be positive (warm-up >= 0).")
    labels = [c.label for c in candidates]
    keys = [(c.label, c.runtime) for c in candidates]
    if len(set(keys)) != len(keys):
        raise UserError(f"Each model may appear once per runtime, got {', '.join(labels)}.")
    if peer is not None and peer not in labels:
        raise UserError(f"The peer '{peer}' is not among the measured models ({', '.join(dict.fromkeys(labels))}).")
    torch_device = resolve_device(device)
    _check_runtimes(candidates, mode, torch_device, amp)
    if threads is not None:
        torch.set_num_threads(threads)
    log = log or (lambda msg: None)
    models: Dict[tuple, nn.Module] = {}  # one instance per candidate, kept across batch sizes
    results: List[BenchmarkResult] = []
    with tempfile.TemporaryDirectory(prefix="fcvit-benchmark-") as folder:
        for batch in dict.fromkeys(sizes):
            runners: List[_Runner] = []
            for i, c in enumerate(candidates):
                key = (c.label, c.runtime)
                if key not in models:
                    models[key] = _build(c)
                runners.append(_Runner(c, models[key], os.path.join(folder, f"{i}.onnx"), mode, batch, img_size,
                                       torch_device, amp, channels_last, compile_model, num_classes))
            results += _measure(runners, warmup, iters, rounds, measure_memory, log, mode=mode,
                                device=torch_device.type, batch_size=batch, img_size=img_size, amp=amp,
                                channels_last=channels_last)
    _set_ratios(results, peer)
    return results


def _measure(runners: List[_Runner], warmup: int, iters: int, rounds: int, measure_memory: bool,
             log: Callable[[str], None], **settings: Any) -> List[BenchmarkResult]:
    """Warm up, then time the runners round-robin (the first one rotating): one batch size's results,
    ``settings`` their common fields."""
    batch_size = settings["batch_size"]
    compile_times: Dict[str, Optional[float]] = {}
    for runner in runners:
        compiling = runner.runtime.startswith("compile")
        start = time.perf_counter()
        for _ in range(max(warmup, 1 if compiling else 0)):
            runner.step()
        _synchronize(runner.device)
        compile_times[runner.name] = time.perf_counter() - start if compiling else None
        log(f"ready: {runner.name}, batch {batch_size} ({runner.params / 1e6:.2f}M params, "
            f"{runner.gmacs:.2f} GMACs)")

    times: Dict[str, List[float]] = {r.name: [] for r in runners}
    for round_idx in range(rounds):
        shift = round_idx % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            times[runner.name].append(runner.time_steps(iters) * 1000)
        log(f"batch {batch_size}, round {round_idx + 1}/{rounds}: "
            + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in times.items()))

    results = []
    for runner in runners:
        name = runner.name
        step_ms = statistics.median(times[name])
        memory = measure_memory and runner.runtime != "onnxruntime"  # the profiler sees PyTorch's allocations only
        results.append(BenchmarkResult(
            model=runner.candidate.label, **settings, compiled=runner.runtime.startswith("compile"),
            params=runner.params, gmacs=round(runner.gmacs, 3), step_ms=round(step_ms, 2),
            step_ms_best=round(min(times[name]), 2), images_per_s=round(batch_size / step_ms * 1000, 2),
            peak_memory_mb=_round(runner.peak_memory_mb()) if memory else None,
            step_ms_rounds=[round(t, 2) for t in times[name]], compile_s=_round(compile_times[name]),
            runtime=runner.runtime, max_diff=runner.max_diff(),
        ))
    return results


def _set_ratios(results: List[BenchmarkResult], peer: Optional[str]) -> None:
    """Ratios to the peer in the same runtime and batch size, and to the same model's eager run."""
    by_key = {(r.model, r.runtime, r.batch_size): r for r in results}
    for r in results:
        eager = by_key.get((r.model, "eager", r.batch_size))
        if eager is not None and r.runtime != "eager":
            r.vs_eager = round(r.images_per_s / eager.images_per_s, 3)
        base = by_key.get((peer, r.runtime, r.batch_size)) if peer is not None else None
        if base is not None:
            r.peer = peer
            r.ratio = round(r.images_per_s / base.images_per_s, 3)
            r.ratio_best = round(base.step_ms_best / r.step_ms_best, 3)


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def _cell(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: Sequence[BenchmarkResult]) -> str:
    """A Markdown table of the results; ratios are to the peer in the same runtime and batch size."""
    if not results:
        return ""
    peer = next((r.peer for r in results if r.peer), None)
    several = len({r.runtime for r in results}) > 1
    header = ["model", "mode", "runtime", "batch", "images/s", "ms/step",
              f"ratio to {peer}" if peer else "ratio", "ratio (best rounds)"]
    header += ["vs eager", "max diff to eager"] * several + ["peak MB", "params (M)", "GMACs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        row = [r.model, r.mode, r.runtime, str(r.batch_size), f"{r.images_per_s:.1f}", f"{r.step_ms:.1f}",
               _cell(r.ratio, ".3f"), _cell(r.ratio_best, ".3f")]
        if several:
            row += [_cell(r.vs_eager, ".3f"), _cell(r.max_diff, ".1e")]
        row += [_cell(r.peak_memory_mb, ".0f"), f"{r.params / 1e6:.2f}", f"{r.gmacs:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
