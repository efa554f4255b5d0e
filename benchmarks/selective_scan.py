"""GPU latency of hrsam::selective_scan against its two lower bounds.

For each sequence length (default 3 x 4096 and 3 x 16384; dim 768, N 32, batch 1) and dtype it
times the Triton kernels, the chunked torch reference and mamba-ssm (when it loads), each the
median of repeated runs after warm-up (CUDA events), and reports:

- achieved bandwidth: bytes of the inputs read once plus the output written once, over the time;
- memory bound: those bytes at the device-to-device copy bandwidth measured here (a 1 GiB copy,
  counting bytes read and written);
- exponential bound: dim * N * L exponentials at the SFU (MUFU) rate, SMs x 16 ex2 per clock
  per SM (sm_80/sm_90) x the maximum SM clock read from nvidia-smi;
- the kernel's time as a multiple of the larger bound.

``--sweep`` also times a grid of Triton launch configurations (channels per program, warps,
target warps per SM) so the best one can be fixed in ``triton_kernel.DEFAULT_CONFIG`` (float32)
and ``DEFAULT_CONFIG_16BIT``.
Results go to stdout and, with ``--out``, to a JSON file and a Markdown table next to it.

Run on the GPU machine: ``PYTHONPATH=. python benchmarks/selective_scan.py --out scan.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch
import triton

from benchmarks.common import cuda_median_ms
from hrsam.ops.replay import replay_backward
from hrsam.ops.selective_scan import mamba_backend, selective_scan_backward
from hrsam.ops.selective_scan.reference import selective_scan_chunked
from hrsam.ops.selective_scan.triton_kernel import (
    DEFAULT_CONFIG,
    DEFAULT_CONFIG_16BIT,
    ScanConfig,
    selective_scan_triton,
)

MUFU_EX2_PER_CLOCK_PER_SM = 16  # CUDA C programming guide, throughput table, cc 8.x/9.0
FALLBACK_SM_CLOCK_MHZ = 1980.0  # H100/H200 SXM maximum boost, used when nvidia-smi cannot tell
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SWEEP = [
    ScanConfig(block_d, warps, warps_per_sm)
    for block_d, warps in ((32, 1), (64, 2), (128, 4))
    for warps_per_sm in (6, 12, 24, 48)
]


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written (1 GiB copy)."""
    src = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), warmup=3, iters=20)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def max_sm_clock_mhz() -> tuple[float, str]:
    """Maximum SM clock and where it came from."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout
        return float(out.split()[0]), "nvidia-smi clocks.max.sm"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return FALLBACK_SM_CLOCK_MHZ, "assumed (nvidia-smi unavailable)"


def sfu_ex2_rate() -> tuple[float, float, str]:
    """ex2 per second of device 0 (SMs x 16 per clock x maximum SM clock), the clock, its source."""
    clock_mhz, clock_source = max_sm_clock_mhz()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return sms * MUFU_EX2_PER_CLOCK_PER_SM * clock_mhz * 1e6, clock_mhz, clock_source


def make_inputs(dim: int, dstate: int, seqlen: int, batch: int, dtype: torch.dtype) -> tuple:
    """Inputs with the magnitudes of a Cycle-scan at initialisation (A = -(1..N), dt ~ 0.001..0.1)."""
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=gen)

    A = -torch.arange(1, dstate + 1, device="cuda", dtype=torch.float32).repeat(dim, 1)
    bias = torch.log(torch.expm1(torch.full((dim,), 0.01, device="cuda")))
    return (
        randn(batch, dim, seqlen).to(dtype), randn(batch, dim, seqlen).to(dtype), A,
        randn(batch, dstate, seqlen).to(dtype), randn(batch, dstate, seqlen).to(dtype),
        torch.ones(dim, device="cuda"), bias,
    )


def io_bytes(inputs: tuple) -> int:
    """Bytes read once (all inputs) plus the output written once (u's shape and dtype)."""
    return sum(t.numel() * t.element_size() for t in inputs) + inputs[0].numel() * inputs[0].element_size()


def backends(inputs: tuple) -> dict[str, tuple[Callable[[], object], int, int]]:
    """name -> (call, warm-up runs, timed runs)."""
    found = {
        "triton": (lambda: selective_scan_triton(*inputs, True), 10, 50),
        "reference": (lambda: selective_scan_chunked(*inputs, True), 1, 3),
    }
    if mamba_backend.unavailable_reason() is None:
        found["mamba_ssm"] = (lambda: mamba_backend.forward(*inputs, True), 10, 50)
    return found


def backward_ms(inputs: tuple) -> dict[str, float]:
    """Backward alone, all seven gradients: the operator's (mamba-ssm, else Triton) and the reference's.

    "reference" is autograd through the checkpointed chunked reference, the backward every CUDA
    training step paid before the Triton backward existed.
    """
    grad = torch.randn_like(inputs[0])
    needs = (True,) * 7
    return {
        "backward": cuda_median_ms(lambda: selective_scan_backward(grad, inputs, True, needs), warmup=3, iters=10),
        "backward reference": cuda_median_ms(
            lambda: replay_backward(lambda *t: selective_scan_chunked(*t, True), grad, inputs, needs),
            warmup=1, iters=3,
        ),
    }


def bench_shape(
    args: argparse.Namespace, seqlen: int, dtype_name: str, bandwidth: float, mufu: float
) -> tuple[list[dict], list[dict]]:
    """Rows for one (L, dtype): every backend, the backward, and the sweep when asked."""
    inputs = make_inputs(args.dim, args.dstate, seqlen, args.batch, DTYPES[dtype_name])
    nbytes = io_bytes(inputs)
    exps = args.batch * args.dim * args.dstate * seqlen
    bound_ms = max(nbytes / bandwidth, exps / mufu) * 1e3
    shape = {"L": seqlen, "dtype": dtype_name, "bytes": nbytes, "exps": exps,
             "memory_bound_ms": nbytes / bandwidth * 1e3, "exp_bound_ms": exps / mufu * 1e3}
    rows, sweep_rows = [], []
    for name, (fn, warmup, reps) in backends(inputs).items():
        if name == "reference" and args.skip_reference:
            continue
        ms = cuda_median_ms(fn, warmup=warmup, iters=reps)
        rows.append({**shape, "backend": name, "ms": ms, "GB_per_s": nbytes / ms / 1e6, "x_bound": ms / bound_ms})
        print(f"L={seqlen:6d} {dtype_name:9s} {name:10s} {ms:9.3f} ms  "
              f"{nbytes / ms / 1e6:7.1f} GB/s  {ms / bound_ms:5.2f} x bound ({bound_ms:.3f} ms)")
    for name, ms in (backward_ms(inputs) if args.backward else {}).items():
        rows.append({**shape, "backend": name, "ms": ms, "GB_per_s": None, "x_bound": None})
        print(f"L={seqlen:6d} {dtype_name:9s} {name:10s} {ms:9.3f} ms")
    for config in SWEEP if args.sweep else []:
        try:
            ms = cuda_median_ms(lambda c=config: selective_scan_triton(*inputs, True, config=c), warmup=5, iters=30)
        except Exception as error:  # one failing configuration must not end the sweep
            print(f"  sweep {config}: failed: {type(error).__name__}: {error}")
            continue
        sweep_rows.append({**shape, "config": vars(config), "ms": ms, "x_bound": ms / bound_ms})
        print(f"  sweep {config}: {ms:.3f} ms ({ms / bound_ms:.2f} x bound)")
    return rows, sweep_rows


def run(args: argparse.Namespace) -> dict:
    """Device facts, then every (L, dtype) row; the report that --out stores."""
    props = torch.cuda.get_device_properties(0)
    mufu, clock_mhz, clock_source = sfu_ex2_rate()
    bandwidth = copy_bandwidth()
    info = {
        "card": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
        "sms": props.multi_processor_count, "sm_clock_mhz": clock_mhz, "clock_source": clock_source,
        "mufu_ex2_per_s": mufu, "copy_bandwidth_bytes_per_s": bandwidth,
        "mamba_ssm": mamba_backend.unavailable_reason() or "available",
        "default_config": {"float32": vars(DEFAULT_CONFIG), "16-bit": vars(DEFAULT_CONFIG_16BIT)},
    }
    print(json.dumps(info, indent=1))
    rows, sweep_rows = [], []
    for seqlen in args.lengths:
        for dtype_name in args.dtypes:
            shape_rows, shape_sweep = bench_shape(args, seqlen, dtype_name, bandwidth, mufu)
            rows += shape_rows
            sweep_rows += shape_sweep
            torch.cuda.empty_cache()
    return {"device": info, "results": rows, "sweep": sweep_rows}


def markdown(report: dict) -> str:
    """The results as the Markdown table kept in docs/BENCHMARKS.md."""
    info = report["device"]
    lines = [
        f"Card: {info['card']} ({info['sms']} SMs, max SM clock {info['sm_clock_mhz']:.0f} MHz from "
        f"{info['clock_source']}); torch {info['torch']}, triton {info['triton']}; mamba-ssm: "
        f"{info['mamba_ssm']}.",
        f"Copy bandwidth measured {info['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (read + write); "
        f"SFU rate {info['mufu_ex2_per_s'] / 1e12:.2f} T ex2/s (SMs x 16 x clock).",
        "",
        "| L | dtype | backend | time (ms) | achieved GB/s | memory bound (ms) | exp bound (ms) | x bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        rate = "" if row["GB_per_s"] is None else f"{row['GB_per_s']:.0f}"
        ratio = "" if row["x_bound"] is None else f"{row['x_bound']:.2f}"
        lines.append(
            f"| {row['L']} | {row['dtype']} | {row['backend']} | {row['ms']:.3f} | {rate} | "
            f"{row['memory_bound_ms']:.3f} | {row['exp_bound_ms']:.3f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[3 * 4096, 3 * 16384])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dstate", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sweep", action="store_true", help="also time the Triton launch-config grid")
    parser.add_argument("--backward", action="store_true", help="also time the operator's backward")
    parser.add_argument("--skip-reference", action="store_true", help="do not time the torch reference")
    parser.add_argument("--out", type=Path, help="write JSON here and Markdown next to it (.md)")
    args = parser.parse_args()
    report = run(args)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
