"""Export of HRSAM models: ONNX graphs, TensorRT engines, AOTInductor packages, and their checks.

``python -m export <command>`` (console script ``hrsam-export``); see ``docs/EXPORT.md`` for the
contract the exported files follow and ``docs/DEPLOYMENT.md`` for running them.
"""
