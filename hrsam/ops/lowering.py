"""Switches that traced code reads to pick the forms the engines compile.

``aot_lowering()``: when the custom ops hand Inductor code it can compile instead of an opaque
call. ``hrsam::varlen_attention`` and ``hrsam::selective_scan`` are Python-bodied custom ops.
That is what ONNX export needs (one node per call, see ``hrsam.contract``), and under
``torch.compile`` Inductor calls them as black boxes. An AOTInductor package cannot run such an
op at all, so inside ``aot_lowering()``, which AOTInductor exporters put around their
``torch.export`` call, the ops' Python wrappers route to *lowered* forms
(``hrsam.ops.selective_scan.inductor``, ``hrsam.ops.varlen_attention.inductor``) that Inductor
compiles in (any device: a CPU package needs them too). ``hrsam::cycle_scan`` has one on CUDA only
(its kernels' ``triton_op``); CPU packages trace the Cycle-scan's tiled form instead. Everything
else (eager calls, ``torch.compile``, ``torch.export`` and ``torch.onnx.export`` outside
``aot_lowering()``) sees the original ops. ``torch.compile`` keeps them opaque because that
measured faster on the H200 (docs/BENCHMARKS.md, "Lowered forms inside compiled graphs"):
compiled with the lowered scan and a fused Flash Swin kernel, HRSAM at 2048 took 21.8 ms against
14.7 ms with the opaque ops.

``engine_kernels()``: where the compiled engines (``torch.compile`` through
``hrsam.compiled.compile_part`` and the AOTInductor export) trace faster forms that eager calls and
ONNX export do not use: the MLPs' fc1 + GELU as one cuBLASLt GEMM (``hrsam.modeling.gelu_epilogue``),
the attention inputs' gather + RoPE as Triton kernels (``hrsam.ops.gather_rope``), in 16-bit the
attention itself as our Triton kernel (``hrsam.ops.varlen_attention.engine_attention_unsupported``)
each block's inverse window gather + residual add + LayerNorm as one (``hrsam.ops.add_norm``) and
HRSAM++'s stage outputs (anchor upsampling + both scales' LayerNorm) as one (``hrsam.ops.fusion_norm``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class TraceSwitch:
    """A flag that is on inside ``with switch():`` blocks (nesting counted), read while tracing.

    A plain attribute of a module-level object: Dynamo and torch.export read it with its value at
    trace time (and Dynamo guards on it), which is what a trace-time choice of form needs.
    """

    def __init__(self) -> None:
        self.depth = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def on(self) -> bool:
        """True inside a ``with switch():`` block."""
        return self.depth > 0


aot_lowering = TraceSwitch()
engine_kernels = TraceSwitch()


def lowering_active() -> bool:
    """True while an AOTInductor export traces the model (``aot_lowering``)."""
    return aot_lowering.on()


def engine_kernels_active() -> bool:
    """True while a compiled engine traces the model (``engine_kernels``)."""
    return engine_kernels.on()


def register_engine_op(register: Callable[[], T]) -> T | None:
    """``register()``'s result where CUDA and Triton are present, else None; ``register`` registers an
    engine kernel's ``triton_op`` (``hrsam::gather_rope_triton``, ...) and returns what its module keeps.

    Called at import by the ops' modules: Dynamo cannot trace a registration, and Triton is
    optional on CPU installs.
    """
    if not torch.cuda.is_available():
        return None
    try:
        return register()
    except ImportError:  # Triton is optional
        return None


def half_kernel_unsupported(x: Tensor, op: object | None) -> str | None:
    """Why an engine kernel that runs CUDA tensors in 16-bit only cannot take ``x`` (None when it can).

    ``op`` is the kernel's registered ``triton_op`` (None without CUDA or Triton at import, see
    ``register_engine_op``). Attribute reads only, safe in traces.
    """
    if not x.is_cuda:
        return f"the kernel runs on CUDA tensors, got {x.device.type}"
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"the engines run it in 16-bit only, got {x.dtype}"
    if op is None:
        return "needs Triton, and CUDA when hrsam was imported"
    return None
