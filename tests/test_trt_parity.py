"""TensorRT engines end to end (``pytest -m trt``): export, build, parity with eager, latency ratio.

For a user with TensorRT >= 10.9 (``tensorrt-cu12`` / ``tensorrt-cu13``), cupy-free AOT plugins,
polygraphy and a CUDA GPU. HRSAM ViT-B is exported at 1024 and 2048 (random weights from seed 0,
or the weights file in ``HRSAM_CHECKPOINT``), fp16 engines are built and ``export validate``'s
comparison runs: embedding and first-click decoder outputs within the fp16 tolerances of
``export.parity.TOLERANCES``, mask IoU >= 0.99 for every click of the session, and, measured in
the same run, the engine's encoder faster than the eager encoder under fp16 autocast. Slow:
minutes per size (ONNX export and engine build).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from plugins import unavailable_reason
from trt_runtime.tensorrt_runner import TensorRTRunner

REASON = TensorRTRunner.unavailable_reason() or unavailable_reason(aot=True)
pytestmark = [
    pytest.mark.trt, pytest.mark.gpu, pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=str(REASON))
]

MODEL = "hrsam_vit_b"


@pytest.fixture(scope="module", params=[1024, 2048], ids=lambda size: f"S{size}")
def fp16_engines(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.engine import BuildOptions, build_engines
    from export.onnx_export import export_onnx
    from hrsam.checkpoint import load_model

    size = request.param
    directory = tmp_path_factory.mktemp(f"trt_{size}")
    checkpoint = os.environ.get("HRSAM_CHECKPOINT")
    loaded = load_model(MODEL, checkpoint, seed=0)
    export_onnx(loaded, size, directory, source={"checkpoint": checkpoint, "seed": 0})
    build_engines(directory, BuildOptions(precision="fp16", max_points=24))
    return directory


def test_fp16_engines_match_eager_and_run_faster(fp16_engines: Path) -> None:
    from export.validate import print_report, validate_engines

    report = validate_engines(fp16_engines, repeats=20)
    print_report(report)
    assert all(p.passed for p in report.encoder), report.encoder
    assert all(p.passed for p in report.decoder), report.decoder
    assert min(report.ious) >= 0.99, report.ious
    engine, eager = report.latency_ms["tensorrt"], report.latency_ms["eager fp16"]
    assert engine < eager, f"engine {engine:.2f} ms is not faster than eager fp16 {eager:.2f} ms"


def test_engine_records_refuse_another_precision(fp16_engines: Path) -> None:
    with pytest.raises(ValueError, match="is a fp16 engine, not fp32"):
        TensorRTRunner(fp16_engines, precision="fp32")


def test_predictor_api_matches_eager(fp16_engines: Path) -> None:
    """``open_predictor('tensorrt')`` answers like the eager predictor (same call, same shapes)."""
    import numpy as np

    from hrsam.cli import EXAMPLE_IMAGE
    from hrsam.images import load_image
    from trt_runtime import open_predictor

    predictor = open_predictor("tensorrt", export_dir=fp16_engines, precision="fp16")
    image = load_image(EXAMPLE_IMAGE)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(np.array([[220.0, 260.0]]), np.array([1.0]))
    assert masks.shape == (1, *image.shape[:2]) and masks.dtype == bool
    assert scores.shape == (1,) and logits.shape[0] == 1 and torch.isfinite(torch.from_numpy(logits)).all()
