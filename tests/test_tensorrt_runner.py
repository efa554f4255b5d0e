"""The TensorRT runner's checks, without TensorRT: engine records, environment checks, input checks.

Engines themselves cannot be built or run on these machines (no TensorRT, no GPU); what a user
sees before that point is tested here: every mismatch between an engine record and the machine or
the export is one line naming the field, every bad input names the tensor, and a machine without
TensorRT is told which package to install.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from hrsam.checkpoint import file_sha256
from hrsam.contract import ONNX_FILES, Sidecar
from trt_runtime import backend_unavailable_reason, open_runner
from trt_runtime.engine import EngineRecord, Environment, TensorSpec, check_feeds, check_record
from trt_runtime.tensorrt_runner import TensorRTRunner, cuda_device, engine_records

HAS_TENSORRT = TensorRTRunner.unavailable_reason() is None

RECORD = EngineRecord(
    file="encoder.engine", sha256="e" * 64, part="encoder", precision="fp16", input_size=1024, onnx_sha256="o" * 64,
    tensorrt_version="10.13.0.35", gpu_name="NVIDIA H200", compute_capability="9.0", plugins="aot",
)  # fmt: skip
HERE = Environment(tensorrt_version="10.13.0.35", gpu_name="NVIDIA H200", compute_capability="9.0")


def make_export(directory: Path, input_size: int = 32) -> Sidecar:
    """A minimal export directory that ``load_export`` accepts: tiny graphs with the right metadata."""
    sidecar = Sidecar(
        model="hrsam_tiny", config={}, input_size=input_size, embedding_size=input_size // 16,
        weights_sha256="0" * 64, weights="random (seed 0)", random_weights=True, portable=False,
    )  # fmt: skip
    for part, name in ONNX_FILES.items():
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], part, [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        helper.set_model_props(model, sidecar.metadata(part))
        path = directory / name
        onnx.save(model, path)
        sidecar.files[part] = {"file": name, "sha256": file_sha256(path), "bytes": str(path.stat().st_size)}
    sidecar.write(directory)
    return sidecar


def test_record_round_trip_and_missing_fields():
    assert EngineRecord.from_dict(RECORD.to_dict(), "model.json") == RECORD
    data = RECORD.to_dict()
    del data["tensorrt_version"]
    with pytest.raises(ValueError, match=r"lacks \['tensorrt_version'\]: rebuild"):
        EngineRecord.from_dict(data, "model.json engines.encoder")


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ({"tensorrt_version": "10.9.0.34"}, {}, "built with TensorRT 10.9.0.34 but this is TensorRT 10.13.0.35"),
        ({"compute_capability": "8.9", "gpu_name": "NVIDIA L4"}, {}, "compute capability 8.9 .* is 9.0"),
        ({"input_size": 2048}, {}, "built for input size 2048, the export is 1024"),
        ({}, {"onnx_sha256": "x" * 64}, "built from another encoder.onnx"),
        ({}, {"precision": "fp32"}, "is a fp16 engine, not fp32"),
    ],
)
def test_check_record_refuses_mismatches(change, kwargs, message):
    record = dataclasses.replace(RECORD, **change)
    arguments = {"input_size": 1024, "onnx_sha256": "o" * 64, "precision": "fp16", **kwargs}
    with pytest.raises(ValueError, match=message):
        check_record(record, HERE, **arguments)


def test_check_record_accepts_a_match_and_warns_for_another_gpu_model():
    assert check_record(RECORD, HERE, input_size=1024, onnx_sha256="o" * 64, precision="fp16") == []
    other = dataclasses.replace(HERE, gpu_name="NVIDIA H100 80GB HBM3")
    warnings = check_record(RECORD, other, input_size=1024, onnx_sha256=None)
    assert len(warnings) == 1 and "tuned on NVIDIA H200" in warnings[0]


SPECS = [
    TensorSpec("image_embeddings", torch.float32, (1, 256, 2, 2), (1, 256, 2, 2), (1, 256, 2, 2)),
    TensorSpec("point_coords", torch.float32, (1, -1, 2), (1, 1, 2), (1, 32, 2)),
]


def _feeds(points: int = 3, **change: torch.Tensor) -> dict[str, torch.Tensor]:
    feeds = {"image_embeddings": torch.zeros(1, 256, 2, 2), "point_coords": torch.zeros(1, points, 2)}
    return feeds | change


def test_check_feeds_accepts_the_profile_range():
    for points in (1, 32):
        check_feeds(SPECS, _feeds(points), torch.device("cpu"))


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"image_embeddings": torch.zeros(1, 256, 2, 2)}, r"takes inputs \['image_embeddings', 'point_coords'\]"),
        (_feeds(33), "point_coords axis 1 is 33; this engine takes 1..32"),
        (_feeds(image_embeddings=torch.zeros(1, 256, 4, 4)), "image_embeddings axis 2 is 4; this engine takes 2 "),
        (_feeds(image_embeddings=torch.zeros(1, 256, 2, 2).half()), "image_embeddings must be torch.float32"),
        (_feeds(point_coords=torch.zeros(3, 2)), r"point_coords must have shape \(1, -1, 2\)"),
    ],
)
def test_check_feeds_names_the_bad_input(feeds, message):
    with pytest.raises(ValueError, match=message):
        check_feeds(SPECS, feeds, torch.device("cpu"))


def test_check_feeds_refuses_another_device():
    with pytest.raises(ValueError, match="is on cpu, the engine runs on cuda:0"):
        check_feeds(SPECS, _feeds(), torch.device("cuda", 0))


def test_engine_records_need_both_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match="no encoder engine in model.json: build engines"):
        engine_records({}, tmp_path)
    records = engine_records({"encoder": RECORD.to_dict(), "decoder": RECORD.to_dict()}, tmp_path)
    assert records["encoder"] == RECORD


def test_cuda_device_errors():
    with pytest.raises(ValueError, match="run on a CUDA GPU, not on 'cpu'"):
        cuda_device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="need a CUDA GPU"):
            cuda_device(None)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message of a machine without TensorRT (tensorrt is installed)")
def test_missing_tensorrt_names_the_package(tmp_path):
    reason = TensorRTRunner.unavailable_reason()
    assert "pip install tensorrt-cu" in reason
    assert backend_unavailable_reason("tensorrt") == reason
    make_export(tmp_path)
    with pytest.raises(RuntimeError, match="pip install tensorrt-cu"):
        open_runner("tensorrt", export_dir=tmp_path, precision="fp16")
