"""COCO / LVIS instance annotations (through pycocotools) as training scenes or evaluation samples.

Both formats are a JSON file of ``images``, ``annotations`` (polygon or RLE ``segmentation``) and
``categories``. COCO images name their file in ``file_name``; LVIS images only have a
``coco_url`` whose last path component is the file name under the COCO image folder. Crowd
annotations and instances below ``min_area`` pixels are left out; images left with no instance
are not listed (training cannot use them). ``pycocotools`` is imported only here: it is part of
the ``train`` extra, not of the core install.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hrsam.data.folders import read_rgb
from hrsam.data.samples import Sample, Scene


def _coco_api(annotation_file: Path):  # noqa: ANN202 - pycocotools is untyped
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ImportError("COCO / LVIS annotations need pycocotools: pip install pycocotools") from None
    if not annotation_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {annotation_file}")
    try:
        with open(annotation_file) as file:
            content = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{annotation_file}: not a valid JSON annotation file ({error})") from None
    if not isinstance(content, dict) or not {"images", "annotations"} <= content.keys():
        raise ValueError(f"{annotation_file}: not a COCO / LVIS annotation file (needs 'images' and 'annotations')")
    api = COCO()
    api.dataset = content
    api.createIndex()
    return api


class CocoInstances:
    """Images of a COCO / LVIS annotation file with their instance masks.

    Indexing gives ``Sample``s, one per instance (evaluation); ``CocoScenes`` gives each image with
    all its instances (training).
    """

    def __init__(self, annotation_file: str | Path, image_root: str | Path, min_area: int = 100) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_root}")
        self.api = _coco_api(self.annotation_file)
        self.image_ids: list[int] = []
        self.instances: list[tuple[int, int]] = []  # (image id, annotation id)
        for image_id in sorted(self.api.imgs):
            kept = [
                ann["id"]
                for ann in self.api.imgToAnns.get(image_id, [])
                if not ann.get("iscrowd", 0) and ann.get("area", 0) >= min_area and ann.get("segmentation")
            ]
            if kept:
                self.image_ids.append(image_id)
                self.instances += [(image_id, ann_id) for ann_id in kept]
        if not self.image_ids:
            raise ValueError(f"{self.annotation_file}: no image has a usable instance mask (area >= {min_area})")

    def image_path(self, image_id: int) -> Path:
        info = self.api.imgs[image_id]
        name = info.get("file_name") or Path(str(info.get("coco_url", ""))).name
        if not name:
            raise ValueError(f"{self.annotation_file}: image {image_id} has neither file_name nor coco_url")
        return self.image_root / name

    def load_image(self, image_id: int) -> np.ndarray:
        path = self.image_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"image {image_id} of {self.annotation_file.name} not found: {path}")
        image = read_rgb(path)
        info = self.api.imgs[image_id]
        if (info.get("height"), info.get("width")) not in ((None, None), image.shape[:2]):
            raise ValueError(
                f"{path}: size {image.shape[:2]} differs from the annotation's {info['height']} x {info['width']}"
            )
        return image

    def mask(self, ann_id: int) -> np.ndarray:
        return self.api.annToMask(self.api.anns[ann_id]).astype(bool)

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> Sample:
        image_id, ann_id = self.instances[index]
        return Sample(self.load_image(image_id), self.mask(ann_id), f"coco-{image_id}-{ann_id}")


class CocoScenes:
    """The scene view of ``CocoInstances`` (one item per image), for the training loader."""

    def __init__(self, instances: CocoInstances) -> None:
        self.instances = instances
        self._by_image: dict[int, list[int]] = {}
        for image_id, ann_id in instances.instances:
            self._by_image.setdefault(image_id, []).append(ann_id)

    def __len__(self) -> int:
        return len(self.instances.image_ids)

    def __getitem__(self, index: int) -> Scene:
        image_id = self.instances.image_ids[index]
        masks = np.stack([self.instances.mask(a) for a in self._by_image[image_id]])
        return Scene(self.instances.load_image(image_id), masks, f"coco-{image_id}")
