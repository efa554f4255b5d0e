"""Correctness and latency of the Gluon scan experiment against the Triton kernel.

1. The achievable MUFU ex2 rate: a kernel that does nothing but independent exp2 chains in
   registers, timed against the SFU rate used for the exponential bound (is the bound reachable?).
2. Correctness against the float64 chunked reference on the single-pass experiment's awkward
   shapes and tolerances, for configurations that cover every code path timed below; stops if
   one fails.
3. Times (``triton.testing.do_bench`` medians: calls back to back with an L2 flush between, so
   host launch time is hidden) of the Triton kernel and the Gluon configurations at the issue's
   sizes, as multiples of the exponential bound.

``--once`` runs one configuration at L = 3 x 16384 float32 three times and exits (for Nsight
Compute). Run on the GPU machine: ``PYTHONPATH=. python benchmarks/gluon_scan/bench.py``.
"""

from __future__ import annotations

import argparse
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.testing import do_bench

from benchmarks.common import environment
from benchmarks.gluon_scan.kernel import GluonScanConfig, selective_scan_gluon
from benchmarks.selective_scan import make_inputs, sfu_ex2_rate
from benchmarks.single_pass_scan.bench import check_against_reference
from hrsam.ops.selective_scan.triton_kernel import selective_scan_triton

CONFIGS = [
    GluonScanConfig(),
    GluonScanConfig(maxnreg3=168),
    GluonScanConfig(maxnreg1=128, maxnreg3=168),
    GluonScanConfig(poly1=6, maxnreg3=168),
    GluonScanConfig(ch3=2, steps3=4),
    GluonScanConfig(maxnreg1=128, ch3=2, split3=2),
    GluonScanConfig(maxnreg1=128, ch3=4, split3=4, steps3=4),
]
# Every code path and register cap of CONFIGS (the polynomial exp2 in both passes, two channels
# per thread in both, lanes sharing a channel in both, the caps), so these sweeps cover what is timed.
CHECKED = [
    GluonScanConfig(),
    GluonScanConfig(poly1=6, poly3=4, maxnreg1=128, maxnreg3=168),
    GluonScanConfig(ch1=2, ch3=2, steps3=4),
    GluonScanConfig(ch1=2, split1=2, ch3=2, split3=2),
    GluonScanConfig(ch1=4, split1=4, steps1=4, ch3=4, split3=4, steps3=4),
]


@gluon.jit
def _ex2_chains(out_ptr, ITERS: gl.constexpr):
    """32 independent h = 2^(-0.999 h) chains per thread: one FMUL and one MUFU.EX2 per step."""
    layout: gl.constexpr = gl.BlockedLayout([1, 32], [32, 1], [1, 1], [1, 0])
    offs = gl.program_id(0) * 32 + gl.arange(0, 32, layout=gl.SliceLayout(1, layout))
    h = gl.zeros([32, 32], gl.float32, layout) + offs.to(gl.float32)[:, None] * 1e-6
    for _ in range(ITERS):
        h = gl.exp2(h * -0.999)
    gl.store(out_ptr + offs, gl.sum(h, axis=1))


def achieved_ex2_rate(warps_per_sm: int = 16, iters: int = 1024) -> float:
    """exp2 per second of ``_ex2_chains`` over the whole GPU."""
    programs = torch.cuda.get_device_properties(0).multi_processor_count * warps_per_sm
    out = torch.empty(programs * 32, device="cuda")
    ms = do_bench(lambda: _ex2_chains[(programs,)](out, ITERS=iters, num_warps=1), warmup=10, rep=50)
    return programs * 32 * 32 * iters / (ms * 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--once", help="a GluonScanConfig(...) expression to run alone")
    args = parser.parse_args()
    if args.once:
        config = eval(args.once, {"GluonScanConfig": GluonScanConfig})
        inputs = make_inputs(768, 32, 3 * 16384, 1, torch.float32)
        for _ in range(3):
            selective_scan_gluon(*inputs, True, config=config)
        torch.cuda.synchronize()
        return
    print(environment(), f"triton {triton.__version__}")
    ex2_per_s, mhz, clock_source = sfu_ex2_rate()
    achieved = achieved_ex2_rate()
    print(f"ex2 rate: bound {ex2_per_s / 1e12:.2f} T/s (16/clk/SM at {mhz:.0f} MHz, {clock_source}); "
          f"pure exp2 chains achieve {achieved / 1e12:.2f} T/s = {achieved / ex2_per_s:.2f} of it")
    if not check_against_reference(selective_scan_gluon, CHECKED):
        sys.exit("Gluon kernel disagrees with the reference")
    print("correct on all shapes, dtypes and configurations")
    time_configs(CONFIGS, ex2_per_s)


def time_configs(configs: list[GluonScanConfig], ex2_per_s: float) -> None:
    """Markdown rows: the Triton kernel and each configuration at both lengths and dtypes."""
    print("| L | dtype | kernel | ms | x exp bound |\n|---|---|---|---|---|")
    for seqlen in (3 * 4096, 3 * 16384):
        bound_ms = 768 * 32 * seqlen / ex2_per_s * 1e3
        for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            inputs = make_inputs(768, 32, seqlen, 1, dtype)
            rows = [("triton (chunked)", lambda x=inputs: selective_scan_triton(*x, True))]
            rows += [(str(c), lambda c=c, x=inputs: selective_scan_gluon(*x, True, config=c)) for c in configs]
            for name, fn in rows:
                ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                print(f"| {seqlen} | {dtype_name} | {name} | {ms:.3f} | {ms / bound_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
