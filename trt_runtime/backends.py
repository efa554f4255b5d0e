"""Backend selection: one function per backend that builds its runner, and why one cannot run.

Backends:

* ``eager``: the PyTorch model (``hrsam.runner.EagerRunner``), any input size;
* ``compiled``: the PyTorch model through torch.compile and CUDA graphs (``hrsam.compiled``), CUDA;
* ``onnxruntime``: ``encoder.onnx`` / ``decoder.onnx`` of an export directory on ONNX Runtime,
  with the package's kernels behind the ``hrsam`` custom nodes (``trt_runtime.onnxruntime_runner``);
* ``tensorrt``: TensorRT engines of an export directory (``trt_runtime.tensorrt_runner``);
* ``aoti``: AOTInductor packages of an export directory (``trt_runtime.aoti_runner``).

Runner modules are imported only when their backend is opened: each has optional dependencies.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from hrsam.checkpoint import load_model
from hrsam.predictor import HRSAMPredictor
from hrsam.runner import EagerRunner, Runner, autocast_dtype_of

BACKENDS = ("eager", "compiled", "onnxruntime", "tensorrt", "aoti")
_FILE_BACKENDS = {
    "onnxruntime": "trt_runtime.onnxruntime_runner:OnnxRuntimeRunner",
    "tensorrt": "trt_runtime.tensorrt_runner:TensorRTRunner",
    "aoti": "trt_runtime.aoti_runner:AOTIRunner",
}


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")


def _runner_class(backend: str) -> type[Runner]:
    module, name = _FILE_BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), name)


def open_runner(
    backend: str,
    *,
    model: str | None = None,
    checkpoint: str | Path | None = None,
    export_dir: str | Path | None = None,
    device: str | None = None,
    precision: str = "fp32",
    allow_partial: bool = False,
    seed: int = 0,
    input_size: int = 1024,
) -> Runner:
    """The runner of ``backend``.

    ``eager`` / ``compiled`` load ``model`` / ``checkpoint`` through ``hrsam.checkpoint.load_model``
    (``precision`` picks autocast: fp32, bf16, fp16); the file backends read ``export_dir`` (made by
    ``python -m export``), whose sidecar says which model, weights and input size it holds.
    ``input_size``: the one input side S the ``compiled`` backend is compiled for.
    """
    _check_backend(backend)
    if backend in _FILE_BACKENDS:
        if export_dir is None:
            raise ValueError(f"backend {backend!r} runs exported files: pass export_dir (see `python -m export`)")
        return _runner_class(backend)(export_dir, device=device, precision=precision)
    autocast = autocast_dtype_of(precision)
    loaded = load_model(model, checkpoint, allow_partial=allow_partial, seed=seed)
    target = device or ("cuda" if _cuda_available() else "cpu")
    _check_device(target)
    if backend == "compiled":
        from hrsam.compiled import CompiledRunner

        return CompiledRunner(
            loaded.model.to(target), autocast_dtype=autocast, weights=loaded.weights, input_size=input_size
        )
    return EagerRunner(loaded.model.to(target), autocast_dtype=autocast, weights=loaded.weights)


def open_predictor(backend: str = "eager", *, antialias: bool = True, **kwargs: object) -> HRSAMPredictor:
    """``HRSAMPredictor`` over ``open_runner(backend, **kwargs)``: the same API for every backend."""
    return HRSAMPredictor(open_runner(backend, **kwargs), antialias=antialias)


def backend_unavailable_reason(backend: str) -> str | None:
    """None when ``backend`` can run on this machine, else a one-line reason (for UIs and skips)."""
    _check_backend(backend)
    if backend == "eager":
        return None
    if backend == "compiled":
        return None if _cuda_available() else "the compiled backend needs a CUDA GPU"
    try:
        probe = _runner_class(backend).unavailable_reason
    except ImportError as error:
        return f"{backend} runner cannot be imported ({error})"
    return probe()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_device(device: str) -> None:
    """A clear error for a device this machine lacks, before any model work."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine (use --device cpu)")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use cpu or cuda")
