"""The Cycle-scan's scan: tiled (R L steps, the model's form without the kernel) vs ``hrsam::cycle_scan``.

    PYTHONPATH=. python benchmarks/cycle_scan.py --encoder --out cycle.md   # a CPU
    PYTHONPATH=. python benchmarks/cycle_scan.py --device cuda --out c.md   # the GPU machine

Per case, batch 1, N 32, R 3, float32 (the Cycle-scan always scans float32): the tiled form as
``CycleScan`` computes it without the kernel (``selective_scan`` on the repeated inputs, then the
weighted sum of the copies) against ``cycle_scan``, and the difference of the two outputs relative
to max |tiled|.

- CPU (default): the C kernel both ways; hrsam_tiny's width (192) at 512 and 1024 input and
  ViT-B's (768) at 1024; wall-clock median (best) of ``--repeats`` calls after a warm-up, with
  ``torch.get_num_threads()`` threads. ``--encoder`` adds the whole hrsam_tiny encoder at 1024 in
  eager inference with the kernel and with the tiled scan.
- CUDA (``--device cuda``): our Triton backend against ``triton_cycle``; ViT-B's width at HRSAM's
  token counts (1024 input 4096, 2048 input 16384, HRSAM++'s multi-scale sequence at 2048 16384 +
  1024 and its 512 anchor 1024); CUDA-graph medians of ``--repeats``.
- ``--sweep`` (CUDA): ``triton_cycle``'s launch configuration (``ScanConfig``: warps aimed at per
  SM, which sets the chunk count; time steps per tile; warps per program) at the same cases, each
  against the default the kernels were tuned with for the tiled scan's 3x longer sequences.
- ``--layouts`` (CUDA): ``cycle_scan`` per case on the inputs as the model passed them before the
  kernels read in place (u, delta contiguous float32 [batch, dim, L], B, C float32 [batch, N, L]),
  the same plus the copies that made them from the bf16 projections (what eager inference ran),
  and as the model passes them now: [batch, k, L] views of the token-major bf16 projections
  ([batch, L, 2 dim] for u, [batch, L, dim + 2 N] for dt, B, C), read in place; the last also
  without prefetching the next step's operands (``ScanConfig.prefetch``). CUDA-graph medians.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cuda_graph_median_ms, environment, markdown_table, write_report  # noqa: E402
from benchmarks.cpu_scan import cpu_model, timed_ms  # noqa: E402
from hrsam.modeling.interactive import build_model  # noqa: E402
from hrsam.ops.selective_scan import cycle, selective_scan  # noqa: E402
from hrsam.ops.selective_scan.cycle import cycle_scan, cycle_scan_tiled  # noqa: E402
from tests.test_selective_scan import make_inputs  # noqa: E402

CUDA_CASES = [("HRSAM 1024", 768, 4096), ("HRSAM 2048", 768, 16384),
              ("HRSAM++ 2048 multi-scale", 768, 17408), ("HRSAM++ anchor", 768, 1024)]  # fmt: skip
# (warps aimed at per SM, time steps per tile, warps per program) for --sweep
SWEEP = [(w, s, n) for w in (12, 24, 48, 96, 192) for s in (4, 8) for n in (1, 2)]
CPU_CASES = [("hrsam_tiny 512", 192, 1024), ("hrsam_tiny 1024", 192, 4096), ("ViT-B 1024", 768, 4096)]


def measure(name: str, dim: int, length: int, device: str, repeats: int) -> list[object]:
    inputs = [t.to(device) for t in make_inputs(1, dim, 32, length, torch.float32)]
    weights = torch.rand(dim, 3, device=device) + 0.5
    calls = (
        lambda: cycle_scan_tiled(*inputs, weights, True, scan=selective_scan),  # as the model without the kernel
        lambda: cycle_scan(*inputs, weights),
    )
    with torch.no_grad():
        want, got = (call() for call in calls)
        if device == "cuda":
            times = [cuda_graph_median_ms(call, iters=repeats) for call in calls]
            cells = [f"{t:.3f}" for t in times]
        else:
            pairs = [timed_ms(call, repeats) for call in calls]
            times, cells = [p[0] for p in pairs], [f"{p[0]:.1f} ({p[1]:.1f})" for p in pairs]
    error = ((got - want).abs().max() / want.abs().max()).item()
    return [name, dim, length, *cells, f"{times[0] / times[1]:.2f}x", f"{error:.1e}"]


def sweep_rows(name: str, dim: int, length: int, repeats: int) -> list[list[object]]:
    """The L-step kernels at each ``SWEEP`` configuration: ms, ratio to the default, difference to its output.

    Imported here: Triton is optional where the CPU cases run.
    """
    from hrsam.ops.selective_scan import triton_cycle
    from hrsam.ops.selective_scan.triton_kernel import DEFAULT_CONFIG, ScanConfig

    inputs = [t.cuda() for t in make_inputs(1, dim, 32, length, torch.float32)]
    weights = torch.rand(dim, 3, device="cuda") + 0.5
    rows = []

    def call(config: ScanConfig) -> torch.Tensor:
        return triton_cycle.cycle_scan_triton(*inputs, weights, True, config=config)

    with torch.no_grad():
        want = call(DEFAULT_CONFIG)
        base = cuda_graph_median_ms(lambda: call(DEFAULT_CONFIG), iters=repeats)
        for warps_per_sm, steps, warps in SWEEP:
            config = ScanConfig(block_d=32 * warps, num_warps=warps, warps_per_sm=warps_per_sm, steps=steps)
            error = ((call(config) - want).abs().max() / want.abs().max()).item()
            ms = cuda_graph_median_ms(lambda config=config: call(config), iters=repeats)
            label = f"warps/SM {config.warps_per_sm}, steps {config.steps}, warps {config.num_warps}"
            rows.append([name, length, label, f"{ms:.3f}", f"{base / ms:.2f}x", f"{error:.1e}"])
    return rows


def layout_rows(name: str, dim: int, length: int, repeats: int) -> list[object]:
    """``cycle_scan`` on main's float32 contiguous inputs, with the copies that made them, and on the
    model's bf16 token-major views (with and without prefetch): ms, and the views' output against
    the contiguous inputs' (the same bf16 values, so float32 rounding only)."""
    from hrsam.ops.selective_scan import triton_cycle
    from hrsam.ops.selective_scan.triton_kernel import ScanConfig

    dstate = 32
    u, delta, A, B, C, D, bias = (t.cuda() for t in make_inputs(1, dim, dstate, length, torch.float32))
    weights = torch.rand(dim, 3, device="cuda") + 0.5
    xz = torch.randn(1, length, 2 * dim, device="cuda", dtype=torch.bfloat16)  # [u, z], token-major
    ssm = torch.empty(1, length, dim + 2 * dstate, device="cuda", dtype=torch.bfloat16)  # [dt, B, C]
    xz[..., :dim] = u.transpose(1, 2)
    ssm[..., :dim] = delta.transpose(1, 2)
    ssm[..., dim : dim + dstate] = B.transpose(1, 2)
    ssm[..., dim + dstate :] = C.transpose(1, 2)
    pieces = (xz[..., :dim], ssm[..., :dim], ssm[..., dim : dim + dstate], ssm[..., dim + dstate :])
    uv, dtv, Bv, Cv = (t.transpose(1, 2) for t in pieces)  # the model's views, [1, k, L]

    def copies() -> list[torch.Tensor]:  # main's CycleScan._scan: along_length / channels_first
        return [t.to(torch.float32, memory_format=torch.contiguous_format, copy=True) for t in (uv, dtv, Bv, Cv)]

    u32, delta32, B32, C32 = copies()
    no_prefetch = ScanConfig(steps=8, prefetch=False)

    def copied() -> torch.Tensor:
        uc, dtc, Bc, Cc = copies()
        return cycle_scan(uc, dtc, A, Bc, Cc, D, bias, weights)

    calls = (
        lambda: cycle_scan(u32, delta32, A, B32, C32, D, bias, weights),
        copied,
        lambda: cycle_scan(uv, dtv, A, Bv, Cv, D, bias, weights),
        lambda: triton_cycle.cycle_scan_triton(uv, dtv, A, Bv, Cv, D, bias, weights, True, config=no_prefetch),
    )
    with torch.no_grad():
        want, got = calls[0](), calls[2]()
        times = [cuda_graph_median_ms(call, iters=repeats) for call in calls]
    error = ((got - want).abs().max() / want.abs().max()).item()
    return [name, length, *(f"{t:.3f}" for t in times), f"{times[0] / times[2]:.2f}x", f"{error:.1e}"]


