"""HRSAM++'s stage output on the GPU: Inductor's fusion of the torch form vs ``fusion_layer_norm``'s kernel.

Why: in the compiled HRSAM++ 2048 encoder on the H200 Inductor made the stage output (anchor rows
upsampled bilinearly, one LayerNorm on both scales, channels concatenated) four kernels, 0.091 ms a
stage; the ``hrsam.ops.fusion_norm`` kernel took 0.053 ms inside the encoder, with its launch shape
not tuned (docs/BENCHMARKS.md, twenty-first session). This times, at HRSAM++ ViT-B's shape for an
input of ``--size`` (main grid size / 16, anchor 32 x 32, 768 channels, bf16), the torch form
compiled by Inductor and the kernel, replaying CUDA graphs; with ``--sweep`` every launch shape
(rows per program x warps), each checked against the reference first. Beside them the bandwidth the
least traffic makes (read every main and anchor row once, write every output row once).

    PYTHONPATH=. python benchmarks/fusion_norm.py [--size 2048] [--iters 200] [--sweep]
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
from torch import Tensor

from benchmarks.common import cuda_graph_median_ms, environment, markdown_table
from hrsam.modeling.configs import PATCH_SIZE
from hrsam.modeling.encoder import BilinearTaps
from hrsam.ops.fusion_norm import fusion_layer_norm_reference
from hrsam.ops.fusion_norm.triton_kernel import DEFAULT_CONFIG, FusionNormConfig, fusion_layer_norm_triton

DIM, ANCHOR, EPS = 768, (32, 32), 1e-6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--sweep", action="store_true", help="time every launch shape too")
    args = parser.parse_args()
    main_grid = (args.size // PATCH_SIZE,) * 2
    taps = BilinearTaps.build(ANCHOR, main_grid, torch.device("cuda"))
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows, anchor_rows = main_grid[0] * main_grid[1], ANCHOR[0] * ANCHOR[1]
    x = torch.randn(1, rows + anchor_rows, DIM, device="cuda", generator=generator).bfloat16()
    weight = torch.rand(DIM, device="cuda", generator=generator) + 0.5
    bias = torch.randn(DIM, device="cuda", generator=generator)
    reference = functools.partial(fusion_layer_norm_reference, x, main_grid, taps.rows, taps.cols, ANCHOR,
                                  weight, bias, EPS)  # fmt: skip
    kernel_args = (x, *taps.rows, *taps.cols, weight, bias, EPS, ANCHOR[1])
    configs = [DEFAULT_CONFIG]
    if args.sweep:
        configs += [FusionNormConfig(r, w) for r, w in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8))]
    traffic = ((rows + anchor_rows) * DIM + rows * 2 * DIM) * 2  # bf16 reads of every row, writes of the output
    print(environment())
    table = [[label, f"{ms:.4f}", f"{traffic / ms / 1e9:.2f}"]
             for label, ms in time_forms(reference, kernel_args, list(dict.fromkeys(configs)), args.iters)]  # fmt: skip
    print(markdown_table(["form", "ms (graph median)", "TB/s of the least traffic"], table))


def time_forms(reference: functools.partial, kernel_args: tuple, configs: list, iters: int) -> list[tuple[str, float]]:
    """(form, graph median ms) for Inductor's fusion of the reference and each kernel launch shape, all
    checked first: within two bf16 steps of the value plus 2e-2 (the upsampled value is rounded to bf16
    before its norm; ``tests/test_fusion_norm.py``'s tolerance, which Triton's CPU interpreter needs)."""
    want = reference()

    def check(got: Tensor, label: str) -> None:
        step = want.float().abs() * 2**-6 + 2e-2
        assert bool(((got.view(want.shape).float() - want.float()).abs() <= step).all()), label

    compiled = torch.compile(fusion_layer_norm_reference)
    forms = {"Inductor (torch form)": functools.partial(compiled, *reference.args)}
    check(forms["Inductor (torch form)"](), "Inductor")
    for config in configs:
        label = f"kernel {config.block_rows} rows x {config.num_warps} warps"
        label += " (default)" if config == DEFAULT_CONFIG else ""
        forms[label] = functools.partial(fusion_layer_norm_triton, *kernel_args, config=config)
        check(forms[label](), label)
    return [(label, cuda_graph_median_ms(fn, iters=iters)) for label, fn in forms.items()]


if __name__ == "__main__":
    main()
