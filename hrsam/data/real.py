"""A few real photographs with hand-checkable masks, bundled for evaluating trained models.

``hrsam/data/assets/real`` holds two public-domain / CC0 photographs from scikit-image's data
module and eight object masks made by simple rules and checked by eye (how: the docstring of
``hrsam/data/assets/make_assets.py``): six coins on a dark cloth and two nested parts of a coffee
cup seen from above. None of these photographs is used by the synthetic training data.
"""

from __future__ import annotations

from pathlib import Path

from hrsam.data.folders import read_mask, read_rgb
from hrsam.data.samples import Sample

REAL_DIR = Path(__file__).with_name("assets") / "real"
PHOTOS = ("coins.png", "coffee.jpg")


class RealPhotos:
    """The bundled photographs' objects, one ``Sample`` per mask (coins first, then the cup)."""

    def __init__(self, directory: Path = REAL_DIR) -> None:
        self.items: list[tuple[Path, Path]] = []
        for photo in PHOTOS:
            masks = sorted(directory.glob(f"{Path(photo).stem}_mask*.png"))
            if not (directory / photo).is_file() or not masks:
                raise FileNotFoundError(f"bundled photograph {photo} or its masks missing in {directory}")
            self.items += [(directory / photo, mask) for mask in masks]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        photo, mask = self.items[index]
        return Sample(read_rgb(photo), read_mask(mask), mask.stem)
