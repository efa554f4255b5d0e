"""Backward by replay: recompute a differentiable forward under autograd and differentiate it.

Both custom ops use this: a fast forward kernel without its own backward gets its gradients from
any differentiable implementation of the same function (a reference, or another library's
autograd Function), recomputed at backward time so nothing extra is saved in the forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def replay_backward(
    forward: Callable[..., Tensor], grad_out: Tensor, inputs: Sequence[Tensor], needs: Sequence[bool]
) -> tuple[Tensor | None, ...]:
    """Gradients of ``forward(*inputs)`` with respect to the inputs flagged in ``needs`` (else None)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) for t, need in zip(inputs, needs, strict=True)]
        y = forward(*leaves)
        wanted = [leaf for leaf, need in zip(leaves, needs, strict=True) if need]
        grads = iter(torch.autograd.grad(y, wanted, grad_out))
    return tuple(next(grads) if need else None for need in needs)
