"""ONNX export: graph contract (node counts, constants, shapes), ONNX Runtime vs eager, bad input.

Exports are made once per (model, size, portable) and shared by the tests of this module. Parity
tolerances (fp32 graphs on ONNX Runtime's CPU provider vs eager PyTorch): embedding max abs error
<= 1e-4 (measured ~1e-5: the same function with another summation order), and mask IoU >= 0.999
on every click of a 5-click session in which each backend feeds back its own logits.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.cli import main as export_main
from export.onnx_export import export_onnx
from export.parity import DEFAULT_CLICKS, session_ious
from hrsam.checkpoint import load_model, save_checkpoint
from hrsam.cli import EXAMPLE_IMAGE, parse_points
from hrsam.contract import CUSTOM_DOMAIN, ONNX_FILES, Sidecar
from hrsam.images import load_image
from hrsam.modeling.interactive import build_model
from hrsam.predictor import HRSAMPredictor
from trt_runtime import open_predictor
from trt_runtime.onnxruntime_runner import OnnxRuntimeRunner

pytestmark = pytest.mark.slow  # each export takes 10-60 s on 2 cores

# 1024 takes minutes per case on 2 cores: those run in CI after `make test` (the `heavy` marker).
CASES = [
    ("hrsam_tiny", 512, False),
    ("hrsampp_tiny", 512, False),
    ("hrsam_tiny", 512, True),
    pytest.param("hrsampp_tiny", 512, True, marks=pytest.mark.heavy),
    pytest.param("hrsam_tiny", 1024, False, marks=pytest.mark.heavy),
    pytest.param("hrsampp_tiny", 1024, False, marks=pytest.mark.heavy),
    pytest.param("hrsam_tiny", 1024, True, marks=pytest.mark.heavy),
    pytest.param("hrsampp_tiny", 1024, True, marks=pytest.mark.heavy),
]
SCANS_PER_MODEL = {"hrsam_tiny": 4, "hrsampp_tiny": 12}  # HRSAM++: 4 x (main, anchor, multi-scale)
# Inputs that are shapes, sizes or indices: they must be integer tensors (TensorRT refuses float shapes).
SHAPE_INPUTS = {"Reshape": [1], "Expand": [1], "Tile": [1], "ConstantOfShape": [0], "Slice": [1, 2, 3, 4],
                "Resize": [3], "Unsqueeze": [1], "Squeeze": [1], "Pad": [1], "Range": [0, 1, 2]}


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, Path]:
    """Lazily exported directories, one per case."""
    made: dict[tuple, Path] = {}

    def get(name: str, size: int, portable: bool) -> Path:
        key = (name, size, portable)
        if key not in made:
            directory = tmp_path_factory.mktemp(f"{name}-{size}-{'portable' if portable else 'custom'}")
            export_onnx(load_model(name), size, directory, portable=portable)
            made[key] = directory
        return made[key]

    return get


def _ops(directory: Path, part: str) -> Counter:
    model = onnx.load(str(directory / ONNX_FILES[part]))
    return Counter((node.domain, node.op_type) for node in model.graph.node)


def _float_shape_inputs(path: Path) -> list[str]:
    """Names of shape/size/index inputs whose type is not an integer."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    types |= {init.name: init.data_type for init in model.graph.initializer}
    ints = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
    bad = []
    for node in model.graph.node:
        for index in SHAPE_INPUTS.get(node.op_type, []):
            if index < len(node.input) and node.input[index] and types.get(node.input[index], 0) not in ints:
                bad.append(f"{node.op_type}:{node.input[index]}")
    return bad


@pytest.mark.parametrize("name", ["hrsam_tiny", "hrsampp_tiny"])
def test_encoder_has_one_node_per_attention_and_scan(exports, name: str) -> None:
    directory = exports(name, 512, False)
    ops = _ops(directory, "encoder")
    assert ops[(CUSTOM_DOMAIN, "VarlenAttention")] == 12
    assert ops[(CUSTOM_DOMAIN, "SelectiveScan")] == SCANS_PER_MODEL[name]
    assert not any(op in ("Loop", "Range", "Scan", "If") for _, op in ops), "index plans must be constants"
    assert ops[("", "LayerNormalization")] > 0
    for part in ONNX_FILES:
        assert _float_shape_inputs(directory / ONNX_FILES[part]) == []
        onnx.checker.check_model(str(directory / ONNX_FILES[part]), full_check=True)
    assert not any(op in ("Loop", "Range") for _, op in _ops(directory, "decoder"))


