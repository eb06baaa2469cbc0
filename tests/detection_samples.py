"""Synthetic object-detection scenes: red squares and blue circles on noisy backgrounds.

Deterministic in the seed, so a training test sees the same pictures every run. Each scene has
1-3 objects that do not overlap much (IoU < 0.1 with each other), with their true boxes as
:class:`visionpipe.annotations.Region` (fractions of the picture, from the top-left), encoded as
PNG bytes as a user would upload them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from visionpipe.annotations import Region
from visionpipe.detection_metrics import iou

TAGS = ("square", "circle")
COLOURS = {"square": (210, 40, 40), "circle": (40, 70, 210)}


def scene(rng: np.random.Generator, size: int = 128, min_side: float = 0.18,
          max_side: float = 0.38, max_objects: int = 3) -> tuple[bytes, tuple[Region, ...]]:
    """One PNG scene and its regions."""
    base = rng.integers(90, 170, size=3)
    noise = rng.normal(0, 22, size=(size, size, 3))
    pixels = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    regions: list[Region] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = float(rng.uniform(min_side, max_side))
            left, top = float(rng.uniform(0, 1 - side)), float(rng.uniform(0, 1 - side))
            tag = TAGS[int(rng.integers(0, len(TAGS)))]
            box = (left, top, side, side)
            if all(iou(box, (r.left, r.top, r.width, r.height)) < 0.1 for r in regions):
                break
        else:
            continue
        x0, y0 = round(left * size), round(top * size)
        x1, y1 = round((left + side) * size) - 1, round((top + side) * size) - 1
        colour = tuple(int(c + rng.integers(-25, 26)) for c in COLOURS[tag])
        if tag == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        # the box as drawn, in fractions of the picture
        regions.append(Region(tag, x0 / size, y0 / size, (x1 + 1 - x0) / size,
                              (y1 + 1 - y0) / size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), tuple(regions)


def scenes(n: int, seed: int = 0, size: int = 128) -> list[tuple[bytes, tuple[Region, ...]]]:
    rng = np.random.default_rng(seed)
    return [scene(rng, size) for _ in range(n)]
