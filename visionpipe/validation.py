"""Image validation (ARCHITECTURE.md, "Image rules"): accept an image, or say exactly why not.

Cheapest checks first, so hostile or broken input costs as little as possible: byte count, magic
bytes, then the header only (Pillow restricted to the one sniffed format), the pixel budget before
any decode, the size rules, and last an integrity decode -- a JPEG at 1/8 scale (libjpeg still reads
every entropy-coded byte, so truncation is still caught), other formats one full first frame,
bounded by the pixel budget. Arbitrary bytes give a :class:`ValidImage` or a :class:`Rejection`,
never an exception. No Pillow global is modified, so this is safe to call from many threads.

The prediction path calls :func:`decode_valid_image` instead: the integrity decode is then done at
the scale the model needs and its pixels are handed back, so a request is decoded once, not once
to validate and again to predict. Its limits carry a second budget, ``max_decoded_pixels``, on
the pixels the decode would hold in memory (a JPEG counts at its reduced decode scale, unless it
has several scans: libjpeg then buffers every coefficient of the full-size image). Pixel work
runs inside one of the process's decode slots (:func:`visionpipe.imaging.decode_slot`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageFile, UnidentifiedImageError

from visionpipe.imaging import (
    decode_slot,
    draft_to_cover,
    exif_orientation,
    picture_for_model,
    swaps_sides,
)
from visionpipe.rejections import Reason, Rejection
from visionpipe.settings import ImageLimits

#: Even when small images may be upscaled, smaller than this is not a picture of anything.
ABSOLUTE_MIN_SIDE = 16

ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF")

CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "GIF": "image/gif",
}


@dataclass(frozen=True)
class ValidImage:
    """An accepted image; ``width``/``height`` are upright (after the EXIF orientation)."""

    format: str  # "JPEG" | "PNG" | "BMP" | "GIF", from the magic bytes
    width: int
    height: int
    orientation: int  # EXIF orientation 1-8 (1 when absent)
    mode: str  # Pillow mode as stored, e.g. "RGB", "L", "P", "CMYK", "I;16"
    frames: int
    sha256: str  # hex digest of the bytes: the image's identity in the `images` table
    size_bytes: int
    upscaled: bool  # a side is under min_side and the limits allow upscaling it

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


@dataclass(frozen=True)
class DecodedImage:
    """An accepted image and the pixels of the very decode that validated it."""

    image: ValidImage
    picture: Image.Image  # upright 8-bit RGB, see visionpipe.imaging.picture_for_model


def sniff_format(data: bytes) -> str | None:
    """The accepted format the magic bytes announce, or None. The file name is never consulted."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    return None


