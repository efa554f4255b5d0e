"""Parse and build our graphs with TensorRT-RTX, the one TensorRT builder these machines can run.

Full TensorRT cannot be installed here; TensorRT-RTX 1.7 (``tensorrt-rtx-cu13-libs`` +
``tensorrt-rtx-cu13-bindings``) builds engines on the H200 but refuses to run them (compute
capability 9.0), and its bindings have ``IPluginV3`` but neither ``tensorrt.plugin`` nor the AOT
plugin interface. So this script registers our four plugins through ``IPluginV3`` classes written
against the bindings, with the same rules (``plugins.definitions``) and, for ``enqueue``, the same
AOT-compiled PTX launched with cupy. Steps, each printed as OK or FAILED with TensorRT's message:

1. the bindings: version and which plugin / typing / attention interfaces they have;
2. the graphs: ``encoder.onnx`` / ``decoder.onnx`` of ``--export-dir`` (or an export of
   ``--model`` at ``--size`` made here), prepared exactly as ``python -m export engine`` does
   (precision, scans lowered);
3. parse with our plugins registered; every plugin layer's output shapes and types against ours;
4. build the engine; 5. deserialize it (expected to fail on compute capability 9.0).

    python benchmarks/trt_rtx_build.py --model hrsam_tiny --size 1024 --out /tmp/rtx --precision fp16
    python benchmarks/trt_rtx_build.py --portable --parts encoder --size 512 --out /tmp/rtx --precision fp32

What it showed on an H200 (docs/DEPLOYMENT.md): TensorRT-RTX 1.7's network has no plugin layers
(``INetworkDefinition`` has neither ``add_plugin_v3`` nor ``add_plugin_v2``), and its ONNX parser,
having created our plugin through the registry, ends the process (``terminate called without an
active exception``) before calling into it. So the plugin graph cannot be checked with it; the
``--portable`` graph (standard ONNX ops only) parses and builds.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

import numpy as np
import onnx

from hrsam.contract import ONNX_FILES, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.definitions import PLUGINS, PluginDefinition

DTYPES = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16", "i32": "INT32"}
_CREATORS: list = []


def step(title: str, function, *args):  # noqa: ANN001, ANN002, ANN201
    """Run one step; print OK / FAILED with the exception's message; return its result or None."""
    try:
        result = function(*args)
    except Exception as error:  # noqa: BLE001 - the point is to report whatever TensorRT-RTX says
        print(f"[FAILED] {title}: {type(error).__name__}: {error}")
        traceback.print_exc(limit=3, file=sys.stdout)
        return None
    print(f"[OK] {title}" + (f": {result}" if isinstance(result, str) else ""))
    return result


def import_rtx():  # noqa: ANN201 - the bindings module
    importlib.import_module("tensorrt_rtx_libs")  # first: it loads the libraries the bindings link to
    return importlib.import_module("tensorrt_rtx_bindings")


def describe_bindings(trt) -> str:  # noqa: ANN001
    names = ["IPluginV3", "IPluginV3OneBuildV2", "IPluginV3QuickAOTBuild", "QuickPluginCreationRequest", "IAttention"]
    have = {name: hasattr(trt, name) for name in names}
    flags = trt.NetworkDefinitionCreationFlag
    have["STRONGLY_TYPED"] = hasattr(flags, "STRONGLY_TYPED")
    have["PREFER_AOT_PYTHON_PLUGINS"] = hasattr(flags, "PREFER_AOT_PYTHON_PLUGINS")
    have["ALIASED_PLUGIN_IO_10_03"] = hasattr(trt.PreviewFeature, "ALIASED_PLUGIN_IO_10_03")
    for method in ("add_plugin_v3", "add_plugin_v2", "add_attention"):  # plugin layers, IAttention
        have[f"INetworkDefinition.{method}"] = hasattr(trt.INetworkDefinition, method)
    try:
        import tensorrt_rtx_bindings.plugin  # noqa: F401
        have["tensorrt.plugin"] = True
    except ImportError:
        have["tensorrt.plugin"] = False
    return f"TensorRT-RTX {trt.__version__}; " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in have.items())


def reported(cls: type) -> type:
    """Print every callback TensorRT makes into ``cls`` and the traceback of any that raises.

    Why: a Python exception inside a plugin callback can end the process in C++ with no Python
    traceback; this prints which callback ran last and why one failed, flushed, before TensorRT
    gets the exception. (It showed that TensorRT-RTX 1.7's abort follows ``create_plugin``, which
    returns normally, before any call into the plugin.)
    """
    for name, method in list(vars(cls).items()):
        if callable(method) and not name.startswith("__"):
            setattr(cls, name, _reporting(method, f"{cls.__name__}.{name}"))
    return cls


