"""Batched click simulation on the training device (docs/MODEL.md, training; after RITM / SimpleClick).

Training simulates clicks on the decoder's low-resolution grid (4x the embedding, e.g. 128 x 128
for 512 inputs), for a whole batch of prompts at once, so it never leaves the GPU. The rule is
the evaluation's (``hrsam.evaluation.clicks``): the next click goes to the innermost pixel of the
larger error region, by an exact Euclidean distance transform with the border as boundary,
clicked pixels excluded. The distance transform is the separable brute-force one (a minimum over
each row, then over each column, of squared distances): O(H W (H + W)) work that the GPU does in
a few large kernels. Before that, each object gets initial clicks (``initial_clicks``): half of
the steps one positive click, the others 1-3 positive and 0-2 negative ones (after RITM's
multi-point sampling, which gives the decoder more "where" per step early in training); positive
clicks are drawn with probability proportional to the distance to the object's boundary (inner
points likelier), negative ones from the background with probability proportional to the distance
to the object (capped at a few pixels, so near the object as often as far).
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


def _draw(weights: Tensor, count: int, generator: torch.Generator, width: int) -> tuple[Tensor, Tensor]:
    """``count`` pixels per row of [N, H*W] weights -> (yx [N, count, 2], empty [N]: rows of zero weight)."""
    empty = weights.sum(dim=1) == 0
    weights = weights.masked_fill(empty[:, None], 1.0)
    index = torch.multinomial(weights, count, replacement=True, generator=generator)
    return torch.stack([index // width, index % width], dim=-1), empty


def initial_clicks(gt: Tensor, positives: int, negatives: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``positives`` then ``negatives`` clicks per object: (yx [N, P, 2] long, labels [N, P]).

    Objects with an empty mask get label -1 (SAM's "not a point"), which the decoder ignores; so do
    negative clicks of an object that fills the image.
    """
    width = gt.shape[-1]
    inside = distance_transform(gt).flatten(1)
    yx, empty = _draw(inside, positives, generator, width)
    labels = torch.where(empty[:, None], -1.0, torch.ones(gt.shape[0], positives, device=gt.device))
    if negatives:
        outside = distance_transform(~gt).flatten(1).clamp(max=8.0)
        negative_yx, no_background = _draw(outside, negatives, generator, width)
        negative = torch.where((empty | no_background)[:, None], -1.0, torch.zeros_like(labels[:, :1]))
        yx = torch.cat([yx, negative_yx], dim=1)
        labels = torch.cat([labels, negative.expand(-1, negatives)], dim=1)
    return yx, labels


def initial_counts(generator: torch.Generator) -> tuple[int, int]:
    """(positive, negative) initial clicks of a step: (1, 0) half of the time, else 1-3 and 0-2."""
    if torch.rand((), generator=generator) < 0.5:
        return 1, 0
    return int(torch.randint(1, 4, (), generator=generator)), int(torch.randint(0, 3, (), generator=generator))


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
    """Set the clicked pixels of real clicks (label != -1) in ``clicked`` [N, H, W] (in place).

    ``yx`` [N, 2] or [N, P, 2] with ``labels`` [N] or [N, P].
    """
    yx, labels = yx.reshape(yx.shape[0], -1, 2), labels.reshape(labels.shape[0], -1)
    rows = torch.arange(clicked.shape[0], device=clicked.device)[:, None].expand_as(labels)
    clicked[rows, yx[..., 0], yx[..., 1]] |= labels != -1


def grid_to_pixels(yx: Tensor, cell: float) -> Tensor:
    """Low-res cell (y, x) -> (x, y) pixel coordinates of the padded input at the cell's centre."""
    return (yx.flip(-1).float() + 0.5) * cell - 0.5


def sample_iterations(max_iterations: int, decay: float, generator: torch.Generator) -> int:
    """k in [0, max_iterations) with probability proportional to decay ** k (paper: 0.6, 20)."""
    weights = decay ** torch.arange(max_iterations, dtype=torch.float64)
    return int(torch.multinomial(weights, 1, generator=generator).item())
