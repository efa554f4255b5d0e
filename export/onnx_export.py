"""``python -m export onnx``: encoder and decoder ONNX graphs plus the ``model.json`` sidecar.

The encoder is exported for ONE input size: ``HRSAMEncoder.prepare`` builds the attention layouts
first, so every index mapping, cu_seqlens and RoPE table is a constant initializer of the graph,
and the two irregular operations appear as single ``hrsam`` nodes (``export.onnx_ops``). The decoder
has segment-anything's ONNX I/O with a dynamic number of points. ``--portable`` exports the same
function with standard ONNX ops only (``HRSAMEncoder.set_portable``). Contract: ``docs/EXPORT.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxscript.optimizer
import torch
from torch import Tensor, nn
from torch.export import Dim

from export.cli import UserError
from export.onnx_ops import register_schemas, translations
from hrsam.checkpoint import LoadedModel, file_sha256, load_model, weights_sha256
from hrsam.compiled import DecoderPart, EncoderPart
from hrsam.contract import (
    CUSTOM_DOMAIN,
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    ONNX_FILES,
    OPSET,
    POINTS_AXIS,
    Sidecar,
)
from hrsam.modeling.configs import CONFIGS, PATCH_SIZE, PIXEL_MEAN, PIXEL_STD
from hrsam.modeling.interactive import HRSAMInteractive

MAX_POINTS = 64  # upper bound of the dynamic point axis used while tracing (not a limit of the graph)
# Protobuf's limit: larger models keep their weights in an external data file beside the graph.
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote and how long each part took (seconds)."""

    sidecar: Sidecar
    directory: Path
    seconds: dict[str, float]


def check_size(size: int) -> int:
    """The input size: a positive multiple of the patch size."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % PATCH_SIZE:
        raise UserError(f"--size must be a positive multiple of {PATCH_SIZE} (e.g. 1024 or 2048), got {size!r}")
    return size


def check_output_dir(directory: str | Path) -> Path:
    """Refuse an output path that is a file or lies under one, or an unwritable parent, creating nothing."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {path} is not writable ({existing} is not a writable directory)")
    return path


def prepare_output_dir(directory: str | Path) -> Path:
    """Create ``directory`` (or accept an existing one) and prove it is writable."""
    path = check_output_dir(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f"--out {path} is not writable ({error.strerror or error})") from None
    return path


def example_inputs(model: HRSAMInteractive, size: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Tracing inputs for encoder and decoder at input ``size`` (3 points; the point axis is dynamic)."""
    grid = size // PATCH_SIZE
    images = torch.randn(1, 3, size, size)
    embeddings = torch.randn(1, model.config.encoder.out_dim, grid, grid)
    coords = torch.tensor([[[0.25 * size, 0.5 * size], [0.75 * size, 0.4 * size], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0]])
    mask = torch.zeros(1, 1, 4 * grid, 4 * grid)
    return (images,), (embeddings, coords, labels, mask, torch.zeros(1))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's internal notices (torchvision ops skipped, deprecations); errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _to_onnx(
    module: nn.Module,
    args: tuple[Tensor, ...],
    names: tuple[tuple[str, ...], tuple[str, ...]],
    dynamic_shapes: tuple | None,
    portable: bool,
) -> onnx.ModelProto:
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=list(names[0]),
            output_names=list(names[1]),
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=None if portable else translations(),
            optimize=not portable,
            verbose=False,
        )
        if portable:
            # The full optimizer's pattern rewrites take tens of minutes on the unrolled scan of a
            # portable graph; constant folding and dead-node removal are what it needs.
            onnxscript.optimizer.fold_constants(program.model)
            onnxscript.optimizer.remove_unused_nodes(program.model)
    return program.model_proto


def _save(model: onnx.ModelProto, path: Path, metadata: dict[str, str]) -> None:
    """Write ``model`` with our metadata; weights go to ``<file>.data`` beyond protobuf's 2 GB."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    external = model.ByteSize() > EXTERNAL_DATA_BYTES
    data_file = path.with_name(path.name + ".data")
    data_file.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external, location=data_file.name)
    onnx.checker.check_model(str(path), full_check=True)


def _versions() -> dict[str, str]:
    names = ("torch", "onnx", "onnxscript")
    return {name: importlib.metadata.version(name) for name in names} | {"hrsam": _hrsam_version()}


def _hrsam_version() -> str:
    try:
        return importlib.metadata.version("hrsam")
    except importlib.metadata.PackageNotFoundError:
        return "source tree"


def make_sidecar(loaded: LoadedModel, size: int, portable: bool, source: dict | None = None) -> Sidecar:
    """The sidecar of an export of ``loaded`` at ``size`` (file records are added once written).

    ``source`` records how to rebuild the same eager model (checkpoint path, seed) for checks.
    """
    model = loaded.model
    return Sidecar(
        model=model.config.name,
        config=model.config.to_dict(),
        input_size=size,
        embedding_size=size // PATCH_SIZE,
        weights_sha256=weights_sha256(model),
        weights=loaded.weights,
        random_weights=loaded.random_weights,
        portable=portable,
        source=dict(source or {}),
        custom_ops=[] if portable else [f"{CUSTOM_DOMAIN}::VarlenAttention", f"{CUSTOM_DOMAIN}::SelectiveScan"],
        preprocessing={
            "pixel_mean": list(PIXEL_MEAN),
            "pixel_std": list(PIXEL_STD),
            "patch_size": PATCH_SIZE,
            "resize": "longest side to input_size, bilinear (antialiased by default), new side int(scale * side + 0.5)",
            "pad": "zeros bottom/right to input_size x input_size, after normalisation",
            "point_coords": "pixels of the resized image; SAM's padding point (0, 0) with label -1 appended",
        },
        exporter=_versions(),
    )


