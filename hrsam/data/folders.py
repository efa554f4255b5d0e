"""Image / mask folder pairs: DAVIS and HQSeg-44K as interactive-segmentation benchmarks ship them.

Every set is a list of (image folder, mask folder) pairs under a root; an image ``name.jpg`` has
the mask ``name.png`` (any non-zero pixel is object; masks scaled to 0-255 are thresholded at
128). Layouts:

* ``davis``: the 345-image interactive version of DAVIS: ``img/`` and ``gt/``;
* ``hqseg44k``: the HQSeg-44K validation sets inside SAM-HQ's ``data/`` folder: DIS5K's
  ``DIS5K/DIS-VD/{im,gt}``, ``thin_object_detection/ThinObject5K/{images_test,masks_test}``,
  ``thin_object_detection/COIFT/{images,masks}`` and ``thin_object_detection/HRSOD/{images,
  masks_max255}``;
* ``folder``: any ``images/`` and ``masks/`` (or pass the two folders).

Pairs are matched on construction: an image without its mask is an error that names it, so a
broken download fails before any model work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hrsam.data.samples import Sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "davis": (("img", "gt"),),
    "hqseg44k": (
        ("DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt"),
        ("thin_object_detection/ThinObject5K/images_test", "thin_object_detection/ThinObject5K/masks_test"),
        ("thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks"),
        ("thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255"),
    ),
    "folder": (("images", "masks"),),
}


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB; a one-line error for unreadable files."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None


def read_mask(path: Path) -> np.ndarray:
    """A mask file as H x W bool: grey levels >= 128 (or any non-zero label of a 0/1 mask)."""
    try:
        with Image.open(path) as image:
            values = np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: not a readable mask image ({error})") from None
    return values >= 128 if values.max() > 1 else values > 0


def _pairs(image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
    masks = {path.stem: path for path in mask_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES}
    images = sorted(path for path in image_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    missing = [path.name for path in images if path.stem not in masks]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) in {image_dir} have no mask in {mask_dir} (e.g. {missing[0]}); "
            "every image needs a mask with the same name"
        )
    return [(path, masks[path.stem]) for path in images]


@dataclass
class FolderDataset:
    """Image / mask pairs of one layout under ``root`` (see the module doc), one object per image."""

    pairs: list[tuple[Path, Path]]
    name: str

    @classmethod
    def from_layout(cls, root: str | Path, layout: str = "folder") -> FolderDataset:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown dataset layout {layout!r}; choose one of {sorted(LAYOUTS)}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {root}")
        pairs = [pair for images, masks in LAYOUTS[layout] for pair in _pairs(root / images, root / masks)]
        return cls(pairs, layout)

    @classmethod
    def from_folders(cls, image_dir: str | Path, mask_dir: str | Path) -> FolderDataset:
        return cls(_pairs(Path(image_dir), Path(mask_dir)), Path(image_dir).parent.name or "folder")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, mask_path = self.pairs[index]
        image, mask = read_rgb(image_path), read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{mask_path}: mask size {mask.shape} differs from its image's {image.shape[:2]}")
        if not mask.any():
            raise ValueError(f"{mask_path}: the mask is empty (no object pixel)")
        return Sample(image, mask, image_path.stem)
