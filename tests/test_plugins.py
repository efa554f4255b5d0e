"""The TensorRT plugins without TensorRT: AOT compilation, PTX rewriting, shape rules, lowering.

What runs here (CPU): the Triton kernels compile for sm_90 to PTX (Triton ships LLVM and ptxas) and
the rewritten parameter lists are checked; the lowered graph is evaluated by ONNX's reference
evaluator with each plugin node executed the way TensorRT would: output buffers from the plugin's
shape rule, the kernel launched with the plugin's grid, constants and scalars, arguments taken
from TensorRT's (inputs, scalars, outputs) slots, kernels run by the Triton interpreter. What does
not run here: the PTX itself (``tests/test_aot_launch.py`` launches it on a GPU) and TensorRT.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from plugins import aot, attention, scan
from plugins.aot import LaunchSpec, compile_launch, ptx_params, reorder_ptx_params, specialize
from plugins.definitions import PLUGINS
from plugins.lowering import lower_for_tensorrt
from tests.fresh_python import run_python

REPO = Path(__file__).resolve().parents[1]
SM90 = 90


def run_like_tensorrt(op_type: str, inputs: list[torch.Tensor], attrs: dict) -> list[torch.Tensor]:
    """Execute one plugin node as TensorRT's AOT launch does, with the kernels of the launch spec.

    Outputs come from the plugin's shape / dtype rules (aliased outputs are their input's memory);
    the kernel receives the input, scalar and output slots mapped back to its parameter names.
    """
    definition = PLUGINS[op_type]
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32"}
    dtypes = tuple(names[t.dtype] for t in inputs)
    shapes = tuple(tuple(t.shape) for t in inputs)
    spec = definition.launch(shapes, dtypes, attrs)[0]
    aliases = dict(definition.aliases)
    torch_dtypes = {value: key for key, value in names.items()}
    out_dtypes = [torch_dtypes[definition.output_dtype(i, dtypes)] for i in range(len(definition.outputs))]
    outputs = [
        inputs[aliases[i]] if i in aliases else torch.empty(shape, dtype=out_dtypes[i])
        for i, shape in enumerate(definition.output_shapes(shapes, dtypes, attrs))
    ]
    arguments = dict(spec.scalars) | dict(spec.constexprs)
    for slot_names, tensors in ((spec.inputs, inputs), (spec.outputs, outputs)):
        arguments.update({name: t for name, t in zip(slot_names, tensors, strict=True) if name is not None})
    spec.kernel[spec.grid](**arguments, num_warps=spec.num_warps)
    return outputs


def _scan_problem(dtype: str = "fp32") -> scan.ScanProblem:
    # dim 40 = one full and one partial block of 32, N = 7 (padded to 8), L = 150 = three chunks
    # of 64 with a short tail on an imaginary 4-SM GPU.
    return scan.ScanProblem(batch=1, dim=40, seqlen=150, dstate=7, dtype=dtype, softplus=True, sm_count=4)


def test_scan_problem_follows_the_package_plan():
    problem = _scan_problem()
    assert problem.chunks == (64, 3)
    assert problem.state_shapes() == ((1, 2, 7, 40), (1, 2, 40))
    assert scan.state_launch(problem).grid == (2, 2, 1)
    assert scan.output_launch(problem).grid == (3, 2, 1)
    single = scan.ScanProblem(1, 4096, 64, 16, "fp16", False, 4)
    assert single.chunks[1] == 1 and single.state_rows == 1  # one chunk: a one-row idle state buffer


def test_scan_problem_rejects_bad_input():
    with pytest.raises(ValueError, match="u/delta"):
        scan.ScanProblem(1, 8, 8, 4, "fp64", True, 4)
    with pytest.raises(ValueError, match="positive"):
        scan.ScanProblem(1, 0, 8, 4, "fp32", True, 4)
    with pytest.raises(ValueError, match="A_t"):
        scan.problem_from_shapes((1, 8, 16), (4, 9), "fp32", True, 4)
    with pytest.raises(ValueError, match="B_t"):
        shapes = ((1, 8, 16), (1, 8, 16), (4, 8), (1, 4, 16), (8,), (8,))
        PLUGINS[scan.CHUNK_STATE].output_shapes(shapes, ("fp32",) * 6, {"delta_softplus": 1, "sm_count": 4})


def test_attention_shape_rule():
    assert attention.output_shape((10, 2, 16), (12, 2, 16), (12, 2, 16), (4,), (4,)) == (10, 2, 16)
    with pytest.raises(ValueError, match="heads"):
        attention.output_shape((10, 2, 16), (12, 3, 16), (12, 3, 16), (4,), (4,))
    with pytest.raises(ValueError, match="cu_seqlens"):
        attention.output_shape((10, 2, 16), (12, 2, 16), (12, 2, 16), (4,), (5,))
    with pytest.raises(ValueError, match="fp64"):
        attention.launch("fp64", (10, 2, 16), (4,), 0.25, 8)


def test_specialize_mirrors_the_jit_launcher():
    spec = scan.output_launch(_scan_problem())
    signature, constants, attrs = specialize(spec)
    names = spec.kernel.arg_names
    assert signature["stride_bn"] == "constexpr" and constants["stride_bn"] == 1  # ints equal to 1
    assert signature["u_ptr"] == "*fp32" and (names.index("u_ptr"),) in attrs  # aligned pointers
    assert signature["stride_srow"] == "i32" and (names.index("stride_srow"),) not in attrs  # do_not_specialize
    assert (names.index("seqlen"),) not in attrs  # 150 is not a multiple of 16


def test_launch_spec_must_feed_every_parameter():
    spec = scan.output_launch(_scan_problem())
    broken = LaunchSpec(**{**spec.__dict__, "scalars": spec.scalars[1:]})
    with pytest.raises(ValueError, match="runtime parameters"):
        specialize(broken)
    huge = LaunchSpec(**{**spec.__dict__, "scalars": (("dim", 2**31), *spec.scalars[1:])})
    with pytest.raises(ValueError, match="int32"):
        specialize(huge)


@pytest.mark.parametrize(
    ("launch", "inputs", "outputs"),
    [
        (lambda p: scan.state_launch(p), 6, 2),
        (lambda p: scan.carry_launch(p.state_shapes()[0]), 3, 1),
        (lambda p: scan.output_launch(p), 8, 1),
    ],
    ids=["chunk_state", "chunk_carry", "chunk_output"],
)
def test_scan_kernels_compile_to_tensorrt_order(launch, inputs, outputs):
    """PTX parameters: input pointers, int32 extra args, output pointers; no hidden Triton params."""
    kernel = compile_launch(launch(_scan_problem("bf16")), SM90)
    kinds = ptx_params(kernel.ptx)
    assert kinds == ["u64"] * inputs + ["u32"] * len(kernel.extra_args) + ["u64"] * outputs
    declared = set(re.findall(rf"{kernel.name}_param_(\w+)", kernel.ptx.split(")")[0]))
    used = set(re.findall(rf"\[{kernel.name}_param_(\w+)", kernel.ptx))
    assert used <= declared
    assert kernel.shared <= aot.DEFAULT_SHARED_LIMIT


def test_attention_kernel_compiles_within_the_shared_memory_limit():
    definition = PLUGINS["VarlenAttention"]
    shapes = ((4096, 12, 64), (4096, 12, 64), (4096, 12, 64), (17,), (17,))
    for dtype in ("fp32", "bf16"):
        attrs = {"scale": 0.125, "max_seqlen_q": 256, "max_seqlen_k": 256}
        kernel = definition.compile(shapes, (dtype,) * 3 + ("i32",) * 2, attrs, SM90)
        assert ptx_params(kernel.ptx) == ["u64"] * 6 and kernel.extra_args == ()
        assert kernel.shared <= aot.DEFAULT_SHARED_LIMIT and kernel.grid[1] == 16 * 12


_PTX = """
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u64 .ptr .global .align 1 k_param_1,
\t.param .u32 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3
)
{
\tld.param.b64 %rd1, [k_param_0];
\tld.param.b32 %r1, [k_param_2];
\tld.param.b64 %rd2, [k_param_1];
BODY
}
"""


def test_reorder_ptx_params():
    ptx = _PTX.replace("BODY", "")
    rewritten = reorder_ptx_params(ptx, [0, 2, None, 1], runtime_count=3)
    header = rewritten.split(")")[0]
    assert re.findall(r"k_param_(\w+)", header) == ["0", "2", "unused2", "1"]
    assert "k_param_3" not in rewritten  # the hidden parameter is gone
    with pytest.raises(ValueError, match="permutation"):
        reorder_ptx_params(ptx, [0, 0, 1], runtime_count=3)


def test_reorder_refuses_kernels_that_read_hidden_params():
    ptx = _PTX.replace("BODY", "\tld.param.b64 %rd3, [k_param_3];")
    with pytest.raises(ValueError, match="scratch"):
        reorder_ptx_params(ptx, [0, 1, 2], runtime_count=3)


def _scan_graph() -> onnx.ModelProto:
    """One SelectiveScan and one VarlenAttention node, as the exporter writes them."""
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    scan_inputs = {"u": [1, 40, 150], "delta": [1, 40, 150], "A": [40, 7], "B": [1, 7, 150], "C": [1, 7, 150],
                   "D": [40], "delta_bias": [40]}
    attn_inputs = {"q": ([20, 2, 16], f32), "k": ([25, 2, 16], f32), "v": ([25, 2, 16], f32),
                   "cu_seqlens_q": ([5], i32), "cu_seqlens_k": ([5], i32)}
    nodes = [
        helper.make_node("SelectiveScan", list(scan_inputs), ["y"], name="scan", domain="hrsam", delta_softplus=1,
                         plugin_namespace="hrsam", plugin_version="1"),
        helper.make_node("VarlenAttention", list(attn_inputs), ["out"], name="attn", domain="hrsam",
                         plugin_version="1", plugin_namespace="hrsam", max_seqlen_k=11, max_seqlen_q=8, scale=0.25),
    ]
    inputs = [helper.make_tensor_value_info(n, f32, s) for n, s in scan_inputs.items()]
    inputs += [helper.make_tensor_value_info(n, t, s) for n, (s, t) in attn_inputs.items()]
    outputs = [helper.make_tensor_value_info("y", f32, [1, 40, 150]), helper.make_tensor_value_info("out", f32, None)]
    graph = helper.make_graph(nodes, "plugins", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("hrsam", 1)])


def test_lowering_structure():
    lowered, count = lower_for_tensorrt(_scan_graph(), sm_count=4)
    assert count == 1
    ops = [node.op_type for node in lowered.graph.node]
    assert ops == ["Transpose", "Transpose", "Cast", "Transpose", "Cast", scan.CHUNK_STATE, scan.CHUNK_CARRY,
                   scan.CHUNK_OUTPUT, "VarlenAttention"]
    state = lowered.graph.node[5]
    attrs = {a.name: helper.get_attribute_value(a) for a in state.attribute}
    assert attrs == {"delta_softplus": 1, "sm_count": 4, "plugin_namespace": b"hrsam", "plugin_version": b"1"}
    assert lowered.graph.node[7].output == ["y"]
    attention_node = lowered.graph.node[-1]
    assert [a.name for a in attention_node.attribute][:3] == ["scale", "max_seqlen_q", "max_seqlen_k"]
    assert [n.op_type for n in _scan_graph().graph.node] == ["SelectiveScan", "VarlenAttention"]  # input untouched
    with pytest.raises(ValueError, match="sm_count"):
        lower_for_tensorrt(_scan_graph(), sm_count=0)


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import numpy as np, torch
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun
    from hrsam.ops.selective_scan.reference import selective_scan_chunked
    from hrsam.ops.varlen_attention.reference import varlen_attention_reference
    from plugins.lowering import lower_for_tensorrt
    from tests.test_plugins import _scan_graph, run_like_tensorrt
    from tests.test_selective_scan import make_inputs

    def plugin(op):
        class Plugin(OpRun):
            op_domain = "hrsam"
            def _run(self, *arrays, delta_softplus=None, sm_count=None, scale=None, max_seqlen_q=None,
                     max_seqlen_k=None, plugin_namespace=None, plugin_version=None):
                attrs = {"delta_softplus": delta_softplus, "sm_count": sm_count, "scale": scale,
                         "max_seqlen_q": max_seqlen_q, "max_seqlen_k": max_seqlen_k}
                tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
                return tuple(t.numpy() for t in run_like_tensorrt(op, tensors, attrs))
        Plugin.__name__ = op
        return Plugin

    ops = [plugin(op) for op in ("SelectiveScanChunkState", "SelectiveScanChunkCarry",
                                 "SelectiveScanChunkOutput", "VarlenAttention")]
    lowered, _ = lower_for_tensorrt(_scan_graph(), sm_count=4)
    torch.manual_seed(0)
    u, delta, A, B, C, D, bias = make_inputs(1, 40, 7, 150, dtype=torch.float32)
    q, k, v = torch.randn(20, 2, 16), torch.randn(25, 2, 16), torch.randn(25, 2, 16)
    cu_q = torch.tensor([0, 5, 12, 12, 20], dtype=torch.int32)  # an empty query window
    cu_k = torch.tensor([0, 9, 9, 14, 25], dtype=torch.int32)  # an empty key window with queries
    feeds = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=bias, q=q, k=k, v=v,
                 cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    y, out = ReferenceEvaluator(lowered, new_ops=ops).run(None, {n: t.numpy() for n, t in feeds.items()})
    ref = selective_scan_chunked(*[t.double() for t in (u, delta, A, B, C, D, bias)], True)
    scan_err = float((torch.from_numpy(y).double() - ref).abs().max() / ref.abs().max())
    ref_attn = varlen_attention_reference(q, k, v, cu_q, cu_k, 8, 11, 0.25)
    attn_err = float((torch.from_numpy(out) - ref_attn).abs().max())
    assert scan_err < 1e-5 and attn_err < 1e-4, (scan_err, attn_err)

    # 16-bit activations through the three scan plugins (the graph path above is float32).
    xb = make_inputs(1, 40, 7, 150, dtype=torch.bfloat16)
    attrs = {"delta_softplus": 1, "sm_count": 4}
    A_t = xb[2].t().contiguous()
    B_t, C_t = (x.transpose(1, 2).float().contiguous() for x in (xb[3], xb[4]))
    states, dt_sums = run_like_tensorrt("SelectiveScanChunkState", [xb[0], xb[1], A_t, B_t, xb[5], xb[6]], attrs)
    carried, = run_like_tensorrt("SelectiveScanChunkCarry", [states, dt_sums, A_t], attrs)
    yb, = run_like_tensorrt("SelectiveScanChunkOutput", [xb[0], xb[1], A_t, B_t, C_t, xb[5], xb[6], carried], attrs)
    refb = selective_scan_chunked(*[t.double() for t in xb], True)
    err = float((yb.double() - refb).abs().max() / refb.abs().max())
    assert yb.dtype == torch.bfloat16 and err < 1.6e-2, err
    print("plugins ok", scan_err, attn_err, err)
    """
)


