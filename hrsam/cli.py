"""Command line: ``hrsam segment`` (or ``python -m hrsam segment``) segments an image from a few clicks.

Without arguments it runs on the bundled example image with default clicks, writes the mask and an
overlay to ``outputs/segment/`` and prints encoder and per-click latency. Weights are random unless
``--checkpoint`` is given (our ``.safetensors``, a plain state dict, or the authors' mmengine
``.pth``); the output says so, because a random model's mask is not meaningful.

Every input is checked before the encoder runs (image readable, clicks parse and lie inside the
image, device available, output folder writable, checkpoint complete, target size valid); bad
input ends with exit status 2 and one line on stderr that names the problem.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from PIL import Image, ImageDraw

from hrsam.checkpoint import DEFAULT_MODEL, LoadedModel, load_model
from hrsam.images import load_image
from hrsam.modeling.configs import CONFIGS
from hrsam.predictor import DEFAULT_TARGET_SIZE, HRSAMPredictor, validate_points
from hrsam.runner import EagerRunner

EXAMPLE_IMAGE = Path(__file__).with_name("assets") / "example.png"
EXAMPLE_POINTS = "220,260,1;460,280,0;200,210,1"
# Options whose value may start with "-" (a click left of the image edge is still a click to report).
_DASH_VALUE_OPTIONS = ("--points",)


def parse_points(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse "x,y,label;x,y,label" into N x 2 float coords and N labels (1 foreground, 0 background)."""
    coords, labels = [], []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        fields = item.split(",")
        try:
            x, y, label = float(fields[0]), float(fields[1]), int(fields[2])
            if len(fields) != 3 or label not in (0, 1):
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"bad click {item!r} in --points: expected 'x,y,label' with label 1 or 0") from None
        coords.append((x, y))
        labels.append(label)
    if not coords:
        raise ValueError("no clicks given: pass --points 'x,y,label;...'")
    return np.array(coords), np.array(labels)


