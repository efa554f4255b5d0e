"""Full-size ONNX exports: file sizes and export times of the ViT-B models (a documented run).

    PYTHONPATH=. python benchmarks/onnx_export.py --out /tmp/exports [--models ...] [--sizes ...]

Exports each model (random weights, seed 0) at each input size with ``export.onnx_export`` and
prints a markdown table: encoder / decoder file sizes (and external data, used beyond ~1.8 GB),
node counts, wall time per part, and the CPU it ran on. Each export is also checked by
``onnx.checker`` with full shape inference (part of the export itself).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import onnx
import torch

from export.onnx_export import export_onnx
from hrsam.checkpoint import load_model
from hrsam.contract import ONNX_FILES


def mib(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["hrsam_vit_b", "hrsampp_vit_b"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--portable", action="store_true")
    args = parser.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; torch "
          f"{torch.__version__}, onnx {onnx.__version__}; portable={args.portable}\n")
    print("| model | input | encoder MiB | encoder nodes | encoder s | decoder MiB | decoder s | external data |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for size in args.sizes:
            directory = args.out / f"{name}-{size}"
            start = time.perf_counter()
            result = export_onnx(load_model(name), size, directory, portable=args.portable)
            encoder = directory / ONNX_FILES["encoder"]
            nodes = len(onnx.load(str(encoder), load_external_data=False).graph.node)
            external = [p.name for p in directory.glob("*.data")]
            print(f"| {name} | {size} | {mib(encoder) + mib(encoder.with_name(encoder.name + '.data')):.0f} | "
                  f"{nodes} | {result.seconds['encoder']:.0f} | {mib(directory / ONNX_FILES['decoder']):.1f} | "
                  f"{result.seconds['decoder']:.0f} | {', '.join(external) or 'no'} |", flush=True)
            del result
            print(f"<!-- {name} {size}: {time.perf_counter() - start:.0f} s in all -->", flush=True)


if __name__ == "__main__":
    main()
