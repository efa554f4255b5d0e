"""Flash Swin vs traditional Swin attention latency: the paper's Figure 5 setting.

h = w = 64 tokens, C = 768, 12 heads, windows k in {16, 32, 64} with shift k/2, one attention
layer (qkv projection, RoPE, window attention, output projection), batch 1, fp16 and fp32.

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

from benchmarks.common import cuda_median_ms, environment, markdown_table  # noqa: E402
from hrsam.modeling.flash_swin import AttentionLayout, FlashSwinAttention  # noqa: E402
from hrsam.modeling.rope import apply_rope, rope_tables  # noqa: E402
from hrsam.modeling.window_plan import window_offset, window_plan  # noqa: E402
from tests.swin_reference import swin_window_attention  # noqa: E402

H = W = 64
DIM, HEADS = 768, 12


def traditional_layer(attn: FlashSwinAttention, k: int, fused: bool, device: str):  # noqa: ANN201
    """Same weights and RoPE as the flash layer, computed with roll + mask."""
    shift, d = k // 2, DIM // HEADS
    p = window_offset(k, shift)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    cos, sin = (t.to(device) for t in rope_tables(torch.stack([ys.flatten() + p, xs.flatten() + p], 1), d))

    def run(x: torch.Tensor) -> torch.Tensor:
        q, kk, v = attn.qkv(x).view(H * W, 3, HEADS, d).unbind(1)
        q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
        grid = lambda t: t.reshape(H, W, HEADS, d)  # noqa: E731
        out = swin_window_attention(grid(q), grid(kk), grid(v), k, shift, d**-0.5, fused=fused)
        return attn.proj(out.reshape(H * W, DIM))

    return run


def flash_layer(attn: FlashSwinAttention, k: int, device: str):  # noqa: ANN201
    plan = window_plan(((H, W),), k, k // 2, kv_padding=attn.padding_mode != "none")
    layout = AttentionLayout.build(plan, attn.head_dim, device)
    return lambda x: attn(x, layout)


def measure(dtype: torch.dtype, k: int, iters: int) -> dict[str, float]:
    torch.manual_seed(0)
    device = "cuda"
    results = {}
    x = torch.randn(H * W, DIM, device=device, dtype=dtype)
    for padding in ("none", "token"):
        attn = FlashSwinAttention(DIM, HEADS, padding=padding).to(device, dtype).eval()
        layer = flash_layer(attn, k, device)
        with torch.no_grad():
            results[f"flash ({'no padding' if padding == 'none' else 'KV-only padding'})"] = cuda_median_ms(
                lambda f=layer: f(x), iters=iters
            )
    attn = FlashSwinAttention(DIM, HEADS, padding="none").to(device, dtype).eval()
    with torch.no_grad():
        for fused, name in ((False, "traditional (Swin code)"), (True, "traditional (SDPA + mask)")):
            layer = traditional_layer(attn, k, fused, device)
            results[name] = cuda_median_ms(lambda f=layer: f(x), iters=iters)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    header = ["dtype", "k", "flash (no padding)", "flash (KV-only padding)", "traditional (Swin code)",
              "traditional (SDPA + mask)", "flash (padded) / best traditional"]
    rows = []
    for dtype in (torch.float16, torch.float32):
        for k in (16, 32, 64):
            r = measure(dtype, k, args.iters)
            best = min(r["traditional (Swin code)"], r["traditional (SDPA + mask)"])
            ratio = r["flash (KV-only padding)"] / best
            rows.append([str(dtype).removeprefix("torch."), k, *(f"{r[h]:.3f} ms" for h in header[2:6]),
                         f"{ratio:.2f} ({1 - ratio:.0%} lower latency)"])
    table = f"{environment()}; median of {args.iters} after warm-up, batch 1, h = w = 64, C = 768, 12 heads\n\n"
    table += markdown_table(header, rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
