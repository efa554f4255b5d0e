"""Eager PyTorch vs ONNX Runtime on the CPU: one image, encoder + 5 clicks, same run.

    PYTHONPATH=. python benchmarks/onnxruntime_cpu.py --model hrsam_tiny --size 1024 [--export-dir DIR]

Exports the model (random weights, seed 0) unless ``--export-dir`` holds an export of it, then
times whole sessions (set_image + 5 predict calls on the bundled example, each click feeding back
the previous logits) through the one predictor with each backend: one warm-up session, then the
median of ``--repeats`` sessions, wall clock. Prints a markdown table with the CPU model, thread
counts and versions.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from export.onnx_export import export_onnx
from export.parity import DEFAULT_CLICKS
from hrsam.checkpoint import load_model
from hrsam.cli import EXAMPLE_IMAGE, parse_points
from hrsam.images import load_image
from hrsam.ops import available_backends, use_backend
from hrsam.predictor import HRSAMPredictor
from trt_runtime import open_predictor


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def session_times(predictor: HRSAMPredictor, size: int, repeats: int) -> tuple[float, float]:
    """Median (encoder ms, 5-click ms) over ``repeats`` sessions after one warm-up session."""
    image = load_image(EXAMPLE_IMAGE)
    coords, labels = parse_points(DEFAULT_CLICKS)
    encoder, clicks = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        predictor.set_image(image, target_size=size)
        middle = time.perf_counter()
        logits = None
        for k in range(1, len(coords) + 1):
            _, _, logits = predictor.predict(coords[:k], labels[:k], mask_input=logits)
        end = time.perf_counter()
        encoder.append((middle - start) * 1e3)
        clicks.append((end - middle) * 1e3)
    return statistics.median(encoder[1:]), statistics.median(clicks[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrsam_tiny")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--export-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    directory = args.export_dir or Path(tempfile.mkdtemp(prefix="hrsam-bench-"))
    if not (directory / "model.json").is_file():
        export_onnx(load_model(args.model), args.size, directory)
    predictors = {
        "eager": open_predictor("eager", model=args.model),
        "onnxruntime": open_predictor("onnxruntime", export_dir=directory),
    }
    with use_backend("selective_scan", "reference"):
        rows = {"eager, torch reference scan": session_times(predictors["eager"], args.size, args.repeats)}
    rows |= {name: session_times(p, args.size, args.repeats) for name, p in predictors.items()}
    eager_total = sum(rows["eager, torch reference scan"])
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; scan backends: {available_backends('selective_scan')}")
    print(f"{args.model} at {args.size}, bundled example, encoder + 5 clicks, median of {args.repeats}\n")
    print("| backend | encoder ms | 5 clicks ms | session ms | vs eager with the reference scan |")
    print("|---|---|---|---|---|")
    for name, (encoder, clicks) in rows.items():
        total = encoder + clicks
        print(f"| {name} | {encoder:.0f} | {clicks:.0f} | {total:.0f} | {eager_total / total:.2f}x |")


if __name__ == "__main__":
    main()