def test_custom_nodes_carry_the_contract_attributes(exports) -> None:
    model = onnx.load(str(exports("hrsam_tiny", 512, False) / ONNX_FILES["encoder"]))
    nodes = [node for node in model.graph.node if node.domain == CUSTOM_DOMAIN]
    attention = next(node for node in nodes if node.op_type == "VarlenAttention")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in attention.attribute}
    assert attributes["plugin_namespace"] == b"hrsam" and attributes["plugin_version"] == b"1"
    assert attributes["max_seqlen_q"] == attributes["max_seqlen_k"] == 256
    assert attributes["scale"] == pytest.approx(64**-0.5)
    initializers = {init.name for init in model.graph.initializer}
    assert attention.input[3] in initializers and attention.input[4] in initializers  # cu_seqlens are constants
    scan = next(node for node in nodes if node.op_type == "SelectiveScan")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in scan.attribute}["delta_softplus"] == 1


def test_portable_graph_has_standard_ops_only(exports) -> None:
    directory = exports("hrsam_tiny", 512, True)
    for part in ONNX_FILES:
        ops = _ops(directory, part)
        assert all(domain == "" for domain, _ in ops), sorted(d for d, _ in ops if d)
        assert not any(op in ("Loop", "Scan", "Range") for _, op in ops)
        onnx.checker.check_model(str(directory / ONNX_FILES[part]), full_check=True)
    assert Sidecar.read(directory).portable


@pytest.mark.parametrize(("name", "size", "portable"), CASES)
def test_onnxruntime_matches_eager(exports, name: str, size: int, portable: bool) -> None:
    directory = exports(name, size, portable)
    eager = open_predictor("eager", model=name)
    onnx_predictor = open_predictor("onnxruntime", export_dir=directory)
    assert onnx_predictor.runner.input_size == size
    image = load_image(EXAMPLE_IMAGE)
    coords, labels = parse_points(DEFAULT_CLICKS)
    ious = session_ious(eager, onnx_predictor, image, coords, labels, size)
    embedding_error = (eager.get_image_embedding() - onnx_predictor.get_image_embedding()).abs().max().item()
    assert embedding_error <= 1e-4, embedding_error
    assert min(ious) >= 0.999, ious


def test_export_check_command_passes(exports, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["check", str(exports("hrsam_tiny", 512, False))]) == 0
    assert "PASS" in capsys.readouterr().out


def test_fixed_size_runner_refuses_other_sizes(exports) -> None:
    predictor = HRSAMPredictor(OnnxRuntimeRunner(exports("hrsam_tiny", 512, False)))
    with pytest.raises(ValueError, match="built for input size 512"):
        predictor.set_image(np.zeros((32, 32, 3), np.uint8), target_size=1024)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_bad_export_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(capsys, ["onnx", "--size", "1000", "--out", str(tmp_path / "a")], "multiple of 16")
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["onnx", "--size", "256", "--out", str(tmp_path / "file")], "not a directory")
    _one_line_error(capsys, ["onnx", "--size", "256", "--out", str(tmp_path / "file" / "sub")], "not writable")
    other = tmp_path / "other.safetensors"
    torch.manual_seed(0)
    save_checkpoint(build_model("hrsampp_tiny"), other)
    argv = ["onnx", "--model", "hrsam_tiny", "--checkpoint", str(other), "--size", "256", "--out", str(tmp_path / "b")]
    _one_line_error(capsys, argv, "holds model 'hrsampp_tiny'")
    with pytest.raises(SystemExit) as exit_info:
        export_main(["onnx", "--model", "no_such_model", "--out", str(tmp_path / "c")])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mismatched_or_foreign_files_are_refused(exports, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(exports("hrsam_tiny", 512, False), mixed)
    shutil.copy(exports("hrsampp_tiny", 512, False) / ONNX_FILES["decoder"], mixed / ONNX_FILES["decoder"])
    with pytest.raises(ValueError, match="hrsam.model is 'hrsampp_tiny' in the file but 'hrsam_tiny' in the sidecar"):
        OnnxRuntimeRunner(mixed)
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "foreign",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    ))
    onnx.save(foreign, str(mixed / ONNX_FILES["encoder"]))
    with pytest.raises(ValueError, match="not an hrsam export"):
        OnnxRuntimeRunner(mixed)
    (mixed / ONNX_FILES["encoder"]).write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        OnnxRuntimeRunner(mixed)
    (mixed / "model.json").write_text("{")
    with pytest.raises(ValueError, match="not readable JSON"):
        OnnxRuntimeRunner(mixed)


def test_modified_file_is_refused(exports, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exports("hrsam_tiny", 512, False), copy)
    model = onnx.load(str(copy / ONNX_FILES["decoder"]))
    model.doc_string = "edited"
    onnx.save(model, str(copy / ONNX_FILES["decoder"]))
    with pytest.raises(ValueError, match="modified after export"):
        OnnxRuntimeRunner(copy)
