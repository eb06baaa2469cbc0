"""Image validation (ARCHITECTURE.md, "Image rules") and model-side decoding: the corpus, the edge
cases, and fuzzing."""

from __future__ import annotations

import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from visionpipe.imaging import open_oriented
from visionpipe.local import samples
from visionpipe.rejections import Reason, Rejection
from visionpipe.settings import MB, ImageLimits
from visionpipe.validation import ValidImage, validate_image

TRAINING = ImageLimits(max_bytes=6 * MB)
CONTENT_REASONS = {
    Reason.EMPTY,
    Reason.TOO_LARGE,
    Reason.UNSUPPORTED_FORMAT,
    Reason.CORRUPT,
    Reason.TOO_MANY_PIXELS,
    Reason.TOO_SMALL,
    Reason.DIMENSIONS_TOO_LARGE,
    Reason.BAD_ASPECT_RATIO,
}
BAD = samples.bad_files()
GOOD = samples.good_variants()


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _flat(width: int, height: int, fmt: str = "JPEG") -> bytes:
    """A cheap solid-colour image: boundary tests care about sizes, not content."""
    return _encode(Image.new("RGB", (width, height), (90, 140, 200)), fmt)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _valid(data: bytes, limits: ImageLimits = TRAINING) -> ValidImage:
    result = validate_image(data, limits)
    assert isinstance(result, ValidImage), result
    return result


def _rejected(data: bytes, limits: ImageLimits = TRAINING) -> Rejection:
    result = validate_image(data, limits)
    assert isinstance(result, Rejection), result
    return result


# --- the corpus ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_is_rejected_with_its_reason(name: str) -> None:
    data, expected = BAD[name]
    rejection = _rejected(data)
    assert rejection.reason == expected, rejection
    assert rejection.message and rejection.message[0].islower()
    assert rejection.to_dict() == {"reason": expected, "message": rejection.message}


def test_corpus_covers_every_content_reason_code() -> None:
    assert {reason for _, reason in BAD.values()} == {str(r) for r in CONTENT_REASONS}


def test_bad_corpus_files_stay_small_except_the_too_large_one() -> None:
    for name, (data, reason) in BAD.items():
        if reason != "too_large":
            assert len(data) < 2 * MB, name
    assert len(BAD["bomb_20000.png"][0]) < 300_000


@pytest.mark.parametrize(
    ("name", "fmt", "size", "mode", "frames"),
    [
        ("rotated_portrait.jpg", "JPEG", (300, 400), "RGB", 1),
        ("cmyk.jpg", "JPEG", (320, 320), "CMYK", 1),
        ("gray16.png", "PNG", (320, 300), "I;16", 1),
        ("animated.gif", "GIF", (320, 320), "P", 3),
        ("palette_transparent.png", "PNG", (320, 320), "P", 1),
        ("grayscale.jpg", "JPEG", (320, 320), "L", 1),
        ("image.bmp", "BMP", (320, 320), "RGB", 1),
        ("progressive.jpg", "JPEG", (512, 384), "RGB", 1),
        ("rgba.png", "PNG", (300, 300), "RGBA", 1),
    ],
)
def test_good_variant_is_accepted(
    name: str, fmt: str, size: tuple[int, int], mode: str, frames: int
) -> None:
    data = GOOD[name]
    valid = _valid(data)
    assert valid.format == fmt
    assert (valid.width, valid.height) == size
    assert valid.mode == mode
    assert valid.frames == frames
    assert valid.size_bytes == len(data)
    assert valid.sha256 == hashlib.sha256(data).hexdigest()
    assert not valid.upscaled


def test_good_variants_are_all_checked() -> None:
    assert len(GOOD) == 9


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF"])
@pytest.mark.parametrize("kind", samples.KINDS)
def test_every_kind_in_every_accepted_format(kind: str, fmt: str) -> None:
    data = samples.make_image(kind, seed=3, size=(300, 260), fmt=fmt)
    valid = _valid(data)
    assert (valid.format, valid.width, valid.height, valid.orientation) == (fmt, 300, 260, 1)
    assert valid.content_type == f"image/{fmt.lower()}"


