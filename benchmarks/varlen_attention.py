"""GPU latency of ``hrsam::varlen_attention`` kernels at the model's window layouts.

Cases: 1024 and 2048 input (64 x 64 and 128 x 128 tokens), window 16, plain (shift 0) and
shifted (shift 8) windows with KV-only padding (every window 256 keys, border windows fewer
queries), 12 heads (ViT-B) and 3 heads (tiny), head dim 64, batch 1; float32, float16, bfloat16.
Kernels, timed in the same run on the same inputs:

* ``triton``: our kernel (``hrsam/ops/varlen_attention/triton_kernel.py``); for float32 each dot
  precision: tf32x3 (the default), ieee (exact), tf32;
* ``torch flash``: ``aten::_flash_attention_forward`` (fp16 / bf16), the ``torch`` backend's
  16-bit kernel;
* ``torch mem-efficient``: ``aten::_efficient_attention_forward`` (all dtypes), the ``torch``
  backend's float32 kernel.

Each is timed eagerly (host launch included: CUDA events around each call, median after warm-up)
and as a CUDA-graph replay (the GPU time alone, what a TensorRT engine or a compiled graph
pays). FLOP floor = 4 * D * heads * sum over windows of (queries x keys): the two matrix
products, no softmax; bytes = q, k, v read once and out written once. "max err" is max |out -
ref| against the float32 reference on the same inputs, so a fast wrong kernel shows.

``--sweep`` times alternative Triton launch configurations at the 2048 shifted layout, 12 heads
(the defaults live in ``triton_kernel._DEFAULT_CONFIGS``).

Usage (GPU machine): ``PYTHONPATH=. python benchmarks/varlen_attention.py --out attn.md``
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from benchmarks.common import cuda_graph_median_ms, cuda_median_ms, environment, markdown_table
from hrsam.modeling.window_plan import WindowPlan, window_plan
from hrsam.ops.varlen_attention.cuda import torch_varlen_attention
from hrsam.ops.varlen_attention.reference import varlen_attention_reference
from hrsam.ops.varlen_attention.triton_kernel import (
    AttentionConfig,
    default_config,
    varlen_attention_triton,
)

GRIDS = {1024: 64, 2048: 128}
WINDOW, HEAD_DIM = 16, 64
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FP32_PRECISIONS = ("tf32x3", "ieee", "tf32")
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Problem:
    """One layout, head count and dtype, with its inputs on the GPU."""

    size: int
    shift: int
    heads: int
    dtype: torch.dtype
    plan: WindowPlan
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor

    @property
    def sizes(self) -> tuple[int, int, float]:
        return self.plan.max_seqlen_q, self.plan.max_seqlen_k, HEAD_DIM**-0.5

    def flops(self) -> float:
        pairs = (self.plan.cu_seqlens_q.diff().double() * self.plan.cu_seqlens_k.diff().double()).sum().item()
        return 4.0 * HEAD_DIM * self.heads * pairs

    def bytes_moved(self) -> float:
        return (2 * self.q.numel() + 2 * self.k.numel()) * self.q.element_size()


def make_problem(size: int, shift: int, heads: int, dtype: torch.dtype) -> Problem:
    plan = window_plan(((GRIDS[size], GRIDS[size]),), WINDOW, shift, True)
    g = torch.Generator(device="cuda").manual_seed(size + shift + heads)
    tq, tk = plan.q_index.numel(), plan.kv_index.numel()
    q, k, v = (torch.randn(t, heads, HEAD_DIM, device="cuda", generator=g).to(dtype) for t in (tq, tk, tk))
    return Problem(size, shift, heads, dtype, plan, q, k, v, plan.cu_seqlens_q.cuda(), plan.cu_seqlens_k.cuda())


def efficient_attention(p: Problem) -> torch.Tensor:
    """PyTorch's memory-efficient varlen kernel, for every dtype (the torch backend uses it for fp32)."""
    max_q, max_k, scale = p.sizes
    out = torch.ops.aten._efficient_attention_forward(
        p.q[None], p.k[None], p.v[None], None, p.cu_q, p.cu_k, max_q, max_k, 0.0, 0, False, scale=scale
    )[0]
    return out[0]


def kernels(p: Problem) -> dict[str, Callable[[], torch.Tensor]]:
    """Name -> zero-argument call, for every kernel that runs this problem's dtype."""
    args = (p.q, p.k, p.v, p.cu_q, p.cu_k, *p.sizes)
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    precisions = FP32_PRECISIONS if p.dtype == torch.float32 else (None,)
    for precision in precisions:
        name = "triton" if precision is None else f"triton {precision}"
        calls[name] = functools.partial(varlen_attention_triton, *args, precision=precision)
    if p.dtype != torch.float32:
        calls["torch flash"] = functools.partial(torch_varlen_attention, *args)
    calls["torch mem-efficient"] = functools.partial(efficient_attention, p)
    return calls


def config_label(config: AttentionConfig) -> str:
    return f"{config.block_m}x{config.block_n} w{config.num_warps} s{config.num_stages}"