def export_onnx(
    loaded: LoadedModel, size: int, out_dir: str | Path, portable: bool = False, source: dict | None = None
) -> ExportResult:
    """Export ``loaded`` at input ``size`` into ``out_dir``; returns the sidecar and timings."""
    size = check_size(size)
    directory = prepare_output_dir(out_dir)
    register_schemas()
    model = loaded.model.eval().cpu().float()
    model.encoder.set_portable(portable)
    model.encoder.prepare(size, size)
    sidecar = make_sidecar(loaded, size, portable, source)
    encoder_args, decoder_args = example_inputs(model, size)
    points = Dim(POINTS_AXIS, min=1, max=MAX_POINTS)
    seconds = {}
    parts = (
        ("encoder", EncoderPart(model, None), encoder_args, (ENCODER_INPUTS, ENCODER_OUTPUTS), None),
        ("decoder", DecoderPart(model, None), decoder_args, (DECODER_INPUTS, DECODER_OUTPUTS),
         ({}, {1: points}, {1: points}, {}, {})),
    )
    try:
        for part, module, args, names, dynamic in parts:
            start = time.perf_counter()
            with torch.no_grad():
                proto = _to_onnx(module, args, names, dynamic, portable)
            path = directory / ONNX_FILES[part]
            _save(proto, path, sidecar.metadata(part))
            seconds[part] = time.perf_counter() - start
            sidecar.files[part] = {"file": path.name, "sha256": file_sha256(path), "bytes": str(path.stat().st_size)}
    finally:
        model.encoder.set_portable(False)
    _keep_built_records(sidecar, directory)
    sidecar.write(directory)
    return ExportResult(sidecar, directory, seconds)


def _keep_built_records(sidecar: Sidecar, directory: Path) -> None:
    """Carry engine / AOTInductor records over from the sidecar being replaced, for the same model.

    Their runtimes recheck each record (ONNX hash, versions, GPU) when they open it, so a record
    that no longer fits is refused there; dropping it here would only lose a still-valid engine.
    """
    try:
        previous = Sidecar.read(directory)
    except (FileNotFoundError, ValueError):
        return
    same = (previous.model, previous.input_size, previous.weights_sha256) == (
        sidecar.model, sidecar.input_size, sidecar.weights_sha256
    )
    if same:
        sidecar.engines, sidecar.aoti = previous.engines, previous.aoti


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The weights options every exporting command takes (``onnx``, ``aoti``, ``all``)."""
    parser.add_argument("--model", choices=sorted(CONFIGS), default=None,
                        help="model config (default: the checkpoint's, else the bundled default model)")
    parser.add_argument("--checkpoint", default=None, help="our .safetensors, a plain state dict or the authors' .pth")
    parser.add_argument("--allow-partial", action="store_true", help="accept a checkpoint that misses weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights (--model without --checkpoint)")


def load_from_arguments(args: argparse.Namespace) -> tuple[LoadedModel, dict]:
    """The model ``add_model_arguments`` selects, and the sidecar's ``source`` to rebuild it for checks."""
    loaded = load_model(args.model, args.checkpoint, allow_partial=args.allow_partial, seed=args.seed)
    checkpoint = loaded.checkpoint.resolve() if loaded.checkpoint else None
    return loaded, {"checkpoint": str(checkpoint) if checkpoint else None, "seed": args.seed}


def run(args: argparse.Namespace) -> int:
    check_size(args.size)
    check_output_dir(args.out)
    loaded, source = load_from_arguments(args)
    result = export_onnx(loaded, args.size, args.out, portable=args.portable, source=source)
    sidecar = result.sidecar
    kind = "standard ONNX ops only (portable)" if sidecar.portable else "hrsam custom nodes"
    print(f"exported {sidecar.model} at input size {sidecar.input_size} with {kind}; weights: {sidecar.weights}")
    for part, record in sidecar.files.items():
        mib = int(record["bytes"]) / 2**20
        print(f"  {result.directory / record['file']}: {mib:.1f} MiB, {result.seconds[part]:.1f} s")
    if sidecar.random_weights:
        print("NOTE: random weights: the graphs are real, their masks are not meaningful.")
    print(f"check it with: python -m export check {result.directory}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "onnx",
        help="export encoder.onnx, decoder.onnx and model.json for one input size",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--size", type=int, default=1024, help="fixed input side S (a multiple of 16)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--portable", action="store_true",
                        help="standard ONNX ops only (no hrsam nodes): for runtimes without our ops")
    parser.set_defaults(run=run)
