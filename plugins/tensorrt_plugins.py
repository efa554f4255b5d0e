"""Registration of the hrsam plugins with ``tensorrt.plugin`` (TensorRT >= 10.9 for AOT, >= 10.7 JIT).

``register_plugins()`` turns every ``plugins.definitions.PluginDefinition`` into a Python-defined
plugin ``hrsam::<name>`` with four functions:

* ``register``: output dtypes and shapes (the definition's rules on the build-time constant shapes);
* ``autotune``: the accepted I/O types, linear layout;
* ``aot_impl``: the kernel compiled by ``plugins.aot.compile_launch`` for the build GPU: name, PTX,
  grid / block / shared memory and the int32 extra args. TensorRT stores it in the engine;
* ``impl`` (JIT): the same compiled kernel launched from Python with cupy on TensorRT's stream.

``tensorrt.plugin`` reads each function's signature (argument names = the node's inputs and
attributes, annotations = types) to check it against the node, so the four functions are
generic bodies given an explicit ``__signature__`` built from the definition. For the same reason
this module must not use ``from __future__ import annotations`` (string annotations would fail
those checks). Note how TensorRT calls them: ``register`` with attributes as keywords,
``aot_impl`` / ``autotune`` / ``impl`` positionally with every attribute in registration order.

The encoder is exported for one input size, so every plugin shape is a build-time constant; the
rules refuse dynamic shapes with a clear error.
"""

import inspect

from hrsam.contract import PLUGIN_NAMESPACE
from plugins import import_tensorrt, unavailable_reason
from plugins.aot import CompiledKernel
from plugins.definitions import PLUGINS, PluginDefinition

_registered: set[str] = set()


def _dtype_names(trt) -> dict:  # noqa: ANN001
    return {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16", trt.int32: "i32"}


def _trt_dtype(trt, name: str):  # noqa: ANN001, ANN202
    return {value: key for key, value in _dtype_names(trt).items()}[name]


def _capability() -> int:
    """Compute capability of the GPU TensorRT builds on (the current CUDA device), e.g. 90."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _constant_dims(desc) -> tuple[int, ...] | None:  # noqa: ANN001
    """Build-time constant shape of a TensorDesc; None while TensorRT only asks for types."""
    exprs = list(desc.shape_expr)
    if any(getattr(expr, "is_fake", False) for expr in exprs):
        return None
    if not all(expr.is_constant for expr in exprs):
        raise ValueError(
            "hrsam plugins need static shapes (the encoder is exported for one input size); got a dynamic dimension"
        )
    return tuple(int(expr.constant_value()) for expr in exprs)


def _concrete(shape) -> tuple[int, ...]:  # noqa: ANN001
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"hrsam plugins need static shapes, got {dims}")
    return dims


def _register_function(trt, trtp, definition: PluginDefinition):  # noqa: ANN001, ANN202
    names = _dtype_names(trt)

    def register(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        bound = register.__signature__.bind(*args, **kwargs)
        descs = [bound.arguments[name] for name in definition.inputs]
        attrs = {name: bound.arguments[name] for name in definition.attributes}
        dtypes = tuple(names[desc.dtype] for desc in descs)
        dims = [_constant_dims(desc) for desc in descs]
        shapes = None if any(d is None for d in dims) else definition.output_shapes(tuple(dims), dtypes, attrs)
        aliases = dict(definition.aliases)
        outputs = []
        for index, rank in enumerate(definition.output_ranks):
            if index in aliases:
                outputs.append(descs[aliases[index]].aliased())
                continue
            fake = descs[0].shape_expr[0]
            shape = tuple(shapes[index]) if shapes is not None else (fake,) * rank
            dtype = _trt_dtype(trt, definition.output_dtype(index, dtypes))
            outputs.append(trtp.from_shape_expr(shape, dtype=dtype))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    returns = trtp.TensorDesc if len(definition.outputs) == 1 else tuple[(trtp.TensorDesc,) * len(definition.outputs)]
    register.__signature__ = _signature(trtp.TensorDesc, definition, (), returns)
    return register


def _signature(tensor: type, definition: PluginDefinition, tail: tuple, returns: object) -> inspect.Signature:
    """inputs (``tensor``-annotated), every attribute, then ``tail`` ((name, annotation) pairs)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(name, kind, annotation=tensor) for name in definition.inputs]
    params += [inspect.Parameter(name, kind, annotation=kind_) for name, kind_ in definition.attributes.items()]
    params += [inspect.Parameter(name, kind, annotation=annotation) for name, annotation in tail]
    return inspect.Signature(params, return_annotation=returns)


