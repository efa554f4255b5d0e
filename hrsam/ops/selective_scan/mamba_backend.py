"""mamba-ssm's CUDA selective scan as a backend, when the package and its extension are present.

mamba-ssm ships as source and must be compiled against the local torch and CUDA; it is optional.
The probe runs once, lazily, and never raises: without the package hrsam imports and runs with
its own backends. Layout is the same as ours (u, delta [batch, dim, L]; A [dim, N] float32;
B, C [batch, N, L]); mamba-ssm returns y in u's dtype and keeps its state in float32.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence

import torch

from hrsam.ops.replay import replay_backward

# dtypes mamba-ssm's kernels are compiled for.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _probe() -> tuple[Callable[..., torch.Tensor] | None, str | None]:
    """Import mamba-ssm's interface and its compiled extension; (function, None) or (None, why)."""
    try:
        interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        importlib.import_module("selective_scan_cuda")
    except Exception as error:  # ImportError, or OSError/RuntimeError from a mismatched build
        return None, f"mamba-ssm is not usable here ({type(error).__name__}: {error})"
    return interface.selective_scan_fn, None


def unavailable_reason() -> str | None:
    """None when mamba-ssm's CUDA selective scan can be called, else why not."""
    return _probe()[1]


def forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
) -> torch.Tensor:
    """y of mamba-ssm's selective_scan_fn (no gate z, no last state)."""
    scan = _probe()[0]
    if scan is None:
        raise RuntimeError(unavailable_reason())
    y = scan(u, delta, A, B, C, D=D, z=None, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return y.contiguous()


def backward(
    grad_out: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    delta_softplus: bool,
    needs: Sequence[bool],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of (u, delta, A, B, C, D, delta_bias) by mamba-ssm's fused CUDA backward.

    selective_scan_fn is an autograd Function, so its forward is replayed (cheap next to its
    backward) to give it the state it saves.
    """
    return replay_backward(lambda *t: forward(*t, delta_softplus), grad_out, inputs, needs)
