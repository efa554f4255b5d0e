"""Which SDPA kernel the compiled decoder's attention should run: one compile per backend choice.

    PYTHONPATH=. python benchmarks/decoder_attention.py --out decoder_attention.md

Why: in the compiled decoder (HRSAM at 2048: 128 x 128 embedding, 6 points, bf16, H200) Inductor's
pattern matcher turns SAM's matmul-softmax-matmul attention into ``scaled_dot_product_attention``,
which dispatched to cuDNN's kernel: 0.47 of the graph's 1.00 ms in 7 launches (docs/BENCHMARKS.md).
The issue aims at 1 ms per click. This run chose the runner's order (``DECODER_SDPA_PRIORITY``,
flash first). Per choice (PyTorch's default order, the runner's, then each backend alone, given to
``compile_part`` as its SDPA order), the decoder is compiled as ``CompiledRunner`` compiles it (a
CUDA graph), then timed (median of
``--iters`` replays, CUDA events), its attention kernels named from one profiled replay, and its
logits compared with the eager fp32 decoder on the same random embedding and prompts. A choice
that cannot run (no kernel for these shapes) is reported with its error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import attention_kernels, cuda_median_ms, environment, markdown_table  # noqa: E402
from benchmarks.compiled import prompts  # noqa: E402
from hrsam.checkpoint import load_model  # noqa: E402
from hrsam.compiled import DECODER_SDPA_PRIORITY, CudaGraphCall, DecoderPart, compile_part  # noqa: E402
from hrsam.modeling.configs import PATCH_SIZE  # noqa: E402
from hrsam.runner import autocast_dtype_of  # noqa: E402

CHOICES: dict[str, list[SDPBackend] | None] = {
    "default order": None,
    "runner's order (flash, cuDNN, memory-efficient, math)": DECODER_SDPA_PRIORITY,
    "flash": [SDPBackend.FLASH_ATTENTION],
    "memory-efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "cuDNN": [SDPBackend.CUDNN_ATTENTION],
    "math": [SDPBackend.MATH],
}


def measure(name: str, model: nn.Module, inputs: tuple, reference: torch.Tensor, args: argparse.Namespace) -> list:
    """One row: build under the choice, time, name the kernels, compare with eager fp32."""
    torch._dynamo.reset()  # a fresh trace: Dynamo does not guard on the SDPA backend flags
    try:
        part = compile_part(DecoderPart(model, autocast_dtype_of(args.precision)), sdpa_backends=CHOICES[name])
        call = CudaGraphCall(part, inputs, torch.cuda.graph_pool_handle())
    except Exception as error:  # a backend without a kernel for these shapes: report it, go on
        return [name, "-", "-", f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"]
    with torch.no_grad():
        masks = call(*inputs)[1]
    ms = cuda_median_ms(lambda: call(*inputs), iters=args.iters)
    error = ((masks - reference).abs().max() / reference.abs().max()).item()
    return [name, f"{ms:.3f}", f"{error:.2e}", attention_kernels(lambda: call(*inputs))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrsam_vit_b")
    parser.add_argument("--size", type=int, default=2048, help="input size; the embedding is size / 16")
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    model = load_model(args.model).model.cuda().eval()
    side = args.size // PATCH_SIZE
    embedding = torch.randn(1, 256, side, side, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    inputs = (embedding, *prompts(args.size, args.points))
    with torch.no_grad():
        reference = DecoderPart(model, None)(*inputs)[1]
    rows = [measure(name, model, inputs, reference, args) for name in CHOICES]
    text = "\n".join([
        f"## Compiled decoder: SDPA backend of the fused attention ({args.model}, {side}x{side} embedding, "
        f"{args.points} points, {args.precision})",
        "",
        f"- {environment()}; CUDA-graph replay per click, median of {args.iters}",
        "",
        markdown_table(["SDPA choice", "ms per click", "max |logits - eager fp32| / max", "attention kernels"], rows),
    ])  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
