"""Drive NVIDIA's ``tensorrt.plugin`` glue through our plugins without TensorRT's libraries.

The ``tensorrt-cu13-bindings`` wheel (1.3 MB, ``pip download tensorrt-cu13-bindings --no-deps``) holds
the pure-Python source of ``tensorrt.plugin`` beside the compiled ``tensorrt.so``, which cannot load
here (no libnvinfer). This script loads that Python source over a small stand-in for the compiled
module (dimension expressions that are constants, tensor descriptors, enums) and calls the
plugin classes the way TensorRT's builder does: ``get_output_data_types``,
``get_output_shapes``, ``get_supported_format_combinations``, ``configure_plugin``,
``get_launch_params`` (our ``aot_impl``), ``get_kernel``, and the JIT plugin's ``enqueue``.
It checks the results against ``plugins.definitions`` and prints what it did.

What it proves: our four registrations pass ``tensorrt.plugin``'s validators, and NVIDIA's glue
accepts what our functions return (types of the launch parameters and extra args, the aliased
output, the kernel map). What it does not: anything TensorRT's C++ side does with them.

    unzip tensorrt_cu13_bindings-*.whl -d /tmp/trtb
    python benchmarks/trt_plugin_glue.py /tmp/trtb/tensorrt_bindings/plugin
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


class _Anything:
    """Stand-in for compiled TensorRT classes the glue only passes around or subclasses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> _Anything:
        return _Anything()

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:
        return _Anything()