def test_sample_kinds_are_deterministic_and_distinct() -> None:
    assert samples.make_image("circle", 1) == samples.make_image("circle", 1)
    assert samples.make_image("circle", 1) != samples.make_image("circle", 2)
    means = {
        kind: np.asarray(Image.open(BytesIO(samples.make_image(kind, 1, fmt="PNG")))).std()
        for kind in samples.KINDS
    }
    assert len(set(means.values())) == len(samples.KINDS)


# --- the rules, exactly ----------------------------------------------------------------------


def test_empty() -> None:
    assert _rejected(b"").message == "the file is empty (0 bytes)"


def test_byte_limit_is_inclusive_and_checked_before_parsing() -> None:
    data = _flat(300, 300)
    _valid(data, ImageLimits(max_bytes=len(data)))
    rejection = _rejected(data, ImageLimits(max_bytes=len(data) - 1))
    assert rejection.reason == Reason.TOO_LARGE
    assert f"{len(data):,} bytes" in rejection.message
    # garbage over the limit is "too large", not "unsupported": size is checked first
    assert _rejected(b"x" * 101, ImageLimits(max_bytes=100)).reason == Reason.TOO_LARGE


def test_padded_jpeg_is_only_too_large() -> None:
    data, _ = BAD["huge.jpg"]
    valid = _valid(data, ImageLimits(max_bytes=8 * MB))
    assert valid.format == "JPEG"


def test_format_comes_from_magic_bytes_not_the_name() -> None:
    png = samples.make_image("circle", 1, fmt="PNG")
    assert _valid(png).format == "PNG"
    for name in ("scan.jpg", "photo.png", "notes.jpg", "iphone.jpg"):
        assert BAD[name][1] == "unsupported_format"
    assert "TIFF" in _rejected(BAD["scan.jpg"][0]).message
    assert "WebP" in _rejected(BAD["photo.png"][0]).message
    assert "text" in _rejected(BAD["notes.jpg"][0]).message


def test_too_small_message() -> None:
    rejection = _rejected(_flat(200, 180))
    assert rejection.reason == Reason.TOO_SMALL
    assert rejection.message == "image is 200x180 px; each side must be at least 256 px"


def test_min_side_is_inclusive() -> None:
    _valid(_flat(256, 256, "PNG"))
    assert _rejected(_flat(255, 300, "PNG")).reason == Reason.TOO_SMALL


def test_upscale_small_accepts_small_but_not_absurd_images() -> None:
    limits = ImageLimits(max_bytes=6 * MB, upscale_small=True)
    small = _valid(_flat(100, 120), limits)
    assert small.upscaled and (small.width, small.height) == (100, 120)
    assert not _valid(_flat(300, 300), limits).upscaled
    assert _valid(_flat(16, 16, "PNG"), limits).upscaled
    absurd = _rejected(_flat(15, 300, "PNG"), limits)
    assert absurd.reason == Reason.TOO_SMALL
    assert "15x300" in absurd.message and "16 px" in absurd.message


def test_max_side_is_inclusive() -> None:
    _valid(_flat(10_240, 512))
    rejection = _rejected(_flat(512, 10_241))
    assert rejection.reason == Reason.DIMENSIONS_TOO_LARGE
    assert rejection.message == "image is 512x10241 px; each side must be at most 10,240 px"


def test_aspect_ratio_limit_is_inclusive() -> None:
    _valid(_flat(6400, 256))  # exactly 25:1
    rejection = _rejected(_flat(6401, 256))
    assert rejection.reason == Reason.BAD_ASPECT_RATIO
    assert "6401x256" in rejection.message and "25:1" in rejection.message


def test_sliver_is_bad_aspect_even_when_upscaling_is_allowed() -> None:
    data, _ = BAD["sliver.jpg"]
    limits = ImageLimits(max_bytes=6 * MB, upscale_small=True)
    assert _rejected(data, limits).reason == Reason.BAD_ASPECT_RATIO
    assert "8000x200" in _rejected(data).message


