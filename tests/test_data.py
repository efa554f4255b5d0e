"""Data: the synthetic generator (deterministic, occlusion-consistent, with holes and thin parts), the
folder and COCO loaders with their errors, the bundled real photographs, training items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from hrsam.data import FolderDataset, RealPhotos, Sample, SyntheticSamples, SyntheticScenes
from hrsam.data.shapes import SHAPES
from hrsam.train.batches import scene_to_tensors


def test_synthetic_scenes_are_deterministic_and_seed_dependent() -> None:
    a, b = SyntheticScenes(3, 96, 128, seed=1)[2], SyntheticScenes(3, 96, 128, seed=1)[2]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, SyntheticScenes(3, 96, 128, seed=2)[2].image)
    assert a.image.shape == (96, 128, 3) and a.masks.shape == (4, 96, 128)


def test_synthetic_masks_are_visible_parts_without_overlap() -> None:
    scenes = SyntheticScenes(6, 128, 128, objects=5, seed=4)
    for index in range(len(scenes)):
        masks = scenes[index].masks
        assert masks.sum(axis=0).max() <= 1  # later objects occlude earlier ones
        assert masks.any()


def test_shapes_have_holes_and_thin_parts() -> None:
    rng = np.random.default_rng(0)
    holed = SHAPES["holed"](rng, 120, 120) >= 0.5
    assert ndimage.binary_fill_holes(holed).sum() > holed.sum()
    mesh = SHAPES["mesh"](rng, 120, 120) >= 0.5
    assert ndimage.binary_fill_holes(mesh).sum() > 1.5 * mesh.sum()
    branches = SHAPES["branches"](rng, 200, 200) >= 0.5
    opened = ndimage.binary_opening(branches, structure=np.ones((9, 9)))
    assert branches.sum() > 0 and opened.sum() < 0.5 * branches.sum()  # mostly parts under 9 px wide


def test_synthetic_samples_pick_a_visible_object_at_high_resolution() -> None:
    samples = SyntheticSamples(SyntheticScenes(2, 1536, 2048, objects=3, seed=9))
    sample = samples[1]
    assert sample.image.shape == (1536, 2048, 3) and sample.mask.any()


def test_scene_to_tensors_resizes_pads_and_marks_missing_objects() -> None:
    scene = SyntheticScenes(1, 80, 120, objects=2, seed=3)[0]
    item = scene_to_tensors(scene, 64, instances=4, rng=np.random.default_rng(0))
    assert item["image"].shape == (3, 64, 64) and item["masks"].shape == (4, 64, 64)
    assert item["valid"].tolist()[2:] == [False, False]
    assert item["region"][:43].all() and not item["region"][43:].any()  # 80 x 120 -> 43 x 64
    assert not item["masks"][:, 43:].any()


def _write_pairs(root: Path, names: list[str], images: str = "images", masks: str = "masks") -> None:
    (root / images).mkdir(parents=True)
    (root / masks).mkdir(parents=True)
    for name in names:
        Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(root / images / f"{name}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:15, 5:20] = 255
        Image.fromarray(mask).save(root / masks / f"{name}.png")


def test_folder_layouts_pair_images_and_masks(tmp_path: Path) -> None:
    _write_pairs(tmp_path, ["a", "b"], "img", "gt")
    dataset = FolderDataset.from_layout(tmp_path, "davis")
    sample = dataset[1]
    assert len(dataset) == 2 and sample.name == "b" and sample.mask.sum() == 150


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    _write_pairs(tmp_path, ["a"])
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "orphan.jpg")
    with pytest.raises(ValueError, match="have no mask.*orphan.jpg"):
        FolderDataset.from_layout(tmp_path)
    (tmp_path / "images" / "orphan.jpg").unlink()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match="a.png: the mask is empty"):
        FolderDataset.from_layout(tmp_path)[0]
    (tmp_path / "images" / "a.jpg").write_bytes(b"broken")
    with pytest.raises(ValueError, match="a.jpg: not a readable image"):
        FolderDataset.from_layout(tmp_path)[0]
    with pytest.raises(FileNotFoundError):
        FolderDataset.from_layout(tmp_path / "missing", "hqseg44k")
    with pytest.raises(ValueError, match="unknown dataset layout"):
        FolderDataset.from_layout(tmp_path, "voc")


def test_samples_refuse_empty_or_mismatched_masks() -> None:
    image = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="the mask is empty"):
        Sample(image, np.zeros((4, 5), bool), "x")
    with pytest.raises(ValueError, match="bool array of the image's size"):
        Sample(image, np.ones((5, 4), bool), "x")


def test_real_photographs_have_plausible_masks() -> None:
    photos = RealPhotos()
    assert len(photos) == 8
    for index in range(6):  # coins: discs fill about pi/4 of their bounding box
        mask = photos[index].mask
        rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = (rows[-1] - rows[0] + 1) * (columns[-1] - columns[0] + 1)
        assert 0.68 < mask.sum() / box < 0.86, photos[index].name
    outer, inner = photos[6].mask, photos[7].mask
    assert (inner & ~outer).sum() == 0 and inner.sum() < outer.sum()  # the cup's inside lies within its rim


def _coco(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    return path


def _coco_content() -> dict:
    square = [[2, 2, 12, 2, 12, 12, 2, 12]]
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30},
                   {"id": 2, "coco_url": "http://x/val2017/b.jpg", "height": 20, "width": 30},
                   {"id": 3, "file_name": "none.jpg", "height": 20, "width": 30}],
        "annotations": [{"id": 10, "image_id": 1, "segmentation": square, "area": 100, "iscrowd": 0,
                         "bbox": [2, 2, 10, 10], "category_id": 1},
                        {"id": 11, "image_id": 2, "segmentation": square, "area": 100, "bbox": [2, 2, 10, 10],
                         "category_id": 1}],
        "categories": [{"id": 1, "name": "thing"}],
    }


def test_coco_and_lvis_annotations(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    from hrsam.data.coco import CocoInstances, CocoScenes

    for name in ("a", "b"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / f"{name}.jpg")
    instances = CocoInstances(_coco(tmp_path, _coco_content()), tmp_path, min_area=10)
    assert len(instances) == 2 and instances.image_ids == [1, 2]  # image 3 has no instance
    assert 90 <= instances[1].mask.sum() <= 130 and instances[1].name == "coco-2-11"  # LVIS-style coco_url
    assert CocoScenes(instances)[0].masks.shape == (1, 20, 30)
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        instances[0]


def test_coco_errors(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    from hrsam.data.coco import CocoInstances

    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoInstances(tmp_path / "missing.json", tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON annotation file"):
        CocoInstances(tmp_path / "broken.json", tmp_path)
    with pytest.raises(ValueError, match="needs 'images' and 'annotations'"):
        CocoInstances(_coco(tmp_path, {"images": []}), tmp_path)
    content = _coco_content()
    content["annotations"] = []
    with pytest.raises(ValueError, match="no image has a usable instance mask"):
        CocoInstances(_coco(tmp_path, content), tmp_path)
