"""Index mappings of the Flexible Local Attention framework (paper sections 3.2-3.4, appendix A-C).

A window plan turns window attention over one or more token grids into ONE variable-length
block-diagonal attention call: queries are gathered into window order (``q_index``), keys/values
are gathered the same way or, with KV-only padding, padded to exactly ``window**2`` slots per
window by pointing virtual slots at one shared padding token (``kv_index``). The inverse mapping
(``q_inverse``) restores raster order.

Geometry (same as the authors' implementation, so their checkpoints see the same windows):

* shift ``s`` (0 or ``window // 2``) offsets the window grid by ``p = (window - s) % window``
  virtual rows/columns at the top/left; the canvas is then padded bottom/right up to a multiple
  of the window. For a 64 x 64 grid and window 16: 16 plain windows, 25 shifted windows.
* canvas coordinates ``(y + p, x + p)`` are each slot's RoPE position; each grid of a
  multi-scale sequence has its own canvas starting at 0.
* the sequence holds ``batch`` images back to back, each the concatenation of its grids in
  raster order; the padding slot is index ``batch * sum(h * w)`` (one shared token, appended).

Plans are pure torch, built on the CPU, and cached per shape.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

Grid = tuple[int, int]


@dataclass(frozen=True, eq=False)
class WindowPlan:
    """Everything a block-diagonal attention call needs for one windowing of a token sequence.

    Attributes:
        grids: the token grids (h, w) packed in each image's sequence.
        window, shift, kv_padding, batch: the parameters the plan was built for.
        q_index: int64 [Tq]; token index of each query slot in window order (Tq = num_tokens).
        q_inverse: int64 [num_tokens]; position of each token in window order
            (``x[q_index][q_inverse] == x``).
        kv_index: int64 [Tk]; token index of each key/value slot; ``num_tokens`` is the padding slot.
        cu_seqlens_q, cu_seqlens_k: int32 [num_windows + 1]; window boundaries in the packed q / kv.
        max_seqlen_q, max_seqlen_k: the longest window in q / kv.
        q_coords, kv_coords: int64 [Tq, 2] / [Tk, 2]; canvas (y, x) of each slot (RoPE positions).
    """

    grids: tuple[Grid, ...]
    window: int
    shift: int
    kv_padding: bool
    batch: int
    q_index: Tensor
    q_inverse: Tensor
    kv_index: Tensor
    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    q_coords: Tensor
    kv_coords: Tensor

    @property
    def num_tokens(self) -> int:
        """Real tokens in the whole packed sequence (all images, all grids)."""
        return self.batch * sum(h * w for h, w in self.grids)

    @property
    def pad_index(self) -> int:
        """Index of the shared padding token appended after the real tokens."""
        return self.num_tokens

    @property
    def num_windows(self) -> int:
        return self.cu_seqlens_q.numel() - 1


def window_offset(window: int, shift: int) -> int:
    """Virtual rows/columns before the first real token: the authors' ``(k - s) % k``."""
    return (window - shift) % window