def test_pixel_budget_is_checked_on_the_header_before_any_decode() -> None:
    photo = samples.make_photo((400, 300), seed=1)
    rejection = _rejected(photo, ImageLimits(max_bytes=6 * MB, max_pixels=119_999))
    assert rejection.reason == Reason.TOO_MANY_PIXELS
    assert "400x300" in rejection.message
    _valid(photo, ImageLimits(max_bytes=6 * MB, max_pixels=120_000))
    # 9000x9000 is under Pillow's own bomb limit: this is our budget speaking
    assert "9000x9000" in _rejected(BAD["bomb_9000.png"][0]).message


def test_size_rules_need_no_pixel_data() -> None:
    # a header alone is refused for its size, without reaching a decoder ...
    assert _rejected(samples.bmp_header_only(12_000, 600)).reason == Reason.DIMENSIONS_TOO_LARGE
    assert _rejected(samples.bmp_header_only(100, 100)).reason == Reason.TOO_SMALL
    # ... and when the size is fine, the missing pixels are found by the integrity decode
    assert _rejected(samples.bmp_header_only(300, 300)).reason == Reason.CORRUPT


def test_pillow_bomb_warning_escalated_to_error_is_still_a_clean_rejection() -> None:
    bomb = samples.png_bomb(10_000, 10_000)  # between Pillow's warning and error thresholds
    limits = ImageLimits(max_bytes=6 * MB, max_pixels=200_000_000, max_side=20_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert _rejected(bomb, limits).reason == Reason.TOO_MANY_PIXELS


def test_pillow_bomb_error_maps_to_too_many_pixels_even_with_a_generous_budget() -> None:
    limits = ImageLimits(max_bytes=6 * MB, max_pixels=10**10, max_side=50_000)
    assert _rejected(BAD["bomb_20000.png"][0], limits).reason == Reason.TOO_MANY_PIXELS


# --- integrity -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_12mp() -> bytes:
    return samples.make_photo((4000, 3000), seed=2, quality=85)


@pytest.mark.parametrize("keep", [0.97, 0.6, 0.1])
def test_truncated_12mp_jpeg_is_corrupt_despite_reduced_scale_decode(
    photo_12mp: bytes, keep: float
) -> None:
    _valid(photo_12mp, ImageLimits(max_bytes=20 * MB))
    rejection = _rejected(photo_12mp[: int(len(photo_12mp) * keep)], ImageLimits(max_bytes=20 * MB))
    assert rejection.reason == Reason.CORRUPT
    assert "truncated" in rejection.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_truncation_is_caught_even_if_someone_enabled_load_truncated_images(
    monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    data = samples.make_photo((320, 320), seed=4, fmt=fmt)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for keep in (0.3, 0.95):
        rejection = _rejected(data[: int(len(data) * keep)])
        assert rejection.reason == Reason.CORRUPT
        assert "truncated" in rejection.message
    _valid(data)


def test_no_false_truncation_when_load_truncated_images_is_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for name, data in GOOD.items():
        assert isinstance(validate_image(data, TRAINING), ValidImage), name


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_truncated_lossless_formats_are_corrupt(fmt: str) -> None:
    data = samples.make_photo((320, 320), seed=4, fmt=fmt)
    rejection = _rejected(data[: len(data) // 2])
    assert rejection.reason == Reason.CORRUPT, rejection


def test_pillow_globals_are_untouched() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for data, _ in BAD.values():
        validate_image(data, TRAINING)
    for data in GOOD.values():
        validate_image(data, TRAINING)
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    assert after == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_thread_safe_results_match_sequential() -> None:
    corpus = [data for data, _ in BAD.values() if len(data) < MB] + list(GOOD.values())
    sequential = [validate_image(d, TRAINING) for d in corpus]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda d: validate_image(d, TRAINING), corpus * 4))
    assert parallel == sequential * 4


# --- orientation -----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_swaps_sides_for_5_to_8(orientation: int) -> None:
    data = _encode(Image.new("RGB", (400, 300), "gray"), "JPEG", exif=_exif(orientation))
    valid = _valid(data)
    assert valid.orientation == orientation
    expected = (300, 400) if orientation >= 5 else (400, 300)
    assert (valid.width, valid.height) == expected


def test_png_exif_orientation() -> None:
    data = _encode(Image.new("RGB", (400, 300), "gray"), "PNG", exif=_exif(8))
    valid = _valid(data)
    assert (valid.orientation, valid.width, valid.height) == (8, 300, 400)


@pytest.mark.parametrize("bad_value", [0, 9, 65535])
def test_out_of_range_orientation_counts_as_upright(bad_value: int) -> None:
    data = _encode(Image.new("RGB", (400, 300), "gray"), "JPEG", exif=_exif(bad_value))
    valid = _valid(data)
    assert (valid.orientation, valid.width, valid.height) == (1, 400, 300)


def test_orientation_applies_to_the_size_checks_messages() -> None:
    data = _encode(Image.new("RGB", (300, 200), "gray"), "JPEG", exif=_exif(6))
    assert _rejected(data).message == "image is 200x300 px; each side must be at least 256 px"


# --- open_oriented ---------------------------------------------------------------------------


def _halves(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue: shows which way an image was turned."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return img


@pytest.mark.parametrize(
    ("orientation", "red_at", "blue_at"),
    [
        (1, (50, 150), (350, 150)),
        (3, (350, 150), (50, 150)),  # 180 degrees
        (6, (150, 50), (150, 350)),  # stored left edge ends on top
        (8, (150, 350), (150, 50)),  # stored left edge ends at the bottom
    ],
)
def test_open_oriented_applies_exif_orientation(
    orientation: int, red_at: tuple[int, int], blue_at: tuple[int, int]
) -> None:
    data = _encode(_halves((400, 300)), "PNG", exif=_exif(orientation))
    img = open_oriented(data)
    assert img.mode == "RGB"
    assert img.size == ((300, 400) if orientation >= 5 else (400, 300))
    assert img.getpixel(red_at) == (255, 0, 0)
    assert img.getpixel(blue_at) == (0, 0, 255)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_open_oriented_gives_rgb_at_the_validated_size(name: str) -> None:
    valid = _valid(GOOD[name])
    img = open_oriented(GOOD[name])
    assert img.mode == "RGB"
    assert img.size == (valid.width, valid.height)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    values = np.array([[0, 0x00FF, 0x0100, 0x1234, 0x8000, 0xFFFF]], dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(BytesIO(data)).mode == "I;16"
    rgb = np.asarray(open_oriented(data))
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 0x12, 0x80, 0xFF]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_sixteen_bit_gradient_keeps_its_range() -> None:
    rgb = np.asarray(open_oriented(GOOD["gray16.png"]))
    assert rgb.min() == 0 and rgb.max() == 255
    assert len(np.unique(rgb)) > 200


def test_transparency_is_composited_on_white() -> None:
    palette = Image.new("P", (300, 300), 0)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    palette.paste(1, (0, 0, 150, 300))
    img = open_oriented(_encode(palette, "PNG", transparency=0))
    assert img.getpixel((10, 10)) == (200, 30, 30)
    assert img.getpixel((290, 10)) == (255, 255, 255)

    la = Image.new("LA", (300, 300), (0, 0))
    assert open_oriented(_encode(la, "PNG")).getpixel((5, 5)) == (255, 255, 255)
    rgba = Image.new("RGBA", (300, 300), (0, 0, 0, 128))
    r, g, b = open_oriented(_encode(rgba, "PNG")).getpixel((5, 5))
    assert r == g == b and 120 <= r <= 135


def test_cmyk_and_grey_become_faithful_rgb() -> None:
    cmyk = _encode(Image.new("RGB", (300, 300), (220, 40, 30)).convert("CMYK"), "JPEG", quality=95)
    r, g, b = open_oriented(cmyk).getpixel((150, 150))
    assert abs(r - 220) < 8 and abs(g - 40) < 8 and abs(b - 30) < 8
    grey = _encode(Image.new("L", (300, 300), 77), "PNG")
    assert open_oriented(grey).getpixel((1, 1)) == (77, 77, 77)


def test_gif_gives_the_first_frame() -> None:
    img = open_oriented(GOOD["animated.gif"])
    first = Image.open(BytesIO(GOOD["animated.gif"])).convert("RGB")
    assert img.tobytes() == first.tobytes()


@pytest.mark.parametrize(
    ("min_size", "expected"),
    [
        ((224, 224), (500, 375)),  # 1/8
        ((600, 400), (1000, 750)),  # 1/4
        ((1000, 1000), (2000, 1500)),  # 1/2
        ((3000, 3000), (4000, 3000)),  # full size: nothing smaller covers it
        (None, (4000, 3000)),
    ],
)
def test_draft_decodes_at_the_smallest_scale_that_covers_min_size(
    photo_12mp: bytes, min_size: tuple[int, int] | None, expected: tuple[int, int]
) -> None:
    img = open_oriented(photo_12mp, min_size)
    assert img.mode == "RGB"
    assert img.size == expected


def test_draft_covers_min_size_in_upright_terms_for_rotated_jpeg() -> None:
    data = samples.make_photo((4000, 3000), seed=3, quality=80, exif=_exif(6))
    for min_size, expected in [((224, 224), (375, 500)), ((400, 600), (750, 1000))]:
        img = open_oriented(data, min_size)
        assert img.size == expected
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]


def test_draft_is_a_no_op_for_lossless_formats() -> None:
    assert open_oriented(GOOD["image.bmp"], (32, 32)).size == (320, 320)


# --- never raises ----------------------------------------------------------------------------

FUZZ_LIMITS = ImageLimits(max_bytes=6 * MB, min_side=1, max_pixels=1_000_000)
MAGICS = [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"BM"]


def _seeds() -> list[bytes]:
    img = samples.photo_image((48, 40), seed=9)
    frames = [img, img.rotate(90), img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    ramp = np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 34
    png16 = _encode(Image.fromarray(ramp), "PNG")
    return [
        _encode(img, "JPEG", quality=80),
        _encode(img, "JPEG", progressive=True, exif=_exif(6)),
        _encode(img.convert("CMYK"), "JPEG"),
        _encode(img, "PNG"),
        _encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
        png16,
        gif.getvalue(),
        _encode(img, "BMP"),
        _encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "BMP"),
    ]


SEEDS = _seeds()


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite_header"]))
        # past the signature: breaking the magic bytes is what the arbitrary-bytes tests do
        pos = draw(st.integers(min(8, len(data)), max(8, len(data) - 1)))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:  # where sizes, offsets and lengths live
            header_pos = draw(st.integers(min(6, len(data)), max(6, min(64, len(data)))))
            data[header_pos : header_pos + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


def _check_contract(data: bytes, limits: ImageLimits) -> None:
    result = validate_image(data, limits)
    assert isinstance(result, ValidImage | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in CONTENT_REASONS
        assert isinstance(result.message, str) and result.message
        return
    assert result.format in ("JPEG", "PNG", "BMP", "GIF")
    assert 1 <= result.orientation <= 8 and result.frames >= 1
    assert result.width * result.height <= limits.max_pixels
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    # whatever validation accepts, the model side can decode
    img = open_oriented(data)
    assert img.mode == "RGB" and img.size == (result.width, result.height)


# Pillow warns (and carries on) about damaged EXIF blocks; expected noise for damaged input.
quiet_pil_warnings = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@quiet_pil_warnings
@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check_contract(data, TRAINING)
    _check_contract(data, FUZZ_LIMITS)


@quiet_pil_warnings
@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=1024))
def test_arbitrary_bytes_behind_a_valid_signature_never_raise(magic: bytes, rest: bytes) -> None:
    _check_contract(magic + rest, FUZZ_LIMITS)


@quiet_pil_warnings
@settings(FUZZ, max_examples=600)
@given(mutated_files())
def test_mutated_valid_files_never_raise(data: bytes) -> None:
    _check_contract(data, FUZZ_LIMITS)