def encoder_rows(repeats: int) -> list[list[object]]:
    """hrsam_tiny's encoder at 1024, eager inference on the CPU, with the kernel and with the tiled scan."""
    encoder = build_model("hrsam_tiny").encoder.eval()
    image = torch.randn(1, 3, 1024, 1024)
    rows = []
    for label, disabled in (("cycle_scan kernel", False), ("tiled scan", True)):
        with torch.inference_mode(), mock.patch.object(cycle, "_DISABLED", disabled):
            median, best = timed_ms(lambda: encoder(image), repeats)
        rows.append(["hrsam_tiny encoder, 1024", label, f"{median:.0f} ({best:.0f})"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default: 7 CPU, 30 CUDA)")
    parser.add_argument("--encoder", action="store_true", help="CPU: also the hrsam_tiny encoder at 1024")
    parser.add_argument("--sweep", action="store_true", help="CUDA: the L-step kernels' launch configurations")
    parser.add_argument(
        "--layouts", action="store_true", help="CUDA: cycle_scan on contiguous float32 inputs vs the bf16 views"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/cycle_scan.py --device cuda needs a CUDA device", file=sys.stderr)
        return 2
    repeats = args.repeats or (30 if args.device == "cuda" else 7)
    cases = CUDA_CASES if args.device == "cuda" else CPU_CASES
    rows = [measure(name, dim, length, args.device, repeats) for name, dim, length in cases]
    unit = "CUDA-graph median" if args.device == "cuda" else "median (best)"
    header = ["sequence", "dim", "L", f"tiled ms, {unit}", "cycle_scan ms", "speed-up", "max rel. diff"]
    where = environment() if args.device == "cuda" else f"{cpu_model()}; torch {torch.__version__}"
    text = f"- {where}; {torch.get_num_threads()} threads; float32, N 32, R 3\n\n"
    text += markdown_table(header, rows) + "\n"
    if args.encoder and args.device == "cpu":
        text += "\n" + markdown_table(["model", "scan", "ms, median (best)"], encoder_rows(3)) + "\n"
    if args.sweep and args.device == "cuda":
        sweep = [row for name, dim, length in cases for row in sweep_rows(name, dim, length, repeats)]
        header = ["sequence", "L", "configuration", "ms", "default / this", "max rel. diff to default"]
        text += "\n" + markdown_table(header, sweep) + "\n"
    if args.layouts and args.device == "cuda":
        layouts = [layout_rows(name, dim, length, repeats) for name, dim, length in cases]
        header = ["sequence", "L", "fp32 contiguous ms", "bf16 -> fp32 copies + scan ms", "bf16 views ms",
                  "bf16 views, no prefetch ms", "contiguous / views", "max rel. diff views vs contiguous"]  # fmt: skip
        text += "\n" + markdown_table(header, layouts) + "\n"
    if args.out:
        write_report(args.out, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