def kernel_config(dtype: torch.dtype, name: str) -> str:
    """The Triton configuration a kernel row ran with (a float32 row's precision is its name's last word)."""
    if not name.startswith("triton"):
        return ""
    precision = name.split()[-1] if dtype == torch.float32 else "tf32"
    return config_label(default_config(dtype, HEAD_DIM, precision))


def max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.float() - ref).abs().max().item()


def time_problem(p: Problem, warmup: int, iters: int) -> list[list[object]]:
    """Table rows for one problem: every kernel, eager and graph times, throughput, error."""
    ref = varlen_attention_reference(p.q.float(), p.k.float(), p.v.float(), p.cu_q, p.cu_k, *p.sizes)
    flops, nbytes = p.flops(), p.bytes_moved()
    rows = []
    for name, call in kernels(p).items():
        err = max_error(call(), ref)
        eager = cuda_median_ms(call, warmup=warmup, iters=iters)
        graph = cuda_graph_median_ms(call, warmup=warmup, iters=iters)
        rows.append([
            p.size, "shifted" if p.shift else "plain", p.plan.num_windows, p.heads, str(p.dtype)[6:], name,
            kernel_config(p.dtype, name), f"{flops / 1e9:.2f}", f"{nbytes / 1e6:.1f}", f"{eager:.4f}",
            f"{graph:.4f}", f"{flops / graph / 1e9:.1f}", f"{nbytes / graph / 1e6:.0f}", f"{err:.1e}",
        ])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    torch_graph = min(float(r[10]) for r in rows if r[5].startswith("torch"))
    for row in rows:
        row.append(f"{torch_graph / float(row[10]):.2f}")
    return rows


HEADER = [
    "input", "windows", "#win", "heads", "dtype", "kernel", "triton config", "GFLOP", "MB", "eager ms",
    "graph ms", "TFLOP/s (graph)", "GB/s (graph)", "max err", "speed-up vs best torch (graph)",
]


def sweep_configs(kind: str) -> list[AttentionConfig]:
    """Configurations worth timing for one dot kind (16-bit, tf32, tf32x3, ieee)."""
    if kind == "16bit":
        grid = [(m, n, w, s) for m in (64, 128) for n in (32, 64, 128) for w in (4, 8) for s in (2, 3)]
    elif kind in ("tf32", "tf32x3"):
        grid = [(m, n, w, 2) for m in (64, 128) for n in (16, 32, 64) for w in (4, 8)]
    else:
        grid = [(m, n, w, 2) for m in (16, 32) for n in (16, 32) for w in (2, 4)]
    return [AttentionConfig(*c) for c in grid]


def sweep(names: list[str], warmup: int, iters: int) -> list[list[object]]:
    """Every configuration for each named dtype / precision at the 2048 shifted layout, 12 heads."""
    rows = []
    for label in names:
        dtype = torch.float32 if label in FP32_PRECISIONS else DTYPES[label]
        precision = label if dtype == torch.float32 else None
        p = make_problem(2048, WINDOW // 2, 12, dtype)
        ref = varlen_attention_reference(p.q.float(), p.k.float(), p.v.float(), p.cu_q, p.cu_k, *p.sizes)
        default = default_config(dtype, HEAD_DIM, precision or "tf32x3")
        for config in sweep_configs(precision or "16bit"):
            call = functools.partial(
                varlen_attention_triton, p.q, p.k, p.v, p.cu_q, p.cu_k, *p.sizes, precision=precision, config=config
            )
            try:
                err = max_error(call(), ref)
            except (triton.CompilationError, triton.runtime.errors.OutOfResources) as error:
                print(f"{label} {config}: skipped ({type(error).__name__})", flush=True)
                continue
            ms = cuda_graph_median_ms(call, warmup=warmup, iters=iters)
            mark = " (default)" if config == default else ""
            rows.append([label, config_label(config) + mark, f"{ms:.4f}", f"{p.flops() / ms / 1e9:.1f}", f"{err:.1e}"])
            print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--heads", type=int, nargs="+", default=[12, 3])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--sweep", nargs="*", choices=["float16", "bfloat16", *FP32_PRECISIONS],
                        help="time Triton configurations instead (no names: float16, bfloat16, tf32x3)")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/varlen_attention.py needs a CUDA device")

    header = [
        environment() + f"; triton {triton.__version__}",
        f"head dim {HEAD_DIM}, window {WINDOW}, KV-only padding, batch 1; median of {args.iters} after "
        f"{args.warmup} warm-up calls; times in ms",
    ]
    print("\n".join(header), flush=True)
    if args.sweep is not None:
        rows = sweep(args.sweep or ["float16", "bfloat16", "tf32x3"], args.warmup, args.iters)
        table = markdown_table(["dtype / precision", "config", "graph ms", "TFLOP/s", "max err"], rows)
    else:
        rows = []
        for size in args.sizes:
            for shift in (0, WINDOW // 2):
                for heads in args.heads:
                    for name in args.dtypes:
                        rows += time_problem(make_problem(size, shift, heads, DTYPES[name]), args.warmup, args.iters)
        table = markdown_table(HEADER, rows)
    report = "\n".join(f"- {line}" for line in header) + "\n\n" + table + "\n"
    print(report)
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
