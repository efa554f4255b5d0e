"""What each hrsam TensorRT plugin is, independent of TensorRT: inputs, attributes, types, rules.

A ``PluginDefinition`` holds everything ``plugins/tensorrt_plugins.py`` turns into a
``tensorrt.plugin`` registration: the input names and attribute types (the ONNX node's), the
accepted I/O types (``tensorrt.plugin.AutoTuneCombination`` strings), the output shape rule, and the
kernel launch for concrete shapes. Keeping them here, in plain Python, lets the CPU tests check
every rule without TensorRT.

Shapes are tuples of ints; dtypes are Triton names ("fp32", "fp16", "bf16", "i32").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hrsam.contract import VARLEN_ATTENTION
from plugins import attention, scan
from plugins.aot import CompiledKernel, LaunchSpec, compile_fitting

FLOATS = "FP32|FP16|BF16"
SCAN_ATTRIBUTES = {"delta_softplus": int, "sm_count": int}

Shapes = tuple[tuple[int, ...], ...]
# (input shapes, input dtypes, attributes) -> output shapes / candidate kernel launches in
# preference order (``plugins.aot.compile_fitting`` takes the first that fits).
ShapeRule = Callable[[Shapes, tuple[str, ...], dict], Shapes]
LaunchRule = Callable[[Shapes, tuple[str, ...], dict], tuple[LaunchSpec, ...]]


@dataclass(frozen=True)
class PluginDefinition:
    """One plugin: ``types`` has one AutoTuneCombination entry per input, then per output.

    ``output_dtypes``: per output, "input:<i>" (the dtype of input i) or a fixed dtype name;
    ``output_ranks``: per output (what TensorRT asks before shapes are known);
    ``aliases``: output index -> input index whose memory the output is (in-place plugins).
    """

    name: str
    inputs: tuple[str, ...]
    attributes: dict[str, type]
    outputs: tuple[str, ...]
    types: tuple[str, ...]
    output_dtypes: tuple[str, ...]
    output_ranks: tuple[int, ...]
    output_shapes: ShapeRule
    launch: LaunchRule
    aliases: tuple[tuple[int, int], ...] = ()

    def autotune_types(self) -> str:
        """The I/O type combination string of ``tensorrt.plugin.AutoTuneCombination``."""
        return ", ".join(self.types)

    def compile(self, shapes: Shapes, dtypes: tuple[str, ...], attrs: dict, capability: int) -> CompiledKernel:
        """The kernel TensorRT launches for these concrete inputs on a GPU of ``capability``."""
        return compile_fitting(self.launch(shapes, dtypes, attrs), capability)

    def output_dtype(self, index: int, input_dtypes: tuple[str, ...]) -> str:
        rule = self.output_dtypes[index]
        return input_dtypes[int(rule.split(":")[1])] if rule.startswith("input:") else rule


def _attention_shapes(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict) -> Shapes:
    return (attention.output_shape(*shapes),)


def _attention_launch(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict) -> tuple[LaunchSpec, ...]:
    q, _, _, cu_q, _ = shapes
    return attention.launches(dtypes[0], q, cu_q, float(attrs["scale"]), int(attrs["max_seqlen_q"]))


def _problem(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict, names: tuple[str, ...]) -> scan.ScanProblem:
    named = dict(zip(names, shapes, strict=True))
    problem = scan.problem_from_shapes(
        named["u"], named["A_t"], dtypes[0], bool(attrs["delta_softplus"]), int(attrs["sm_count"])
    )
    scan.check_state_inputs(named, problem)
    return problem


def _state_shapes(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict) -> Shapes:
    return _problem(shapes, dtypes, attrs, scan.STATE_INPUTS).state_shapes()


def _state_launch(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict) -> tuple[LaunchSpec, ...]:
    return (scan.state_launch(_problem(shapes, dtypes, attrs, scan.STATE_INPUTS)),)


def _carry_shapes(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict) -> Shapes:
    states, dt_sums, a_t = shapes
    if len(states) != 4 or dt_sums != (states[0], states[1], states[3]) or a_t != (states[2], states[3]):
        raise ValueError(f"SelectiveScanChunkCarry: states {states}, dt_sums {dt_sums}, A_t {a_t} disagree")
    return (states,)


def _carry_launch(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict) -> tuple[LaunchSpec, ...]:
    return (scan.carry_launch(_carry_shapes(shapes, dtypes, attrs)[0]),)


def _output_shapes(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict) -> Shapes:
    problem = _problem(shapes, dtypes, attrs, scan.OUTPUT_INPUTS)
    carried = shapes[scan.OUTPUT_INPUTS.index("carried")]
    if carried != problem.state_shapes()[0]:
        raise ValueError(f"SelectiveScanChunkOutput: carried states {carried} != {problem.state_shapes()[0]}")
    return (shapes[0],)


def _output_launch(shapes: Shapes, dtypes: tuple[str, ...], attrs: dict) -> tuple[LaunchSpec, ...]:
    return (scan.output_launch(_problem(shapes, dtypes, attrs, scan.OUTPUT_INPUTS)),)


VARLEN_ATTENTION_PLUGIN = PluginDefinition(
    name=VARLEN_ATTENTION.op_type,
    inputs=VARLEN_ATTENTION.inputs,
    attributes=dict(VARLEN_ATTENTION.attributes),
    outputs=VARLEN_ATTENTION.outputs,
    types=(FLOATS, FLOATS, FLOATS, "INT32", "INT32", FLOATS),
    output_dtypes=("input:0",),
    output_ranks=(3,),
    output_shapes=_attention_shapes,
    launch=_attention_launch,
)
CHUNK_STATE_PLUGIN = PluginDefinition(
    name=scan.CHUNK_STATE,
    inputs=scan.STATE_INPUTS,
    attributes=SCAN_ATTRIBUTES,
    outputs=scan.STATE_OUTPUTS,
    types=(FLOATS, FLOATS, "FP32", "FP32", "FP32", "FP32", "FP32", "FP32"),
    output_dtypes=("fp32", "fp32"),
    output_ranks=(4, 3),
    output_shapes=_state_shapes,
    launch=_state_launch,
)
CHUNK_CARRY_PLUGIN = PluginDefinition(
    name=scan.CHUNK_CARRY,
    inputs=scan.CARRY_INPUTS,
    attributes=SCAN_ATTRIBUTES,
    outputs=scan.CARRY_OUTPUTS,
    types=("FP32", "FP32", "FP32", "FP32"),
    output_dtypes=("fp32",),
    output_ranks=(4,),
    output_shapes=_carry_shapes,
    launch=_carry_launch,
    aliases=((0, 0),),
)
CHUNK_OUTPUT_PLUGIN = PluginDefinition(
    name=scan.CHUNK_OUTPUT,
    inputs=scan.OUTPUT_INPUTS,
    attributes=SCAN_ATTRIBUTES,
    outputs=scan.OUTPUT_OUTPUTS,
    types=(FLOATS, FLOATS, "FP32", "FP32", "FP32", "FP32", "FP32", "FP32", FLOATS),
    output_dtypes=("input:0",),
    output_ranks=(3,),
    output_shapes=_output_shapes,
    launch=_output_launch,
)
PLUGINS = {p.name: p for p in (VARLEN_ATTENTION_PLUGIN, CHUNK_STATE_PLUGIN, CHUNK_CARRY_PLUGIN, CHUNK_OUTPUT_PLUGIN)}
