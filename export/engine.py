"""``python -m export engine DIR``: TensorRT engines from an export directory's ONNX graphs.

For each part (encoder, decoder) the float32 graph is prepared for TensorRT (``prepare_graph``):
``export.precision`` gives it the requested precision (fp16 / bf16 with LayerNorm, softmax and the
scan in fp32; TensorRT builds strongly typed networks, the only kind TensorRT 11 has), and
``plugins.lowering`` turns each SelectiveScan into its three plugin nodes. TensorRT then parses it
with the hrsam plugins registered and builds the engine with: a workspace limit, a timing cache
kept beside the graphs (rebuilds reuse kernel timings), aliased plugin I/O (the scan's in-place
carry pass) and, for the decoder, an optimisation profile for 1..max_points points. The engine and
its ``EngineRecord`` (TensorRT version, GPU, precision, input size, the ONNX file's SHA-256) go into
the export directory and ``model.json``.

Everything that can go wrong before building is checked first, with one-line errors: the export
directory, TensorRT (which package to install), a CUDA GPU, plugin support and registration.
Decisions that need no TensorRT (profile shapes, flags, the prepared graph) are plain functions.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from export.cli import UserError
from export.precision import PRECISION_TYPES, apply_precision
from hrsam.checkpoint import file_sha256
from hrsam.contract import CUSTOM_DOMAIN, DECODER_INPUTS, ENGINE_FILES, PLUGIN_NAMESPACE, SELECTIVE_SCAN, Sidecar
from plugins import import_tensorrt, unavailable_reason
from plugins.definitions import PLUGINS
from plugins.lowering import lower_for_tensorrt
from trt_runtime.engine import EngineRecord
from trt_runtime.onnxruntime_runner import load_export
from trt_runtime.tensorrt_runner import cuda_device

# Inputs whose whole downstream subgraph stays fp32 (the prompt encoding, see export/precision.py).
PINNED_INPUTS = {"encoder": (), "decoder": ("point_coords", "point_labels", "has_mask_input")}
POINT_INPUTS = DECODER_INPUTS[1:3]  # point_coords [1, P, 2], point_labels [1, P]
PLUGIN_MODES = ("aot", "jit")
TIMING_CACHE_FILE = "timing.cache"


@dataclass(frozen=True)
class BuildOptions:
    """What ``python -m export engine`` builds; ``validate`` raises UserError for bad values."""

    precision: str = "fp16"
    parts: tuple[str, ...] = ("encoder", "decoder")
    max_points: int = 32
    opt_points: int = 8
    workspace_gib: float = 8.0
    timing_cache: Path | None = None
    plugins: str = "aot"
    optimization_level: int = 3
    verbose: bool = False

    def validate(self) -> None:
        if self.precision not in PRECISION_TYPES:
            raise UserError(f"--precision must be one of {sorted(PRECISION_TYPES)}, got {self.precision!r}")
        unknown = [part for part in self.parts if part not in ENGINE_FILES]
        if unknown or not self.parts:
            raise UserError(f"--parts takes {sorted(ENGINE_FILES)}, got {list(self.parts)}")
        if not 2 <= self.max_points <= 1024:
            raise UserError(f"--max-points must be in 2..1024 (a click and SAM's padding point), got {self.max_points}")
        if not 1 <= self.opt_points <= self.max_points:
            raise UserError(f"--opt-points must be in 1..{self.max_points}, got {self.opt_points}")
        if not self.workspace_gib > 0:
            raise UserError(f"--workspace-gib must be positive, got {self.workspace_gib}")
        if self.plugins not in PLUGIN_MODES:
            raise UserError(f"--plugins must be one of {PLUGIN_MODES}, got {self.plugins!r}")
        if not 0 <= self.optimization_level <= 5:
            raise UserError(f"--opt-level must be in 0..5, got {self.optimization_level}")


@dataclass(frozen=True)
class BuilderSettings:
    """The TensorRT builder configuration of one part, by enum name (so it is testable without TensorRT)."""

    network_flags: tuple[str, ...]
    preview_features: tuple[str, ...]
    workspace_bytes: int
    optimization_level: int
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)


def decoder_profile(options: BuildOptions) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min / opt / max shapes of the decoder's two point inputs (the one dynamic axis)."""
    coords, labels = POINT_INPUTS
    points = (1, options.opt_points, options.max_points)
    return {coords: tuple((1, p, 2) for p in points), labels: tuple((1, p) for p in points)}