def _reporting(method, label: str):  # noqa: ANN001, ANN202
    def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        print(f"       callback {label}", flush=True)
        try:
            return method(*args, **kwargs)
        except BaseException:
            print(f"[FAILED] callback {label} raised:", flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            raise

    return call


def make_plugin_classes(trt):  # noqa: ANN001, ANN201 - (plugin class, creator class)
    build_base = trt.IPluginV3OneBuildV2 if hasattr(trt, "IPluginV3OneBuildV2") else trt.IPluginV3OneBuild
    to_trt = {name: getattr(trt.DataType, value) for name, value in DTYPES.items()}
    from_trt = {value: name for name, value in to_trt.items()}

    @reported
    class HrsamPlugin(trt.IPluginV3, trt.IPluginV3OneCore, build_base, trt.IPluginV3OneRuntime):
        """One hrsam plugin for TensorRT-RTX: ``plugins.definitions`` rules, the AOT PTX via cupy."""

        def __init__(self, definition: PluginDefinition, attrs: dict) -> None:
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            build_base.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.definition, self.attrs = definition, attrs
            self.plugin_name, self.plugin_namespace, self.plugin_version = definition.name, PLUGIN_NAMESPACE, "1"
            self.num_outputs = len(definition.outputs)
            self.timing_cache_id = ""
            self.input_dtypes: tuple[str, ...] = ()

        def get_capability_interface(self, type):  # noqa: A002, ANN001, ANN201 - TensorRT's signature
            return self

        def clone(self):  # noqa: ANN201
            copy = HrsamPlugin(self.definition, dict(self.attrs))
            copy.__dict__.update(self.__dict__)
            return copy

        def get_fields_to_serialize(self):  # noqa: ANN201
            return trt.PluginFieldCollection([_field(trt, name, value) for name, value in self.attrs.items()])

        def get_output_data_types(self, input_types, *ranks):  # noqa: ANN001, ANN002, ANN201
            self.input_dtypes = tuple(from_trt[t] for t in input_types)
            return [to_trt[self.definition.output_dtype(i, self.input_dtypes)] for i in range(self.num_outputs)]

        def get_output_shapes(self, inputs, shape_inputs, builder):  # noqa: ANN001, ANN201
            shapes = tuple(tuple(_constant(d) for d in dims) for dims in inputs)
            outputs = []
            for shape in self.definition.output_shapes(shapes, self.input_dtypes, self.attrs):
                dims = trt.DimsExprs(len(shape))
                for axis, size in enumerate(shape):
                    dims[axis] = builder.constant(size)
                outputs.append(dims)
            return outputs

        def supports_format_combination(self, pos, in_out, num_inputs):  # noqa: ANN001, ANN201
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR or desc.type not in from_trt:
                return False
            allowed = self.definition.types[pos]
            if "|" in allowed:  # dependent float positions share the first float input's type
                first = next(i for i, t in enumerate(self.definition.types) if "|" in t)
                return desc.type in (to_trt["fp32"], to_trt["fp16"], to_trt["bf16"]) and (
                    pos == first or desc.type == in_out[first].desc.type
                )
            return desc.type == to_trt["i32" if allowed == "INT32" else "fp32"]

        def get_aliased_input(self, output_index):  # noqa: ANN001, ANN201
            return dict(self.definition.aliases).get(output_index, -1)

        def configure_plugin(self, inputs, outputs):  # noqa: ANN001, ANN201
            return None

        def on_shape_change(self, inputs, outputs):  # noqa: ANN001, ANN201
            return None

        def get_workspace_size(self, inputs, outputs):  # noqa: ANN001, ANN201
            return 0

        def get_valid_tactics(self):  # noqa: ANN201
            return []

        def set_tactic(self, tactic):  # noqa: ANN001, ANN201
            return None

        def attach_to_context(self, context):  # noqa: ANN001, ANN201
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):  # noqa: ANN001, ANN201
            import torch

            from plugins.cupy_launch import launch

            shapes = tuple(tuple(d.dims) for d in input_desc)
            dtypes = tuple(from_trt[d.type] for d in input_desc)
            major, minor = torch.cuda.get_device_capability()
            kernel = self.definition.compile(shapes, dtypes, self.attrs, 10 * major + minor)
            launch(kernel, list(inputs), list(outputs), stream)

    @reported
    class HrsamCreator(trt.IPluginCreatorV3One):
        def __init__(self, definition: PluginDefinition) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.definition = definition
            self.name, self.plugin_namespace, self.plugin_version = definition.name, PLUGIN_NAMESPACE, "1"
            self.field_names = trt.PluginFieldCollection(
                [_field(trt, name, kind(0)) for name, kind in definition.attributes.items()]
            )

        def create_plugin(self, name, fields, phase):  # noqa: ANN001, ANN201
            attrs = {f.name: self.definition.attributes[f.name](np.asarray(f.data).ravel()[0]) for f in fields
                     if f.name in self.definition.attributes}  # fmt: skip
            missing = sorted(set(self.definition.attributes) - set(attrs))
            if missing:
                raise ValueError(f"{name}: attributes {missing} missing")
            return HrsamPlugin(self.definition, attrs)

    return HrsamPlugin, HrsamCreator


def _field(trt, name: str, value: object):  # noqa: ANN001, ANN202
    if isinstance(value, float):
        return trt.PluginField(name, np.array([value], dtype=np.float32), trt.PluginFieldType.FLOAT32)
    return trt.PluginField(name, np.array([value], dtype=np.int32), trt.PluginFieldType.INT32)


