"""The compiled encoder under Inductor options read from the environment, one fresh process per variant.

Run on the GPU machine from the repository root:

    python benchmarks/inductor_options.py --model hrsam_vit_b --size 2048 --out $OUT/inductor_options.md \
        [--variants defaults PDL]

Why: the compiled runner uses Inductor's defaults (plus freezing); whether its autotuning options
buy anything at 2048 (GELU fused into GEMM epilogues by Triton GEMM templates, retuned pointwise
and norm kernels) is measured here rather than assumed. Each variant (``VARIANTS``) sets its
environment variables in a child process, which compiles ``hrsam.compiled.EncoderPart`` with
``compile_part``, captures it in a CUDA graph and reports the replay's median over 50 calls (CUDA
events), its build time (cold or warm as ``TORCHINDUCTOR_CACHE_DIR`` is) and its output's largest
error relative to eager at the same precision and eager float32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cuda_median_ms, environment, markdown_table, write_report  # noqa: E402
from hrsam.checkpoint import load_model  # noqa: E402
from hrsam.compiled import CudaGraphCall, EncoderPart, compile_part  # noqa: E402
from hrsam.runner import autocast_dtype_of  # noqa: E402

VARIANTS: dict[str, dict[str, str]] = {
    "defaults (the runner's)": {},
    "coordinate-descent tuning": {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"},
    "GEMM autotuning (Triton templates, epilogue fusion)": {"TORCHINDUCTOR_MAX_AUTOTUNE_GEMM": "1"},
    "GEMM autotuning + persistent TMA templates": {
        "TORCHINDUCTOR_MAX_AUTOTUNE_GEMM": "1",
        "ENABLE_PERSISTENT_TMA_MATMUL": "1",
    },
    # Hopper's programmatic dependent launch for Inductor's own Triton kernels: each may start while
    # its predecessor drains. The graph's gaps between kernels read 0.10-0.34 ms at 2048.
    "programmatic dependent launch (PDL)": {"TORCHINDUCTOR_ENABLE_PDL": "1"},
}


def child(model_name: str, size: int, precision: str) -> dict:
    """Compile, capture and time the encoder in this process (its Inductor options from the environment)."""
    model = load_model(model_name).model.cuda().eval()
    model.encoder.prepare(size, size, 1, "cuda")
    images = torch.randn(1, 3, size, size, device="cuda")
    part = EncoderPart(model, autocast_dtype_of(precision))
    with torch.no_grad():
        same, fp32 = part(images), EncoderPart(model, None)(images)
    start = time.perf_counter()
    call = CudaGraphCall(compile_part(part), [torch.zeros_like(images)], torch.cuda.graph_pool_handle())
    torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    out = call(images)[0]
    return {
        "ms": cuda_median_ms(call.graph.replay, iters=50),
        "build s": build_s,
        "error": ((out - same).abs().max() / same.abs().max()).item(),
        "error fp32": ((out - fp32).abs().max() / fp32.abs().max()).item(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrsam_vit_b")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--variants", nargs="+", help="run only the variants whose names contain one of these words")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/inductor_options.py needs a CUDA device", file=sys.stderr)
        return 2
    if args.child:
        print(json.dumps(child(args.model, args.size, args.precision)))
        return 0
    rows = []
    for label, settings in VARIANTS.items():
        if args.variants and not any(word in label for word in args.variants):
            continue
        command = [sys.executable, __file__, "--model", args.model, "--size", str(args.size), "--precision",
                   args.precision, "--out", str(args.out), "--child"]  # fmt: skip
        done = subprocess.run(command, env={**os.environ, **settings}, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append([label, "failed: " + done.stderr.strip().splitlines()[-1][:80], "-", "-", "-"])
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append([label, f"{r['ms']:.3f}", f"{r['build s']:.0f}", f"{r['error']:.2e}", f"{r['error fp32']:.2e}"])
        print(label, r, flush=True)
    header = ["Inductor options", "graph ms", "build s", f"max err vs eager {args.precision}", "vs eager fp32"]
    text = "\n".join([f"## Compiled encoder under Inductor options: {args.model} at {args.size}, {args.precision}",
                      "", f"- {environment()}", "", markdown_table(header, rows), ""])  # fmt: skip
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
