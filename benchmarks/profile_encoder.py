"""Where the compiled encoder (and decoder) spend GPU time: kernels grouped by kind, eager next to compiled.

Run on the GPU machine (from the repository root), after benchmarks/compiled.py or the GPU tests
with the same ``TORCHINDUCTOR_CACHE_DIR`` so the compile is a cache hit (its time is printed: the
"second process" start):

    python benchmarks/profile_encoder.py --model hrsampp_vit_b --size 2048 --out $OUT/profile.md

For each of eager and compiled (``hrsam.compiled.compile_part``, the graphs the compiled runner
captures) the part runs ``--iters`` times under ``torch.profiler`` (CUDA activity); the kernels of
the Chrome trace are classified by name (``CATEGORIES``, first match wins) into GEMMs, attention,
the selective scan, convolutions, norms, other reductions, gathers / concatenations, elementwise,
resizes and copies. Kernel time is GPU busy time: the replayed CUDA graph adds no launch gaps, so
the sum is close to the graph's latency. The FLOP bound counts matmul, convolution and attention
FLOPs (``torch.utils.flop_counter``; attention as 4 Tq x max_seqlen_k x H x D, exact for KV-padded
windows) at the card's dense tensor peak, known here for H100 / H200 only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cuda_graph_median_ms, environment, markdown_table, write_report  # noqa: E402
from hrsam.checkpoint import load_model  # noqa: E402
from hrsam.compiled import DecoderPart, EncoderPart, compile_part, decoder_example  # noqa: E402
from hrsam.modeling.configs import CONFIGS, PATCH_SIZE  # noqa: E402
from hrsam.runner import autocast_dtype_of  # noqa: E402

# (category, pattern on the lower-cased kernel name); the first match wins, so specific names first.
CATEGORIES: list[tuple[str, str]] = [
    ("selective scan", r"_(chunk|cycle)_(state|carry|output)_kernel"),
    ("attention", r"flash|fmha|attention|attn|gather_rope"),  # gather_rope: the inputs, as Inductor's kernels were
    ("convolution", r"conv|cudnn|implicit_convolve|depthwise"),
    ("GEMM", r"gemm|nvjet|cutlass|xmma|cublas|triton_tem_|splitk|sm90_|sm80_"),
    ("norms", r"layer_norm|layernorm|var_mean|rms_norm"),
    ("gathers / cat", r"index|gather|cat|scatter|take"),
    ("resize", r"upsample|interp|bilinear"),
    ("reductions", r"triton_(per|red)_|reduce|softmax|sum"),
    ("elementwise", r"triton_poi_|elementwise|vectorized|unrolled"),
    ("copies", r"memcpy|memset|copy"),
]
# Dense tensor-core peaks (TFLOP/s) of the SXM cards this workplace lends.
PEAK_TFLOPS = {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}


def category(name: str) -> str:
    lowered = name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, lowered):
            return label
    return "other"


def kernel_times(fn: Callable[[], object], iters: int) -> tuple[dict[str, tuple[float, int]], dict[str, str]]:
    """(name -> (total GPU ms per call, launches per call), name -> operator that launched it).

    The launching operator is the innermost CPU-side operator the profiler links each kernel to. In
    a compiled graph the kernels that are not Inductor's own come from operators Inductor kept as
    calls (extern kernels, fallbacks), and their names (``elementwise_kernel<128, 4, ...>``) do not
    say which. ``fn`` runs without CUDA-graph replay (a replay has no CPU-side operators).
    """
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        prof.export_chrome_trace(trace.name)
        events = json.loads(Path(trace.name).read_text())["traceEvents"]
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in events:
        if event.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in event:
            totals[event["name"]][0] += event["dur"] / 1000 / iters
            totals[event["name"]][1] += 1 / iters
    origins: dict[str, str] = {}
    for event in prof.events():
        for kernel in event.kernels:
            origins.setdefault(kernel.name, event.name)
    return {name: (ms, round(count)) for name, (ms, count) in totals.items()}, origins


def category_table(columns: dict[str, dict[str, tuple[float, int]]]) -> str:
    """One row per category: ms, share and kernel count for each profiled variant."""
    grouped = {label: defaultdict(lambda: [0.0, 0]) for label in columns}
    for label, kernels in columns.items():
        for name, (ms, count) in kernels.items():
            grouped[label][category(name)][0] += ms
            grouped[label][category(name)][1] += count
    names = [label for label, _ in CATEGORIES] + ["other"]
    header = ["kind"] + [f"{label} {unit}" for label in columns for unit in ("ms", "share", "kernels")]
    rows = []
    for kind in [*names, "total"]:
        row = [kind]
        for label in columns:
            total = sum(ms for ms, _ in grouped[label].values())
            ms, count = (total, sum(c for _, c in grouped[label].values())) if kind == "total" else grouped[label][kind]
            row += [f"{ms:.3f}", f"{100 * ms / max(total, 1e-9):.1f}%", count]
        if kind == "total" or any(float(row[1 + 3 * i]) > 0 for i in range(len(columns))):
            rows.append(row)
    return markdown_table(header, rows)


def top_kernels(kernels: dict[str, tuple[float, int]], origins: dict[str, str], count: int = 15) -> str:
    """The ``count`` kernels with the most GPU time per call, with the operator that launched each."""
    ranked = sorted(kernels.items(), key=lambda item: -item[1][0])[:count]
    rows = [[f"`{name[:90]}`", category(name), f"`{origins.get(name, '?')[:60]}`", f"{ms:.3f}", calls]
            for name, (ms, calls) in ranked]  # fmt: skip
    return markdown_table(["kernel", "kind", "launched by", "ms per call", "launches"], rows)


def attention_flops(q_shape: torch.Size, *args: object, **_: object) -> int:
    """hrsam::varlen_attention: QK^T and PV over max_seqlen_k keys per query (exact with KV padding).

    Called by FlopCounterMode with tensor arguments replaced by their shapes; args[5] is max_seqlen_k.
    """
    return 4 * q_shape[0] * q_shape[1] * q_shape[2] * int(args[5])


def matmul_tflop(part: torch.nn.Module, inputs: tuple) -> float:
    """Matmul / conv / attention TFLOP of one eager call (the scan's exponentials are not FLOPs here)."""
    mapping = {torch.ops.hrsam.varlen_attention.default: attention_flops}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        part(*inputs)
    return counter.get_total_flops() / 1e12


def profile_part(label: str, part: torch.nn.Module, inputs: tuple, args: argparse.Namespace) -> list[str]:
    """Markdown section for one part: compile time, graph latency, category table, top kernels."""
    start = time.perf_counter()
    compiled = compile_part(part)
    with torch.no_grad():
        compiled(*inputs)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    with torch.no_grad():
        eager, eager_origins = kernel_times(lambda: part(*inputs), args.iters)
        fast, fast_origins = kernel_times(lambda: compiled(*inputs), args.iters)
        graph_ms = cuda_graph_median_ms(lambda: compiled(*inputs), iters=30)
        tflop = matmul_tflop(part, inputs)
    lines = [f"### {label}", "", f"- first compiled call (compile or cache hit): {compile_s:.1f} s",
             f"- compiled, replayed CUDA graph: {graph_ms:.3f} ms (median of 30)",
             f"- matmul + conv + attention: {tflop:.3f} TFLOP"]  # fmt: skip
    peak = PEAK_TFLOPS.get(args.precision) if re.search(r"H100|H200", torch.cuda.get_device_name()) else None
    if peak:
        bound = tflop / peak * 1000
        lines.append(f"- FLOP bound at {peak} TFLOP/s ({args.precision} dense): {bound:.3f} ms; "
                     f"compiled graph = {graph_ms / bound:.1f}x the bound")  # fmt: skip
    lines += ["", category_table({"eager": eager, "compiled": fast}), "", "Top compiled kernels:", "",
              top_kernels(fast, fast_origins), "", "Top eager kernels:", "",
              top_kernels(eager, eager_origins), ""]  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrsampp_vit_b", choices=sorted(CONFIGS))
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--points", type=int, default=6, help="decoder prompt points (5 clicks + padding)")
    parser.add_argument("--iters", type=int, default=5, help="profiled calls per variant")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/profile_encoder.py needs a CUDA device", file=sys.stderr)
        return 2
    model = load_model(args.model).model.cuda().eval()  # seed 0: the weights the tests and benchmark use
    model.encoder.prepare(args.size, args.size, 1, "cuda")
    autocast = autocast_dtype_of(args.precision)
    images = torch.randn(1, 3, args.size, args.size, device="cuda")
    prompts = decoder_example(args.size // PATCH_SIZE, args.points, torch.device("cuda"))
    prompts[1].uniform_(0, args.size)
    prompts[2].fill_(1.0)
    lines = [f"## Profile: {args.model} at {args.size}, {args.precision}", "", f"- {environment()}", ""]
    lines += profile_part(f"encoder, input {args.size}", EncoderPart(model, autocast), (images,), args)
    side = args.size // PATCH_SIZE
    lines += profile_part(f"decoder, {side}x{side} embedding, {args.points} points", DecoderPart(model, autocast),
                          prompts, args)  # fmt: skip
    text = "\n".join(lines) + "\n"
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