def describe_unsupported(data: bytes) -> str:
    """A name for a refused file, to make the rejection message useful ("a WebP image")."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "a TIFF image"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "an AVIF image"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "a HEIC/HEIF image"
        return "an ISO media (MP4/MOV/HEIF family) file"
    if head[:4] == b"%PDF":
        return "a PDF document"
    if head[:4] == b"\x00\x00\x01\x00":
        return "an ICO icon"
    if head[:4] == b"8BPS":
        return "a Photoshop document"
    if head[:4] == b"PK\x03\x04" or head[:2] == b"\x1f\x8b":
        return "an archive"
    if head[:2] == b"\xff\xd8":
        return "a file with a broken JPEG signature"
    stripped = head.lstrip()
    if stripped[:5].lower() in (b"<?xml", b"<svg ") or stripped[:4].lower() == b"<svg":
        return "an SVG/XML document"
    if _looks_like_text(head):
        return "a text file"
    return "a file of unknown type"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


class _EOFWatchingIO(BytesIO):
    """Notes when a decoder asked for more bytes than the file has.

    With ``ImageFile.LOAD_TRUNCATED_IMAGES`` off (Pillow's default) a truncated file raises on its
    own; if some other code in the process turned that global on, Pillow would quietly grey-fill
    the missing part instead, and this flag is how truncation is still caught without touching
    the global.
    """

    hit_eof = False

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if not chunk and size != 0:
            self.hit_eof = True
        return chunk


def _mp(pixels: int) -> str:
    return f"{pixels / 1_000_000:.1f} MP"


def _bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB ({n:,} bytes)"


def validate_image(data: bytes, limits: ImageLimits) -> ValidImage | Rejection:
    """Check ``data`` against ``limits``; see the module docstring for the order of checks."""
    result = _guarded(data, limits, None)
    return result.image if isinstance(result, DecodedImage) else result


def decode_valid_image(data: bytes, limits: ImageLimits,
                       min_size: tuple[int, int]) -> DecodedImage | Rejection:
    """:func:`validate_image`, keeping the pixels: decoded to cover ``min_size`` (upright width,
    height; a JPEG at the smallest DCT scale that does), upright 8-bit RGB."""
    result = _guarded(data, limits, min_size)
    if isinstance(result, ValidImage):  # cannot happen: a min_size always keeps the picture
        return Rejection(Reason.CORRUPT, "the image could not be decoded")
    return result


def _guarded(data: bytes, limits: ImageLimits,
             min_size: tuple[int, int] | None) -> ValidImage | DecodedImage | Rejection:
    try:
        return _validate(data, limits, min_size)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises" for any input
        return Rejection(Reason.CORRUPT, f"the image could not be read: {_explain(exc)}")


def _explain(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _header_error(fmt: str, data: bytes, exc: Exception) -> str:
    """Pillow's real complaint: ``Image.open`` hides the plugin's error behind "cannot identify"."""
    if not isinstance(exc, UnidentifiedImageError):
        return _explain(exc)
    try:
        factory, _accept = Image.OPEN[fmt]
        factory(BytesIO(data), "")
    except Exception as inner:  # noqa: BLE001 - only used to word the message
        return _explain(inner)
    return "Pillow could not identify it"


def _validate(data: bytes, limits: ImageLimits,
              min_size: tuple[int, int] | None) -> ValidImage | DecodedImage | Rejection:
    size_bytes = len(data)
    if size_bytes == 0:
        return Rejection(Reason.EMPTY, "the file is empty (0 bytes)")
    if size_bytes > limits.max_bytes:
        return Rejection(
            Reason.TOO_LARGE,
            f"the file is {_bytes(size_bytes)}; the limit is {_bytes(limits.max_bytes)}",
        )

    fmt = sniff_format(data)
    if fmt is None:
        return Rejection(
            Reason.UNSUPPORTED_FORMAT,
            f"the content is {describe_unsupported(data)}, not an accepted image format "
            f"({', '.join(ACCEPTED_FORMATS)}); the file name's extension is not considered",
        )

    stream = _EOFWatchingIO(data)
    try:
        img = Image.open(stream, formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own ceiling (2x Image.MAX_IMAGE_PIXELS); the warning only arrives as an
        # exception when the process escalated warnings to errors.
        return Rejection(
            Reason.TOO_MANY_PIXELS,
            f"the {fmt} header declares more pixels than allowed (limit {_mp(limits.max_pixels)}):"
            f" {exc}",
        )
    except Exception as exc:  # noqa: BLE001 - whatever Pillow raises on a bad header
        return Rejection(
            Reason.CORRUPT,
            f"the file starts like a {fmt} but its header is invalid: "
            f"{_header_error(fmt, data, exc)}",
        )

    with img:
        return _check_opened(img, fmt, data, stream, limits, min_size)


def _jpeg_has_several_scans(img: Image.Image, data: bytes) -> bool:
    """Progressive, or a sequential JPEG whose components come in separate scans: either way
    libjpeg keeps the coefficients of the whole full-size image, even when drafting (about 3 bytes
    per stored pixel: 187 MB for a 370 KB progressive 8000 x 8000 file)."""
    if img.info.get("progressive") or img.info.get("progression"):
        return True
    i, end = 2, len(data)
    while i + 4 <= end:  # walk the marker segments up to the first scan
        if data[i] != 0xFF:
            return False  # not a marker where one must be: the decoder will say what is wrong
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: another one before the end of image: several
            start = i + 2 + length
            end_of_image = data.find(b"\xff\xd9", start)  # an MPO's next picture is not a scan
            return data.find(b"\xff\xda", start, end if end_of_image < 0 else end_of_image) >= 0
        i += 2 + length
    return False


def _check_opened(
    img: Image.Image, fmt: str, data: bytes, stream: _EOFWatchingIO, limits: ImageLimits,
    min_size: tuple[int, int] | None = None,
) -> ValidImage | DecodedImage | Rejection:
    stored_w, stored_h = img.size
    mode = img.mode
    pixels = stored_w * stored_h
    if pixels > limits.max_pixels:
        return Rejection(
            Reason.TOO_MANY_PIXELS,
            f"image is {stored_w}x{stored_h} px ({_mp(pixels)}); the limit is "
            f"{_mp(limits.max_pixels)} ({limits.max_pixels:,} pixels)",
        )

    # A PNG's eXIf chunk may follow the pixel data and Pillow would decode to find it; every size
    # rule below is symmetric in width and height, so it is enough to know the orientation later.
    orientation = 1 if fmt == "PNG" and "exif" not in img.info else exif_orientation(img)
    width, height = (stored_h, stored_w) if swaps_sides(orientation) else (stored_w, stored_h)
    short, long = min(width, height), max(width, height)

    if long > limits.max_side:
        return Rejection(
            Reason.DIMENSIONS_TOO_LARGE,
            f"image is {width}x{height} px; each side must be at most {limits.max_side:,} px",
        )
    # Aspect before "too small": upscaling cannot fix a sliver, so that is the reason to report.
    if short > 0 and long / short > limits.max_aspect:
        return Rejection(
            Reason.BAD_ASPECT_RATIO,
            f"image is {width}x{height} px, an aspect ratio of {long / short:.1f}:1; "
            f"the limit is {limits.max_aspect:g}:1",
        )
    upscaled = False
    if short < limits.min_side:
        floor = min(ABSOLUTE_MIN_SIDE, limits.min_side)
        if not limits.upscale_small:
            return Rejection(
                Reason.TOO_SMALL,
                f"image is {width}x{height} px; each side must be at least {limits.min_side} px",
            )
        if short < floor:
            return Rejection(
                Reason.TOO_SMALL,
                f"image is {width}x{height} px; even with upscaling of small images each side "
                f"must be at least {floor} px",
            )
        upscaled = True

    if fmt == "JPEG":
        if min_size is None:
            # Decodes at 1/8 scale; draft() takes the stored size, and 0 would divide by zero.
            img.draft("RGB", (max(1, stored_w // 8), max(1, stored_h // 8)))
        else:
            draft_to_cover(img, orientation, min_size)
    budget = limits.max_decoded_pixels
    if budget is not None:
        held_w, held_h = img.size  # after draft(): the size the JPEG decodes at
        if fmt != "JPEG" or _jpeg_has_several_scans(img, data):
            held_w, held_h = stored_w, stored_h
        if held_w * held_h > budget:
            return Rejection(
                Reason.TOO_MANY_PIXELS,
                f"decoding this {width}x{height} px {fmt} would hold {held_w}x{held_h} px "
                f"({_mp(held_w * held_h)}) in memory; the prediction limit is {_mp(budget)} "
                f"({budget:,} pixels)",
            )

    picture: Image.Image | None = None
    try:
        with decode_slot():
            img.load()  # first frame only for GIF/APNG/MPO
            if stream.hit_eof and ImageFile.LOAD_TRUNCATED_IMAGES:
                return Rejection(
                    Reason.CORRUPT,
                    f"the {fmt} data is truncated: the decoder needed more bytes than the file "
                    "has",
                )
            if fmt == "PNG":
                orientation = exif_orientation(img)
                if swaps_sides(orientation):
                    width, height = stored_h, stored_w
            if min_size is not None:  # before n_frames, which moves through the frames
                picture = picture_for_model(img, orientation, min_size)
            frames = int(getattr(img, "n_frames", 1))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Rejection(Reason.TOO_MANY_PIXELS, f"the {fmt} image has too many pixels: {exc}")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a broken file
        return Rejection(
            Reason.CORRUPT, f"the {fmt} image data is damaged or incomplete: {_explain(exc)}"
        )

    valid = ValidImage(
        format=fmt,
        width=width,
        height=height,
        orientation=orientation,
        mode=mode,
        frames=max(1, frames),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        upscaled=upscaled,
    )
    return valid if picture is None else DecodedImage(valid, picture)
