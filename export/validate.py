"""``python -m export validate DIR``: the TensorRT engines against eager PyTorch; ``python -m export all``.

On one image and click session (the bundled example by default), with the eager model rebuilt
from the export's weights (checked by SHA-256):

* the embedding, and the decoder outputs of the first click, from the engines and from eager
  float32 on identical inputs, through polygraphy's ``Comparator`` (``export.parity``): max abs and
  relative error against the tolerances of the engines' precision (``export.parity.TOLERANCES``);
  with ``--onnxruntime`` also against ONNX Runtime's float32 run of the same graphs;
* each backend's own click session (its own logits fed back), masks compared by IoU per click;
* with ``--repeats N``, the encoder's median latency, engine against eager in the same precision.

Exit status 0 when every figure is within tolerance, 1 when one is missed, 2 for unusable input.
``python -m export all`` runs ``onnx``, ``engine`` and ``validate`` in one go.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.check import eager_reference
from export.cli import UserError
from export.engine import BuildOptions, add_build_arguments, build_engines
from export.onnx_export import add_model_arguments, check_size, export_onnx, load_from_arguments, prepare_output_dir
from export.parity import (
    DEFAULT_CLICKS,
    TOLERANCES,
    TensorParity,
    Tolerance,
    TorchRunner,
    compare_tensors,
    session_ious,
)
from hrsam.cli import EXAMPLE_IMAGE, parse_points
from hrsam.contract import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS
from hrsam.images import load_image
from hrsam.predictor import HRSAMPredictor, preprocess, validate_points
from hrsam.runner import EagerRunner, autocast_dtype_of
from plugins import unavailable_reason
from trt_runtime.onnxruntime_runner import load_export
from trt_runtime.tensorrt_runner import TensorRTRunner, engine_records


@dataclass
class ValidationReport:
    """Every figure of one validation and the verdict."""

    precision: str
    tolerance: Tolerance
    encoder: list[TensorParity]
    decoder: list[TensorParity]
    ious: list[float]
    latency_ms: dict[str, float]

    @property
    def passed(self) -> bool:
        tensors_ok = all(p.passed for p in self.encoder + self.decoder)
        return tensors_ok and bool(self.ious) and min(self.ious) >= self.tolerance.min_iou


def median_ms(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``function`` in ms, CUDA-synchronised, after one warm-up call."""
    function()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _clicks(image_path: Path, points: str | None) -> tuple[np.ndarray, np.ndarray]:
    if points is None and Path(image_path) != EXAMPLE_IMAGE:
        raise UserError("pass --points 'x,y,label;...' for your image (the default clicks fit the bundled example)")
    return parse_points(points or DEFAULT_CLICKS)


def _onnxruntime_runners(directory: Path) -> dict[str, object]:
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from trt_runtime.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(directory)
    return {"encoder": OnnxrtRunner(runner.encoder_session, name="onnxruntime"),
            "decoder": OnnxrtRunner(runner.decoder_session, name="onnxruntime")}  # fmt: skip


def validate_engines(
    directory: str | Path,
    checkpoint: str | None = None,
    image_path: Path = EXAMPLE_IMAGE,
    points: str | None = None,
    onnxruntime: bool = False,
    repeats: int = 0,
) -> ValidationReport:
    """Compare the directory's engines with eager PyTorch (and ONNX Runtime); see the module docstring."""
    directory = Path(directory)
    image = load_image(image_path)
    coords, labels = _clicks(image_path, points)
    validate_points(coords, labels, image.shape[:2])
    sidecar, _ = load_export(directory)
    records = engine_records(sidecar.engines, directory)
    precision = records["encoder"].precision
    if records["decoder"].precision != precision:
        raise UserError(f"the encoder engine is {precision} but the decoder engine {records['decoder'].precision}")
    engine = TensorRTRunner(directory, precision=precision)
    tolerance = TOLERANCES[precision]
    device = engine.device
    model = eager_reference(sidecar, checkpoint).model.to(device).eval()
    eager = HRSAMPredictor(EagerRunner(model))
    size = sidecar.input_size
    references = {"eager": {"encoder": model.encode, "decoder": model.decode}}
    onnx_runners = _onnxruntime_runners(directory) if onnxruntime else {}

    def compare(part: str, feed: dict[str, np.ndarray], names: tuple[str, ...]) -> list[TensorParity]:
        """The engine part against eager and, if asked, ONNX Runtime; output names say which."""
        shapes = {name: array.shape for name, array in feed.items()}
        function = engine.encode if part == "encoder" else engine.decode
        runners = [TorchRunner(references["eager"][part], shapes, names, device, name="eager")]
        runners += [onnx_runners[part]] if onnx_runners else []
        results = []
        for runner in runners:
            ours = TorchRunner(function, shapes, names, device, name="tensorrt")
            results += [dataclasses.replace(p, name=f"{p.name} vs {runner.name}")
                        for p in compare_tensors([ours, runner], feed, tolerance)]  # fmt: skip
        return results

    images = preprocess(image, size, device).cpu().numpy()
    encoder = compare("encoder", {ENCODER_INPUTS[0]: images}, ENCODER_OUTPUTS)
    eager.set_image(image, target_size=size)
    prompts = eager.prompt_tensors(coords[:1], labels[:1])
    feed = {name: t.cpu().numpy() for name, t in zip(DECODER_INPUTS, (eager.features, *prompts), strict=True)}
    decoder = compare("decoder", feed, DECODER_OUTPUTS)
    ious = session_ious(eager, HRSAMPredictor(engine), image, coords, labels, size)
    latency = {}
    if repeats > 0:
        x = preprocess(image, size, device)
        timed_eager = EagerRunner(model, autocast_dtype_of(precision))
        latency = {"tensorrt": median_ms(lambda: engine.encode(x), repeats),
                   f"eager {precision}": median_ms(lambda: timed_eager.encode(x), repeats)}  # fmt: skip
    return ValidationReport(precision, tolerance, encoder, decoder, ious, latency)


