"""Rewrite an exported graph into what TensorRT builds: each ``SelectiveScan`` as three plugin nodes.

A TensorRT AOT plugin launches one kernel; the scan needs three passes (``plugins/scan.py``). So
before parsing, every ``hrsam::SelectiveScan`` node becomes::

    A_t = Transpose(A)                               # [N, dim]
    B_t = Cast<float>(Transpose(B)), C_t likewise    # [batch, L, N] float32
    states, dt_sums = SelectiveScanChunkState(u, delta, A_t, B_t, D, delta_bias)
    carried = SelectiveScanChunkCarry(states, dt_sums, A_t)      # in place on states
    y = SelectiveScanChunkOutput(u, delta, A_t, B_t, C_t, D, delta_bias, carried)

with attributes ``delta_softplus`` and ``sm_count`` (the build GPU's SM count, which sets the chunk
plan). The exported ``encoder.onnx`` keeps the one-node contract; only the graph handed to
TensorRT is lowered. ``VarlenAttention`` nodes keep their form; their attributes are put in the
plugin's registration order, the order TensorRT's ONNX parser reads plugin fields in.
"""

from __future__ import annotations

import onnx
from onnx import helper

from hrsam.contract import CUSTOM_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION, SELECTIVE_SCAN, VARLEN_ATTENTION
from plugins.scan import CHUNK_CARRY, CHUNK_OUTPUT, CHUNK_STATE


def _plugin_node(op_type: str, inputs: list[str], outputs: list[str], name: str, **attributes: int) -> onnx.NodeProto:
    return helper.make_node(
        op_type, inputs, outputs, name=name, domain=CUSTOM_DOMAIN,
        plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION, **attributes,
    )


def _attribute(node: onnx.NodeProto, name: str) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    raise ValueError(f"node {node.name or node.op_type} has no attribute {name!r}: not an hrsam export")


def lower_scan_node(node: onnx.NodeProto, sm_count: int, prefix: str) -> list[onnx.NodeProto]:
    """The nodes replacing one ``SelectiveScan`` node; new tensor names start with ``prefix``."""
    if len(node.input) != len(SELECTIVE_SCAN.inputs) or len(node.output) != 1:
        raise ValueError(f"{node.name}: SelectiveScan needs inputs {SELECTIVE_SCAN.inputs} and one output")
    u, delta, A, B, C, D, bias = node.input  # noqa: N806 - the contract's names
    softplus = int(_attribute(node, "delta_softplus"))
    names = {key: f"{prefix}/{key}" for key in ("A_t", "B_T", "B_t", "C_T", "C_t", "states", "dt_sums", "carried")}
    float32 = onnx.TensorProto.FLOAT
    attrs = {"delta_softplus": softplus, "sm_count": int(sm_count)}
    return [
        helper.make_node("Transpose", [A], [names["A_t"]], name=f"{prefix}/transpose_A", perm=[1, 0]),
        helper.make_node("Transpose", [B], [names["B_T"]], name=f"{prefix}/transpose_B", perm=[0, 2, 1]),
        helper.make_node("Cast", [names["B_T"]], [names["B_t"]], name=f"{prefix}/cast_B", to=float32),
        helper.make_node("Transpose", [C], [names["C_T"]], name=f"{prefix}/transpose_C", perm=[0, 2, 1]),
        helper.make_node("Cast", [names["C_T"]], [names["C_t"]], name=f"{prefix}/cast_C", to=float32),
        _plugin_node(
            CHUNK_STATE, [u, delta, names["A_t"], names["B_t"], D, bias], [names["states"], names["dt_sums"]],
            f"{prefix}/chunk_state", **attrs,
        ),
        _plugin_node(
            CHUNK_CARRY, [names["states"], names["dt_sums"], names["A_t"]], [names["carried"]],
            f"{prefix}/chunk_carry", **attrs,
        ),
        _plugin_node(
            CHUNK_OUTPUT, [u, delta, names["A_t"], names["B_t"], names["C_t"], D, bias, names["carried"]],
            list(node.output), f"{prefix}/chunk_output", **attrs,
        ),
    ]


def _ordered_attention(node: onnx.NodeProto) -> onnx.NodeProto:
    """The node with the contract's attributes first, in registration order, the rest after."""
    order = list(VARLEN_ATTENTION.attributes)
    ranked = sorted(node.attribute, key=lambda a: order.index(a.name) if a.name in order else len(order))
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.attribute[:]
    copy.attribute.extend(ranked)
    return copy


def lower_for_tensorrt(model: onnx.ModelProto, sm_count: int) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every SelectiveScan lowered; returns (model, scans lowered).

    ``sm_count``: streaming multiprocessors of the GPU the engine is built for (the chunk plan
    depends on it, as in ``selective_scan_triton``).
    """
    if sm_count < 1:
        raise ValueError(f"sm_count must be positive, got {sm_count}")
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        if node.domain == CUSTOM_DOMAIN and node.op_type == SELECTIVE_SCAN.op_type:
            nodes.extend(lower_scan_node(node, sm_count, f"{node.name or 'selective_scan'}#{count}"))
            count += 1
        elif node.domain == CUSTOM_DOMAIN and node.op_type == VARLEN_ATTENTION.op_type:
            nodes.append(_ordered_attention(node))
        else:
            nodes.append(node)
    del lowered.graph.node[:]
    lowered.graph.node.extend(nodes)
    return lowered, count
