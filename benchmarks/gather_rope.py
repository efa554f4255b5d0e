"""One Flash Swin layer's attention inputs on the GPU: Inductor's gather + RoPE vs the ``gather_rope`` kernel.

Why: at a 2048 input the compiled encoder spent ~1.2 ms in the kernels Inductor generates for
each attention layer's q / k / v gathers into window order and their RoPE (docs/BENCHMARKS.md).
This times both forms at HRSAM ViT-B 2048's shapes (qkv [16,384, 2,304] bf16, the real window
plan with its padding slots, head dim 64): ``gather_rope_reference`` (the model's eager
arithmetic, written as two calls) compiled by Inductor, and ``hrsam.ops.gather_rope`` (the Triton
kernel, q and k/v calls; the engines now call it three times, q, k and v each contiguous for the
Triton attention, over the same bytes), with the least bytes the two calls must move and the bandwidth that
makes; both are checked equal first (bf16: within one rounding step). Timed replaying a CUDA
graph of each form (what the engines run), with the time called from Python beside it (the
script's first version timed only the latter: the host's launches, ~0.3 ms per layer for either
form against 0.07 / 0.17 ms from a graph). ``--sweep`` also times every launch
configuration of the kernel (rows and heads per program, warps) and checks each equals the
default bitwise. A plain copy of as many bytes is timed beside them for scale; it is not a floor: the
kernel's counted reads include the padding slots' one row and the RoPE tables, which stay in L2.

    PYTHONPATH=. python benchmarks/gather_rope.py [--size 2048] [--shift 8] [--iters 200] [--sweep]
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
from torch import Tensor

from benchmarks.common import cuda_graph_median_ms, cuda_median_ms, environment, markdown_table
from hrsam.modeling.configs import PATCH_SIZE
from hrsam.modeling.flash_swin import AttentionLayout
from hrsam.modeling.window_plan import window_plan
from hrsam.ops.gather_rope import gather_rope, gather_rope_reference, kernel_unsupported
from hrsam.ops.gather_rope.triton_kernel import GatherRopeConfig, default_config, gather_rope_triton

DIM, HEAD_DIM, WINDOW = 768, 64, 16
DEFAULT_CONFIG = default_config(DIM // HEAD_DIM, DIM // HEAD_DIM)  # what the layer's calls run


def inputs(layout: AttentionLayout) -> tuple[Tensor, ...]:
    """qkv and the padding slot's key/value row, as a layer under bf16 autocast has them."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(layout.plan.num_tokens, 3 * DIM, device="cuda", generator=generator).bfloat16()
    pad = torch.randn(1, 2 * DIM, device="cuda", generator=generator).bfloat16()
    return qkv, pad


def both_calls(form, qkv: Tensor, pad: Tensor, layout: AttentionLayout) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """The layer's two calls (queries; keys and values) through ``form``."""
    q = form(qkv, None, layout.q_index, layout.q_cos, layout.q_sin, 0, DIM, DIM)
    kv = form(qkv, pad, layout.kv_index, layout.k_cos, layout.k_sin, DIM, 2 * DIM, DIM)
    return q, kv


def bytes_moved(layout: AttentionLayout) -> int:
    """Least traffic of the two calls: read the rows and tables once, write the outputs (bf16 rows)."""
    rows_q, rows_kv = layout.q_index.numel(), layout.kv_index.numel()
    rows = 2 * (rows_q * DIM + rows_kv * 2 * DIM) * 2  # read and write, 2 bytes an element
    tables = 2 * (rows_q + rows_kv) * HEAD_DIM * 4  # cos and sin, float32
    indices = (rows_q + rows_kv) * 8
    return rows + tables + indices


