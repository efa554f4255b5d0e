"""Where an AOTInductor encoder package spends GPU time, next to the compiled encoder (same model, size, weights).

Run on the GPU machine from the repository root:

    python benchmarks/profile_aoti.py --model hrsam_vit_b --size 1024 --out $OUT/profile_aoti.md

Why: on the H200 the package's encoder was 1.4 ms slower than the compiled runner's at 1024 even
when both were replayed from CUDA graphs (docs/BENCHMARKS.md), so the difference is in the kernels,
not in launches. The compiled part (``hrsam.compiled.compile_part``) and the package (``python -m
export aoti`` into a temporary directory, called directly: a graph replay has no CPU-side operators
to attribute kernels to) are profiled ``--iters`` times each with ``benchmarks/profile_encoder.py``'s
kernel timing and categories.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, write_report  # noqa: E402
from benchmarks.profile_encoder import category_table, kernel_times, top_kernels  # noqa: E402
from export.aoti import export_aoti  # noqa: E402
from hrsam.checkpoint import load_model  # noqa: E402
from hrsam.compiled import EncoderPart, compile_part  # noqa: E402
from hrsam.modeling.configs import CONFIGS  # noqa: E402
from hrsam.runner import autocast_dtype_of  # noqa: E402
from trt_runtime.aoti_runner import AOTIRunner  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrsam_vit_b", choices=sorted(CONFIGS))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--iters", type=int, default=5, help="profiled calls per variant")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/profile_aoti.py needs a CUDA device", file=sys.stderr)
        return 2
    model = load_model(args.model).model.cuda().eval()  # seed 0: the weights the tests and benchmarks use
    model.encoder.prepare(args.size, args.size, 1, "cuda")
    images = torch.randn(1, 3, args.size, args.size, device="cuda")
    compiled = compile_part(EncoderPart(model, autocast_dtype_of(args.precision)))
    with torch.no_grad():
        fast, fast_origins = kernel_times(lambda: compiled(images), args.iters)
    with tempfile.TemporaryDirectory() as directory:
        export_aoti(load_model(args.model), args.size, directory, args.precision, "cuda", max_points=3)
        runner = AOTIRunner(directory, precision=args.precision, cuda_graphs=False)
        packaged, packaged_origins = kernel_times(lambda: runner.encode(images), args.iters)
    lines = [f"## Compiled vs AOTI encoder kernels: {args.model} at {args.size}, {args.precision}", "",
             f"- {environment()}", "", category_table({"compiled": fast, "aoti": packaged}), "",
             "Top AOTI kernels:", "", top_kernels(packaged, packaged_origins, 25), "",
             "Top compiled kernels:", "", top_kernels(fast, fast_origins, 25), ""]  # fmt: skip
    text = "\n".join(lines)
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