class _Enum:
    """An enum namespace whose members are their own names (comparable, hashable)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, member: str) -> str:
        return f"{self._name}.{member}"


class DimExpr:
    """A build-time constant dimension expression (the encoder's shapes are all constants)."""

    def __init__(self, value: int) -> None:
        self.value = int(value)

    def is_constant(self) -> bool:
        return True

    def get_constant_value(self) -> int:
        return self.value


class ExprBuilder:
    _ops = {"SUM": lambda a, b: a + b, "SUB": lambda a, b: a - b, "PROD": lambda a, b: a * b,
            "FLOOR_DIV": lambda a, b: a // b, "CEIL_DIV": lambda a, b: -(-a // b), "MAX": max, "MIN": min}  # fmt: skip

    def constant(self, value: int) -> DimExpr:
        return DimExpr(value)

    def operation(self, op: str, a: DimExpr, b: DimExpr) -> DimExpr:
        return DimExpr(self._ops[op.split(".")[1]](a.value, b.value))


class PluginTensorDesc:
    def __init__(self, dims: tuple[int, ...] = (), type: str | None = None) -> None:  # noqa: A002 - TensorRT's name
        self.dims, self.type, self.format, self.scale = tuple(dims), type, "TensorFormat.LINEAR", 1.0


class DynamicPluginTensorDesc:
    def __init__(self, dims: tuple[int, ...], dtype: str) -> None:
        self.desc = PluginTensorDesc(dims, dtype)
        self.min = self.opt = self.max = tuple(dims)


class Recorder:
    """What ``get_launch_params`` assigns (launch params) or stores by index (extra args)."""

    def __init__(self) -> None:
        self.items: dict[int, Any] = {}

    def __setitem__(self, index: int, value: Any) -> None:
        self.items[index] = value


def stub_tensorrt() -> types.ModuleType:
    """The attributes of the compiled ``tensorrt`` module that ``tensorrt.plugin`` uses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "stub"
    data_type = _Enum("DataType")
    trt.DataType = data_type
    trt.float32, trt.float16, trt.bfloat16 = data_type.FLOAT, data_type.HALF, data_type.BF16
    trt.int32, trt.int64, trt.bool = data_type.INT32, data_type.INT64, data_type.BOOL
    for enum in ("TensorFormat", "DimensionOperation", "PluginFieldType", "PluginArgType", "PluginArgDataType",
                 "QuickPluginCreationRequest", "TensorRTPhase"):  # fmt: skip
        setattr(trt, enum, _Enum(enum))
    trt.IDimensionExpr, trt.IExprBuilder = DimExpr, ExprBuilder
    trt.PluginTensorDesc, trt.DynamicPluginTensorDesc = PluginTensorDesc, DynamicPluginTensorDesc
    trt.DimsExprs = lambda n: [None] * (n if isinstance(n, int) else len(n))
    trt.Dims = type("Dims", (tuple,), {"MAX_DIMS": 8})
    for base in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild", "IPluginV3QuickRuntime",
                 "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick", "ISymExpr", "Logger", "PluginField",
                 "PluginFieldCollection"):  # fmt: skip
        setattr(trt, base, type(base, (_Anything,), {"WARNING": 2}))
    trt.get_plugin_registry = lambda: _Anything()
    others: dict[str, type] = {}

    def fallback(name: str) -> type:  # any other class the glue names in annotations or bases
        if name.startswith("__"):
            raise AttributeError(name)
        return others.setdefault(name, type(name, (_Anything,), {}))

    trt.__getattr__ = fallback
    return trt


def load_plugin_module(source: Path) -> types.ModuleType:
    sys.modules["tensorrt"] = stub_tensorrt()
    spec = importlib.util.spec_from_file_location("tensorrt.plugin", source / "__init__.py",
                                                  submodule_search_locations=[str(source)])  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules["tensorrt.plugin"] = module
    spec.loader.exec_module(module)
    sys.modules["tensorrt"].plugin = module
    return module


def drive(definition: Any, shapes: tuple, dtypes: tuple, attrs: dict, capability: int) -> list[str]:
    """One plugin through the AOT build calls and the JIT enqueue; returns a line per check."""
    import tensorrt as trt
    from tensorrt.plugin._lib import QDP_REGISTRY
    from tensorrt.plugin._plugin_class import _TemplateAOTPlugin, _TemplateJITPlugin

    import plugins.cupy_launch
    from plugins.tensorrt_plugins import plugin_id

    names = {"fp32": trt.float32, "fp16": trt.float16, "bf16": trt.bfloat16, "i32": trt.int32}
    plugin_def = QDP_REGISTRY[plugin_id(definition.name)]
    n_in, n_out = len(shapes), len(definition.outputs)
    aot = _TemplateAOTPlugin(definition.name, "hrsam", n_out)
    aot.init(plugin_def.register_func, dict(attrs), plugin_def.aot_impl_attr_names, plugin_def.aot_impl_func,
             plugin_def.autotune_attr_names, plugin_def.autotune_func)  # fmt: skip
    types_in = [names[d] for d in dtypes]
    out_types = aot.get_output_data_types(types_in, [len(s) for s in shapes])
    want_shapes = definition.output_shapes(shapes, dtypes, attrs)
    want_types = [names[definition.output_dtype(i, dtypes)] for i in range(n_out)]
    assert out_types == want_types, (out_types, want_types)
    exprs = aot.get_output_shapes([[DimExpr(d) for d in s] for s in shapes], [], ExprBuilder())
    got_shapes = tuple(tuple(e.value for e in dims) for dims in exprs)
    assert got_shapes == tuple(want_shapes), (got_shapes, want_shapes)
    in_out = [DynamicPluginTensorDesc(s, t) for s, t in zip(shapes, types_in, strict=True)]
    in_out += [DynamicPluginTensorDesc(s, t) for s, t in zip(want_shapes, want_types, strict=True)]
    combos = aot.get_supported_format_combinations(in_out, n_in)
    offered = [tuple(d.type for d in combos[i : i + n_in + n_out]) for i in range(0, len(combos), n_in + n_out)]
    assert tuple(types_in + want_types) in offered, offered
    aot.configure_plugin(in_out[:n_in], in_out[n_in:])
    aot.set_tactic(0)
    params, extra = Recorder(), Recorder()
    aot.get_launch_params(None, in_out, n_in, params, extra, ExprBuilder())
    kernel = definition.compile(shapes, dtypes, attrs, capability)
    launched = {k: v.expr.value for k, v in vars(params).items() if k != "items"}
    assert launched == {"grid_x": kernel.grid[0], "grid_y": kernel.grid[1], "grid_z": kernel.grid[2],
                        "block_x": kernel.block[0], "block_y": 1, "block_z": 1, "shared_mem": kernel.shared}, launched
    assert [extra.items[i].expr.value for i in range(len(extra.items))] == list(kernel.extra_args)
    name, ptx = aot.get_kernel([d.desc for d in in_out[:n_in]], [d.desc for d in in_out[n_in:]])
    assert name == kernel.name and ptx == kernel.ptx.encode()
    aliases = [aot.get_aliased_input(i) for i in range(n_out)]
    assert aliases == [dict(definition.aliases).get(i, -1) for i in range(n_out)], aliases

    jit = _TemplateJITPlugin(definition.name, "hrsam", n_out)
    jit.init(plugin_def.register_func, dict(attrs), plugin_def.impl_attr_names, plugin_def.impl_func,
             plugin_def.autotune_attr_names, plugin_def.autotune_func, plugin_def.expects_tactic)  # fmt: skip
    jit.get_output_data_types(types_in, [len(s) for s in shapes])
    calls = []
    plugins.cupy_launch.launch = lambda k, inputs, outputs, stream: calls.append((k, inputs, outputs, stream))
    pointers = [1000 * (i + 1) for i in range(n_in + n_out)]
    descs = [d.desc for d in in_out]
    jit.enqueue(descs[:n_in], descs[n_in:], pointers[:n_in], pointers[n_in:], [(1,)] * n_in, [(1,)] * n_out, 77)
    assert calls == [(kernel, pointers[:n_in], pointers[n_in:], 77)], calls
    return [f"{definition.name}: types {[str(t).split('.')[1] for t in out_types]}, shapes {list(got_shapes)}, "
            f"kernel {kernel.name} grid {kernel.grid} block {kernel.block[0]} shared {kernel.shared} B, "
            f"{len(kernel.extra_args)} extra args, aliases {aliases}; JIT enqueue launches the same PTX"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="tensorrt_bindings/plugin folder of the unzipped bindings wheel")
    parser.add_argument("--capability", type=int, default=90, help="compute capability to compile for")
    args = parser.parse_args()
    load_plugin_module(args.source)
    import plugins.tensorrt_plugins as registry
    from plugins import scan
    from plugins.definitions import PLUGINS

    registry._capability = lambda: args.capability  # no GPU here: compile for the given target
    print("registered:", registry.register_plugins(aot=True))
    softplus = {"delta_softplus": 1, "sm_count": 132}
    problem = scan.ScanProblem(1, 192, 3 * 4096, 32, "fp32", True, 132)
    states, dt_sums = problem.state_shapes()
    u, a_t, bc = (1, 192, 3 * 4096), (32, 192), (1, 3 * 4096, 32)
    cases = [
        ("VarlenAttention", ((4096, 3, 64),) * 3 + ((17,), (17,)), ("fp16",) * 3 + ("i32",) * 2,
         {"scale": 0.125, "max_seqlen_q": 256, "max_seqlen_k": 256}),
        (scan.CHUNK_STATE, (u, u, a_t, bc, (192,), (192,)), ("fp32",) * 6, softplus),
        (scan.CHUNK_CARRY, (states, dt_sums, a_t), ("fp32",) * 3, softplus),
        (scan.CHUNK_OUTPUT, (u, u, a_t, bc, bc, (192,), (192,), states), ("fp32",) * 8, softplus),
    ]  # fmt: skip
    for name, shapes, dtypes, attrs in cases:
        for line in drive(PLUGINS[name], shapes, dtypes, attrs, args.capability):
            print(line)
    print("tensorrt.plugin glue: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