def builder_settings(part: str, options: BuildOptions, has_plugins: bool) -> BuilderSettings:
    """Strongly typed network; Python plugins preferred AOT (or JIT); aliased I/O for the scan's carry."""
    flags = ["STRONGLY_TYPED"]
    if has_plugins:
        flags.append("PREFER_AOT_PYTHON_PLUGINS" if options.plugins == "aot" else "PREFER_JIT_PYTHON_PLUGINS")
    return BuilderSettings(
        network_flags=tuple(flags),
        preview_features=("ALIASED_PLUGIN_IO_10_03",) if has_plugins else (),
        workspace_bytes=int(options.workspace_gib * 2**30),
        optimization_level=options.optimization_level,
        profile=decoder_profile(options) if part == "decoder" else {},
    )


def custom_op_types(model: onnx.ModelProto) -> list[str]:
    """The hrsam op types a graph uses: the plugins TensorRT must find."""
    return sorted({node.op_type for node in model.graph.node if node.domain == CUSTOM_DOMAIN})


def prepare_graph(model: onnx.ModelProto, part: str, precision: str, sm_count: int) -> tuple[onnx.ModelProto, str]:
    """The graph TensorRT parses: ``precision`` applied, scans lowered; returns it and a summary."""
    typed, report = apply_precision(model, precision, PINNED_INPUTS[part])
    lowered, scans = lower_for_tensorrt(typed, sm_count)
    summary = f"{precision}: {report.summary()}" if precision != "fp32" else "fp32"
    if scans:
        summary += f"; {scans} {SELECTIVE_SCAN.op_type} nodes lowered to 3 plugins each"
    return lowered, summary


def preflight(directory: Path, options: BuildOptions) -> tuple[Sidecar, dict[str, Path], torch.device]:
    """Every check that needs no building: export files, TensorRT, GPU, plugin support and registration."""
    options.validate()
    sidecar, paths = load_export(directory)
    import_tensorrt()
    device = cuda_device("cuda")
    if not sidecar.portable and "encoder" in options.parts:
        reason = unavailable_reason(aot=options.plugins == "aot")
        if reason is not None:
            raise RuntimeError(f"cannot build the encoder's plugins: {reason}")
        from plugins.tensorrt_plugins import missing_creators, register_plugins

        register_plugins(aot=options.plugins == "aot")
        missing = missing_creators(list(PLUGINS))
        if missing:
            raise RuntimeError(f"plugins {missing} are not in TensorRT's registry (namespace {PLUGIN_NAMESPACE!r})")
    return sidecar, paths, device


def _flag_bits(enum: type, names: tuple[str, ...]) -> int:
    bits = 0
    for name in names:
        if not hasattr(enum, name):
            raise RuntimeError(f"this TensorRT has no {enum.__name__}.{name}: install TensorRT >= 10.9")
        bits |= 1 << int(getattr(enum, name))
    return bits


def _parse(trt, network, model: onnx.ModelProto, source: Path, logger) -> None:  # noqa: ANN001
    parser = trt.OnnxParser(network, logger)
    if parser.parse(model.SerializeToString(), str(source)):
        return
    error = parser.get_error(0)
    where = f" at node {error.node_name()} ({error.node_operator()})" if hasattr(error, "node_name") else ""
    hint = " (is the hrsam plugin registered?)" if "plugin" in error.desc().lower() else ""
    raise RuntimeError(f"TensorRT could not parse {source.name}{where}: {error.desc()}{hint}")


