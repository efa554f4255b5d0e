"""Mixed precision for TensorRT's strongly typed networks: which ops run in fp16 / bf16 and which in fp32.

TensorRT 11 removed the fp16 / bf16 builder flags (weak typing); a network's types are the graph's
types (strong typing, also available in TensorRT 10). So an fp16 or bf16 engine is built from a
graph whose tensors already have those types. ``apply_precision`` rewrites an exported float32
graph that way, with the policy of ``torch.autocast``:

* matrix ops (``LOW_OPS``: MatMul, Gemm, Conv, ConvTranspose, Einsum, and our VarlenAttention)
  compute in the low precision;
* ops that overflow or lose too much there (``FP32_OPS``: LayerNormalization, Softmax, the
  reductions and powers of SAM's decomposed LayerNorm2d, exp / log / sin / cos, and our
  SelectiveScan, whose state is float32 by contract) compute in float32; SAM-family engines
  overflow in fp16 LayerNorm and softmax;
* every other op follows its activation inputs: low precision if they all are, float32 if any
  is float32 (type promotion); constant inputs take the activation's type;
* subgraphs fed only by constants or by ``pinned_inputs`` stay float32: the decoder's prompt
  encoding (point coordinates through sin / cos) is tiny and precision-sensitive, and constant
  subgraphs such as A = -exp(A_log) keep the values eager computes.

Graph inputs and outputs stay float32 (the export contract's I/O); Cast nodes are inserted where
a tensor changes type, and float32 weights read only in low precision are stored converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOW_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "VarlenAttention"})
FP32_OPS = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax", "SelectiveScan",
    "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos",
})
# Ops whose float inputs are not all of one type: only these input positions follow the data.
DATA_INPUTS = {"Resize": (0,), "Upsample": (0,)}
# Ops that never read their float inputs' values as data of a type to match.
TYPE_AGNOSTIC = frozenset({"Shape", "Size", "Cast", "CastLike"})

PRECISION_TYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
_NUMPY = {TensorProto.FLOAT16: np.float16, TensorProto.BFLOAT16: ml_dtypes.bfloat16}
_SUFFIX = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
_FP16_MAX = 65504.0


@dataclass
class PrecisionReport:
    """What ``apply_precision`` did: node names per compute type, casts inserted, weights converted."""

    low: list[str] = field(default_factory=list)
    fp32: list[str] = field(default_factory=list)
    casts: int = 0
    converted_weights: int = 0

    def summary(self) -> str:
        return (
            f"{len(self.low)} nodes in low precision, {len(self.fp32)} float nodes kept in fp32, "
            f"{self.casts} casts inserted, {self.converted_weights} weights converted"
        )


_CONSTANT_TYPES = {
    "value_float": TensorProto.FLOAT, "value_floats": TensorProto.FLOAT,
    "value_int": TensorProto.INT64, "value_ints": TensorProto.INT64, "value_string": TensorProto.STRING,
}


def _constant_type(node: onnx.NodeProto) -> int:
    for attribute in node.attribute:
        if attribute.name == "value":
            return attribute.t.data_type
        if attribute.name in _CONSTANT_TYPES:
            return _CONSTANT_TYPES[attribute.name]
    raise ValueError(f"Constant node {node.name!r} has no value attribute this rewrite knows")


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor: graph I/O, initializers, value_info, Constants, custom-op outputs."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    missing = [o for n in graph.node for o in n.output if o and not types.get(o)]
    if missing:
        inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
        types.update({v.name: v.type.tensor_type.elem_type for v in inferred if v.type.tensor_type.elem_type})
    for node in graph.node:
        if node.op_type == "Constant":
            types[node.output[0]] = _constant_type(node)
        elif node.domain == "hrsam" and node.output and not types.get(node.output[0]):
            types[node.output[0]] = types.get(node.input[0], 0)
    unknown = [o for n in graph.node for o in n.output if o and not types.get(o)]
    if unknown:
        raise ValueError(f"no type is known for tensors {unknown[:5]}: export the graph again with value_info")
    return types


class _Rewriter:
    """State of one rewrite: current types, which tensors are constant / pinned, cast cache."""

    def __init__(self, model: onnx.ModelProto, low: int, pinned_inputs: tuple[str, ...]) -> None:
        graph = model.graph
        self.low = low
        self.original = tensor_types(model)
        self.types = dict(self.original)
        self.initializers = {init.name: init for init in graph.initializer}
        self.constant = set(self.initializers)
        self.pinned = set(self.initializers) | set(pinned_inputs)
        self.nodes: list[onnx.NodeProto] = []
        self.new_initializers: list[onnx.TensorProto] = []
        self.cache: dict[tuple[str, int], str] = {}
        self.report = PrecisionReport()

    def convert(self, name: str, want: int) -> str:
        """``name`` as type ``want``: a converted weight or a Cast node, made once per (tensor, type)."""
        if self.types[name] == want:
            return name
        key = (name, want)
        if key not in self.cache:
            target = f"{name}__{_SUFFIX[want]}"
            if name in self.initializers and want in _NUMPY:
                array = numpy_helper.to_array(self.initializers[name])
                if want == TensorProto.FLOAT16 and np.abs(array).max(initial=0.0) > _FP16_MAX:
                    raise ValueError(f"weight {name} exceeds the fp16 range (|w| > {_FP16_MAX}); build in bf16 or fp32")
                self.new_initializers.append(numpy_helper.from_array(array.astype(_NUMPY[want]), target))
                self.report.converted_weights += 1
            else:
                self.nodes.append(helper.make_node("Cast", [name], [target], name=f"{target}/cast", to=want))
                self.report.casts += 1
            self.types[target] = want
            self.constant.update([target] if name in self.constant else [])
            self.pinned.update([target] if name in self.pinned else [])
            self.cache[key] = target
        return self.cache[key]

    def _float_inputs(self, node: onnx.NodeProto) -> list[int]:
        positions = DATA_INPUTS.get(node.op_type, range(len(node.input)))
        return [i for i in positions if i < len(node.input) and node.input[i]
                and self.original.get(node.input[i]) == TensorProto.FLOAT]

    def _compute_type(self, node: onnx.NodeProto, floats: list[int], pinned: bool) -> int:
        if pinned or node.op_type in FP32_OPS:
            return TensorProto.FLOAT
        if node.op_type in LOW_OPS:
            return self.low
        activations = {self.types[node.input[i]] for i in floats if node.input[i] not in self.constant}
        return self.low if activations == {self.low} else TensorProto.FLOAT

    def visit(self, node: onnx.NodeProto) -> None:
        inputs = [name for name in node.input if name]
        pinned = all(name in self.pinned for name in inputs)
        constant = all(name in self.constant for name in inputs)
        floats = self._float_inputs(node)
        rewritten = onnx.NodeProto()
        rewritten.CopyFrom(node)
        compute = self._compute_type(node, floats, pinned)
        if node.op_type not in TYPE_AGNOSTIC:
            for i in floats:
                rewritten.input[i] = self.convert(node.input[i], compute)
        for output in node.output:
            original = self.original.get(output)
            self.types[output] = compute if original == TensorProto.FLOAT and node.op_type != "Cast" else original
        if any(self.original.get(o) == TensorProto.FLOAT for o in node.output) and node.op_type != "Constant":
            (self.report.low if compute == self.low else self.report.fp32).append(node.name or node.op_type)
        self.pinned.update(node.output if pinned else ())
        self.constant.update(node.output if constant else ())
        self.nodes.append(rewritten)


def _restore_outputs(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], types: dict[str, int]) -> int:
    """Graph outputs back to float32 through a final Cast, keeping the contract's output names."""
    casts = 0
    for output in graph.output:
        name = output.name
        if types.get(name) == TensorProto.FLOAT or output.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = f"{name}__{_SUFFIX[types[name]]}"
        for node in nodes:
            node.input[:] = [inner if i == name else i for i in node.input]
            node.output[:] = [inner if o == name else o for o in node.output]
        nodes.append(helper.make_node("Cast", [inner], [name], name=f"{name}/cast_out", to=TensorProto.FLOAT))
        types[inner], types[name] = types[name], TensorProto.FLOAT
        casts += 1
    return casts


def apply_precision(
    model: onnx.ModelProto, precision: str, pinned_inputs: tuple[str, ...] = ()
) -> tuple[onnx.ModelProto, PrecisionReport]:
    """A copy of float32 ``model`` computing in ``precision`` (fp32 returns it unchanged)."""
    if precision not in PRECISION_TYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISION_TYPES)}")
    if precision == "fp32":
        return model, PrecisionReport()
    names = {i.name for i in model.graph.input}
    unknown = [name for name in pinned_inputs if name not in names]
    if unknown:
        raise ValueError(f"pinned inputs {unknown} are not inputs of the graph (inputs: {sorted(names)})")
    rewriter = _Rewriter(model, PRECISION_TYPES[precision], pinned_inputs)
    for node in model.graph.node:
        rewriter.visit(node)
    nodes = rewriter.nodes
    rewriter.report.casts += _restore_outputs(model.graph, nodes, rewriter.types)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [init for init in rewriter.new_initializers if init.name in used])
    for info in graph.value_info:
        info.type.tensor_type.elem_type = rewriter.types.get(info.name, info.type.tensor_type.elem_type)
    return result, rewriter.report
