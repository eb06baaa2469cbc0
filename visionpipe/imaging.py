"""Decoding images for the model: oriented, 8-bit RGB, and no larger than needed.

Shared by the training job and serving, so both see the same pixels for the same bytes. Pillow
only (numpy is imported lazily for 16-bit images): the Function app imports this module and must
stay light and torch-free.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

from PIL import Image

#: Formats the model side decodes; the same allowlist that validation enforces (ARCHITECTURE.md,
#: "Image rules").
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


# --- decode slots -------------------------------------------------------------------------------
# A decoded picture costs up to 4 bytes per pixel, however small the file: eight 180 KB PNGs of
# 8000 x 8000 px decoded at once took a host from 364 MB to almost 2 GB. A process-wide semaphore
# (DECODE_CONCURRENCY, default 2) bounds how many decodes hold pixels at the same time; waiting
# requests hold only their bytes. Re-entrant per thread, so code that already holds a slot (the
# serving path: validate, decode, crop) can call validation, which takes one too.
_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()
_held = threading.local()


def _decode_slots() -> threading.BoundedSemaphore:
    global _slots
    with _slots_lock:
        if _slots is None:
            from visionpipe.settings import decode_concurrency

            _return_freed_pictures_to_the_os()
            _slots = threading.BoundedSemaphore(decode_concurrency())
        return _slots


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def _return_freed_pictures_to_the_os() -> None:
    """Make glibc give a freed picture's memory back at once.

    By default glibc raises its mmap threshold after the first large free, so later 16 MB Pillow
    blocks come from per-thread heaps that keep freed memory: bounding concurrent decodes then
    does not bound the process, which grows by a picture per handler thread. A fixed threshold
    (1 MB) makes every picture-sized allocation its own mapping, unmapped when freed. Nothing
    happens where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):
        pass


@contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the process's decode slots for the enclosed pixel work."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth = depth
        return
    slots = _decode_slots()
    with slots:
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


def reset_decode_slots() -> None:
    """Forget the semaphore, so the next decode reads DECODE_CONCURRENCY again (tests)."""
    global _slots
    with _slots_lock:
        _slots = None


# --- decoding ------------------------------------------------------------------------------------
#: Keep at least this many times the wanted size when shrinking by an integer factor: Pillow's own
#: ``reducing_gap`` guidance, where 3 is "indistinguishable from fair resampling in most cases".
REDUCING_GAP = 3

# Modes Image.reduce() takes; the others (P, 1, I;16*) are converted first.
_REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr"})


def draft_to_cover(img: Image.Image, orientation: int, min_size: tuple[int, int]) -> None:
    """Let a JPEG decode at the smallest DCT scale (1/2, 1/4, 1/8) whose result still covers
    ``min_size`` (upright width, height); other formats are left alone."""
    if img.format not in ("JPEG", "MPO"):
        return
    want_w, want_h = min_size
    if swaps_sides(orientation):  # draft() takes the size in the stored orientation
        want_w, want_h = want_h, want_w
    img.draft("RGB", (max(1, want_w), max(1, want_h)))


def picture_for_model(img: Image.Image, orientation: int,
                      min_size: tuple[int, int]) -> Image.Image:
    """A loaded image -> upright 8-bit RGB, shrunk first by the largest integer factor that
    keeps :data:`REDUCING_GAP` times ``min_size``.

    Shrinking *before* the mode conversion is what bounds memory: a palette image with
    transparency otherwise goes through three full-size RGBA copies on the way to RGB. Pictures
    under three times the wanted size are not touched, so their pixels are exactly
    :func:`open_oriented`'s.
    """
    want_w, want_h = min_size
    if swaps_sides(orientation):
        want_w, want_h = want_h, want_w
    w, h = img.size
    factor = min(w // max(1, REDUCING_GAP * want_w), h // max(1, REDUCING_GAP * want_h))
    if factor >= 2:
        img = img.reduce(factor) if img.mode in _REDUCIBLE_MODES else _reduce_in_strips(img, factor)
    rgb = to_rgb8(img)
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


#: Pixels converted at a time when a mode must be converted before it can be reduced.
_STRIP_PIXELS = 1024 * 1024


def _reduce_in_strips(img: Image.Image, factor: int) -> Image.Image:
    """``_reducible(img).reduce(factor)`` without a full-size converted copy: converted and
    reduced a band of ``factor``-aligned rows at a time (the same boxes, the same result)."""
    w, h = img.size
    rows = factor * max(1, _STRIP_PIXELS // max(1, w * factor))
    out: Image.Image | None = None
    for top in range(0, h, rows):
        band = _reducible(img.crop((0, top, w, min(h, top + rows)))).reduce(factor)
        if out is None:
            out = Image.new(band.mode, (-(-w // factor), -(-h // factor)))
        out.paste(band, (0, top // factor))
    assert out is not None
    return out


def _reducible(img: Image.Image) -> Image.Image:
    """P / 1 / 16-bit as a mode :meth:`Image.reduce` takes, keeping what :func:`to_rgb8` needs."""
    if img.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(img)
    if img.mode == "P" or "transparency" in img.info:
        return img.convert("RGBA")
    return img.convert("L" if img.mode == "1" else "RGB")


def decode_for_model(data: bytes, min_size: tuple[int, int]) -> Image.Image:
    """Bytes -> :func:`picture_for_model`, the decode of the serving path (one decode slot)."""
    img = Image.open(BytesIO(data), formats=list(DECODABLE_FORMATS))
    orientation = exif_orientation(img)
    draft_to_cover(img, orientation, min_size)
    with decode_slot():
        img.load()
        return picture_for_model(img, orientation, min_size)


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
    if min_size is not None:
        draft_to_cover(img, orientation, min_size)
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

    values = np.array(img)  # uint16 or int32: shifted in place, not widened to int64 copies
    values >>= 8
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8))
