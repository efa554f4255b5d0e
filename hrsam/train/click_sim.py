"""Batched click simulation on the training device (paper appendix D.3, after RITM / SimpleClick).

Training simulates clicks on the decoder's low-resolution grid (4x the embedding, e.g. 128 x 128
for 512 inputs), for a whole batch of prompts at once, so it never leaves the GPU. The rule is
the evaluation's (``hrsam.evaluation.clicks``): the next click goes to the innermost pixel of the
larger error region, by an exact Euclidean distance transform with the border as boundary,
clicked pixels excluded. The distance transform is the separable brute-force one (a minimum over
each row, then over each column, of squared distances): O(H W (H + W)) work that the GPU does in
a few large kernels. The first click of each object is positive, drawn with probability
proportional to the distance to the object's boundary (inner points are likelier, as in RITM).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Prompts per chunk of the distance transform: bounds its [chunk, H, W, W] temporary.
_EDT_CHUNK = 16


def _min_plus_rows(values: Tensor) -> Tensor:
    """out[..., x] = min over x' of values[..., x'] + (x - x')^2, along the last dim."""
    width = values.shape[-1]
    position = torch.arange(width, device=values.device, dtype=values.dtype)
    squared = (position[:, None] - position[None, :]) ** 2
    return (values[..., None, :] + squared).amin(dim=-1)


def distance_transform(region: Tensor) -> Tensor:
    """[N, H, W] bool -> float32 Euclidean distance of region pixels to the nearest outside pixel.

    Outside pixels get 0; the image border counts as outside (the region is padded by one pixel).
    """
    padded = torch.nn.functional.pad(region, (1, 1, 1, 1), value=False)
    big = float(sum(padded.shape[-2:]) ** 2)
    parts = []
    for chunk in padded.split(_EDT_CHUNK):
        rows = _min_plus_rows(chunk.float() * big)
        parts.append(_min_plus_rows(rows.transpose(-1, -2)).transpose(-1, -2))
    return torch.cat(parts).sqrt()[:, 1:-1, 1:-1]


def first_clicks(gt: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One positive click per object, in the object's interior; (yx [N, 2] long, labels [N]).

    Objects with an empty mask get label -1 (SAM's "not a point"), which the decoder ignores.
    """
    weights = distance_transform(gt).flatten(1)
    empty = weights.sum(dim=1) == 0
    weights[empty] = 1.0
    index = torch.multinomial(weights, 1, generator=generator)[:, 0]
    yx = torch.stack([index // gt.shape[-1], index % gt.shape[-1]], dim=1)
    labels = torch.where(empty, -1.0, 1.0)
    return yx, labels


def next_clicks(gt: Tensor, pred: Tensor, clicked: Tensor) -> tuple[Tensor, Tensor]:
    """The next click of every prompt: (yx [N, 2] long, labels [N]: 1 positive, 0 negative, -1 none).

    ``gt``, ``pred``, ``clicked``: [N, H, W] bool. A prompt with no error left gets label -1.
    """
    count = gt.shape[0]
    distance = distance_transform(torch.cat([gt & ~pred, ~gt & pred]))
    distance = distance.masked_fill(torch.cat([clicked, clicked]), 0.0).flatten(1)
    best, index = distance.max(dim=1)
    positive = best[:count] > best[count:]
    chosen = torch.where(positive, index[:count], index[count:])
    none = (best[:count] == 0) & (best[count:] == 0)
    labels = torch.where(none, -1.0, positive.float())
    yx = torch.stack([chosen // gt.shape[-1], chosen % gt.shape[-1]], dim=1)
    return yx, labels


def mark_clicked(clicked: Tensor, yx: Tensor, labels: Tensor) -> None:
    """Set the clicked pixels of real clicks (label != -1) in ``clicked`` [N, H, W] (in place)."""
    rows = torch.arange(clicked.shape[0], device=clicked.device)
    clicked[rows, yx[:, 0], yx[:, 1]] |= labels != -1


def grid_to_pixels(yx: Tensor, cell: float) -> Tensor:
    """Low-res cell (y, x) -> (x, y) pixel coordinates of the padded input at the cell's centre."""
    return (yx.flip(-1).float() + 0.5) * cell - 0.5


def sample_iterations(max_iterations: int, decay: float, generator: torch.Generator) -> int:
    """k in [0, max_iterations) with probability proportional to decay ** k (paper: 0.6, 20)."""
    weights = decay ** torch.arange(max_iterations, dtype=torch.float64)
    return int(torch.multinomial(weights, 1, generator=generator).item())
