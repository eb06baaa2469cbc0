"""Decoding images for the model: oriented, 8-bit RGB, and no larger than needed.

Shared by the training job and serving, so both see the same pixels for the same bytes. Pillow
only (numpy is imported lazily for 16-bit images): the Function app imports this module and must
stay light and torch-free.
"""

from __future__ import annotations

from io import BytesIO

from PIL import Image

#: Formats the model side decodes; the same allowlist that validation enforces (DESIGN §3).
DECODABLE_FORMATS = ("JPEG", "PNG", "BMP", "GIF")

_ORIENTATION_TAG = 0x0112

# EXIF orientation -> the transpose that makes the pixels upright (as PIL.ImageOps.exif_transpose).
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when absent, invalid or unreadable.

    A broken EXIF block does not make the pixels unusable (browsers and cameras ignore it too), so
    it is read as "upright" rather than failing the image.
    """
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no usable orientation"
        return 1
    if isinstance(value, tuple | list) and value:
        value = value[0]
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def swaps_sides(orientation: int) -> bool:
    """Orientations 5-8 rotate by 90 degrees: the upright width is the stored height."""
    return orientation >= 5


def open_oriented(data: bytes, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` to an upright 8-bit RGB image.

    ``min_size`` (width, height, upright) lets a JPEG decode at the smallest DCT scale (1/2, 1/4,
    1/8) whose result still covers it, which is most of the decode cost for a model that resizes
    to a few hundred pixels anyway. Other formats decode at full size. Animated images give their
    first frame. Expects bytes that :func:`visionpipe.validation.validate_image` accepted; anything
    else raises Pillow's own exceptions.
    """
    img = Image.open(BytesIO(data), formats=list(DECODABLE_FORMATS))
    orientation = exif_orientation(img)
    if min_size is not None and img.format in ("JPEG", "MPO"):
        want_w, want_h = min_size
        if swaps_sides(orientation):  # draft() takes the size in the stored orientation
            want_w, want_h = want_h, want_w
        img.draft("RGB", (max(1, want_w), max(1, want_h)))
    img.load()
    rgb = to_rgb8(img)
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency composited on white, 16-bit scaled by >> 8.

    Plain ``convert("RGB")`` clips 16-bit values (nearly everything becomes white) and drops alpha
    onto black, which is not how people see those images.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(img).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "F":
        import numpy as np

        values = np.clip(np.asarray(img), 0.0, 255.0).astype(np.uint8)
        return Image.fromarray(values).convert("RGB")
    # L, 1, P, CMYK (Pillow already undoes Adobe's inverted CMYK), YCbCr, LAB, HSV
    return img.convert("RGB")


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """16-bit grey (``I;16*``, or ``I`` holding 16-bit samples as PNG gives) to 8-bit ``L``."""
    import numpy as np

    values = np.asarray(img).astype(np.int64, copy=False) >> 8
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
