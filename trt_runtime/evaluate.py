"""``python -m trt_runtime.evaluate``: the click-protocol evaluation of ``python -m hrsam.eval`` on any backend.

Same data sets, protocol, outputs and options as ``hrsam.eval`` (its parser and ``run`` are reused),
plus ``--backend`` (eager, compiled, onnxruntime, tensorrt, aoti) and ``--export-dir`` for the
backends that run exported files. Exported engines are built for one input size, so their
``--target-size`` defaults to it. ``--compare-untrained`` always runs the eager model with random
weights (an export holds one set of weights).

    python -m trt_runtime.evaluate --backend onnxruntime --export-dir exports/tiny512 --dataset real
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hrsam import eval as hrsam_eval
from hrsam.predictor import HRSAMPredictor
from trt_runtime.backends import BACKENDS, open_predictor


def build_parser() -> argparse.ArgumentParser:
    parser = hrsam_eval.build_parser(prog="python -m trt_runtime.evaluate")
    parser.description = __doc__.split("\n\n")[0]
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", choices=BACKENDS, default="eager", help="what runs the model")
    backend.add_argument("--export-dir", default=None, help="export folder (onnxruntime, tensorrt, aoti)")
    return parser


def open_backend(args: argparse.Namespace, untrained: bool) -> HRSAMPredictor:
    """The predictor of ``--backend``; the eager random-weight model for the untrained comparison."""
    if untrained:
        return hrsam_eval.open_eager(args, untrained=True)
    return open_predictor(args.backend, model=args.model, checkpoint=args.checkpoint, export_dir=args.export_dir,
                          device=args.device, precision=args.precision, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    return hrsam_eval.main(argv, open_backend, build_parser())


if __name__ == "__main__":
    sys.exit(main())
