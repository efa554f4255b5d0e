"""Gradio click demo: segment an image from clicks and compare the engine with eager PyTorch, click by click.

``python -m demo`` runs the pipeline (export, validate, serve); ``demo/app.py`` is the UI,
``demo/session.py`` the per-session state, ``demo/engines.py`` the shared runners and embeddings,
``demo/overlay.py`` the drawing, ``demo/panel.py`` the latency panel, ``demo/pipeline.py`` the exports.
Imports point to ``trt_runtime`` and ``hrsam`` only; exports run as ``python -m export`` processes.
"""
