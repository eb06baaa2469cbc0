"""Synthetic images for tests, the demo and benchmarks: no data set to download, fully seeded.

``make_image`` draws class-distinct pictures (shape, texture and hue all differ per kind, position,
scale and colour jitter per seed) that a tiny CNN learns in a few epochs; ``make_photo`` makes
photo-like content (smooth gradients plus sensor-like noise) so codec timings are realistic;
``bad_files`` and ``good_variants`` are the validation corpus (ARCHITECTURE.md, "Image rules").
"""

from __future__ import annotations

import colorsys
import math
import random
import struct
import zlib
from functools import lru_cache
from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw

#: The kinds ``make_image`` can draw; each has its own shape/texture and hue family.
KINDS = ("circle", "square", "triangle", "stripes", "checker", "ring")

# Hue centre per kind (0-1); jittered by +-0.04 so colour helps, but shape/texture decide.
_HUES = {
    "circle": 0.0,
    "square": 0.33,
    "triangle": 0.62,
    "stripes": 0.13,
    "checker": 0.80,
    "ring": 0.50,
}

MB = 1024 * 1024


def _rgb(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, sat, val)
    return round(r * 255), round(g * 255), round(b * 255)


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode in ``fmt``; GIF gets an adaptive palette, JPEG a sensible default quality."""
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt == "GIF" and img.mode not in ("P", "L"):
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    if fmt == "JPEG":
        params.setdefault("quality", 90)
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def make_image(
    kind: str, seed: int, size: tuple[int, int] = (320, 320), fmt: str = "JPEG"
) -> bytes:
    """One synthetic picture of ``kind`` (see :data:`KINDS`), deterministic in ``seed``."""
    if kind not in _HUES:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    rng = random.Random(f"{kind}:{seed}")
    w, h = size
    side = min(w, h)
    hue = _HUES[kind] + rng.uniform(-0.04, 0.04)
    fg = _rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
    bg_hue = rng.random()
    bg_a = _rgb(bg_hue, rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.9))
    bg_b = _rgb(bg_hue + 0.1, rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.9))

    # background: a soft linear gradient, so nothing is learnable from the background alone
    t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    if rng.random() < 0.5:
        t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    grad = np.asarray(bg_a, np.float32) * (1 - t) + np.asarray(bg_b, np.float32) * t
    canvas = Image.fromarray(np.broadcast_to(grad, (h, w, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)

    cx = rng.uniform(0.3, 0.7) * w
    cy = rng.uniform(0.3, 0.7) * h
    r = rng.uniform(0.18, 0.32) * side
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif kind == "ring":
        width = max(2, round(r * rng.uniform(0.2, 0.35)))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fg, width=width)
    elif kind == "square":
        angle = rng.uniform(0, math.pi / 2)
        pts = [
            (cx + r * math.cos(angle + k * math.pi / 2), cy + r * math.sin(angle + k * math.pi / 2))
            for k in range(4)
        ]
        draw.polygon(pts, fill=fg)
    elif kind == "triangle":
        angle = rng.uniform(0, 2 * math.pi)
        pts = [
            (
                cx + r * math.cos(angle + k * 2 * math.pi / 3),
                cy + r * math.sin(angle + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
        draw.polygon(pts, fill=fg)
    elif kind == "stripes":
        period = max(4, round(side * rng.uniform(0.06, 0.12)))
        horizontal = rng.random() < 0.5
        offset = rng.randrange(period)
        for pos in range(-period + offset, (h if horizontal else w), period):
            box = (0, pos, w, pos + period // 2) if horizontal else (pos, 0, pos + period // 2, h)
            draw.rectangle(box, fill=fg)
    else:  # checker
        cell = max(4, round(side * rng.uniform(0.08, 0.16)))
        other = _rgb(hue + 0.5, rng.uniform(0.0, 0.3), rng.uniform(0.05, 0.3))
        ox, oy = rng.randrange(cell), rng.randrange(cell)
        for gy, y in enumerate(range(-oy, h, cell)):
            for gx, x in enumerate(range(-ox, w, cell)):
                draw.rectangle(
                    (x, y, x + cell - 1, y + cell - 1), fill=fg if (gx + gy) % 2 == 0 else other
                )

    noise = np.random.default_rng(rng.randrange(2**32)).integers(-8, 9, (h, w, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(canvas, np.int16) + noise, 0, 255).astype(np.uint8)
    return _encode(Image.fromarray(pixels, "RGB"), fmt)


def photo_image(size: tuple[int, int], seed: int) -> Image.Image:
    """Photo-like RGB content: smooth colour fields, a few soft blobs and mild noise.

    Pure noise would be the worst case for a JPEG codec and unlike any real upload.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(12):  # a few hard-ish edges, like objects in a scene
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.15) * min(w, h)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    noise = rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(base, np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def make_photo(size: tuple[int, int], seed: int = 0, fmt: str = "JPEG", **params: object) -> bytes:
    """:func:`photo_image` encoded in ``fmt`` (extra keyword arguments go to ``Image.save``)."""
    return _encode(photo_image(size, seed), fmt, **params)


# --- hand-built files ------------------------------------------------------------------------


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` zeros: tiny file, huge decode.

    1 bit per pixel keeps even 20000 x 20000 (400 MP, 400 MB once decoded to ``L``) at about
    50 KB and quick to build.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * min(height, 1024)) for _ in range(height // 1024)]
    parts.append(comp.compress(row * (height % 1024)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def bmp_header_only(width: int, height: int, bits: int = 24) -> bytes:
    """A BMP file header + BITMAPINFOHEADER claiming ``width`` x ``height`` with no pixel data.

    Validation must refuse it from the header alone, before anything is decoded.
    """
    row = ((width * bits + 31) // 32) * 4
    image_size = min(row * height, 0xFFFFFFFF)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, image_size, 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", min(14 + 40 + image_size, 0xFFFFFFFF), 0, 0, 54)
    return header + info


def pad_jpeg(jpeg: bytes, total_bytes: int) -> bytes:
    """A still-valid JPEG grown to at least ``total_bytes`` with COM (comment) segments."""
    assert jpeg[:2] == b"\xff\xd8"
    chunk = 65533  # the largest payload a segment length field allows
    need = max(0, total_bytes - len(jpeg))
    segments = []
    while need > 0:
        n = min(chunk, max(need - 4, 1))
        segments.append(b"\xff\xfe" + struct.pack(">H", n + 2) + b"\x00" * n)
        need -= n + 4
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


@lru_cache(maxsize=1)
def _bad_files() -> tuple[tuple[str, bytes, str], ...]:
    photo = make_photo((640, 480), seed=7)
    tiff = _encode(photo_image((320, 320), 1), "TIFF")
    webp = _encode(photo_image((320, 320), 2), "WEBP")
    bad_crc = bytearray(make_image("circle", 3, fmt="PNG"))
    bad_crc[29] ^= 0xFF  # the IHDR checksum
    heic_like = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    files = [
        ("empty.jpg", b"", "empty"),
        ("huge.jpg", pad_jpeg(photo, 6 * MB + 300_000), "too_large"),
        ("notes.jpg", b"These are my notes, not a picture.\n" * 40, "unsupported_format"),
        ("scan.jpg", tiff, "unsupported_format"),
        ("photo.png", webp, "unsupported_format"),
        ("iphone.jpg", heic_like, "unsupported_format"),
        ("truncated.jpg", photo[: len(photo) * 6 // 10], "corrupt"),
        ("bad_crc.png", bytes(bad_crc), "corrupt"),
        ("garbage.gif", b"GIF89a" + bytes(random.Random(5).randbytes(2000)), "corrupt"),
        ("tiny.png", make_image("square", 4, size=(100, 100), fmt="PNG"), "too_small"),
        ("sliver.jpg", make_image("stripes", 5, size=(8000, 200)), "bad_aspect_ratio"),
        ("wide.jpg", make_image("checker", 6, size=(10500, 600)), "dimensions_too_large"),
        ("claims_12000x600.bmp", bmp_header_only(12000, 600), "dimensions_too_large"),
        ("bomb_20000.png", png_bomb(20000, 20000), "too_many_pixels"),
        ("bomb_9000.png", png_bomb(9000, 9000), "too_many_pixels"),
        ("claims_40000.bmp", bmp_header_only(40000, 40000), "too_many_pixels"),
    ]
    return tuple(files)


def bad_files() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, expected reason code): every content reason code, default limits.

    Names lie on purpose (a TIFF called ``.jpg``): the format comes from the bytes.
    """
    return {name: (data, reason) for name, data, reason in _bad_files()}


@lru_cache(maxsize=1)
def _good_variants() -> tuple[tuple[str, bytes], ...]:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 400x300, shown rotated 90 degrees clockwise: 300x400 upright
    portrait = _encode(photo_image((400, 300), 10), "JPEG", exif=exif.tobytes())
    cmyk = _encode(photo_image((320, 320), 11).convert("CMYK"), "JPEG")
    ramp = np.linspace(0, 65535, 320, dtype=np.float64)
    gray16 = _encode(Image.fromarray(np.tile(ramp, (300, 1)).astype(np.uint16)), "PNG")
    frames = [
        Image.open(BytesIO(make_image(kind, 12, fmt="PNG"))).convert("RGB")
        for kind in ("circle", "square", "triangle")
    ]
    animated = BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    palette = Image.open(BytesIO(make_image("ring", 13, fmt="PNG"))).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16
    )
    grey = Image.open(BytesIO(make_image("checker", 14, fmt="PNG"))).convert("L")
    variants = [
        ("rotated_portrait.jpg", portrait),
        ("cmyk.jpg", cmyk),
        ("gray16.png", gray16),
        ("animated.gif", animated.getvalue()),
        ("palette_transparent.png", _encode(palette, "PNG", transparency=0)),
        ("grayscale.jpg", _encode(grey, "JPEG")),
        ("image.bmp", make_image("triangle", 15, fmt="BMP")),
        ("progressive.jpg", make_photo((512, 384), 16, progressive=True)),
        ("rgba.png", _encode(photo_image((300, 300), 17).convert("RGBA"), "PNG")),
    ]
    return tuple(variants)


def good_variants() -> dict[str, bytes]:
    """File name -> bytes of accepted edge cases (orientation, CMYK, 16-bit, animation, ...)."""
    return dict(_good_variants())
