"""``python -m export engine`` without TensorRT: options, builder settings, the prepared graph, errors.

The graph TensorRT is given is built here in full (precision rewrite, then the scan lowered) and
checked for types and numerics with ONNX's reference evaluator; the TensorRT calls themselves
(parse, build) cannot run on these machines and are exercised by ``tests/test_trt_parity.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from export.cli import UserError, main
from export.engine import BuildOptions, builder_settings, custom_op_types, decoder_profile, prepare_graph
from export.precision import apply_precision
from hrsam.ops.selective_scan.reference import selective_scan_chunked
from plugins.scan import LOWERED_OPS
from tests.test_tensorrt_runner import HAS_TENSORRT, make_export

F32 = TensorProto.FLOAT


class SelectiveScan(OpRun):
    """The contract's SelectiveScan for the reference evaluator (the package's reference scan)."""

    op_domain = "hrsam"

    def _run(self, *arrays, delta_softplus=None, plugin_namespace=None, plugin_version=None):  # noqa: ANN001, ANN002
        tensors = [torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in arrays]
        return (selective_scan_chunked(*tensors, bool(delta_softplus)).numpy().astype(arrays[0].dtype),)


def _initializer(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def encoder_like_graph() -> onnx.ModelProto:
    """MatMul -> LayerNorm -> SelectiveScan (A = -exp(A_log), a constant subgraph) -> MatMul."""
    rng = np.random.default_rng(0)
    dim, state, length = 8, 4, 24
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["h"], name="proj_in"),
        helper.make_node("LayerNormalization", ["h", "ln_scale", "ln_bias"], ["n"], name="norm", axis=-1),
        helper.make_node("Transpose", ["n"], ["u"], name="to_channels", perm=[0, 2, 1]),
        helper.make_node("Exp", ["A_log"], ["A_pos"], name="exp_A"),
        helper.make_node("Neg", ["A_pos"], ["A"], name="neg_A"),
        helper.make_node("SelectiveScan", ["u", "u", "A", "B", "C", "D", "dt_bias"], ["y"], name="scan",
                         domain="hrsam", delta_softplus=1, plugin_namespace="hrsam", plugin_version="1"),
        helper.make_node("Transpose", ["y"], ["z"], name="to_tokens", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["z", "w_out"], ["out"], name="proj_out"),
    ]  # fmt: skip
    initializers = [
        _initializer("w_in", rng.standard_normal((dim, dim)) / 3),
        _initializer("w_out", rng.standard_normal((dim, dim))),
        _initializer("ln_scale", np.ones(dim)), _initializer("ln_bias", np.zeros(dim)),
        _initializer("A_log", np.log(np.arange(1, state + 1))[None].repeat(dim, 0)),
        _initializer("B", rng.standard_normal((1, state, length))),
        _initializer("C", rng.standard_normal((1, state, length))),
        _initializer("D", np.ones(dim)), _initializer("dt_bias", np.full(dim, -2.0)),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "encoder_like", [helper.make_tensor_value_info("x", F32, [1, length, dim])],
        [helper.make_tensor_value_info("out", F32, [1, length, dim])], initializers,
        value_info=[helper.make_tensor_value_info(name, F32, None) for name in ("h", "n", "u", "A_pos", "A", "y", "z")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("hrsam", 1)])


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:
        if node.op_type == "Cast":
            types[node.output[0]] = helper.get_attribute_value(node.attribute[0])
    return types


@pytest.mark.parametrize(("precision", "low", "tolerance"), [("fp16", TensorProto.FLOAT16, 5e-3),
                                                              ("bf16", TensorProto.BFLOAT16, 4e-2)])
def test_precision_keeps_norm_scan_and_constants_in_fp32(precision, low, tolerance):
    model = encoder_like_graph()
    typed, report = apply_precision(model, precision)
    producers = {o: n for n in typed.graph.node for o in n.output}
    types = _types(typed)
    matmuls = [n for n in typed.graph.node if n.op_type == "MatMul"]
    assert all(types[i] == low for n in matmuls for i in n.input)  # weights converted, activations cast
    norm = next(n for n in typed.graph.node if n.op_type == "LayerNormalization")
    assert types[norm.input[0]] == F32 and producers[norm.input[0]].op_type == "Cast"
    scan = next(n for n in typed.graph.node if n.op_type == "SelectiveScan")
    assert producers[scan.input[2]].name == "neg_A"  # A = -exp(A_log) never left fp32
    assert typed.graph.output[0].type.tensor_type.elem_type == F32 and producers["out"].op_type == "Cast"
    assert report.converted_weights == 2 and "norm" in report.fp32 and "proj_in" in report.low
    x = np.random.default_rng(1).standard_normal((1, 24, 8)).astype(np.float32)
    want = ReferenceEvaluator(model, new_ops=[SelectiveScan]).run(None, {"x": x})[0]
    got = ReferenceEvaluator(typed, new_ops=[SelectiveScan]).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= tolerance * np.abs(want).max()


def test_prepare_graph_lowers_the_scan_after_precision():
    prepared, summary = prepare_graph(encoder_like_graph(), "encoder", "fp16", sm_count=132)
    assert custom_op_types(prepared) == sorted(LOWERED_OPS)
    assert "1 SelectiveScan nodes lowered" in summary and summary.startswith("fp16: ")
    state = next(n for n in prepared.graph.node if n.op_type == LOWERED_OPS[0])
    assert {a.name: helper.get_attribute_value(a) for a in state.attribute}["sm_count"] == 132
    unchanged, summary = prepare_graph(encoder_like_graph(), "encoder", "fp32", sm_count=4)
    assert summary.startswith("fp32;") and not any(n.op_type == "Cast" for n in unchanged.graph.node[:3])


def test_pinned_inputs_keep_their_subgraph_in_fp32():
    """The decoder's prompt path (coordinates through a matmul and sin) stays fp32; the rest goes low."""
    nodes = [
        helper.make_node("MatMul", ["coords", "gaussian"], ["proj"], name="pe"),
        helper.make_node("Sin", ["proj"], ["pe_sin"], name="sin"),
        helper.make_node("MatMul", ["embed", "w"], ["feat"], name="image_proj"),
        helper.make_node("Add", ["feat", "pe_sin"], ["out"], name="mix"),
    ]
    inputs = [helper.make_tensor_value_info("coords", F32, [1, 2]), helper.make_tensor_value_info("embed", F32, [1, 4])]
    inits = [_initializer("gaussian", np.ones((2, 4))), _initializer("w", np.eye(4))]
    value_info = [helper.make_tensor_value_info(n, F32, None) for n in ("proj", "pe_sin", "feat")]
    output = helper.make_tensor_value_info("out", F32, [1, 4])
    graph = helper.make_graph(nodes, "prompt", inputs, [output], inits, value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    typed, report = apply_precision(model, "fp16", pinned_inputs=("coords",))
    assert "pe" in report.fp32 and "sin" in report.fp32 and "image_proj" in report.low
    assert "mix" in report.fp32  # fp16 image features + fp32 prompt features: promoted, like torch
    onnx.shape_inference.infer_shapes(typed, strict_mode=True)  # every node's input types agree
    with pytest.raises(ValueError, match=r"pinned inputs \['nope'\]"):
        apply_precision(model, "fp16", pinned_inputs=("nope",))


def test_precision_refuses_weights_beyond_fp16():
    model = encoder_like_graph()
    model.graph.initializer[0].CopyFrom(_initializer("w_in", np.full((8, 8), 1e5)))
    with pytest.raises(ValueError, match="w_in exceeds the fp16 range"):
        apply_precision(model, "fp16")
    apply_precision(model, "bf16")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        apply_precision(model, "int8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"precision": "fp8"}, "--precision"),
        ({"parts": ("encoder", "neck")}, "--parts"),
        ({"max_points": 1}, "--max-points must be in 2..1024"),
        ({"opt_points": 40}, "--opt-points must be in 1..32"),
        ({"workspace_gib": 0}, "--workspace-gib"),
        ({"plugins": "cpp"}, "--plugins"),
        ({"optimization_level": 7}, "--opt-level"),
    ],
)
def test_build_options_are_checked(change, message):
    BuildOptions().validate()
    with pytest.raises(UserError, match=message):
        BuildOptions(**change).validate()