def _constant(expr) -> int:  # noqa: ANN001
    if not expr.is_constant():
        raise ValueError("hrsam plugins need static shapes (the encoder is exported for one input size)")
    return int(expr.get_constant_value())


def register(trt) -> str:  # noqa: ANN001
    _, creator = make_plugin_classes(trt)
    registry = trt.get_plugin_registry()
    creators = [creator(definition) for definition in PLUGINS.values()]
    _CREATORS.extend(creators)  # keep them alive: the registry holds raw pointers
    for c in creators:
        if not registry.register_creator(c, PLUGIN_NAMESPACE):
            raise RuntimeError(f"register_creator refused {c.name}")
    found = [name for name in PLUGINS if registry.get_creator(name, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None]
    return f"creators found in the registry: {found}"


def prepare(args: argparse.Namespace) -> dict[str, tuple[onnx.ModelProto, Path]]:
    from export.engine import prepare_graph

    directory = args.export_dir
    if directory is None:
        from export.onnx_export import export_onnx
        from hrsam.checkpoint import load_model

        directory = args.out
        export_onnx(load_model(args.model, None, seed=0), args.size, directory, portable=args.portable)
    prepared = {}
    for part in args.parts:
        path = Path(directory) / ONNX_FILES[part]
        model, summary = prepare_graph(onnx.load(str(path)), part, args.precision, args.sm_count)
        print(f"       {part}: {summary}")
        prepared[part] = (model, path)
    return prepared


def parse_and_build(trt, part: str, model: onnx.ModelProto, source: Path, args: argparse.Namespace) -> None:  # noqa: ANN001, E501
    """Steps 3 to 5 for one graph."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = trt.NetworkDefinitionCreationFlag
    network = builder.create_network(1 << int(flags.STRONGLY_TYPED) if hasattr(flags, "STRONGLY_TYPED") else 0)
    parser = trt.OnnxParser(network, logger)

    def parse() -> str:
        if not parser.parse(model.SerializeToString(), str(source)):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            raise RuntimeError("; ".join(f"{e.desc()} (node {e.node_name()}, {e.node_operator()})" for e in errors))
        plugin_layers = [network.get_layer(i) for i in range(network.num_layers)
                         if "PLUGIN" in str(network.get_layer(i).type)]  # fmt: skip
        shapes = {layer.name: [tuple(layer.get_output(j).shape) for j in range(layer.num_outputs)]
                  for layer in plugin_layers[:4]}  # fmt: skip
        return f"{network.num_layers} layers, {len(plugin_layers)} plugin layers; first outputs {shapes}"

    if step(f"{part}: parse with hrsam plugins registered", parse) is None:
        return
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 8 << 30)
    if hasattr(trt.PreviewFeature, "ALIASED_PLUGIN_IO_10_03"):
        config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    if part == "decoder":
        from export.engine import BuildOptions, decoder_profile

        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in decoder_profile(BuildOptions()).items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)

    built: dict[str, bytes] = {}

    def build() -> str:
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("build_serialized_network returned None (TensorRT-RTX's log above says why)")
        path = Path(args.out) / f"{part}.rtx.engine"
        path.parent.mkdir(parents=True, exist_ok=True)
        built["engine"] = bytes(serialized)
        path.write_bytes(built["engine"])
        return f"{path} ({path.stat().st_size / 2**20:.1f} MiB)"

    if step(f"{part}: build the engine", build) is None:
        return

    def deserialize() -> str:
        engine = trt.Runtime(logger).deserialize_cuda_engine(built["engine"])
        if engine is None:
            raise RuntimeError("deserialize_cuda_engine returned None (see TensorRT-RTX's log: compute capability?)")
        return f"{engine.num_io_tensors} I/O tensors"

    step(f"{part}: deserialize (TensorRT-RTX refuses compute capability 9.0)", deserialize)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", type=Path, default=None, help="an export made by `python -m export onnx`")
    parser.add_argument("--model", default="hrsam_tiny", help="model to export when no --export-dir is given")
    parser.add_argument("--size", type=int, default=1024, help="input size of that export")
    parser.add_argument("--out", type=Path, default=Path("outputs/rtx"), help="where exports and engines go")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    parser.add_argument("--parts", nargs="+", choices=sorted(ONNX_FILES), default=["encoder", "decoder"])
    parser.add_argument("--sm-count", type=int, default=132, help="SMs of the target GPU (the scan's chunk plan)")
    parser.add_argument("--portable", action="store_true", help="export standard ONNX ops only (no plugins)")
    args = parser.parse_args()
    trt = step("import tensorrt_rtx_bindings", import_rtx)
    if trt is None:
        return 1
    step("bindings", describe_bindings, trt)
    if step("register hrsam plugins through IPluginV3 creators", register, trt) is None:
        return 1
    prepared = step(f"prepare the graphs ({args.precision}, scans lowered)", prepare, args)
    if prepared is None:
        return 1
    for part, (model, source) in prepared.items():
        parse_and_build(trt, part, model, source, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
