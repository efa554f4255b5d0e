"""When the custom ops hand Inductor code it can compile instead of an opaque call.

``hrsam::varlen_attention`` and ``hrsam::selective_scan`` are Python-bodied custom ops. That is
what ONNX export needs (one node per call, see ``hrsam.contract``), and under ``torch.compile``
Inductor calls them as black boxes. An AOTInductor package cannot run such an op at all, so
inside ``aot_lowering()``, which AOTInductor exporters put around their ``torch.export`` call,
the ops' Python wrappers route to *lowered* forms (``hrsam.ops.selective_scan.inductor``,
``hrsam.ops.varlen_attention.inductor``) that Inductor compiles in (any device: a CPU package
needs them too). ``hrsam::cycle_scan`` has one on CUDA only (its kernels' ``triton_op``); CPU
packages trace the Cycle-scan's tiled form instead.

Everything else (eager calls, ``torch.compile``, ``torch.export`` and ``torch.onnx.export``
outside ``aot_lowering()``) sees the original ops. ``torch.compile`` keeps them opaque because
that measured faster on the H200 (docs/BENCHMARKS.md, "Lowered forms inside compiled graphs"):
compiled with the lowered scan and a fused Flash Swin kernel, HRSAM at 2048 took 21.8 ms
against 14.7 ms with the opaque ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_aot_depth = 0


@contextlib.contextmanager
def aot_lowering() -> Iterator[None]:
    """Trace the lowered op forms inside this block (wrap the ``torch.export`` of an AOTInductor build)."""
    global _aot_depth
    _aot_depth += 1
    try:
        yield
    finally:
        _aot_depth -= 1


def lowering_active() -> bool:
    """True while an AOTInductor export traces the model (see the module docstring).

    A plain module global: Dynamo and torch.export read it with its value at trace time.
    """
    return _aot_depth > 0
