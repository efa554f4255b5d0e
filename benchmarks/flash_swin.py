"""Flash Swin vs traditional Swin attention latency: the paper's Figure 5 setting.

h = w = 64 tokens, C = 768, 12 heads, windows k in {16, 32, 64} with shift k/2, one attention
layer (qkv projection, RoPE, window attention, output projection), batch 1, fp16 and fp32; also
h = w = 128 (2048 input), our main use. Each is timed eagerly and as a CUDA graph replay (the
kernels alone, without Python and launch overhead, which dominate layers this small).

* flash (no padding): index-mapped variable-length windows, one varlen attention call;
* flash (KV-only padding): what the model runs (the authors' padding token);
* traditional (Swin code): roll + window partition + matmul / additive mask / softmax / matmul;
* traditional (SDPA + mask): the same masked attention through scaled_dot_product_attention.

Usage (GPU machine): ``python benchmarks/flash_swin.py --out docs/flash_swin.md``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cuda_graph_median_ms, cuda_median_ms, environment, markdown_table  # noqa: E402
from hrsam.modeling.flash_swin import AttentionLayout, FlashSwinAttention  # noqa: E402
from hrsam.modeling.rope import apply_rope, rope_tables  # noqa: E402
from hrsam.modeling.swin_reference import swin_window_attention  # noqa: E402
from hrsam.modeling.window_plan import window_offset, window_plan  # noqa: E402

DIM, HEADS = 768, 12


def traditional_layer(attn: FlashSwinAttention, side: int, k: int, fused: bool, device: str):  # noqa: ANN201
    """Same weights and RoPE as the flash layer, computed with roll + mask."""
    shift, d = k // 2, DIM // HEADS
    p = window_offset(k, shift)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    cos, sin = (t.to(device) for t in rope_tables(torch.stack([ys.flatten() + p, xs.flatten() + p], 1), d))

    def run(x: torch.Tensor) -> torch.Tensor:
        q, kk, v = attn.qkv(x).view(side * side, 3, HEADS, d).unbind(1)
        q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
        grid = lambda t: t.reshape(side, side, HEADS, d)  # noqa: E731
        out = swin_window_attention(grid(q), grid(kk), grid(v), k, shift, d**-0.5, fused=fused)
        return attn.proj(out.reshape(side * side, DIM))

    return run


def flash_layer(attn: FlashSwinAttention, side: int, k: int, device: str):  # noqa: ANN201
    plan = window_plan(((side, side),), k, k // 2, kv_padding=attn.padding_mode != "none")
    layout = AttentionLayout.build(plan, attn.head_dim, device)
    return lambda x: attn(x, layout)


VARIANTS = ["flash (no padding)", "flash (KV-only padding)", "traditional (Swin code)", "traditional (SDPA + mask)"]


def layers(side: int, k: int, dtype: torch.dtype) -> dict[str, object]:
    """The four variants, sharing weights where they compute the same function."""
    torch.manual_seed(0)
    padded = FlashSwinAttention(DIM, HEADS, padding="token").to("cuda", dtype).eval()
    plain = FlashSwinAttention(DIM, HEADS, padding="none").to("cuda", dtype).eval()
    plain.load_state_dict(padded.state_dict(), strict=False)
    return {
        VARIANTS[0]: flash_layer(plain, side, k, "cuda"),
        VARIANTS[1]: flash_layer(padded, side, k, "cuda"),
        VARIANTS[2]: traditional_layer(plain, side, k, False, "cuda"),
        VARIANTS[3]: traditional_layer(plain, side, k, True, "cuda"),
    }


@torch.no_grad()
def measure(side: int, dtype: torch.dtype, k: int, graph: bool, iters: int) -> dict[str, float]:
    x = torch.randn(side * side, DIM, device="cuda", dtype=dtype)
    timer = cuda_graph_median_ms if graph else cuda_median_ms
    return {name: timer(lambda f=layer: f(x), iters=iters) for name, layer in layers(side, k, dtype).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--grids", default="64,128", help="token grid sides to measure")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    header = ["grid", "dtype", "k", "timing", *VARIANTS, "flash (padded) / best traditional"]
    rows = []
    for side in (int(s) for s in args.grids.split(",")):
        for dtype in (torch.float16, torch.float32):
            for k in (16, 32, 64):
                for graph in (False, True):
                    r = measure(side, dtype, k, graph, args.iters)
                    ratio = r[VARIANTS[1]] / min(r[VARIANTS[2]], r[VARIANTS[3]])
                    rows.append([f"{side}x{side}", str(dtype).removeprefix("torch."), k,
                                 "CUDA graph" if graph else "eager", *(f"{r[v]:.3f}" for v in VARIANTS),
                                 f"{ratio:.2f} ({1 - ratio:+.0%} latency saved)"])
    table = f"{environment()}; times in ms, median of {args.iters} after warm-up, batch 1, C = 768, 12 heads\n\n"
    table += markdown_table(header, rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
