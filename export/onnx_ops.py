"""The ``hrsam`` custom ONNX nodes: their schemas and how the exporter emits them.

``torch.onnx.export`` (dynamo) meets ``hrsam::varlen_attention`` / ``hrsam::selective_scan`` as single
graph nodes; ``TRANSLATIONS`` turns each into one ``VarlenAttention`` / ``SelectiveScan`` node in
domain ``hrsam`` with the scalar arguments as attributes plus ``plugin_namespace`` /
``plugin_version`` (TensorRT's ONNX parser finds a plugin by op_type, namespace and version).
Names, input order and attributes come from ``hrsam.contract`` (``docs/EXPORT.md``).

The schemas are registered with ``onnx.defs`` so that onnxscript can build the nodes and
``onnx.checker`` validates their inputs, types and attributes like any standard node.
"""

from __future__ import annotations

import functools

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema

from hrsam.contract import (
    CUSTOM_DOMAIN,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SELECTIVE_SCAN,
    VARLEN_ATTENTION,
    CustomOp,
)

SCHEMA_VERSION = 1
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_ATTRIBUTE_TYPES = {float: OpSchema.AttrType.FLOAT, int: OpSchema.AttrType.INT, str: OpSchema.AttrType.STRING}
# Input type variables: "T" floating tensors in the graph's dtype, "S" float32 scan parameters,
# "I" int32 offsets.
_INPUT_TYPES = {
    "cu_seqlens_q": "I",
    "cu_seqlens_k": "I",
    "A": "S",
    "D": "S",
    "delta_bias": "S",
}


def _schema(op: CustomOp) -> OpSchema:
    attributes = [OpSchema.Attribute(name, _ATTRIBUTE_TYPES[kind], "") for name, kind in op.attributes.items()]
    attributes += [
        OpSchema.Attribute(name, OpSchema.AttrType.STRING, "") for name in ("plugin_namespace", "plugin_version")
    ]
    inputs = [OpSchema.FormalParameter(name, _INPUT_TYPES.get(name, "T")) for name in op.inputs]
    used = {p.type_str for p in inputs}
    constraints = [("T", _FLOATS, "activations")]
    constraints += [("S", ["tensor(float)"], "fp32 scan parameters")] if "S" in used else []
    constraints += [("I", ["tensor(int32)"], "segment offsets")] if "I" in used else []
    return OpSchema(
        op.op_type,
        CUSTOM_DOMAIN,
        SCHEMA_VERSION,
        inputs=inputs,
        outputs=[OpSchema.FormalParameter(name, "T") for name in op.outputs],
        type_constraints=constraints,
        attributes=attributes,
    )


@functools.cache
def register_schemas() -> None:
    """Register both schemas with onnx once per process (a second registration would raise)."""
    for op in (VARLEN_ATTENTION, SELECTIVE_SCAN):
        if not onnx.defs.has(op.op_type, CUSTOM_DOMAIN):
            onnx.defs.register_schema(_schema(op))


_PLUGIN = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}


def _opset() -> onnxscript.values.Opset:
    register_schemas()
    return onnxscript.values.Opset(CUSTOM_DOMAIN, SCHEMA_VERSION)


def _varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, scale: float):  # noqa: ANN001, ANN202
    """``hrsam::varlen_attention`` -> one ``VarlenAttention`` node (signature mirrors the torch op)."""
    return _opset().VarlenAttention(
        q, k, v, cu_seqlens_q, cu_seqlens_k, scale=scale, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
        **_PLUGIN,
    )


def _selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus: bool):  # noqa: ANN001, ANN202, N803
    """``hrsam::selective_scan`` -> one ``SelectiveScan`` node (signature mirrors the torch op)."""
    return _opset().SelectiveScan(u, delta, A, B, C, D, delta_bias, delta_softplus=int(delta_softplus), **_PLUGIN)


def translations() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: our torch ops -> our ONNX nodes."""
    register_schemas()
    return {
        torch.ops.hrsam.varlen_attention.default: _varlen_attention,
        torch.ops.hrsam.selective_scan.default: _selective_scan,
    }
