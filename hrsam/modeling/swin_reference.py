"""Traditional Swin window attention (cyclic roll + attention mask), the reference of Flash Swin.

Flash Swin is proven equal to it in tests/test_flash_swin.py; benchmarks/flash_swin.py times both.

This is the formulation Flash Swin replaces: the grid is rolled by -shift, cut into k x k
windows, and the windows that wrapped around get a mask so tokens attend only to tokens that
were neighbours before the roll. Grid sides must be multiples of the window.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def _partition(x: Tensor, k: int) -> Tensor:
    h, w = x.shape[:2]
    x = x.reshape(h // k, k, w // k, k, *x.shape[2:]).transpose(1, 2)
    return x.reshape((h // k) * (w // k), k * k, *x.shape[4:])


def _merge(x: Tensor, h: int, w: int, k: int) -> Tensor:
    x = x.reshape(h // k, w // k, k, k, *x.shape[2:]).transpose(1, 2)
    return x.reshape(h, w, *x.shape[4:])


@functools.lru_cache(maxsize=16)
def _window_mask(h: int, w: int, k: int, shift: int, device: torch.device) -> Tensor:
    """[nW, 1, k*k, k*k] True where two tokens of a rolled window were neighbours (cached per device)."""
    labels = _partition(_region_labels(h, w, k, shift), k)  # [nW, k*k]
    return (labels[:, :, None] == labels[:, None, :])[:, None].to(device)


def _region_labels(h: int, w: int, k: int, shift: int) -> Tensor:
    """Swin's region ids on the rolled canvas: wrapped strips get their own id."""
    labels = torch.zeros(h, w, dtype=torch.long)
    bounds = [slice(0, -k), slice(-k, -shift), slice(-shift, None)]
    count = 0
    for ys in bounds:
        for xs in bounds:
            labels[ys, xs] = count
            count += 1
    return labels


def swin_window_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, shift: int, scale: float, fused: bool = False
) -> Tensor:
    """q, k, v [h, w, H, D] (RoPE already applied) -> [h, w, H, D].

    ``fused=False`` is Swin's own formulation (matmul, additive mask, softmax, matmul);
    ``fused=True`` runs the same masked attention through ``scaled_dot_product_attention``,
    the fastest a traditional implementation can get (a mask rules out the flash kernel).
    """
    h, w = q.shape[:2]
    if h % window or w % window:
        raise ValueError("traditional Swin needs grid sides that are multiples of the window")
    if shift:
        q, k, v = (torch.roll(t, shifts=(-shift, -shift), dims=(0, 1)) for t in (q, k, v))
    qw, kw, vw = (_partition(t, window).transpose(1, 2) for t in (q, k, v))  # [nW, H, k*k, D]
    mask = _window_mask(h, w, window, shift, q.device) if shift else None
    if fused:
        out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=scale)
    else:
        scores = qw @ kw.transpose(-1, -2) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = scores.softmax(dim=-1) @ vw
    out = out.transpose(1, 2)
    out = _merge(out, h, w, window)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(0, 1))
    return out