def test_lowered_graph_runs_like_tensorrt_under_the_interpreter():
    assert "plugins ok" in run_python(["-c", _INTERPRETER_SCRIPT], TRITON_INTERPRET="1")


def test_autotune_types_cover_every_io():
    for definition in PLUGINS.values():
        assert len(definition.types) == len(definition.inputs) + len(definition.outputs), definition.name
        assert len(definition.output_ranks) == len(definition.outputs) == len(definition.output_dtypes)
    assert PLUGINS["VarlenAttention"].autotune_types() == "FP32|FP16|BF16, " * 3 + "INT32, INT32, FP32|FP16|BF16"


@pytest.mark.skipif(
    not os.environ.get("HRSAM_TRT_PLUGIN_SOURCE"),
    reason="set HRSAM_TRT_PLUGIN_SOURCE to tensorrt_bindings/plugin of an unzipped tensorrt-cu13-bindings wheel",
)
def test_tensorrt_plugin_glue_accepts_our_plugins():
    """NVIDIA's tensorrt.plugin Python source drives our plugins (benchmarks/trt_plugin_glue.py)."""
    script = REPO / "benchmarks" / "trt_plugin_glue.py"
    assert "every check passed" in run_python([str(script), os.environ["HRSAM_TRT_PLUGIN_SOURCE"]])
