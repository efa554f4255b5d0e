"""``python -m export aoti``: AOTInductor packages of encoder and decoder, beside the sidecar.

A ``.pt2`` package holds one half of the model compiled by Inductor ahead of time: generated
kernels (Triton cubins on CUDA, C++ on the CPU), the weights as constants, and calls to PyTorch's
own kernels through AOTInductor's C shims. Loading it (``trt_runtime.aoti_runner``) runs no Python
model code, so a deployment needs torch but neither hrsam's model nor Triton.

What is packaged is ``hrsam.compiled.EncoderPart`` / ``DecoderPart`` (the export contract's I/O,
autocast inside), the same modules the ``compiled`` runner compiles; the custom ops are traced
in their Inductor-visible forms (``hrsam.ops.lowering.aot_lowering``) and, on CUDA, with the
compiled runner's engine-only forms (``hrsam.ops.lowering.engine_kernels``: the MLPs' fc1 + GELU
as one GEMM in half precision, the attention inputs' gather + RoPE as one Triton kernel, both
compiled into the package). The encoder is built for
one input size, the decoder with a dynamic point count up to ``--max-points``. Each package's
metadata repeats the sidecar's (``Sidecar.metadata``) plus its precision, so a runtime refuses
packages that do not belong to their ``model.json``.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim
from torch.nn.attention import SDPBackend

from export.aoti_compiler import pick_compiler
from export.cli import UserError
from export.onnx_export import add_model_arguments, check_size, load_from_arguments, make_sidecar, prepare_output_dir
from hrsam.checkpoint import LoadedModel, file_sha256, weights_sha256
from hrsam.compiled import (
    DECODER_SDPA_PRIORITY,
    INDUCTOR_OPTIONS,
    DecoderPart,
    EncoderPart,
    decoder_example,
    sdpa_priority,
)
from hrsam.contract import AOTI_FILES, META_MAX_POINTS, META_PRECISION, POINTS_AXIS, SIDECAR_FILE, Sidecar
from hrsam.modeling.configs import PATCH_SIZE
from hrsam.ops.lowering import aot_lowering, engine_kernels
from hrsam.runner import autocast_dtype_of
from trt_runtime.aoti_check import embedded_libstdcxx_reason

DEFAULT_MAX_POINTS = 64


@dataclass(frozen=True)
class AotiResult:
    """What ``export_aoti`` wrote, the compile time per part (s) and max |package - eager| per part."""

    sidecar: Sidecar
    directory: Path
    seconds: dict[str, float]
    errors: dict[str, float]


# Weight-only work (autocast's casts of the float32 weights, transposes) is folded once, when a
# package is loaded: runtime constant folding. The compiled runner's ``freezing`` would fold it at
# build time, but freezing an exported encoder fails in Inductor (torch 2.13, the CPU build here):
# ``constant_fold`` deletes a shared index tensor that another node still reads. Packaged without
# either, every call re-cast the weights: 0.25 ms of the encoder at 1024 on the H200
# (docs/BENCHMARKS.md).
AOTI_OPTIONS = {
    **INDUCTOR_OPTIONS, "freezing": False, "aot_inductor.use_runtime_constant_folding": True,
}  # fmt: skip


def check_device(device: str) -> torch.device:
    """The build device: packages run only on the kind of device they were compiled for."""
    try:
        target = torch.device(device)
    except RuntimeError:
        target = None
    if target is None or target.type not in ("cuda", "cpu"):
        raise UserError(f"--device must be cuda or cpu, got {device!r}")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this machine has no CUDA device (a CPU package: --device cpu)")
    return target


def sidecar_for(loaded: LoadedModel, size: int, directory: Path, source: dict) -> Sidecar:
    """The directory's sidecar when it describes this model, size and weights; else a new one.

    Packages join an ONNX export of the same model; a directory of another model is refused.
    """
    if not (directory / SIDECAR_FILE).is_file():
        return make_sidecar(loaded, size, portable=False, source=source)
    sidecar = Sidecar.read(directory)
    found = (sidecar.model, sidecar.input_size, sidecar.weights_sha256)
    wanted = (loaded.model.config.name, size, weights_sha256(loaded.model))
    if found != wanted:
        raise UserError(
            f"{directory} holds an export of {found[0]} at input size {found[1]} with other weights "
            f"(or another size); choose another --out for {wanted[0]} at {wanted[1]}"
        )
    return sidecar


def _package(
    part: nn.Module,
    args: tuple,
    dynamic_shapes: tuple | None,
    path: Path,
    metadata: dict[str, str],
    autotune: bool,
    compiler: str,
    sdpa_backends: Sequence[SDPBackend] | None,
) -> float:
    """torch.export (lowered ops) + AOTInductor (wrapper built by ``compiler``) into ``path``; returns the seconds.

    ``sdpa_backends``: the attention kernels' priority while Inductor lowers (as the compiled runner).
    """
    start = time.perf_counter()
    options = {
        **AOTI_OPTIONS, "max_autotune": autotune, "aot_inductor.metadata": metadata, "cpp.cxx": (compiler,),
    }  # fmt: skip
    path.unlink(missing_ok=True)
    with sdpa_priority(sdpa_backends):
        with torch.no_grad():
            with aot_lowering(), engine_kernels():
                program = torch.export.export(part, args, dynamic_shapes=dynamic_shapes)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=options)
    return time.perf_counter() - start


def _max_error(path: Path, part: nn.Module, args: tuple) -> float:
    """Load the package back and compare its outputs with the eager part on the same inputs."""
    package = torch._inductor.aoti_load_package(str(path))
    with torch.no_grad():
        got, want = package(*args), part(*args)
    pairs = zip(got, want, strict=True) if isinstance(want, tuple) else [(got, want)]
    return max(float((a.float() - b.float()).abs().max()) for a, b in pairs)


def _record(path: Path, metadata: dict[str, str], device: torch.device, seconds: float, compiler: str) -> dict:
    """The sidecar's record of one package: file, what it was built for and with, and how long it took."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    record = {
        "file": path.name, "sha256": file_sha256(path), "bytes": str(path.stat().st_size),
        "precision": metadata[META_PRECISION], "device": device.type, "gpu": gpu, "torch": torch.__version__,
        "cxx": compiler, "compile_s": round(seconds, 1),
    }  # fmt: skip
    if META_MAX_POINTS in metadata:
        record["max_points"] = int(metadata[META_MAX_POINTS])
    return record