def _compiled(trt, definition: PluginDefinition, tensors: list, attr_values: tuple) -> CompiledKernel:  # noqa: ANN001
    """The kernel for these concrete tensors (TensorDescs at build time, Tensors in the JIT path)."""
    names = _dtype_names(trt)
    attrs = dict(zip(definition.attributes, attr_values, strict=True))
    shapes = tuple(_concrete(t.shape) for t in tensors)
    dtypes = tuple(names[t.dtype] for t in tensors)
    return definition.compile(shapes, dtypes, attrs, _capability())


def _aot_function(trt, trtp, definition: PluginDefinition):  # noqa: ANN001, ANN202
    count, attrs = len(definition.inputs), len(definition.attributes)

    def aot_impl(*args):  # noqa: ANN002, ANN202
        kernel = _compiled(trt, definition, list(args[:count]), args[count : count + attrs])
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = kernel.grid
        params.block_x, params.block_y, params.block_z = kernel.block
        params.shared_mem = kernel.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(value) for value in kernel.extra_args])
        return kernel.name, kernel.ptx, params, extra

    outputs = tuple[(trtp.TensorDesc,) * len(definition.outputs)]
    returns = tuple[str, str, trtp.KernelLaunchParams, trtp.SymIntExprs]
    aot_impl.__signature__ = _signature(trtp.TensorDesc, definition, (("outputs", outputs), ("tactic", int)), returns)
    return aot_impl


def _jit_function(trt, trtp, definition: PluginDefinition):  # noqa: ANN001, ANN202
    count, attrs = len(definition.inputs), len(definition.attributes)

    def impl(*args, stream):  # noqa: ANN002, ANN001, ANN202
        from plugins.cupy_launch import launch

        inputs, outputs = list(args[:count]), list(args[count + attrs])
        kernel = _compiled(trt, definition, inputs, args[count : count + attrs])
        launch(kernel, [t.data_ptr for t in inputs], [t.data_ptr for t in outputs], stream)

    outputs = tuple[(trtp.Tensor,) * len(definition.outputs)]
    impl.__signature__ = _signature(trtp.Tensor, definition, (("outputs", outputs), ("stream", int)), None)
    return impl


def _autotune_function(trtp, definition: PluginDefinition):  # noqa: ANN001, ANN202
    def autotune(*args):  # noqa: ANN002, ANN202
        return [trtp.AutoTuneCombination(definition.autotune_types(), "LINEAR")]

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(name, kind, annotation=trtp.TensorDesc) for name in definition.inputs]
    params.append(inspect.Parameter("outputs", kind, annotation=tuple[(trtp.TensorDesc,) * len(definition.outputs)]))
    autotune.__signature__ = inspect.Signature(params, return_annotation=list[trtp.AutoTuneCombination])
    return autotune


def plugin_id(name: str) -> str:
    return f"{PLUGIN_NAMESPACE}::{name}"


def register_plugins(aot: bool = True) -> list[str]:
    """Register every hrsam plugin once per process; returns the plugin ids.

    ``aot``: also give the ahead-of-time implementations (needs TensorRT >= 10.9); the JIT ones are
    always there. ImportError / RuntimeError in one line when TensorRT cannot take them.
    """
    reason = unavailable_reason(aot=aot)
    if reason is not None:
        raise ImportError(reason) if "not installed" in reason else RuntimeError(reason)
    trt = import_tensorrt()
    import tensorrt.plugin as trtp

    for definition in PLUGINS.values():
        ident = plugin_id(definition.name)
        if ident in _registered:
            continue
        trtp.register(ident)(_register_function(trt, trtp, definition))
        trtp.autotune(ident)(_autotune_function(trtp, definition))
        trtp.impl(ident)(_jit_function(trt, trtp, definition))
        if aot:
            trtp.aot_impl(ident)(_aot_function(trt, trtp, definition))
        _registered.add(ident)
    return [plugin_id(name) for name in PLUGINS]


def missing_creators(names: list[str]) -> list[str]:
    """Plugin names (op types) that TensorRT's registry has no creator for in the hrsam namespace."""
    trt = import_tensorrt()
    registry = trt.get_plugin_registry()
    return [name for name in names if registry.get_creator(name, "1", PLUGIN_NAMESPACE) is None]
