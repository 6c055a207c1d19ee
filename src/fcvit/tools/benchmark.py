"""Throughput of FCViT against timm peers: inference or training steps, interleaved in one process.

Timings on a shared or throttling machine drift; measuring every model in turn, round after round,
in the same process and reporting medians and ratios to a peer measured the same way keeps the
comparison fair where absolute numbers are not. ``fcvit benchmark`` is the command line of
:func:`run_benchmark`.
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
from typing import Callable, Dict, Iterator, List, Optional, Sequence
from unittest import mock

import torch
from torch import nn

from ..engine.distributed import resolve_device
from ..errors import UserError
from ..ops import depthwise, mixers, set_fused_ops
from .profile import count_gmacs, count_params

__all__ = ["BenchmarkResult", "Candidate", "timm_candidate", "run_benchmark", "format_table"]

MODES = ("infer", "train")


@dataclass
class Candidate:
    """A model to measure: a label and how to build it (called once, before the rounds).

    ``fast_paths`` builds the model with FCViT's fast paths (:mod:`fcvit.ops`) on or off (``None``:
    as the switch stands; off, every module runs the plain ops); ``cpu_shortcuts=False`` runs it
    without the CPU batch slices and the faster depth-wise weight gradient, the tuning constants of
    :mod:`fcvit.ops` patched while it runs, which is how the benchmarks show what they are worth.
    """

    label: str
    build: Callable[[], nn.Module]
    fast_paths: Optional[bool] = None
    cpu_shortcuts: Optional[bool] = None


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
    """One candidate ready to run: model on the device, fixed inputs, and a ``step`` closure."""

    def __init__(self, candidate: Candidate, mode: str, batch_size: int, img_size: int, device: torch.device,
                 amp: bool, channels_last: bool, compile_model: bool, num_classes: int) -> None:
        self.candidate = candidate
        self.device = device
        model = _build(candidate).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.module = model
        self.params = count_params(model)
        self.gmacs = count_gmacs(model, (3, img_size, img_size))
        self.inputs = torch.randn(batch_size, 3, img_size, img_size, device=device)
        if channels_last:
            self.inputs = self.inputs.contiguous(memory_format=torch.channels_last)
        self.targets = torch.randint(0, num_classes, (batch_size,), device=device)
        self.model = torch.compile(model) if compile_model else model
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        self.mode = mode
        if mode == "train":
            model.train()
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            self.loss_fn = nn.CrossEntropyLoss()
        else:
            model.eval()

    def step(self) -> None:
        with _cpu_shortcuts_setting(self.candidate.cpu_shortcuts):
            if self.mode == "infer":
                with torch.inference_mode(), self.autocast():
                    self.model(self.inputs)
            else:
                self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    loss = self.loss_fn(self.model(self.inputs), self.targets)
                loss.backward()
                self.optimizer.step()

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
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines()
                    if line.strip() and not _PROFILER_NOISE.search(line)]
    for line in kept:
        print(line, file=sys.stderr)


def _cpu_peak_memory_mb(step: Callable[[], None]) -> Optional[float]:
    """Peak of the CPU allocator's running total during ``step``, read from the profiler's memory events.

    The profiler is the one CPU allocator statistic PyTorch offers; its native trace lines are kept
    from the output (:func:`_quiet_native_output`).
    """
    from torch.profiler import ProfilerActivity, profile

    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        with _quiet_native_output():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
            prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    if not totals:
        return None
    return max(0, max(totals)) / 2 ** 20


def run_benchmark(
        candidates: Sequence[Candidate],
        mode: str = "infer",
        batch_size: int = 16,
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
    """Time every candidate round-robin: ``rounds`` rounds of ``iters`` steps each, after ``warmup`` steps.

    The starting candidate rotates from round to round so that none always runs first. The result
    of each candidate is the median step time over the rounds; ``ratio`` is its images/s divided by
    the images/s of ``peer`` (a label among the candidates).
    """
    if mode not in MODES:
        raise UserError(f"Unknown mode '{mode}': use infer or train.")
    if not candidates:
        raise UserError("Nothing to benchmark: give at least one model.")
    if min(batch_size, img_size, iters, rounds) < 1 or warmup < 0:
        raise UserError("Batch size, image size, iterations and rounds must be positive (warm-up >= 0).")
    labels = [c.label for c in candidates]
    if len(set(labels)) != len(labels):
        raise UserError(f"Each model may appear once, got {', '.join(labels)}.")
    if peer is not None and peer not in labels:
        raise UserError(f"The peer '{peer}' is not among the measured models ({', '.join(labels)}).")
    torch_device = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    log = log or (lambda msg: None)

    runners: List[_Runner] = []
    compile_times: Dict[str, Optional[float]] = {}
    for c in candidates:
        runner = _Runner(c, mode, batch_size, img_size, torch_device, amp, channels_last, compile_model, num_classes)
        start = time.perf_counter()
        for _ in range(max(warmup, 1 if compile_model else 0)):
            runner.step()
        _synchronize(torch_device)
        compile_times[c.label] = time.perf_counter() - start if compile_model else None
        log(f"ready: {c.label} ({runner.params / 1e6:.2f}M params, {runner.gmacs:.2f} GMACs)")
        runners.append(runner)

    times: Dict[str, List[float]] = {r.candidate.label: [] for r in runners}
    for round_idx in range(rounds):
        shift = round_idx % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            times[runner.candidate.label].append(runner.time_steps(iters) * 1000)
        log(f"round {round_idx + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in times.items()))

    results = []
    for runner in runners:
        label = runner.candidate.label
        step_ms = statistics.median(times[label])
        results.append(BenchmarkResult(
            model=label, mode=mode, device=torch_device.type, batch_size=batch_size, img_size=img_size, amp=amp,
            channels_last=channels_last, compiled=compile_model, params=runner.params,
            gmacs=round(runner.gmacs, 3), step_ms=round(step_ms, 2), step_ms_best=round(min(times[label]), 2),
            images_per_s=round(batch_size / step_ms * 1000, 2),
            peak_memory_mb=None if not measure_memory else _round(runner.peak_memory_mb()),
            step_ms_rounds=[round(t, 2) for t in times[label]], compile_s=_round(compile_times[label]),
        ))
    if peer is not None:
        base = next(r for r in results if r.model == peer)
        for r in results:
            r.peer = peer
            r.ratio = round(r.images_per_s / base.images_per_s, 3)
            r.ratio_best = round(base.step_ms_best / r.step_ms_best, 3)
    return results


def _round(value: Optional[float], digits: int = 1) -> Optional[float]:
    return None if value is None else round(value, digits)


def format_table(results: Sequence[BenchmarkResult]) -> str:
    """A Markdown table of the results."""
    if not results:
        return ""
    peer = results[0].peer
    header = ["model", "mode", "images/s", "ms/step", f"ratio to {peer}" if peer else "ratio",
              "ratio (best rounds)", "peak MB", "params (M)", "GMACs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        lines.append("| " + " | ".join([
            r.model, r.mode, f"{r.images_per_s:.1f}", f"{r.step_ms:.1f}",
            "-" if r.ratio is None else f"{r.ratio:.3f}",
            "-" if r.ratio_best is None else f"{r.ratio_best:.3f}",
            "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}",
            f"{r.params / 1e6:.2f}", f"{r.gmacs:.2f}",
        ]) + " |")
    return "\n".join(lines)