def canvas_size(size: int, window: int, shift: int) -> int:
    """Canvas extent along one axis: offset plus the grid, rounded up to whole windows."""
    padded = window_offset(window, shift) + size
    return -(-padded // window) * window


def _grid_slots(h: int, w: int, window: int, shift: int) -> tuple[Tensor, Tensor]:
    """Token index (or -1 for virtual) and canvas coordinates of every canvas slot, in window order.

    Returns ``index`` [nwin, window**2] and ``coords`` [nwin, window**2, 2].
    """
    off = window_offset(window, shift)
    ch, cw = canvas_size(h, window, shift), canvas_size(w, window, shift)
    cy = torch.arange(ch).view(ch, 1).expand(ch, cw)
    cx = torch.arange(cw).view(1, cw).expand(ch, cw)
    y, x = cy - off, cx - off
    real = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    index = torch.where(real, y * w + x, torch.full_like(y, -1))

    def to_windows(t: Tensor) -> Tensor:
        t = t.reshape(ch // window, window, cw // window, window, *t.shape[2:])
        return t.transpose(1, 2).reshape((ch // window) * (cw // window), window * window, *t.shape[4:])

    return to_windows(index), to_windows(torch.stack([cy, cx], dim=-1))


def _cu_seqlens(lengths: Tensor) -> Tensor:
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)


@functools.lru_cache(maxsize=64)
def window_plan(
    grids: tuple[Grid, ...], window: int, shift: int, kv_padding: bool, batch: int = 1
) -> WindowPlan:
    """Build (once per shape) the plan for windowed attention over ``batch`` x ``grids``.

    Args:
        grids: token grids (h, w) concatenated in each image's sequence; one grid for HRSAM, two
            (main, anchor) for HRSAM++. Any positive sizes, not only multiples of ``window``.
        window: window side k in tokens.
        shift: 0 (plain windows) or any value in [0, k); the model uses k // 2.
        kv_padding: pad keys/values to exactly k*k per window with the padding slot.
        batch: images in the packed sequence.
    """
    grids = tuple((int(h), int(w)) for h, w in grids)
    if window <= 0 or not 0 <= shift < window:
        raise ValueError(f"window must be positive and 0 <= shift < window, got {window=}, {shift=}")
    if batch <= 0 or not grids or any(h <= 0 or w <= 0 for h, w in grids):
        raise ValueError(f"batch and every grid size must be positive, got {batch=}, {grids=}")

    per_image = sum(h * w for h, w in grids)
    slots, coords, start = [], [], 0
    for h, w in grids:
        index, grid_coords = _grid_slots(h, w, window, shift)
        slots.append(torch.where(index >= 0, index + start, index))
        coords.append(grid_coords)
        start += h * w
    image_slots = torch.cat(slots)  # [nwin, k*k], -1 for virtual
    image_coords = torch.cat(coords)  # [nwin, k*k, 2]

    offsets = (torch.arange(batch) * per_image).view(batch, 1, 1)
    all_slots = torch.where(image_slots >= 0, image_slots + offsets, image_slots).flatten(0, 1)
    all_coords = image_coords.repeat(batch, 1, 1)
    real = all_slots >= 0

    q_index = all_slots[real]
    q_coords = all_coords[real]
    q_lengths = real.sum(dim=1)
    q_inverse = torch.empty_like(q_index)
    q_inverse[q_index] = torch.arange(q_index.numel())

    if kv_padding:
        kv_index = torch.where(real, all_slots, torch.full_like(all_slots, batch * per_image)).flatten()
        kv_coords = all_coords.flatten(0, 1)
        kv_lengths = torch.full_like(q_lengths, window * window)
    else:
        kv_index, kv_coords, kv_lengths = q_index, q_coords, q_lengths

    return WindowPlan(
        grids=grids,
        window=window,
        shift=shift,
        kv_padding=kv_padding,
        batch=batch,
        q_index=q_index,
        q_inverse=q_inverse,
        kv_index=kv_index,
        cu_seqlens_q=_cu_seqlens(q_lengths),
        cu_seqlens_k=_cu_seqlens(kv_lengths),
        max_seqlen_q=int(q_lengths.max()),
        max_seqlen_k=int(kv_lengths.max()),
        q_coords=q_coords,
        kv_coords=kv_coords,
    )


def plain_window_plan(h: int, w: int, window: int, kv_padding: bool = False) -> WindowPlan:
    """Non-shifted windows over one h x w grid (paper eq. 5-6, padded bottom/right if needed)."""
    return window_plan(((h, w),), window, 0, kv_padding)


def shifted_window_plan(h: int, w: int, window: int, kv_padding: bool = False) -> WindowPlan:
    """Windows shifted by window // 2 over one h x w grid (paper appendix A and B)."""
    return window_plan(((h, w),), window, window // 2, kv_padding)


def multiscale_window_plan(
    main: Grid, anchor: Grid, window: int, shift: int, kv_padding: bool = False
) -> WindowPlan:
    """Two grids in one sequence, each windowed on its own canvas (appendix C, listings 3-4)."""
    return window_plan((main, anchor), window, shift, kv_padding)
