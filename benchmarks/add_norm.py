"""A block's residual add + inverse window gather + LayerNorm on the GPU: Inductor's fusion vs ``add_layer_norm``.

Why: the compiled HRSAM 2048 encoder's "norms" took 1.26 ms in 33 kernels on the H200; the fused
residual add + inverse gather + LayerNorm kernels Inductor generates came out looped (0.042-0.048
ms a launch) while one persistent sibling took 0.020 (docs/BENCHMARKS.md, eighteenth session).
This times, at HRSAM ViT-B 2048's shape (16,384 tokens of 768, bf16, the shifted layer's real
``q_inverse``), the torch form compiled by Inductor (what the engines ran) and the
``hrsam.ops.add_norm`` kernel, both with and without the gather, replaying CUDA graphs; with
``--sweep`` every launch shape (rows per program x warps), each checked against the reference.
Beside them the bandwidth the least traffic makes (read x and delta, write the sum and the norm).

    PYTHONPATH=. python benchmarks/add_norm.py [--size 2048] [--iters 200] [--sweep]
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import cuda_graph_median_ms, environment, markdown_table
from hrsam.modeling.configs import PATCH_SIZE
from hrsam.modeling.window_plan import window_plan
from hrsam.ops.add_norm import add_layer_norm_reference
from hrsam.ops.add_norm.triton_kernel import DEFAULT_CONFIG, AddNormConfig, add_layer_norm_triton

DIM, WINDOW, EPS = 768, 16, 1e-6


def torch_form(x: Tensor, delta: Tensor, index: Tensor | None, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The block's eager arithmetic under bf16 autocast: the sum in bf16, the norm in float32 cast for the GEMM."""
    total = x + (delta if index is None else delta.index_select(0, index))
    return total, F.layer_norm(total.float(), (DIM,), weight, bias, EPS).bfloat16()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--sweep", action="store_true", help="time every launch shape too")
    args = parser.parse_args()
    grid = args.size // PATCH_SIZE
    plan = window_plan(((grid, grid),), WINDOW, WINDOW // 2, True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens = plan.num_tokens
    x = torch.randn(tokens, DIM, device="cuda", generator=generator).bfloat16()
    delta = torch.randn(tokens, DIM, device="cuda", generator=generator).bfloat16()
    weight = torch.rand(DIM, device="cuda", generator=generator) + 0.5
    bias = torch.randn(DIM, device="cuda", generator=generator)
    index = plan.q_inverse.cuda()
    traffic = 4 * tokens * DIM * 2  # two bf16 reads, two bf16 writes
    configs = [DEFAULT_CONFIG]
    if args.sweep:
        configs += [AddNormConfig(r, w) for r, w in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8))]
    print(environment())
    rows = []
    for name, gather in (("gathered (block's norm2)", index), ("aligned", None)):
        operands = (x, delta, gather, weight, bias)
        for label, ms in time_forms(operands, list(dict.fromkeys(configs)), args.iters):
            rows.append([name, label, f"{ms:.4f}", f"{traffic / ms / 1e9:.2f}"])
    print(markdown_table(["rows", "form", "ms (graph median)", "TB/s of the least traffic"], rows))


def time_forms(operands: tuple, configs: list[AddNormConfig], iters: int) -> list[tuple[str, float]]:
    """(form, graph median ms) for Inductor's fusion and each kernel launch shape, all checked first."""
    want_total, want = add_layer_norm_reference(*operands, EPS)
    total, normed = add_layer_norm_triton(*operands, EPS)
    step = want.float().abs() * 2**-7 + 1e-5
    assert torch.equal(total, want_total) and bool(((normed.float() - want.float()).abs() <= step).all())
    forms = {"Inductor (torch form)": functools.partial(torch.compile(torch_form), *operands)}
    for config in configs:  # the warps change the reductions' order: the norm within a bf16 step
        out = add_layer_norm_triton(*operands, EPS, config=config)
        assert torch.equal(out[0], total) and bool(((out[1].float() - want.float()).abs() <= step).all()), config
        label = f"kernel {config.block_rows} rows x {config.num_warps} warps"
        forms[label + (" (default)" if config == DEFAULT_CONFIG else "")] = functools.partial(
            add_layer_norm_triton, *operands, EPS, config=config
        )
    return [(label, cuda_graph_median_ms(fn, iters=iters)) for label, fn in forms.items()]

if __name__ == "__main__":
    main()