def check_output_folder(out: Path) -> None:
    """Refuse, before any work, an output path that is a file or a folder that cannot be written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder (mask.png and overlay.png are written into it)")
    existing = next(path for path in (out, *out.parents) if path.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {out} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} cannot be written: no write permission on {existing}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA device that is not there is an error, not a trace."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return device


@dataclass
class SegmentJob:
    """Everything ``segment`` needs, all checked: building one is the last step before the encoder."""

    image: np.ndarray
    coords: np.ndarray
    labels: np.ndarray
    predictor: HRSAMPredictor
    loaded: LoadedModel
    target_size: int
    device: torch.device
    out: Path


def prepare(args: argparse.Namespace) -> SegmentJob:
    """Check every input (cheapest first) and load the model; raises ValueError / OSError on bad input."""
    image_path = Path(args.image) if args.image is not None else EXAMPLE_IMAGE
    if args.points is None and args.image is not None:
        raise ValueError("--points is needed with --image (the default clicks are for the bundled example)")
    coords, labels = parse_points(args.points if args.points is not None else EXAMPLE_POINTS)
    image = load_image(image_path)
    coords, labels = validate_points(coords, labels, image.shape[:2])
    out = Path(args.out)
    check_output_folder(out)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.checkpoint, allow_partial=args.allow_partial, seed=args.seed)
    predictor = HRSAMPredictor(EagerRunner(loaded.model.to(device), weights=loaded.weights))
    target_size = predictor.check_target_size(args.target_size)
    return SegmentJob(image, coords, labels, predictor, loaded, target_size, device, out)


def _timed(function: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """Run ``function`` and return its result and wall time in ms (synchronising CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, (time.perf_counter() - start) * 1000.0


def _timing(function: Callable[[], object], device: torch.device, repeats: int, setup: str) -> tuple[object, str]:
    """Result of a first call and its timing text; with ``repeats`` the median of that many more calls.

    ``setup`` names the one-time work the first call includes ("" when none).
    """
    result, first = _timed(function, device)
    first_text = f"{first:.1f} ms" + (f", includes one-time {setup}" if setup else "")
    if not repeats:
        return result, first_text
    times = [_timed(function, device)[1] for _ in range(repeats)]
    return result, (
        f"{statistics.median(times):.1f} ms median of {repeats} (min {min(times):.1f}, max {max(times):.1f}; "
        f"first call {first_text})"
    )


def describe(job: SegmentJob, args: argparse.Namespace) -> str:
    """Which model ran on what, with which weights: printed before the encoder starts."""
    config = job.loaded.model.config.name
    chosen = " (from the checkpoint)" if args.model is None and args.checkpoint is not None else ""
    threads = f", torch threads {torch.get_num_threads()}" if job.device.type == "cpu" else ""
    height, width = job.image.shape[:2]
    return (
        f"model {config}{chosen}, weights: {job.loaded.weights}\n"
        f"image {args.image or EXAMPLE_IMAGE} ({width}x{height}), target size {job.target_size}, "
        f"device {job.device}{threads}"
    )


def random_weights_note(loaded: LoadedModel) -> str | None:
    """The warning to print when some or all weights are random, else None."""
    if loaded.random_weights:
        return (
            "NOTE: the weights are random, so this mask is not a real segmentation; it shows the pipeline and "
            "its latency. Load trained weights with --checkpoint."
        )
    if loaded.missing:
        total = len(loaded.model.state_dict())
        return (
            f"NOTE: {len(loaded.missing)} of {total} weights are random (missing from the checkpoint, loaded with "
            f"--allow-partial, first: {loaded.missing[0]}), so this mask is not a trained model's."
        )
    return None


def segment(args: argparse.Namespace) -> int:
    """The ``segment`` command; returns the process exit status."""
    job = prepare(args)
    predictor, device = job.predictor, job.device
    print(describe(job, args), flush=True)
    _, timing = _timing(
        lambda: predictor.set_image(job.image, target_size=job.target_size), device, args.benchmark,
        "set-up: torch's lazy imports, index plans, RoPE tables",
    )
    print(f"encoder: {timing}", flush=True)
    logits = None
    for k in range(1, len(job.coords) + 1):
        (masks, scores, low_res), timing = _timing(
            lambda k=k, prompt=logits: predictor.predict(job.coords[:k], job.labels[:k], mask_input=prompt),
            device, args.benchmark, "decoder set-up" if k == 1 else "",
        )
        logits = low_res
        x, y = job.coords[k - 1]
        kind = "positive" if job.labels[k - 1] == 1 else "negative"
        print(f"click {k} ({kind} at {x:g},{y:g}): {timing}, score {scores[0]:.3f}, mask area {int(masks[0].sum())} px")
    save_outputs(job.image, masks[0], job.coords, job.labels, job.out)
    print(f"wrote {job.out / 'mask.png'} and {job.out / 'overlay.png'}")
    note = random_weights_note(job.loaded)
    if note:
        print(note)
    return 0


def save_outputs(image: np.ndarray, mask: np.ndarray, coords: np.ndarray, labels: np.ndarray, out: Path) -> None:
    """Write ``mask.png`` (0 / 255) and ``overlay.png`` (mask tinted, clicks drawn)."""
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(out / "mask.png")
    tint = np.array([30, 144, 255], dtype=np.float32)
    blended = image.astype(np.float32)
    blended[mask] = 0.45 * blended[mask] + 0.55 * tint
    overlay = Image.fromarray(blended.round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(overlay)
    radius = max(4, round(max(image.shape[:2]) / 120))
    for (x, y), label in zip(coords, labels, strict=True):
        colour = (40, 200, 60) if label == 1 else (220, 40, 40)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255))
    overlay.save(out / "overlay.png")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage first); subparsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; options whose default is None say in their own help what None means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def build_parser(prog: str = "hrsam") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="HRSAM interactive segmentation", formatter_class=_HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seg = commands.add_parser(
        "segment", help="segment an image from clicks; writes mask and overlay PNGs",
        description="Segment an image from clicks; writes mask.png and overlay.png and prints latency.",
        formatter_class=_HelpFormatter, allow_abbrev=False,
    )
    option = seg.add_argument
    option("--image", metavar="PATH", help="image file (PNG, JPEG, ...); default: the bundled 640x480 example")
    option("--points", metavar="X,Y,L;...", help="clicks in image pixels, label L 1 foreground / 0 background, each "
           f"fed the previous click's logits; default (for the example only): {EXAMPLE_POINTS!r}")
    option("--model", choices=sorted(CONFIGS), help="model config; default: the one the checkpoint holds (or the "
           f"one it fits best), {DEFAULT_MODEL} without a checkpoint")
    option("--checkpoint", metavar="FILE", help="our .safetensors, a torch.save(model.state_dict()) file or the "
           "authors' mmengine .pth; default: none (random weights)")
    option("--allow-partial", action="store_true",
           help="accept a checkpoint that leaves weights missing; they stay random and the output says so")
    option("--target-size", type=int, metavar="S", default=DEFAULT_TARGET_SIZE,
           help="padded input side S, a multiple of 16 (the paper uses 1024 and 2048)")
    option("--device", default="auto", help="cpu, cuda or cuda:N; auto is cuda when available, else cpu")
    option("--threads", type=_count(1), metavar="N",
           help=f"CPU threads for torch; default: torch's own choice ({torch.get_num_threads()} here)")
    option("--benchmark", type=_count(0), default=0, metavar="N",
           help="after the first call, time the encoder and every click N more times and print medians")
    option("--out", default="outputs/segment", metavar="DIR",
           help="output folder (created; mask.png and overlay.png in it are replaced)")
    option("--seed", type=int, default=0, help="seed of the random weights")
    seg.set_defaults(run=segment)
    return parser


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--points -5,10,1`` -> ``--points=-5,10,1``: argparse would read ``-5,10,1`` as an option."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in _DASH_VALUE_OPTIONS and arg.startswith("-") and not arg.startswith("--"):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def main(argv: Sequence[str] | None = None, prog: str = "hrsam") -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input) instead of exiting."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # --help and argparse errors
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run() -> NoReturn:
    """Entry point of the ``hrsam`` console script."""
    sys.exit(main())