def print_report(report: ValidationReport) -> None:
    for title, parities in (("encoder", report.encoder), ("decoder (click 1)", report.decoder)):
        for p in parities:
            print(f"  {title} {p.name}: max abs {p.max_abs:.3g}, max rel {p.max_rel:.3g} "
                  f"[{'ok' if p.passed else 'FAIL'}]")  # fmt: skip
    tol = report.tolerance
    print(f"  tolerances ({report.precision}): atol {tol.atol}, rtol {tol.rtol}, mask IoU >= {tol.min_iou}")
    print("  mask IoU per click: " + ", ".join(f"{iou:.4f}" for iou in report.ious))
    for name, ms in report.latency_ms.items():
        print(f"  encoder latency {name}: {ms:.2f} ms (median)")
    print("PASS" if report.passed else f"FAIL: engines and eager disagree beyond the {report.precision} tolerances")


def run(args: argparse.Namespace) -> int:
    print(f"validating the TensorRT engines of {args.directory} against eager PyTorch on {args.image}")
    report = validate_engines(args.directory, args.checkpoint, args.image, args.points, args.onnxruntime, args.repeats)
    print_report(report)
    return 0 if report.passed else 1


def run_all(args: argparse.Namespace) -> int:
    options = BuildOptions(
        precision=args.precision, max_points=args.max_points, opt_points=args.opt_points,
        workspace_gib=args.workspace_gib, timing_cache=args.timing_cache, plugins=args.plugins,
        optimization_level=args.opt_level, verbose=args.verbose,
    )  # fmt: skip
    options.validate()
    check_size(args.size)
    prepare_output_dir(args.out)
    for reason in (TensorRTRunner.unavailable_reason(), unavailable_reason(aot=options.plugins == "aot")):
        if reason is not None:  # before minutes of export: the engines could not be built
            raise RuntimeError(reason)
    loaded, source = load_from_arguments(args)
    print(f"1/3 exporting {loaded.model.config.name} at {args.size} to {args.out}")
    export_onnx(loaded, args.size, args.out, source=source)
    print(f"2/3 building {options.precision} engines")
    build_engines(args.out, options)
    print("3/3 validating")
    report = validate_engines(args.out, args.checkpoint, args.image, args.points, repeats=args.repeats)
    print_report(report)
    return 0 if report.passed else 1


def _add_session_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", type=Path, default=EXAMPLE_IMAGE, help="image to segment")
    parser.add_argument("--points", default=None, help=f"clicks 'x,y,label;...' (example's default: {DEFAULT_CLICKS})")
    parser.add_argument("--repeats", type=int, default=0, help="also time the encoder: median of N runs each")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="compare an export directory's TensorRT engines with eager PyTorch (exit 1 if a tolerance is missed)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("directory", help="export directory with engines (python -m export engine)")
    parser.add_argument("--checkpoint", default=None, help="weights file of the export, if moved since exporting")
    parser.add_argument("--onnxruntime", action="store_true", help="also compare with ONNX Runtime (CPU, slow)")
    _add_session_arguments(parser)
    parser.set_defaults(run=run)

    everything = subparsers.add_parser(
        "all",
        help="export ONNX, build TensorRT engines and validate them, in one command",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(everything)
    everything.add_argument("--size", type=int, default=1024, help="fixed input side S (a multiple of 16)")
    everything.add_argument("--out", required=True, help="output directory")
    add_build_arguments(everything)
    _add_session_arguments(everything)
    everything.set_defaults(run=run_all)
