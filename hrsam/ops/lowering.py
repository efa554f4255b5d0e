"""When the custom ops hand Inductor code it can compile instead of an opaque call.

``hrsam::varlen_attention`` and ``hrsam::selective_scan`` are Python-bodied custom ops. That is
what ONNX export needs (one node per call, see ``hrsam.contract``), but Inductor can only call
them as black boxes: no fusion around them, and an AOTInductor package cannot run them at all
(loading such a package crashed the process on the H200, docs/DEPLOYMENT.md). So the ops' Python
wrappers route to *lowered* forms (``hrsam.ops.selective_scan.inductor``,
``hrsam.ops.varlen_attention.inductor``) exactly when Inductor is the consumer:

* under ``torch.compile`` on CUDA tensors, without gradient recording (compiling, not
  exporting). On the CPU the opaque op keeps whatever CPU backend is fastest, and training
  graphs keep the opaque ops because they carry the backward (the lowered scan has none);
* inside ``aot_lowering()``, which AOTInductor exporters put around their ``torch.export`` call
  (any device: a CPU package needs the lowered forms too).

Everything else (eager calls, ``torch.export`` and ``torch.onnx.export`` outside
``aot_lowering()``) sees the original ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

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


def lowering_active(device: torch.device) -> bool:
    """True when a call on ``device`` is being traced for Inductor (see the module docstring)."""
    if _aot_depth > 0:
        return True
    if device.type != "cuda" or torch.is_grad_enabled():
        return False
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()
