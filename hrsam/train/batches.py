"""Training data: scenes -> fixed-size tensors, and a resumable, distributed order of samples.

Items are keyed by (epoch, index) so that everything random about an item (which objects, the
flip) is a function of the key: any worker, any number of workers and a resumed run produce the
same batches. ``ResumableOrder`` shards every epoch with ``DistributedSampler`` (one shard per
process, as in ``torchrun`` training) and starts mid-epoch after the samples a resumed run
already consumed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler, Sampler

from hrsam.data.samples import Scene
from hrsam.modeling.configs import PIXEL_MEAN, PIXEL_STD
from hrsam.predictor import resized_size

Key = tuple[int, int]


def image_to_tensors(image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """H x W x 3 uint8 -> ([3, S, S] uint8 resized like ``hrsam.predictor.preprocess``, [S, S] bool region).

    Items cross the worker boundary as uint8 (4x less shared memory than float32) and are
    normalised on the device by ``normalise``; only the rounding to uint8 after resizing differs
    from the predictor's float path (none for images already at S, like the synthetic scenes).
    """
    new_h, new_w = resized_size(image.shape[0], image.shape[1], size)
    image = np.array(image) if not image.flags.writeable else np.ascontiguousarray(image)  # PIL arrays are read-only
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    if (new_h, new_w) != image.shape[:2]:
        resized = F.interpolate(tensor[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                                antialias=True)
        tensor = resized[0].round().clamp(0, 255).to(torch.uint8)
    region = torch.zeros(size, size, dtype=torch.bool)
    region[:new_h, :new_w] = True
    return F.pad(tensor, (0, size - new_w, 0, size - new_h)), region


def normalise(images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] uint8 + [B, S, S] region -> SAM-normalised float32, zero outside the region (as padded)."""
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std * region[:, None]


def _resize_masks(masks: np.ndarray, size: int) -> torch.Tensor:
    """K x H x W bool -> K x size x size uint8, resized like the image (longest side) and zero-padded."""
    new_h, new_w = resized_size(masks.shape[1], masks.shape[2], size)
    tensor = torch.from_numpy(masks).float()[:, None]
    if (new_h, new_w) != masks.shape[1:]:
        tensor = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    return F.pad((tensor[:, 0] >= 0.5).to(torch.uint8), (0, size - new_w, 0, size - new_h))


def scene_to_tensors(scene: Scene, size: int, instances: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One training item from a scene.

    ``image`` [3, S, S] uint8 and ``region`` [S, S] bool (``image_to_tensors``), ``masks`` [M, S, S]
    uint8 of up to M randomly chosen non-empty objects, ``valid`` [M] bool (False for padding slots
    when the scene has fewer objects).
    Half of the items are flipped left-right.
    """
    image, masks = scene.image, scene.masks
    if rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    present = np.flatnonzero(masks.any(axis=(1, 2)))
    chosen = rng.permutation(present)[:instances]
    picked = np.zeros((instances, *masks.shape[1:]), dtype=bool)
    picked[: chosen.size] = masks[chosen]
    pixels, region = image_to_tensors(image, size)
    return {
        "image": pixels,
        "masks": _resize_masks(np.ascontiguousarray(picked), size),
        "valid": torch.arange(instances) < chosen.size,
        "region": region,
    }


class SceneItems(Dataset):
    """Training items of a scene source (synthetic, COCO, folders) at input size ``size``."""

    def __init__(self, scenes: Sequence[Scene], size: int, instances: int, seed: int) -> None:
        self.scenes, self.size, self.instances, self.seed = scenes, size, instances, seed

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        return scene_to_tensors(self.scenes[index], self.size, self.instances, rng)


class ResumableOrder(Sampler[Key]):
    """Endless (epoch, index) keys for one process: ``DistributedSampler`` shards, epoch after epoch.

    ``start``: how many keys this process already consumed (resuming skips exactly those).
    """

    def __init__(self, length: int, rank: int, world: int, shuffle: bool, seed: int, start: int = 0) -> None:
        self.length, self.rank, self.world = length, rank, world
        self.shuffle, self.seed, self.start = shuffle, seed, start
        self.per_epoch = len(self._sampler(0))
        if self.per_epoch == 0:
            raise ValueError(f"the data set ({length} items) is smaller than the number of processes ({world})")

    def _sampler(self, epoch: int) -> DistributedSampler:
        sampler = DistributedSampler(range(self.length), num_replicas=self.world, rank=self.rank,
                                     shuffle=self.shuffle, seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        return sampler

    def __iter__(self) -> Iterator[Key]:
        first, offset = divmod(self.start, self.per_epoch)
        for epoch in itertools.count(first):
            for index in itertools.islice(iter(self._sampler(epoch)), offset, None):
                yield epoch, index
            offset = 0


def worker_init(_: int) -> None:
    """One torch thread per data worker: the workers are the parallelism."""
    torch.set_num_threads(1)
