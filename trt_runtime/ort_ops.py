"""The ``hrsam`` custom nodes on ONNX Runtime, computed by the package's own operators.

ONNX Runtime runs the exact exported graph (same nodes, same constants): the two custom nodes are
served by onnxruntime-extensions' Python operators, which call ``hrsam.ops.varlen_attention`` and
``hrsam.ops.selective_scan`` (their CPU backends: the reference attention and the compiled C scan).
onnxruntime-extensions serves Python operators in its own domain ``ai.onnx.contrib``, so the graph
is renamed in memory (domain only; the plugin attributes, meant for TensorRT, are dropped): the
file on disk stays the one TensorRT consumes. Node contract: ``docs/EXPORT.md``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from hrsam.contract import CUSTOM_DOMAIN, CUSTOM_OPS, SELECTIVE_SCAN, VARLEN_ATTENTION
from hrsam.ops.selective_scan import selective_scan
from hrsam.ops.varlen_attention import varlen_attention

logger = logging.getLogger("hrsam")

PYOP_DOMAIN = "ai.onnx.contrib"
_PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")


def _varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, **attributes) -> np.ndarray:  # noqa: ANN001
    tensors = (torch.from_numpy(t) for t in (q, k, v, cu_seqlens_q, cu_seqlens_k))
    out = varlen_attention(
        *tensors, int(attributes["max_seqlen_q"]), int(attributes["max_seqlen_k"]), float(attributes["scale"])
    )
    return out.numpy()


def _selective_scan(u, delta, A, B, C, D, delta_bias, **attributes) -> np.ndarray:  # noqa: ANN001, N803
    tensors = (torch.from_numpy(np.ascontiguousarray(t)) for t in (u, delta, A, B, C, D, delta_bias))
    return selective_scan(*tensors, delta_softplus=bool(attributes["delta_softplus"])).numpy()


def _invoke_returning_arrays(op_id: int, feed: list, attributes: dict) -> tuple:
    """onnxruntime-extensions' call into a Python operator, minus its conversion of outputs to lists.

    Its own hook returns every output as ``array.flatten().tolist()``, about 50 ms per million
    floats (measured: 59 ms per ``VarlenAttention`` call whose body takes 10 ms), although its C++
    side reads the result as a numpy array and copies it with memcpy. This hook returns the arrays
    themselves (string tensors still as lists) and is otherwise the same for every Python operator.
    """
    from onnxruntime_extensions._ocos import Opdef

    op = Opdef._odlist[op_id]
    result = op.body(*feed, **op.cast_attributes(attributes))
    outputs = result if isinstance(result, tuple) else (result,)
    flat = []
    for out in outputs:
        array = np.asarray(out)
        flat += [array.shape, array.ravel().tolist() if array.dtype == object else np.ascontiguousarray(array)]
    return (op_id, *flat)


def _install_array_hook() -> None:
    """Use ``_invoke_returning_arrays`` when this onnxruntime-extensions has the registry it needs."""
    from onnxruntime_extensions import PyCustomOpDef
    from onnxruntime_extensions._ocos import Opdef

    if not isinstance(getattr(Opdef, "_odlist", None), dict):
        logger.warning("onnxruntime-extensions without Opdef._odlist: hrsam custom nodes use its slower list transfer")
        return
    PyCustomOpDef.install_hooker(_invoke_returning_arrays)


@functools.cache
def custom_ops_library() -> str:
    """Register both Python operators once; the path of the library that serves them."""
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    kinds = {float: PyCustomOpDef.dt_float, int: PyCustomOpDef.dt_int64}
    float32, int32 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32
    inputs = {
        VARLEN_ATTENTION.op_type: [float32, float32, float32, int32, int32],
        SELECTIVE_SCAN.op_type: [float32] * len(SELECTIVE_SCAN.inputs),
    }
    functions = {VARLEN_ATTENTION.op_type: _varlen_attention, SELECTIVE_SCAN.op_type: _selective_scan}
    for op_type, op in CUSTOM_OPS.items():
        attributes = {name: kinds[kind] for name, kind in op.attributes.items()}
        onnx_op(op_type=op_type, inputs=inputs[op_type], outputs=[float32], attrs=attributes)(functions[op_type])
    _install_array_hook()
    return get_library_path()


def uses_custom_ops(model: onnx.ModelProto) -> bool:
    return any(node.domain == CUSTOM_DOMAIN for node in model.graph.node)


def for_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose ``hrsam`` nodes onnxruntime-extensions serves (see module doc)."""
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    for node in renamed.graph.node:
        if node.domain != CUSTOM_DOMAIN:
            continue
        if node.op_type not in CUSTOM_OPS:
            raise ValueError(f"unknown {CUSTOM_DOMAIN} node {node.op_type!r}; known: {sorted(CUSTOM_OPS)}")
        node.domain = PYOP_DOMAIN
        kept = [a for a in node.attribute if a.name not in _PLUGIN_ATTRIBUTES]
        del node.attribute[:]
        node.attribute.extend(kept)
    for opset in renamed.opset_import:
        if opset.domain == CUSTOM_DOMAIN:
            opset.domain = PYOP_DOMAIN
    return renamed


def make_session(path: str | Path, providers: list[str] | None = None, threads: int | None = None):  # noqa: ANN201
    """An ``onnxruntime.InferenceSession`` for one of our ONNX files, custom nodes included.

    Also what polygraphy's ONNX Runtime runner is given (``export check``), so both run one graph.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # The custom nodes run torch / OpenMP threads of their own; ORT's pool spinning meanwhile takes
    # their cores (measured on 2 cores: encoder 1017 ms with spinning, 715 ms without).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = onnx.load(str(path))
    if uses_custom_ops(model):
        options.register_custom_ops_library(custom_ops_library())
        model = for_onnxruntime(model)
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=providers or ["CPUExecutionProvider"]
    )