def build_serialized(model: onnx.ModelProto, source: Path, settings: BuilderSettings, cache_path: Path,
                     verbose: bool = False) -> bytes:  # fmt: skip
    """Parse and build with TensorRT; the timing cache at ``cache_path`` is read and updated."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_flag_bits(trt.NetworkDefinitionCreationFlag, settings.network_flags))
    _parse(trt, network, model, source, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    for feature in settings.preview_features:
        config.set_preview_feature(getattr(trt.PreviewFeature, feature), True)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if settings.profile:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in settings.profile.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {source.name} (its log above says why)")
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_part(part: str, directory: Path, onnx_path: Path, sidecar: Sidecar, options: BuildOptions,
               device: torch.device) -> tuple[EngineRecord, str]:  # fmt: skip
    """Build one engine into ``directory``; returns its record and the preparation summary."""
    start = time.perf_counter()
    properties = torch.cuda.get_device_properties(device)
    sm_count = properties.multi_processor_count
    prepared, summary = prepare_graph(onnx.load(str(onnx_path)), part, options.precision, sm_count)
    settings = builder_settings(part, options, bool(custom_op_types(prepared)))
    cache_path = options.timing_cache or directory / TIMING_CACHE_FILE
    with torch.cuda.device(device):
        engine = build_serialized(prepared, onnx_path, settings, cache_path, options.verbose)
    path = directory / ENGINE_FILES[part]
    path.write_bytes(engine)
    trt = import_tensorrt()
    record = EngineRecord(
        file=path.name, sha256=file_sha256(path), part=part, precision=options.precision,
        input_size=sidecar.input_size, onnx_sha256=file_sha256(onnx_path), tensorrt_version=trt.__version__,
        gpu_name=properties.name, compute_capability=f"{properties.major}.{properties.minor}",
        plugins=options.plugins if settings.preview_features else "none",
        max_points=options.max_points if part == "decoder" else None, workspace_bytes=settings.workspace_bytes,
        build_seconds=round(time.perf_counter() - start, 1),
    )  # fmt: skip
    return record, summary


def build_engines(directory: str | Path, options: BuildOptions) -> tuple[Sidecar, dict[str, EngineRecord]]:
    """Build ``options.parts`` of an export directory and record them in its ``model.json``."""
    directory = Path(directory)
    sidecar, paths, device = preflight(directory, options)
    print(f"building {', '.join(options.parts)} engines in {directory} ({options.precision}, {options.plugins} "
          f"plugins) on {torch.cuda.get_device_name(device)}")  # fmt: skip
    records = {}
    for part in options.parts:
        record, summary = build_part(part, directory, paths[part], sidecar, options, device)
        print(f"  {part}: {summary}")
        sidecar.engines[part] = record.to_dict()
        sidecar.write(directory)
        records[part] = record
    return sidecar, records


def options_from(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        precision=args.precision, parts=tuple(args.parts), max_points=args.max_points, opt_points=args.opt_points,
        workspace_gib=args.workspace_gib, timing_cache=args.timing_cache, plugins=args.plugins,
        optimization_level=args.opt_level, verbose=args.verbose,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    sidecar, records = build_engines(args.directory, options_from(args))
    for record in records.values():
        mib = (Path(args.directory) / record.file).stat().st_size / 2**20
        print(f"  {record.file}: {mib:.1f} MiB in {record.build_seconds:.0f} s, TensorRT {record.tensorrt_version} "
              f"on {record.gpu_name} (compute capability {record.compute_capability})")  # fmt: skip
    print(f"validate it with: python -m export validate {args.directory}")
    return 0


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine options shared by ``export engine`` and ``export all``."""
    parser.add_argument("--precision", choices=sorted(PRECISION_TYPES), default="fp16",
                        help="compute precision (LayerNorm, softmax and the scan stay fp32)")
    parser.add_argument("--max-points", type=int, default=32,
                        help="decoder profile: most points per call (clicks + SAM's padding point)")
    parser.add_argument("--opt-points", type=int, default=8, help="decoder profile: point count tuned for")
    parser.add_argument("--workspace-gib", type=float, default=8.0, help="TensorRT workspace limit in GiB")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help=f"timing cache file (default: {TIMING_CACHE_FILE} in the export directory)")
    parser.add_argument("--plugins", choices=PLUGIN_MODES, default="aot",
                        help="aot: kernels stored in the engine (runs without Python); jit: launched from Python")
    parser.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimisation level (0-5)")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose build log")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "engine",
        help="build TensorRT engines (encoder.engine, decoder.engine) from an ONNX export",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("directory", help="export directory (encoder.onnx, decoder.onnx, model.json)")
    parser.add_argument("--parts", nargs="+", choices=sorted(ENGINE_FILES), default=list(ENGINE_FILES),
                        help="which engines to build")
    add_build_arguments(parser)
    parser.set_defaults(run=run)