def export_aoti(
    loaded: LoadedModel,
    size: int,
    out_dir: str | Path,
    precision: str = "bf16",
    device: str = "cuda",
    max_points: int = DEFAULT_MAX_POINTS,
    max_autotune: bool = False,
    source: dict | None = None,
) -> AotiResult:
    """Package ``loaded`` at input ``size`` into ``out_dir`` (``encoder.pt2``, ``decoder.pt2``, sidecar)."""
    size = check_size(size)
    autocast = autocast_dtype_of(precision)
    target = check_device(device)
    if max_points < 2:
        raise UserError(f"--max-points must be at least 2 (a click and SAM's padding point), got {max_points}")
    directory = prepare_output_dir(out_dir)
    compiler = pick_compiler().compiler  # before minutes of packaging: a wrong one would only show at load
    sidecar = sidecar_for(loaded, size, directory, dict(source or {}))
    model = loaded.model.eval().float().to(target)
    model.encoder.prepare(size, size, 1, target)
    example = decoder_example(size // PATCH_SIZE, 3, target)
    points = Dim(POINTS_AXIS, min=1, max=max_points)
    parts = {
        "encoder": (EncoderPart(model, autocast), (torch.randn(1, 3, size, size, device=target),), None, {}, None),
        "decoder": (DecoderPart(model, autocast), example, ({}, {1: points}, {1: points}, {}, {}),
                    {META_MAX_POINTS: str(max_points)}, DECODER_SDPA_PRIORITY),
    }  # fmt: skip
    seconds, errors = {}, {}
    for name, (part, args, dynamic, extra, sdpa_backends) in parts.items():
        path = directory / AOTI_FILES[name]
        metadata = {**sidecar.metadata(name), META_PRECISION: precision, **extra}
        seconds[name] = _package(part, args, dynamic, path, metadata, max_autotune, compiler, sdpa_backends)
        reason = embedded_libstdcxx_reason(path)  # loading it back to check it would end the process
        if reason is not None:
            raise UserError(reason)
        errors[name] = _max_error(path, part, args)
        sidecar.aoti[name] = _record(path, metadata, target, seconds[name], compiler)
    sidecar.write(directory)
    return AotiResult(sidecar, directory, seconds, errors)


def run(args: argparse.Namespace) -> int:
    check_size(args.size)
    check_device(args.device)
    prepare_output_dir(args.out)
    choice = pick_compiler()
    for compiler, reason in choice.passed_over:
        print(f"not using {compiler} for the packages' wrappers: {reason}; using {choice.compiler}")
    loaded, source = load_from_arguments(args)
    result = export_aoti(
        loaded, args.size, args.out, args.precision, args.device, args.max_points, args.max_autotune, source
    )
    sidecar = result.sidecar
    print(f"packaged {sidecar.model} at input size {sidecar.input_size}, {args.precision} on {args.device}; "
          f"weights: {sidecar.weights}")  # fmt: skip
    for part, record in sidecar.aoti.items():
        mib = int(record["bytes"]) / 2**20
        print(f"  {result.directory / record['file']}: {mib:.1f} MiB, compiled in {result.seconds[part]:.0f} s, "
              f"max |package - eager {args.precision}| = {result.errors[part]:.2e}")  # fmt: skip
    print(f"run it with: trt_runtime.open_predictor('aoti', export_dir={str(result.directory)!r}, "
          f"precision={args.precision!r})")  # fmt: skip
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "aoti",
        help="package encoder and decoder with AOTInductor (encoder.pt2, decoder.pt2, model.json)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--size", type=int, default=1024, help="fixed input side S (a multiple of 16)")
    parser.add_argument("--out", required=True, help="output directory (may hold the ONNX export of the same model)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16",
                        help="compute precision (autocast) compiled into the packages")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a CPU package")
    parser.add_argument("--max-points", type=int, default=DEFAULT_MAX_POINTS,
                        help="most prompt points (clicks + SAM's padding point) the decoder package takes")
    parser.add_argument("--max-autotune", action="store_true", help="let Inductor benchmark kernel variants (slow)")
    parser.set_defaults(run=run)
