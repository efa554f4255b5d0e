"""``python -m export check DIR``: the exported graphs on ONNX Runtime against eager PyTorch.

Reads the sidecar, rebuilds the eager model with the same weights (its SHA-256 must match the
sidecar's), then on one image and a click session (the bundled example by default) compares:
the embedding and the first click's decoder outputs through polygraphy's Comparator, and the mask
of every click of two independent sessions by IoU. Exit status 0 when every figure is within the
fp32 tolerances of ``export.parity.TOLERANCES``, 1 when one is missed, 2 for unusable input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from polygraphy.backend.onnxrt import OnnxrtRunner

from export.cli import UserError
from export.parity import DEFAULT_CLICKS, TOLERANCES, TensorParity, TorchRunner, compare_tensors, session_ious
from hrsam.checkpoint import LoadedModel, load_model, weights_sha256
from hrsam.cli import EXAMPLE_IMAGE, parse_points
from hrsam.contract import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, Sidecar
from hrsam.images import load_image
from hrsam.predictor import HRSAMPredictor, preprocess, validate_points
from hrsam.runner import EagerRunner
from trt_runtime.onnxruntime_runner import OnnxRuntimeRunner, load_export


def eager_reference(sidecar: Sidecar, checkpoint: str | None) -> LoadedModel:
    """The eager model with the export's weights (checked by SHA-256), from the sidecar's source."""
    source = checkpoint or sidecar.source.get("checkpoint")
    if source is not None and not Path(source).is_file():
        raise UserError(f"the exported weights came from {source}, which is not there: pass --checkpoint FILE")
    loaded = load_model(sidecar.model, source, allow_partial=True, seed=int(sidecar.source.get("seed", 0)))
    if weights_sha256(loaded.model) != sidecar.weights_sha256:
        raise UserError(
            f"the eager model ({loaded.weights}) does not have the exported weights (SHA-256 differs): "
            "pass --checkpoint with the file the export was made from"
        )
    return loaded


def _clicks(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if args.points is None and Path(args.image) != EXAMPLE_IMAGE:
        raise UserError("pass --points 'x,y,label;...' for your image (the default clicks fit the bundled example)")
    return parse_points(args.points or DEFAULT_CLICKS)


def _print_tensors(title: str, parities: list[TensorParity]) -> None:
    for p in parities:
        verdict = "ok" if p.passed else "FAIL"
        print(f"  {title} {p.name}: max abs {p.max_abs:.3g}, max rel {p.max_rel:.3g} [{verdict}]")


def run(args: argparse.Namespace) -> int:
    sidecar, _ = load_export(args.directory)
    image = load_image(args.image)
    coords, labels = _clicks(args)
    validate_points(coords, labels, image.shape[:2])
    tolerance = TOLERANCES["fp32"]
    loaded = eager_reference(sidecar, args.checkpoint)
    eager = HRSAMPredictor(EagerRunner(loaded.model, weights=loaded.weights))
    onnx_runner = OnnxRuntimeRunner(args.directory, threads=args.threads)
    size = sidecar.input_size
    print(f"checking {args.directory}: {sidecar.model} at {size}, ONNX Runtime vs eager PyTorch on {args.image}")

    images = preprocess(image, size, eager.device).numpy()
    encoder = compare_tensors(
        [OnnxrtRunner(onnx_runner.encoder_session, name="onnxruntime"),
         TorchRunner(loaded.model.encode, {ENCODER_INPUTS[0]: images.shape}, ENCODER_OUTPUTS)],
        {ENCODER_INPUTS[0]: images}, tolerance,
    )
    _print_tensors("encoder", encoder)

    eager.set_image(image, target_size=size)
    prompts = eager.prompt_tensors(coords[:1], labels[:1])
    feed = {name: t.numpy() for name, t in zip(DECODER_INPUTS, (eager.features, *prompts), strict=True)}
    decoder = compare_tensors(
        [OnnxrtRunner(onnx_runner.decoder_session, name="onnxruntime"),
         TorchRunner(loaded.model.decode, {n: a.shape for n, a in feed.items()}, DECODER_OUTPUTS)],
        feed, tolerance,
    )
    _print_tensors("decoder (click 1)", decoder)

    ious = session_ious(eager, HRSAMPredictor(onnx_runner), image, coords, labels, size)
    print("  mask IoU per click: " + ", ".join(f"{iou:.4f}" for iou in ious) + f" (need >= {tolerance.min_iou})")
    passed = all(p.passed for p in encoder + decoder) and min(ious) >= tolerance.min_iou
    print("PASS" if passed else "FAIL: ONNX Runtime and eager disagree beyond the fp32 tolerances")
    return 0 if passed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="run an ONNX export on ONNX Runtime against eager PyTorch (exit 1 if a tolerance is missed)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("directory", help="export directory (encoder.onnx, decoder.onnx, model.json)")
    parser.add_argument("--image", type=Path, default=EXAMPLE_IMAGE, help="image to segment")
    parser.add_argument("--points", default=None, help=f"clicks 'x,y,label;...' (example's default: {DEFAULT_CLICKS})")
    parser.add_argument("--checkpoint", default=None, help="weights file of the export, if moved since exporting")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.set_defaults(run=run)
