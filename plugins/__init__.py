"""TensorRT plugins for the two irregular operations of the export contract.

* ``VarlenAttention`` launches the package's Triton varlen attention kernel;
* ``SelectiveScan`` is lowered (``lowering.py``) into three plugins, one per pass of the package's
  Triton scan kernels (``scan.py``).

Each plugin is a TensorRT Python-defined plugin (``tensorrt.plugin``) with an ahead-of-time
implementation: at engine build time ``aot.py`` compiles the Triton kernel to PTX whose parameter
list follows TensorRT's launch convention, and TensorRT stores it in the engine, so the engine
runs without Python (``trtexec`` too). A JIT implementation (the same PTX launched with cupy from
Python) sits beside it for TensorRT versions without AOT plugins. ``definitions.py`` holds every
rule in plain Python; ``tensorrt_plugins.py`` registers them with TensorRT.

Nothing here imports TensorRT at module import time; ``import_tensorrt`` gives a one-line error
naming the package to install.
"""

from __future__ import annotations

from types import ModuleType


def tensorrt_install_hint() -> str:
    """The pip command for TensorRT matching this torch's CUDA (12 or 13), as one phrase."""
    import torch

    cuda = torch.version.cuda
    major = cuda.split(".")[0] if cuda else ""
    if major in ("12", "13"):
        return f"pip install tensorrt-cu{major} (TensorRT 10.x or 11.x for this torch's CUDA {cuda})"
    return "pip install tensorrt-cu12 or tensorrt-cu13 (TensorRT 10.x or 11.x, the one matching your CUDA)"


def import_tensorrt() -> ModuleType:
    """``tensorrt``, or ImportError in one line naming what to install."""
    try:
        import tensorrt
    except ImportError as error:
        raise ImportError(f"TensorRT is not installed ({error}); {tensorrt_install_hint()}") from None
    return tensorrt


def unavailable_reason(aot: bool = True) -> str | None:
    """None when plugins can be registered here (with AOT implementations if ``aot``), else why not."""
    try:
        trt = import_tensorrt()
    except ImportError as error:
        return str(error)
    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError as error:
        return f"TensorRT {trt.__version__} has no tensorrt.plugin module ({error}); install TensorRT >= 10.9"
    if aot and not hasattr(trt, "QuickPluginCreationRequest"):
        return (
            f"TensorRT {trt.__version__} has no ahead-of-time Python plugins; install TensorRT >= 10.9 "
            "or build with --plugins jit"
        )
    return None
