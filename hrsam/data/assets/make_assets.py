"""Regenerate the photographs under ``backgrounds/`` and ``real/`` from scikit-image's data module.

Why files and not the package: the GPU machines may lack scikit-image, and a committed file keeps
the synthetic data and the real-photo evaluation identical on every machine. All sources are
public domain or CC0 (see ``docs/MODEL_CARD.md``). Run ``python hrsam/data/assets/make_assets.py``
with scikit-image installed; the output is deterministic for one scikit-image version.

``real/`` holds two photographs with masks derived by simple, checkable rules (each overlay was
inspected by eye): six coins of ``coins`` (local threshold, opening, hole filling, connected
components) and two nested objects of ``coffee`` (the cup's white rim with everything it encloses,
and what the rim encloses alone: the inner wall and the coffee).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, data, filters, measure, morphology

HERE = Path(__file__).parent
BACKGROUNDS = ("astronaut", "chelsea", "rocket", "grass", "gravel", "brick",
               "hubble_deep_field", "immunohistochemistry", "retina", "camera", "cell")
LONG_SIDE = 512
# (row, column) centroids of the coins kept for evaluation: clean, well separated outlines.
COIN_CENTROIDS = ((124, 44), (125, 102), (127, 153), (195, 101), (186, 347), (260, 45))


def save_backgrounds() -> None:
    out = HERE / "backgrounds"
    out.mkdir(exist_ok=True)
    for name in BACKGROUNDS:
        image = getattr(data, name)()
        image = Image.fromarray(image).convert("RGB")
        scale = LONG_SIDE / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        image.save(out / f"{name}.jpg", quality=88, optimize=True)


def coin_masks(image: np.ndarray) -> list[np.ndarray]:
    threshold = np.maximum(filters.threshold_local(image, 101, offset=-8), 70)
    foreground = morphology.opening(image > threshold, morphology.disk(2))
    foreground = ndimage.binary_fill_holes(morphology.closing(foreground, morphology.disk(3)))
    labels = measure.label(foreground)
    masks = []
    for row, column in COIN_CENTROIDS:
        regions = [r for r in measure.regionprops(labels) if r.area > 500]
        best = min(regions, key=lambda r: (r.centroid[0] - row) ** 2 + (r.centroid[1] - column) ** 2)
        masks.append(labels == best.label)
    return masks


def coffee_masks(image: np.ndarray) -> list[np.ndarray]:
    hsv = color.rgb2hsv(image)
    white = (hsv[..., 1] < 0.2) & (hsv[..., 2] > 0.75)
    labels = measure.label(morphology.opening(white, morphology.disk(1)))
    rim = labels == max(measure.regionprops(labels), key=lambda r: r.area).label
    opening = ndimage.binary_fill_holes(rim)
    inside = morphology.opening(opening & ~morphology.dilation(rim, morphology.disk(2)), morphology.disk(3))
    return [opening, inside]


def save_real() -> None:
    out = HERE / "real"
    out.mkdir(exist_ok=True)
    coins = data.coins()
    Image.fromarray(coins).save(out / "coins.png", optimize=True)
    for i, mask in enumerate(coin_masks(coins)):
        Image.fromarray(mask).save(out / f"coins_mask{i}.png", optimize=True)
    coffee = data.coffee()
    Image.fromarray(coffee).save(out / "coffee.jpg", quality=92, optimize=True)
    for i, mask in enumerate(coffee_masks(coffee)):
        Image.fromarray(mask).save(out / f"coffee_mask{i}.png", optimize=True)


if __name__ == "__main__":
    save_backgrounds()
    save_real()
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.suffix in (".jpg", ".png"))
    print(f"wrote {HERE} ({total / 1e6:.2f} MB)")
