"""``python -m hrsam.eval``: evaluate a model with the standard click protocol on the eager backend.

Data sets (``--dataset``, several comma-separated): ``synthetic`` (the held-out procedural set:
``--synthetic-count`` scenes of ``--synthetic-size``, seed ``HELD_OUT_SEED``), ``real`` (the
bundled photographs), ``davis`` / ``hqseg44k`` / ``folder`` (``--root``), ``coco`` (``--annotations``
and ``--image-root``). ``--target-size`` may list several sizes. Writes ``results.json`` (summaries
and per-object runs), ``summary.md`` (tables) and ``miou.png`` under ``--out``.
``--compare-untrained`` evaluates the same config with random weights beside it.
``trt_runtime.evaluate`` reuses this parser and ``run`` with other backends.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hrsam.checkpoint import DEFAULT_MODEL, load_model, read_config
from hrsam.data import HELD_OUT_SEED, LAYOUTS, FolderDataset, RealPhotos, SyntheticSamples, SyntheticScenes
from hrsam.data.samples import Sample
from hrsam.evaluation import EvaluationResult, evaluate, plot_curves, table, write_results
from hrsam.modeling.configs import CONFIGS
from hrsam.modeling.interactive import build_model
from hrsam.predictor import HRSAMPredictor
from hrsam.runner import EagerRunner, autocast_dtype_of

# Opens the predictor to evaluate: (arguments, untrained) -> predictor.
PredictorFactory = Callable[[argparse.Namespace, bool], HRSAMPredictor]
DATASETS = ("synthetic", "real", "coco", *LAYOUTS)


def _size(text: str) -> tuple[int, int]:
    """"WxH" (or one number for a square) -> (height, width)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT or one number, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT with sides >= 32, got {text!r}")
    return parts[1], parts[0]


def build_parser(prog: str = "python -m hrsam.eval") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="synthetic,real", help=f"comma-separated, of {', '.join(DATASETS)}")
    data.add_argument("--root", help="dataset root for davis / hqseg44k / folder")
    data.add_argument("--annotations", help="COCO / LVIS annotation JSON (dataset coco)")
    data.add_argument("--image-root", help="image folder of the COCO / LVIS annotations")
    data.add_argument("--synthetic-count", type=int, default=100, help="held-out synthetic scenes")
    data.add_argument("--synthetic-size", type=_size, default=(768, 1024), metavar="WxH",
                      help="size of the synthetic scenes")
    data.add_argument("--synthetic-seed", type=int, default=HELD_OUT_SEED, help="seed of the held-out set")
    data.add_argument("--limit", type=int, default=None, help="evaluate only the first N objects of each set")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=sorted(CONFIGS), default=None, help="model config")
    model.add_argument("--checkpoint", default=None, help="weights (.safetensors or .pth)")
    model.add_argument("--untrained", action="store_true", help="evaluate random weights of the config only")
    model.add_argument("--compare-untrained", action="store_true", help="also evaluate random weights")
    model.add_argument("--seed", type=int, default=0, help="seed of random weights")
    model.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    model.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--target-size", default=None,
                          help="padded input side S, or several comma-separated (default: the runner's, else 1024)")
    protocol.add_argument("--max-clicks", type=int, default=20, help="click budget per object")
    parser.add_argument("--out", default="outputs/eval", help="output folder")
    parser.add_argument("--label", default=None, help="name of this run in the table (default: the weights)")
    return parser


def load_datasets(args: argparse.Namespace) -> dict[str, Sequence[Sample]]:
    """The requested data sets by name; a clear error for unknown names or missing paths."""
    names = [name.strip() for name in args.dataset.split(",") if name.strip()]
    sets: dict[str, Sequence[Sample]] = {}
    for name in names:
        if name == "synthetic":
            height, width = args.synthetic_size
            scenes = SyntheticScenes(args.synthetic_count, height, width, objects=4, seed=args.synthetic_seed)
            sets[name] = SyntheticSamples(scenes)
        elif name == "real":
            sets[name] = RealPhotos()
        elif name == "coco":
            if not (args.annotations and args.image_root):
                raise ValueError("dataset coco needs --annotations FILE and --image-root DIR")
            from hrsam.data.coco import CocoInstances

            sets[name] = CocoInstances(args.annotations, args.image_root)
        elif name in LAYOUTS:
            if not args.root:
                raise ValueError(f"dataset {name} needs --root DIR")
            sets[name] = FolderDataset.from_layout(args.root, name)
        else:
            raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if not sets:
        raise ValueError("no dataset given (--dataset)")
    return sets


def open_eager(args: argparse.Namespace, untrained: bool) -> HRSAMPredictor:
    """The eager predictor of ``args`` (its weights, or random weights of its config)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if untrained:
        name = args.model or (read_config(args.checkpoint).name if args.checkpoint else DEFAULT_MODEL)
        torch.manual_seed(args.seed)
        model, weights = build_model(name), f"random (seed {args.seed})"
    else:
        loaded = load_model(args.model, args.checkpoint, seed=args.seed)
        model, weights = loaded.model, loaded.weights
    runner = EagerRunner(model.to(device), autocast_dtype_of(args.precision), weights=weights)
    return HRSAMPredictor(runner)


def _target_sizes(text: str | None) -> list[int | None]:
    if text is None:
        return [None]
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--target-size must be integers separated by commas, got {text!r}") from None


def run(args: argparse.Namespace, open_predictor: PredictorFactory = open_eager) -> int:
    """Evaluate every requested model at every size on every data set; print and write the results."""
    datasets = {name: _materialise(data, args.limit) for name, data in load_datasets(args).items()}
    sizes = _target_sizes(args.target_size)
    models = [("untrained", True)] if args.untrained else [(args.label or "model", False)]
    if args.compare_untrained and not args.untrained:
        models.append(("untrained", True))
    results: dict[str, dict[str, EvaluationResult]] = {name: {} for name in datasets}
    for label, untrained in models:
        predictor = open_predictor(args, untrained)
        print(f"[{label}] {predictor.runner.info.describe()}", flush=True)
        for size in sizes:
            for name, samples in datasets.items():
                result = evaluate(predictor, samples, max_clicks=args.max_clicks, target_size=size,
                                  progress=sys.stderr.isatty())
                results[name][f"{label} @{result.target_size}"] = result
    out = Path(args.out)
    summaries = write_results(results, out / "results.json")
    text = "\n".join(f"## {name}\n\n{table(runs)}\n" for name, runs in summaries.items())
    (out / "summary.md").write_text(text)
    print(plot_curves(summaries, out / "miou.png"))
    print(text)
    return 0


def _materialise(dataset: Sequence[Sample], limit: int | None) -> list[Sample]:
    """Load (or generate) the first ``limit`` objects once: every model and size reuses them."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return [dataset[i] for i in range(count)]


def main(argv: Sequence[str] | None = None, open_predictor: PredictorFactory = open_eager,
         parser: argparse.ArgumentParser | None = None) -> int:
    """Parse, run, and turn input errors into one line on stderr (exit status 2)."""
    args = (parser or build_parser()).parse_args(argv)
    try:
        return run(args, open_predictor)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
