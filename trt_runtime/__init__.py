"""Runtimes for exported models, and the one place that picks a backend.

``open_predictor(backend, ...)`` returns ``hrsam.predictor.HRSAMPredictor`` around the runner of
that backend, so the CLI, the demo, the evaluation and the tests switch backends with one argument.
This package reads exported files (``.onnx``, ``.engine``, ``.pt2`` and their ``model.json``) and
never imports ``export``.
"""

from trt_runtime.backends import BACKENDS, backend_unavailable_reason, open_predictor, open_runner

__all__ = ["BACKENDS", "backend_unavailable_reason", "open_predictor", "open_runner"]
