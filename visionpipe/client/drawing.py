"""Pictures with their predicted boxes drawn on them, for ``visionpipe predict --annotate``.

A table of fractions says little about whether a detector found the right thing; a picture with
the boxes on it says it at a glance. The boxes are Custom Vision's ``boundingBox`` (``left, top,
width, height`` as fractions of the upright picture, from the top-left), so the picture is turned
upright by its EXIF orientation first, as the service does before predicting.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

#: well-separated outline colours; a tag keeps its colour across pictures and runs
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


def tag_colour(tag: str) -> tuple[int, int, int]:
    """The same colour for a tag name in every picture (a stable hash, not Python's salted one)."""
    return PALETTE[zlib.crc32(tag.encode("utf-8")) % len(PALETTE)]


def _pixels(box: Mapping[str, Any], size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    left, top = float(box["left"]), float(box["top"])
    right, bottom = left + float(box["width"]), top + float(box["height"])
    x0, y0 = round(max(0.0, left) * width), round(max(0.0, top) * height)
    x1 = round(min(1.0, right) * width) - 1
    y1 = round(min(1.0, bottom) * height) - 1
    return x0, y0, max(x0, x1), max(y0, y1)


def draw_boxes(data: bytes, predictions: Sequence[Mapping[str, Any]]) -> Image.Image:
    """The upright RGB picture with each prediction's box outlined in its tag's colour and
    labelled ``tag 87%`` (above the box when there is room, inside it otherwise)."""
    with Image.open(io.BytesIO(data)) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    draw = ImageDraw.Draw(picture)
    line = max(2, round(min(picture.size) / 200))
    font = ImageFont.load_default(size=max(10, round(min(picture.size) / 30)))
    for p in predictions:
        tag = str(p.get("tagName") or "?")
        colour = tag_colour(tag)
        x0, y0, x1, y1 = _pixels(p["boundingBox"], picture.size)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        label = f"{tag} {float(p.get('probability', 0.0)):.0%}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_w, text_h = right - left + 4, bottom - top + 4
        ty = y0 - text_h if y0 - text_h >= 0 else y0 + line
        draw.rectangle((x0, ty, x0 + text_w, ty + text_h), fill=colour)
        draw.text((x0 + 2 - left, ty + 2 - top), label, fill=(255, 255, 255), font=font)
    return picture


def save_like(picture: Image.Image, target: Path) -> Path:
    """Write ``picture`` to ``target`` in the format its suffix names (JPEG when the suffix
    names none Pillow writes); the path written."""
    Image.init()
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt not in Image.SAVE:
        target, fmt = target.with_name(target.name + ".jpg"), "JPEG"
    target.parent.mkdir(parents=True, exist_ok=True)
    # thin coloured lines: full-resolution colour (no 4:2:0 subsampling) keeps them their colour
    jpeg = {"quality": 92, "subsampling": 0} if fmt == "JPEG" else {}
    picture.save(target, format=fmt, **jpeg)
    return target
