"""Encoder latency and peak memory: HRSAM and HRSAM++ next to SAM ViT-B / ViT-H, random weights.

Run on the GPU machine:

    python benchmarks/encoder.py --out $OUT/encoder.md

Each (model, input size, precision) is timed with CUDA events after warm-up, batch 1, and the
median over the timed iterations is reported with the peak memory allocated during them.
Precisions: ``fp32`` (TF32 off), ``tf32`` (TF32 matmuls and convolutions), ``bf16`` (autocast
bfloat16; the Cycle-scan state stays fp32 as in the authors' code). SAM's image encoders are
built by ``segment_anything`` (ViT-B, ViT-H, window 14 with global attention blocks) with
``img_size`` set to the input size; configurations that do not fit in memory are reported as OOM.
Slow configurations get fewer timed iterations (at least 3, within a per-case time budget).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cuda_median_ms, environment, markdown_table, write_report  # noqa: E402
from hrsam.modeling.configs import get_config  # noqa: E402
from hrsam.modeling.encoder import HRSAMEncoder  # noqa: E402
from hrsam.modeling.sam_decoder import sam_modeling  # noqa: E402
from hrsam.ops.backend import available_backends  # noqa: E402

SAM_SIZES = {  # segment_anything's build_sam.py: embed dim, depth, heads, global attention blocks
    "sam_vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
LABELS = {
    "hrsam_vit_b": "HRSAM (ViT-B)",
    "hrsampp_vit_b": "HRSAM++ (ViT-B)",
    "sam_vit_b": "SAM ViT-B",
    "sam_vit_h": "SAM ViT-H",
}
PAPER_MS = {("hrsam_vit_b", 1024): 53, ("hrsam_vit_b", 2048): 185, ("hrsampp_vit_b", 1024): 90,
            ("hrsampp_vit_b", 2048): 269}  # fmt: skip


@dataclass
class Result:
    model: str
    size: int
    precision: str
    median_ms: float | None
    iterations: int
    peak_gib: float | None
    note: str = ""


def build_encoder(name: str, size: int) -> nn.Module:
    """A randomly initialised image encoder on CUDA (eval mode) for input ``size``."""
    if name in SAM_SIZES:
        dim, depth, heads, global_blocks = SAM_SIZES[name]
        with torch.device("cuda"):  # initialise on the GPU: ViT-H init on the CPU takes seconds
            encoder = sam_modeling.ImageEncoderViT(
                img_size=size, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4,
                out_chans=256, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                window_size=14, global_attn_indexes=global_blocks,
            )  # fmt: skip
        return encoder.eval()
    encoder = HRSAMEncoder(get_config(name).encoder).cuda().eval()
    encoder.prepare(size, size, device="cuda")
    return encoder


@contextlib.contextmanager
def precision(mode: str) -> Iterator[None]:
    """TF32 switches and autocast for one precision mode, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    try:
        with autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def timed_iterations(run: Callable[[], object], args: argparse.Namespace) -> int:
    """Timed iterations for this case: ``--iters``, cut to fit ``--budget`` seconds (at least 3)."""
    once = cuda_median_ms(run, warmup=0, iters=1)
    return max(3, min(args.iters, int(args.budget * 1000 / max(once, 1e-3))))


def measure(encoder: nn.Module, name: str, size: int, mode: str, args: argparse.Namespace) -> Result:
    """Time one precision mode of an encoder; OOM is a result, not a failure."""
    images = torch.randn(1, 3, size, size, device="cuda")
    try:
        with torch.inference_mode(), precision(mode):
            encoder(images)  # first call: kernels, autotuning, lazy init
            count = timed_iterations(lambda: encoder(images), args)
            torch.cuda.reset_peak_memory_stats()
            median = cuda_median_ms(lambda: encoder(images), warmup=min(args.warmup, count), iters=count)
        return Result(name, size, mode, median, count, torch.cuda.max_memory_allocated() / 2**30)
    except torch.cuda.OutOfMemoryError:
        return Result(name, size, mode, None, 0, None, "OOM")
    finally:
        torch.cuda.empty_cache()


def run_model(name: str, size: int, args: argparse.Namespace) -> list[Result]:
    """All precision modes of one encoder at one size (built once)."""
    try:
        encoder = build_encoder(name, size)
    except torch.cuda.OutOfMemoryError:
        return [Result(name, size, mode, None, 0, None, "OOM") for mode in args.precisions]
    results = [measure(encoder, name, size, mode, args) for mode in args.precisions]
    del encoder
    torch.cuda.empty_cache()
    return results


def runnable_attention_backends() -> list[str]:
    """Backends of hrsam::varlen_attention that accept a CUDA fp16 tensor on this machine."""
    probe = torch.empty(1, 1, 64, device="cuda", dtype=torch.float16)
    return available_backends("varlen_attention", probe)


def markdown(results: list[Result], args: argparse.Namespace) -> str:
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    header = ["model", "input", "precision", "median ms", "iters", "peak GiB", "paper (RTX 3090, ms)"]
    rows = [
        [
            LABELS[r.model],
            r.size,
            r.precision,
            f"{r.median_ms:.1f}" if r.median_ms is not None else r.note,
            r.iterations,
            f"{r.peak_gib:.2f}" if r.peak_gib is not None else "-",
            PAPER_MS.get((r.model, r.size), ""),
        ]
        for r in results
    ]
    notes = [
        "## Encoder latency (batch 1, random weights)",
        "",
        f"- {environment()}; {memory:.0f} GiB; {datetime.date.today().isoformat()}",
        f"- varlen attention backends that run here (fp16 probe): {', '.join(runnable_attention_backends())}",
        f"- median of up to {args.iters} iterations (fewer for slow cases, {args.budget:g} s budget) after "
        f"{args.warmup} warm-up runs, CUDA events; peak = torch.cuda.max_memory_allocated while timing",
        "- fp32 = TF32 off; tf32 = TF32 matmul/conv; bf16 = autocast bfloat16 (scan state in fp32)",
        "",
    ]
    return "\n".join(notes) + markdown_table(header, rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--models", nargs="+", default=list(LABELS), choices=list(LABELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"],
                        choices=["fp32", "tf32", "bf16"])  # fmt: skip
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timed runs per case")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/encoder.py needs a CUDA device", file=sys.stderr)
        return 2
    results = []
    for name in args.models:
        for size in args.sizes:
            for result in run_model(name, size, args):
                results.append(result)
                shown = f"{result.median_ms:.1f} ms" if result.median_ms is not None else result.note
                print(f"{LABELS[name]:>16} {size:>5} {result.precision:>5}: {shown}", flush=True)
    text = markdown(results, args)
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
