"""Helpers shared by the benchmark scripts: CUDA events, warm-up, median of N, the environment line, reports."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch


def cuda_median_ms(fn: Callable[[], object], warmup: int = 5, iters: int = 20) -> float:
    """Median wall time of ``fn`` on the current CUDA stream, in milliseconds.

    Each call is bracketed by its own pair of events so the median discards outliers
    (clock ramp-up, allocator growth) instead of averaging them in.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def environment() -> str:
    """One line naming the card and software, printed with every table."""
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return f"card: {card}; torch {torch.__version__}; CUDA {torch.version.cuda}; Python {platform.python_version()}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cuda_graph_median_ms(fn: Callable[[], object], warmup: int = 3, iters: int = 20) -> float:
    """Median time of replaying ``fn`` captured in a CUDA graph: the GPU work without launch overhead.

    Small layers are bound by Python and kernel launches in eager mode; a graph shows what the
    kernels themselves cost (what a TensorRT engine or torch.compile would approach).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return cuda_median_ms(graph.replay, warmup=warmup, iters=iters)


def attention_kernels(fn: Callable[[], object]) -> str:
    """Names of the attention-like kernels one call of ``fn`` launches (profiler), shortened.

    Why in a report: which SDPA kernel a compiled graph got depends on PyTorch's backend choice at
    compile time, and a wrong choice has cost the decoder 0.3 ms per click unnoticed (docs/BENCHMARKS.md).
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        fn()
        torch.cuda.synchronize()
    words = ("attention", "fmha", "flash", "sdpa")
    names = {e.name for e in profile.events() if any(word in e.name.lower() for word in words)}
    return "; ".join(sorted(name[:60] for name in names)) or "(none named as attention)"


def write_report(path: Path, text: str) -> None:
    """Write a benchmark's markdown to ``path`` (its folder made if missing) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
