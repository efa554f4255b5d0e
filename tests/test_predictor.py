"""HRSAMPredictor: outputs, determinism, mask feedback, input handling, GPU vs CPU (the CLI: test_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hrsam.images import to_rgb_uint8
from hrsam.modeling.interactive import build_model
from hrsam.predictor import PIXEL_MEAN, PIXEL_STD, HRSAMPredictor, preprocess, resized_size

TARGET = 256
CLICKS = np.array([[120.0, 80.0], [40.0, 150.0]])
LABELS = np.array([1, 0])


def _model(name: str = "hrsam_tiny", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name).eval()


def _image(height: int = 180, width: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor() -> HRSAMPredictor:
    predictor = HRSAMPredictor(_model())
    predictor.set_image(_image(), target_size=TARGET)
    return predictor


def test_outputs_at_original_resolution(predictor: HRSAMPredictor) -> None:
    masks, scores, low_res = predictor.predict(CLICKS, LABELS)
    assert masks.shape == (1, 180, 300) and masks.dtype == np.bool_
    assert scores.shape == (1,) and low_res.shape == (1, TARGET // 4, TARGET // 4)
    assert predictor.get_image_embedding().shape == (1, 256, TARGET // 16, TARGET // 16)
    masks, scores, low_res = predictor.predict(CLICKS, LABELS, multimask_output=True, return_logits=True)
    assert masks.shape == (3, 180, 300) and masks.dtype == np.float32
    assert scores.shape == (3,) and low_res.shape == (3, 64, 64)


def test_logits_threshold_gives_mask(predictor: HRSAMPredictor) -> None:
    masks, _, _ = predictor.predict(CLICKS, LABELS)
    logits, _, _ = predictor.predict(CLICKS, LABELS, return_logits=True)
    np.testing.assert_array_equal(masks, logits > 0)


def test_preprocess_resizes_normalises_and_pads() -> None:
    image = np.full((100, 50, 3), 128, np.uint8)
    x = preprocess(image, 64, torch.device("cpu"))
    assert x.shape == (1, 3, 64, 64)
    expected = (128 - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)
    torch.testing.assert_close(x[0, :, :, :32], expected.view(3, 1, 1).expand(3, 64, 32))
    assert (x[..., 32:] == 0).all()
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    smooth = preprocess(stripes, 24, torch.device("cpu"))
    aliased = preprocess(stripes, 24, torch.device("cpu"), antialias=False)
    assert smooth.std() < 0.5 * aliased.std()  # antialiasing averages the 1-pixel stripes away


def test_identical_results_twice_on_cpu() -> None:
    results = []
    for _ in range(2):
        predictor = HRSAMPredictor(_model())
        predictor.set_image(_image(), target_size=TARGET)
        results.append(predictor.predict(CLICKS, LABELS, multimask_output=True, return_logits=True))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_previous_logits_feed_back_as_mask_prompt(predictor: HRSAMPredictor) -> None:
    _, _, low_res = predictor.predict(CLICKS[:1], LABELS[:1])
    plain, _, _ = predictor.predict(CLICKS, LABELS, return_logits=True)
    refined, _, _ = predictor.predict(CLICKS, LABELS, mask_input=low_res, return_logits=True)
    assert refined.shape == plain.shape and not np.allclose(refined, plain)
    predictor.predict(CLICKS, LABELS, mask_input=torch.from_numpy(low_res[0]))  # 2D tensor accepted


def test_non_square_and_hrsampp() -> None:
    predictor = HRSAMPredictor(_model("hrsampp_tiny"))
    predictor.set_image(_image(300, 120), target_size=TARGET)
    assert predictor.input_size == resized_size(300, 120, TARGET) == (256, 102)
    masks, _, _ = predictor.predict([[60, 200]], [1])
    assert masks.shape == (1, 300, 120)


def test_image_conversions_are_equivalent(predictor: HRSAMPredictor) -> None:
    """Grayscale and RGBA become RGB; floats in [0, 1] are scaled; non-contiguous arrays are copied."""
    rgb = _image(40, 60)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(to_rgb_uint8(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(to_rgb_uint8(gray[:, :, None]), to_rgb_uint8(gray))
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb / 255.0), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb.astype(np.int64)), rgb)
    flipped = rgb[:, ::-1]
    converted = to_rgb_uint8(flipped)
    assert converted.flags.c_contiguous
    np.testing.assert_array_equal(converted, flipped)
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(rgba, "RGBA")), rgb)
    predictor.set_image(gray, target_size=TARGET)
    assert predictor.original_size == (40, 60)
    predictor.set_image(_image(), target_size=TARGET)  # restore the fixture's image


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((3, 40, 50), np.uint8), "channel-first"),
        (np.zeros((40, 50, 2), np.uint8), "1, 3 or 4 channels"),
        (np.full((8, 8, 3), 2.0), r"must be in \[0, 1\]"),
        (np.full((8, 8, 3), np.nan), "NaN"),
        (np.zeros((8, 8, 3), bool), "boolean"),
        (np.full((8, 8, 3), 300, np.int32), "0..255"),
        (np.zeros((2, 8, 8, 3), np.uint8), "H x W"),
    ],
)
def test_bad_images_are_refused(image: np.ndarray, message: str) -> None:
    predictor = HRSAMPredictor(_model())
    with pytest.raises(ValueError, match=message):
        predictor.set_image(image, target_size=TARGET)
    with pytest.raises(TypeError, match="numpy array"):
        predictor.set_image([[1, 2]], target_size=TARGET)


@pytest.mark.parametrize("target_size", [0, 1000, 1024.0, "1024", True])
def test_bad_target_size(target_size: object) -> None:
    predictor = HRSAMPredictor(_model())
    with pytest.raises(ValueError, match="target_size"):
        predictor.set_image(_image(), target_size=target_size)


def test_predict_before_set_image() -> None:
    predictor = HRSAMPredictor(_model())
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(CLICKS, LABELS)


@pytest.mark.parametrize(
    ("coords", "labels", "message"),
    [
        ([[500.0, 10.0]], [1], "outside the 300 x 180 image"),
        ([[10.0, -1.0]], [1], "outside"),
        ([[10.0, 10.0], [20.0, 20.0]], [1], "one label per point"),
        ([[np.nan, 10.0]], [1], "NaN"),
        ([[10.0, 10.0]], [2], "1 \\(foreground\\) or 0"),
        (np.zeros((0, 2)), [], "N >= 1"),
        ([10.0, 10.0], [1], "N x 2"),
        ([["a", "b"]], [1], "numeric"),
    ],
)
def test_bad_points_are_clear_errors(predictor: HRSAMPredictor, coords, labels, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        predictor.predict(coords, labels)


def test_bad_mask_input(predictor: HRSAMPredictor) -> None:
    with pytest.raises(ValueError, match="1 x 64 x 64"):
        predictor.predict(CLICKS, LABELS, mask_input=np.zeros((1, 256, 256)))
    with pytest.raises(ValueError, match="1 x 64 x 64"):
        predictor.predict(CLICKS, LABELS, mask_input=np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(CLICKS, LABELS, mask_input=np.full((1, 64, 64), np.nan))


# GPU: the lead runs these on the device machine. Tolerances: fp32 CUDA (TF32 off) vs CPU runs
# different attention / scan kernels, so embeddings agree to 2e-3 absolute and low-res logits to
# 1e-2 absolute + 1e-2 relative; half precision is checked for finiteness and cosine >= 0.99.


def _cpu_reference(name: str) -> tuple[torch.Tensor, tuple[np.ndarray, ...]]:
    predictor = HRSAMPredictor(_model(name))
    predictor.set_image(_image(), target_size=TARGET)
    return predictor.get_image_embedding(), predictor.predict(CLICKS, LABELS, return_logits=True)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["hrsam_tiny", "hrsampp_tiny"])
def test_gpu_fp32_matches_cpu(name: str) -> None:
    embedding, (logits, scores, low_res) = _cpu_reference(name)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # on by default for convolutions
    try:
        predictor = HRSAMPredictor(_model(name).cuda())
        predictor.set_image(_image(), target_size=TARGET)
        gpu_logits, gpu_scores, gpu_low_res = predictor.predict(CLICKS, LABELS, return_logits=True)
        gpu_embedding = predictor.get_image_embedding().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    torch.testing.assert_close(gpu_embedding, embedding, atol=2e-3, rtol=0)
    np.testing.assert_allclose(gpu_low_res, low_res, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(gpu_scores, scores, atol=1e-3, rtol=1e-3)
    agreement = ((gpu_logits > 0) == (logits > 0)).mean()
    assert agreement > 0.999, agreement


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["autocast_bf16", "autocast_fp16", "half"])
@pytest.mark.parametrize("name", ["hrsam_tiny", "hrsampp_tiny"])
def test_gpu_half_precision(mode: str, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval().cuda()
    reference = HRSAMPredictor(model)
    reference.set_image(_image(), target_size=512)
    expected = reference.get_image_embedding().float()
    if mode == "half":
        predictor = HRSAMPredictor(model.half())
    else:
        dtype = torch.bfloat16 if mode == "autocast_bf16" else torch.float16
        predictor = HRSAMPredictor(model, autocast_dtype=dtype)
    predictor.set_image(_image(), target_size=512)
    masks, scores, low_res = predictor.predict(CLICKS, LABELS, return_logits=True)
    assert np.isfinite(masks).all() and np.isfinite(scores).all() and np.isfinite(low_res).all()
    assert _cosine(predictor.get_image_embedding().float(), expected) >= 0.99
