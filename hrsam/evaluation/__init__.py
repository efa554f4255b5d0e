"""Interactive-segmentation evaluation: the click simulator, metrics, the evaluation loop, reports.

``evaluate(predictor, dataset)`` works with every backend of ``HRSAMPredictor``; ``python -m
hrsam.eval`` runs it on the eager model and ``python -m trt_runtime.evaluate`` on exported engines.
"""

from hrsam.evaluation.clicks import Click, distance_to_boundary, next_click
from hrsam.evaluation.evaluate import EvaluationResult, ObjectResult, evaluate, evaluate_sample
from hrsam.evaluation.metrics import THRESHOLDS, iou, miou_curve, noc, summarise
from hrsam.evaluation.report import plot_curves, table, write_results

__all__ = [
    "THRESHOLDS",
    "Click",
    "EvaluationResult",
    "ObjectResult",
    "distance_to_boundary",
    "evaluate",
    "evaluate_sample",
    "iou",
    "miou_curve",
    "next_click",
    "noc",
    "plot_curves",
    "summarise",
    "table",
    "write_results",
]
