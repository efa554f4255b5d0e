"""Command line: ``python -m hrsam segment`` segments an image from a few clicks.

Without arguments it runs on the bundled example image with default clicks, writes the mask and an
overlay to ``outputs/segment/`` and prints encoder and per-click latency. Weights are random unless
``--checkpoint`` is given (our ``.safetensors`` or the authors' mmengine ``.pth``); the output says
so, because a random model's mask is not meaningful.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hrsam.checkpoint import load_authors_checkpoint, load_checkpoint
from hrsam.images import load_image
from hrsam.modeling.configs import CONFIGS
from hrsam.modeling.interactive import HRSAMInteractive, build_model
from hrsam.predictor import HRSAMPredictor

EXAMPLE_IMAGE = Path(__file__).with_name("assets") / "example.png"
EXAMPLE_POINTS = "220,260,1;460,280,0;200,210,1"


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
            raise ValueError(f"bad click {item!r}: expected 'x,y,label' with label 1 or 0") from None
        coords.append((x, y))
        labels.append(label)
    if not coords:
        raise ValueError("no clicks given: pass --points 'x,y,label;...'")
    return np.array(coords), np.array(labels)


def _timed(function: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """Run ``function`` and return its result and wall time in ms (synchronising CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, (time.perf_counter() - start) * 1000.0


def _load_model(args: argparse.Namespace) -> tuple[HRSAMInteractive, str]:
    """The model to run and a line describing its weights."""
    checkpoint = args.checkpoint
    if checkpoint is not None and Path(checkpoint).suffix == ".safetensors":
        model = load_checkpoint(checkpoint)
        return model, f"weights: {checkpoint} (config {model.config.name})"
    torch.manual_seed(args.seed)
    model = build_model(args.model)
    if checkpoint is None:
        return model, f"weights: RANDOM (seed {args.seed}); pass --checkpoint for a trained model"
    report = load_authors_checkpoint(model, checkpoint)
    return model, f"weights: authors' checkpoint {checkpoint} ({report})"


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


def segment(args: argparse.Namespace) -> int:
    """The ``segment`` command; returns the process exit status."""
    coords, labels = parse_points(args.points)
    image = load_image(args.image)
    device = torch.device(args.device)
    model, weights = _load_model(args)
    predictor = HRSAMPredictor(model.to(device))
    _, cold = _timed(lambda: predictor.set_image(image, target_size=args.target_size), device)
    _, warm = _timed(lambda: predictor.set_image(image, target_size=args.target_size), device)
    print(f"model {model.config.name}, image {args.image} ({image.shape[1]}x{image.shape[0]}), "
          f"target size {args.target_size}, device {device}")
    print(weights)
    print(f"encoder: {warm:.1f} ms (first call {cold:.1f} ms, with one-time set-up: index plans, kernels)")
    logits = None
    for k in range(1, len(coords) + 1):
        (masks, scores, low_res), ms = _timed(
            lambda k=k, prompt=logits: predictor.predict(coords[:k], labels[:k], mask_input=prompt), device
        )
        logits = low_res
        x, y = coords[k - 1]
        kind = "positive" if labels[k - 1] == 1 else "negative"
        setup = " (includes one-time decoder set-up)" if k == 1 else ""
        print(f"click {k} ({kind} at {x:g},{y:g}): {ms:.1f} ms{setup}, score {scores[0]:.3f}, "
              f"mask area {int(masks[0].sum())} px")
    save_outputs(image, masks[0], coords, labels, Path(args.out))
    print(f"wrote {Path(args.out) / 'mask.png'} and {Path(args.out) / 'overlay.png'}")
    if args.checkpoint is None:
        print("NOTE: the weights are random, so this mask is not a real segmentation; it shows the "
              "pipeline and its latency. Load trained weights with --checkpoint.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hrsam", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser("segment", help="segment an image from clicks; writes mask and overlay PNGs")
    seg.add_argument("--image", default=str(EXAMPLE_IMAGE), help="image file (default: bundled example)")
    seg.add_argument("--points", default=EXAMPLE_POINTS,
                     help=f"clicks 'x,y,label;...' in image pixels, label 1/0 (default {EXAMPLE_POINTS!r})")
    seg.add_argument("--model", default="hrsam_tiny", choices=sorted(CONFIGS), help="model config")
    seg.add_argument("--target-size", type=int, default=1024, help="padded input side, multiple of 16")
    seg.add_argument("--checkpoint", default=None, help="our .safetensors or the authors' .pth")
    seg.add_argument("--out", default="outputs/segment", help="output folder")
    seg.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    seg.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    seg.set_defaults(run=segment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
