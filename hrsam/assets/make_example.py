"""Draw the bundled example image ``example.png`` (procedural, so it carries no licence questions).

A 640 x 480 scene: a vertical gradient background, a large orange disc (the object the default
clicks select), a blue rounded rectangle partly behind it and a green triangle. Regenerate with
``python hrsam/assets/make_example.py``; the output is deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480
OUTPUT = Path(__file__).with_name("example.png")


def draw_example() -> Image.Image:
    """The example scene as an RGB PIL image."""
    rows = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    top, bottom = np.array([196, 220, 240]), np.array([90, 110, 120])
    background = (top * (1 - rows) + bottom * rows).repeat(WIDTH, axis=1).astype(np.uint8)
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((330, 150, 590, 400), radius=30, fill=(52, 92, 170), outline=(20, 40, 90), width=4)
    draw.ellipse((110, 130, 330, 350), fill=(236, 140, 40), outline=(150, 70, 10), width=5)
    draw.polygon([(470, 40), (600, 140), (380, 120)], fill=(70, 160, 80))
    draw.ellipse((170, 190, 230, 230), fill=(250, 200, 120))  # highlight on the disc
    return image.filter(ImageFilter.SMOOTH)


if __name__ == "__main__":
    draw_example().save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")
