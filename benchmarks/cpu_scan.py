"""CPU latency of hrsam::selective_scan: the chunked torch reference against the compiled C kernel.

Times one Cycle-scan-sized call of hrsam_tiny at 1024 (batch 1, dim 192, N 32, L = 3 x 4096) and
a ViT-B-sized one (dim 768), float32, with 1 and 2 threads: the median (and best) wall time of
``--repeats`` calls after one warm-up call (the reference gets at most 3, it takes seconds). Also
reports the kernel's first build on a cold cache (compile + link + load) and, with ``--encoder``,
the whole hrsam_tiny encoder at 1024 under each backend (inference mode, random weights, one
warm-up, median (best) of 3). Prints a Markdown table headed by the CPU model, torch version and load average
(the development machines are shared: a busy neighbour shows up there).

    python benchmarks/cpu_scan.py [--repeats 7] [--encoder]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table  # noqa: E402
from hrsam.modeling.interactive import build_model  # noqa: E402
from hrsam.ops import use_backend  # noqa: E402
from hrsam.ops.selective_scan import cpu_backend, selective_scan  # noqa: E402

CASES = (("hrsam_tiny Cycle-scan at 1024", 192), ("ViT-B-sized", 768))
DSTATE = 32
SEQLEN = 3 * 4096
THREADS = (1, 2)
REFERENCE_REPEATS = 3


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, best) wall time of ``fn`` in milliseconds after one untimed warm-up call.

    The best is printed next to the median because the machines are shared: a neighbour's burst
    inflates the median, while the best shows what the code does on a quiet core.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def cell(times: tuple[float, float]) -> str:
    return f"{times[0]:.1f} ({times[1]:.1f})"


def scan_inputs(dim: int) -> tuple[torch.Tensor, ...]:
    """Cycle-scan-like float32 inputs: dt = softplus(delta + bias) of order 0.01..0.1, A = -(1..N)."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, dim, SEQLEN, generator=g)
    delta = torch.randn(1, dim, SEQLEN, generator=g) * 0.5
    A = -torch.arange(1, DSTATE + 1, dtype=torch.float32).repeat(dim, 1)
    B, C = torch.randn(2, 1, DSTATE, SEQLEN, generator=g)
    D = torch.ones(dim)
    bias = torch.log(torch.expm1(torch.empty(dim).uniform_(1e-3, 0.1, generator=g)))
    return u, delta, A, B, C, D, bias


def time_scan(backend: str, inputs: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, float]:
    with use_backend("selective_scan", backend):
        return timed_ms(lambda: selective_scan(*inputs), repeats)


def scan_rows(repeats: int) -> list[list[object]]:
    rows = []
    for label, dim in CASES:
        inputs = scan_inputs(dim)
        for threads in THREADS:
            torch.set_num_threads(threads)
            reference = time_scan("reference", inputs, min(repeats, REFERENCE_REPEATS))
            compiled = time_scan("cpu", inputs, repeats)
            rows.append([label, dim, DSTATE, SEQLEN, threads, cell(reference), cell(compiled),
                         f"{reference[0] / compiled[0]:.0f}x"])  # fmt: skip
    return rows


def encoder_rows() -> list[list[object]]:
    """The hrsam_tiny encoder at 1024 under each scan backend, per thread count."""
    encoder = build_model("hrsam_tiny").encoder.eval()
    image = torch.randn(1, 3, 1024, 1024)
    rows = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        for backend in ("reference", "cpu"):
            with torch.inference_mode(), use_backend("selective_scan", backend):
                times = timed_ms(lambda: encoder(image), 3)
            rows.append(["hrsam_tiny encoder, 1024", backend, threads, cell(times)])
    return rows


def cold_build_seconds() -> float:
    """Seconds to compile, link and load the kernel into an empty cache directory."""
    previous = os.environ.get("HRSAM_CACHE_DIR")
    with tempfile.TemporaryDirectory() as directory:
        os.environ["HRSAM_CACHE_DIR"] = directory
        cpu_backend.forget_library()
        try:
            start = time.perf_counter()
            reason = cpu_backend.unavailable_reason()
            seconds = time.perf_counter() - start
        finally:
            os.environ.pop("HRSAM_CACHE_DIR")
            if previous is not None:
                os.environ["HRSAM_CACHE_DIR"] = previous
            cpu_backend.forget_library()
    if reason is not None:
        raise SystemExit(f"the CPU kernel cannot be built here: {reason}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of the compiled kernel per case")
    parser.add_argument("--encoder", action="store_true", help="also time the hrsam_tiny encoder at 1024")
    args = parser.parse_args()
    build = cold_build_seconds()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; "
          f"threads {list(THREADS)}; load average {load}; kernel first build {build:.2f} s\n")  # fmt: skip
    header = ["case", "dim", "N", "L", "threads", "reference ms", "cpu ms", "speed-up (medians)"]
    print(markdown_table(header, scan_rows(args.repeats)))
    print("\nms: median (best) of the timed calls.")
    if args.encoder:
        print()
        print(markdown_table(["model", "scan backend", "threads", "ms"], encoder_rows()))
    print("\nms: median (best) of the timed calls.")


if __name__ == "__main__":
    main()