def sweep(qkv: Tensor, pad: Tensor, layout: AttentionLayout, moved: int, iters: int) -> str:
    """Every launch configuration's graph time, fastest first; each must equal the default bitwise."""
    reference = both_calls(functools.partial(gather_rope_triton, config=DEFAULT_CONFIG), qkv, pad, layout)
    rows = []
    for block_rows, per_program, warps in itertools.product((16, 32, 64, 128), (1, 2, 4, 12), (2, 4, 8)):
        config = GatherRopeConfig(block_rows, per_program, warps)
        form = functools.partial(gather_rope_triton, config=config)
        got = both_calls(form, qkv, pad, layout)
        equal = all(torch.equal(a, b) for a, b in zip(got, reference, strict=True))
        milliseconds = cuda_graph_median_ms(lambda form=form: both_calls(form, qkv, pad, layout), iters=iters)
        default = " (default)" if config == DEFAULT_CONFIG else ""
        rows.append((milliseconds, [f"{block_rows} x {per_program}, {warps} warps{default}", f"{milliseconds:.4f}",
                                    f"{moved / milliseconds / 1e9:.2f}", "yes" if equal else "NO"]))  # fmt: skip
    rows.sort(key=lambda row: row[0])
    header = ["rows x heads per program, warps", "ms per layer (CUDA graph)", "TB/s", "equal to the default"]
    return markdown_table(header, [row for _, row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="input side (tokens = (size / 16) ** 2)")
    parser.add_argument("--shift", type=int, default=WINDOW // 2, help="window shift (the model alternates 0 and 8)")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--sweep", action="store_true", help="also time every kernel launch configuration")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    side = args.size // PATCH_SIZE
    plan = window_plan(((side, side),), WINDOW, args.shift, kv_padding=True)
    layout = AttentionLayout.build(plan, HEAD_DIM, "cuda")
    qkv, pad = inputs(layout)
    if (reason := kernel_unsupported(qkv)) is not None:
        raise SystemExit(f"the kernel cannot run here: {reason}")
    inductor = torch.compile(lambda *a: both_calls(gather_rope_reference, *a))
    kernel = lambda *a: both_calls(gather_rope, *a)  # noqa: E731
    for got, want in zip(kernel(qkv, pad, layout), inductor(qkv, pad, layout), strict=True):
        step = want.float().abs() * 2.0**-7 + 2e-6  # one bf16 step, or a float32 multiply-add's rounding
        excess = ((got.float() - want.float()).abs() - step).max().item()
        print(f"- agreement: {'within one bf16 step' if excess <= 0 else f'NOT within one bf16 step (+{excess:.2e})'}")
    moved = bytes_moved(layout)
    rows = []
    for name, form in (("Inductor: index_select + RoPE (before)", inductor), ("gather_rope kernel", kernel)):
        call = lambda form=form: form(qkv, pad, layout)  # noqa: E731
        graph_ms = cuda_graph_median_ms(call, iters=args.iters)
        rows.append([name, f"{graph_ms:.4f}", f"{moved / graph_ms / 1e9:.2f}", f"{cuda_median_ms(call):.4f}"])
    flat = torch.empty(moved // 4, device="cuda", dtype=torch.bfloat16)  # half the bytes, read once and written once
    copy_ms = cuda_graph_median_ms(lambda: flat.clone(), iters=args.iters)
    rows.append(["a plain copy of as many bytes (for scale)", f"{copy_ms:.4f}", f"{moved / copy_ms / 1e9:.2f}", "-"])
    print(f"- {environment()}")
    print(f"- one layer's q and k/v inputs at {args.size} ({plan.num_tokens} queries, {layout.kv_index.numel()} "
          f"key/value slots, shift {args.shift}), bf16; median of {args.iters}, CUDA events; "
          f"{moved / 1e6:.1f} MB moved at least\n")  # fmt: skip
    print(
        markdown_table(
            ["form", "ms per layer (CUDA graph)", "TB/s at the least traffic", "ms called from Python"], rows
        )
    )
    if args.sweep:
        print(f"\nLaunch configurations of the kernel (the model runs {DEFAULT_CONFIG}):\n")
        print(sweep(qkv, pad, layout, moved, args.iters))


if __name__ == "__main__":
    main()
