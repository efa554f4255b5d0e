"""Data for training and evaluation: samples and scenes, the synthetic generator, folder / COCO sets.

See ``docs/TRAINING.md`` for the layouts each loader expects.
"""

from hrsam.data.folders import LAYOUTS, FolderDataset, read_mask, read_rgb
from hrsam.data.real import RealPhotos
from hrsam.data.samples import Sample, Scene
from hrsam.data.synthetic import HELD_OUT_SEED, TRAIN_SEED, SyntheticSamples, SyntheticScenes

__all__ = [
    "HELD_OUT_SEED",
    "LAYOUTS",
    "TRAIN_SEED",
    "FolderDataset",
    "RealPhotos",
    "Sample",
    "Scene",
    "SyntheticSamples",
    "SyntheticScenes",
    "read_mask",
    "read_rgb",
]