def test_builder_settings():
    options = BuildOptions(max_points=16, opt_points=4, workspace_gib=2)
    encoder = builder_settings("encoder", options, has_plugins=True)
    assert encoder.network_flags == ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS")
    assert encoder.preview_features == ("ALIASED_PLUGIN_IO_10_03",)
    assert encoder.workspace_bytes == 2 * 2**30 and encoder.profile == {}
    decoder = builder_settings("decoder", options, has_plugins=False)
    assert decoder.network_flags == ("STRONGLY_TYPED",) and decoder.preview_features == ()
    assert decoder.profile == decoder_profile(options) == {
        "point_coords": ((1, 1, 2), (1, 4, 2), (1, 16, 2)),
        "point_labels": ((1, 1), (1, 4), (1, 16)),
    }
    jit = builder_settings("encoder", BuildOptions(plugins="jit"), has_plugins=True)
    assert jit.network_flags[1] == "PREFER_JIT_PYTHON_PLUGINS"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["engine", str(tmp_path), "--max-points", "1"]) == 2
    assert "error: --max-points must be in 2..1024" in capsys.readouterr().err
    assert main(["engine", str(tmp_path)]) == 2
    assert "no model.json in" in capsys.readouterr().err
    assert main(["validate", str(tmp_path)]) == 2
    assert "no model.json in" in capsys.readouterr().err
    make_export(tmp_path)
    assert main(["validate", str(tmp_path)]) == 2
    assert "has no encoder engine in model.json: build engines with `python -m export engine" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message of a machine without TensorRT (tensorrt is installed)")
def test_cli_without_tensorrt_names_the_package(tmp_path, capsys):
    make_export(tmp_path)
    assert main(["engine", str(tmp_path), "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: TensorRT is not installed") and "pip install tensorrt-cu" in err
    assert len(err.splitlines()) == 1
