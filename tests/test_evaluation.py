"""Evaluation: the click simulator and metrics on hand-made masks with known answers, the loop with
stand-in predictors whose NoC is known, the command line, and eager vs ONNX Runtime agreement."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hrsam import eval as hrsam_eval
from hrsam.checkpoint import LoadedModel
from hrsam.data import Sample, SyntheticSamples, SyntheticScenes
from hrsam.evaluation import evaluate, iou, next_click, noc, summarise, table
from hrsam.predictor import HRSAMPredictor
from tests.test_train import micro_model


def _square(size: int = 21, low: int = 5, high: int = 16) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[low:high, low:high] = True
    return mask


def test_first_click_is_positive_at_the_innermost_pixel() -> None:
    click = next_click(_square(), np.zeros((21, 21), bool))
    assert (click.x, click.y, click.positive) == (10, 10, True)


def test_border_counts_as_boundary() -> None:
    gt = np.zeros((10, 30), dtype=bool)
    gt[:, :12] = True  # touches the top, bottom and left borders
    click = next_click(gt, np.zeros_like(gt))
    # distance to the boundary is min(y + 1, 10 - y, x + 1, 12 - x): 5 at best, first in raster order at (4, 4)
    assert click.positive and (click.x, click.y) == (4, 4)


def test_larger_false_positive_region_gets_a_negative_click() -> None:
    pred = np.zeros((21, 21), dtype=bool)
    pred[:, :] = True
    click = next_click(_square(21, 9, 12), pred)
    assert not click.positive and not _square(21, 9, 12)[click.y, click.x]


def test_clicked_pixels_are_excluded_and_perfect_masks_get_no_click() -> None:
    gt = _square()
    clicked = np.zeros_like(gt)
    clicked[10, 10] = True
    click = next_click(gt, np.zeros_like(gt), clicked)
    assert (click.x, click.y) != (10, 10) and gt[click.y, click.x]
    assert next_click(gt, gt.copy()) is None


def test_iou_of_known_shapes() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 pixels
    b[2:6, 2:6] = True  # 16 pixels, 4 shared
    assert iou(a, b) == pytest.approx(4 / 28)
    assert iou(a, a) == 1.0 and iou(a, ~a) == 0.0
    assert iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_noc_and_summary() -> None:
    assert noc([0.5, 0.86, 0.91, 0.96], 0.85, 20) == 2
    assert noc([0.5, 0.86, 0.91, 0.96], 0.95, 20) == 4
    assert noc([0.5] * 20, 0.85, 20) == 20
    summary = summarise([[0.9] * 5, [0.5, 0.6, 0.7, 0.8, 0.96]], max_clicks=5)
    assert summary["NoC@85"] == pytest.approx((1 + 5) / 2) and summary["NoC@95"] == pytest.approx(5)
    assert summary["mIoU@5"] == pytest.approx(0.93) and summary["NoF@90"] == 0
    assert "| a | 2 |" in table({"a": summary})


class _StandIn:
    """A predictor with HRSAMPredictor's evaluation surface; ``answer`` maps clicks to a mask."""

    def __init__(self, answer) -> None:  # noqa: ANN001
        self.answer = answer
        self.device = torch.device("cpu")
        self.runner = SimpleNamespace(info=SimpleNamespace(describe=lambda: "stand-in"))
        self.prompts: list = []

    def check_target_size(self, size: int | None) -> int:
        return size or 1024

    def set_image(self, image: np.ndarray, target_size: int | None = None) -> None:
        self.shape = image.shape[:2]

    def predict(self, coords, labels, mask_input=None):  # noqa: ANN001, ANN201
        self.prompts.append(mask_input)
        return self.answer(coords, labels)[None], np.ones(1, np.float32), np.full((1, 8, 8), len(coords), np.float32)


def _samples(count: int = 3) -> list[Sample]:
    return [Sample(np.zeros((21, 21, 3), np.uint8), _square(21, 3 + i, 15), f"square{i}") for i in range(count)]


def test_a_perfect_predictor_needs_one_click() -> None:
    samples = _samples()
    for sample in samples:
        result = evaluate(_StandIn(lambda c, l, s=sample: s.mask), [sample], max_clicks=20)
        assert result.objects[0].ious == [1.0] * 20 and len(result.objects[0].clicks) == 1
        assert result.summary()["NoC@95"] == 1


def test_a_predictor_that_never_changes_needs_the_whole_budget() -> None:
    fixed = _square(21, 0, 4)
    stand_in = _StandIn(lambda c, l: fixed)
    summary = evaluate(stand_in, _samples(), max_clicks=20).summary()
    assert summary["NoC@85"] == summary["NoC@90"] == 20 and summary["NoF@85"] == 3
    assert stand_in.prompts[0] is None and stand_in.prompts[1].shape == (1, 8, 8)  # previous logits fed back
    assert summary["mIoU_curve"] == pytest.approx([summary["mIoU@1"]] * 20)


def test_eval_command_writes_results_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--dataset", "synthetic", "--synthetic-count", "1", "--synthetic-size", "96x64", "--max-clicks", "2",
            "--target-size", "64", "--untrained", "--out", str(tmp_path)]
    assert hrsam_eval.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["synthetic"]["untrained @64"]["objects"][0]["ious"]) == 2
    assert "NoC@90" in (tmp_path / "summary.md").read_text()
    capsys.readouterr()
    assert hrsam_eval.main(["--dataset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert hrsam_eval.main(["--dataset", "davis", "--root", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_backend_front_end_reuses_the_eval_command(tmp_path: Path) -> None:
    from trt_runtime.evaluate import main

    args = ["--backend", "eager", "--model", "hrsam_tiny", "--dataset", "real", "--limit", "1", "--max-clicks", "2",
            "--target-size", "64", "--device", "cpu", "--out", str(tmp_path)]
    assert main(args) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["real"]
    assert list(runs) == ["model @64"] and runs["model @64"]["summary"]["runner"].startswith("eager")


@pytest.mark.slow
def test_eager_and_onnxruntime_evaluations_agree(tmp_path: Path) -> None:
    onnx_export = pytest.importorskip("export.onnx_export", reason="the ONNX export (export/onnx_export.py) is missing")
    trt_runtime = pytest.importorskip("trt_runtime")
    reason = trt_runtime.backend_unavailable_reason("onnxruntime")
    if reason:
        pytest.skip(reason)
    size = 64
    loaded = LoadedModel(micro_model(), "random (seed 0)", True)
    onnx_export.export_onnx(loaded, size, tmp_path / "export")
    samples = SyntheticSamples(SyntheticScenes(3, 80, 96, objects=3, seed=11))
    data = [samples[i] for i in range(3)]
    eager = evaluate(HRSAMPredictor(loaded.model), data, max_clicks=5, target_size=size)
    onnx = evaluate(trt_runtime.open_predictor("onnxruntime", export_dir=tmp_path / "export"), data, max_clicks=5)
    assert onnx.target_size == size
    for a, b in zip(eager.objects, onnx.objects, strict=True):
        assert a.clicks[0] == b.clicks[0]
        np.testing.assert_allclose(a.ious, b.ious, atol=0.02)
