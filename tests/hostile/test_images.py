"""Hostile images on the prediction path: decoded once, within a pixel budget, a few at a time.

A 180 KB PNG of 8000 x 8000 px costs 244 MB to decode; the old path decoded it twice (once to
validate, once for the model) and as many at once as requests arrived. Decodes are counted and
their overlap measured by wrapping Pillow's own entry points (third-party code, passed through,
not replaced); requests go over real HTTP to the local host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.conftest import TEST_PREDICTION_KEY
from tests.model_factory import color_image
from visionpipe import imaging
from visionpipe.imaging import open_oriented
from visionpipe.preprocessing import PreprocessingSpec, crop_picture, resize_crop_fast
from visionpipe.settings import DEFAULT_DECODE_CONCURRENCY, MB, ImageLimits
from visionpipe.stores.label_store import Project
from visionpipe.stores.registry import Iteration
from visionpipe.validation import DecodedImage, decode_valid_image

PREDICTION = ImageLimits(max_bytes=4 * MB, max_decoded_pixels=4096 * 4096)


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _predict(base: str, project_id: str, data: bytes) -> httpx.Response:
    url = f"{base}/customvision/v3.1/prediction/{project_id}/classify/iterations/prod/image/nostore"
    return httpx.post(url, content=data, timeout=120, headers={
        "Prediction-Key": TEST_PREDICTION_KEY, "Content-Type": "application/octet-stream"})


@pytest.fixture
def decoders(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every Pillow decoder created (one per decode of a single-tile image), by codec name."""
    made: list[str] = []
    real = Image._getdecoder
    lock = threading.Lock()

    def counting(mode: str, decoder_name: str, args: Any, extra: Any = ()) -> Any:
        with lock:
            made.append(decoder_name)
        return real(mode, decoder_name, args, extra)

    monkeypatch.setattr(Image, "_getdecoder", counting)
    yield made


# --- decode once ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF"])
def test_a_prediction_request_decodes_its_image_once(
    local_host: str, project: Project, published: Iteration, decoders: list[str], fmt: str
) -> None:
    data = color_image("red", size=(640, 480), fmt=fmt)
    _predict(local_host, project.id, color_image("green")).raise_for_status()  # model loaded
    decoders.clear()
    response = _predict(local_host, project.id, data)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["tagName"] == "red"
    assert len(decoders) == 1, decoders


def test_the_validated_picture_is_the_model_picture() -> None:
    """The one decode gives what the separate model decode gave (small images: exactly)."""
    spec = PreprocessingSpec()
    for fmt in ("PNG", "JPEG"):
        data = color_image("blue", size=(1024, 768), fmt=fmt, seed=4)
        decoded = decode_valid_image(data, PREDICTION, spec.min_decode_size)
        assert isinstance(decoded, DecodedImage), decoded
        reference = resize_crop_fast(open_oriented(data, spec.min_decode_size), spec)
        np.testing.assert_array_equal(crop_picture(decoded.picture, spec), np.asarray(reference))


# --- the pixel budget ----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "make"), [
    ("8000x8000 flat PNG", lambda: _encode(Image.new("RGB", (8000, 8000), (200, 30, 40)), "PNG")),
    ("5000x4000 palette PNG", lambda: _encode(Image.new("P", (5000, 4000), 3), "PNG")),
    ("8000x8000 progressive JPEG", lambda: _encode(
        Image.new("RGB", (8000, 8000), (200, 30, 40)), "JPEG", quality=90, progressive=True)),
    ("6000x6000 GIF", lambda: _encode(Image.new("P", (6000, 6000), 1), "GIF")),
])
def test_images_over_the_prediction_pixel_budget_are_refused_before_decoding(
    local_host: str, project: Project, published: Iteration, decoders: list[str], name: str,
    make: Callable[[], bytes],
) -> None:
    data = make()
    assert len(data) < 4 * MB, name
    decoders.clear()
    response = _predict(local_host, project.id, data)
    assert response.status_code == 400, (name, response.text)
    body = response.json()
    assert body["code"] == "BadRequestImageDimensions"
    assert body["message"].endswith("(too_many_pixels)"), body
    assert decoders == [], decoders  # refused from the header: nothing was decoded


def test_a_huge_baseline_jpeg_is_decoded_at_reduced_scale_and_accepted(
    local_host: str, project: Project, published: Iteration
) -> None:
    """The budget counts what the decode holds: an 8000 px baseline JPEG decodes at 1/8 scale,
    so Custom Vision's 10,240 px side limit still means something; the same picture as a
    progressive JPEG (whole-image coefficient buffers) or a PNG is refused."""
    red = Image.new("RGB", (8000, 8000), (220, 30, 40))
    baseline = _encode(red, "JPEG", quality=90)
    accepted = _predict(local_host, project.id, baseline)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["predictions"][0]["tagName"] == "red"
    refused = _predict(local_host, project.id, _encode(red, "PNG"))
    assert refused.status_code == 400 and "too_many_pixels" in refused.json()["message"]


def test_the_budget_is_inclusive_and_applies_to_prediction_limits_only() -> None:
    spec = PreprocessingSpec()
    at_budget = _encode(Image.new("P", (4096, 4096), 2), "PNG")
    over = _encode(Image.new("P", (4097, 4096), 2), "PNG")
    assert isinstance(decode_valid_image(at_budget, PREDICTION, spec.min_decode_size),
                      DecodedImage)
    refused = decode_valid_image(over, PREDICTION, spec.min_decode_size)
    assert not isinstance(refused, DecodedImage) and refused.reason == "too_many_pixels"
    training = ImageLimits(max_bytes=6 * MB)  # no decode budget: the 64 MP rule alone
    assert isinstance(decode_valid_image(over, training, spec.min_decode_size), DecodedImage)


# --- bounded concurrency -------------------------------------------------------------------------
def test_concurrent_requests_decode_at_most_decode_concurrency_images_at_once(
    local_host: str, project: Project, published: Iteration, monkeypatch: pytest.MonkeyPatch
) -> None:
    active = 0
    most = 0
    lock = threading.Lock()
    real_load = ImageFile.ImageFile.load

    def watched_load(self: ImageFile.ImageFile) -> Any:
        nonlocal active, most
        if not self.tile:  # already loaded: no decode happens
            return real_load(self)
        with lock:
            active += 1
            most = max(most, active)
        try:
            return real_load(self)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(ImageFile.ImageFile, "load", watched_load)
    _predict(local_host, project.id, color_image("green")).raise_for_status()  # model loaded
    images = [_encode(Image.new("RGB", (4000, 4000), (200 - 20 * i, 30, 40)), "PNG")
              for i in range(8)]
    barrier = threading.Barrier(len(images))

    def one(data: bytes) -> int:
        barrier.wait()
        return _predict(local_host, project.id, data).status_code

    with ThreadPoolExecutor(len(images)) as pool:
        statuses = list(pool.map(one, images))
    assert statuses == [200] * len(images)
    assert 1 <= most <= DEFAULT_DECODE_CONCURRENCY, most


def test_decode_slots_are_reentrant_within_a_thread() -> None:
    """The serving path holds a slot around validation, which takes one too: no deadlock even
    with a single slot."""
    done = threading.Event()

    def nested() -> None:
        for _ in range(DEFAULT_DECODE_CONCURRENCY + 1):
            with imaging.decode_slot(), imaging.decode_slot():
                pass
        done.set()

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert done.is_set()


# --- shrinking before converting -----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["P", "1", "I;16", "RGBA"])
def test_large_pictures_are_shrunk_before_conversion_with_the_same_result(mode: str) -> None:
    """Converting a 16 MP palette image to RGBA whole takes three 64 MB copies; the shrink
    happens first (in strips for modes Pillow cannot reduce) and changes nothing visible."""
    rng = np.random.default_rng(1)
    size = (1800, 1500)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 4), dtype=np.uint8), "RGBA")
        img = img.convert(mode) if mode != "RGBA" else img
    params: dict[str, Any] = {"transparency": 5} if mode == "P" else {}
    data = _encode(img, "PNG", **params)
    spec = PreprocessingSpec(resize=128, crop=112, input_shape=(-1, 3, 112, 112))
    noisy = ImageLimits(max_bytes=32 * MB, max_decoded_pixels=PREDICTION.max_decoded_pixels)
    decoded = decode_valid_image(data, noisy, spec.min_decode_size)
    assert isinstance(decoded, DecodedImage), decoded
    assert min(decoded.picture.size) < min(size) // 2  # shrunk
    ours = crop_picture(decoded.picture, spec).astype(np.int16)
    full = np.asarray(resize_crop_fast(open_oriented(data), spec), np.int16)
    assert np.abs(ours - full).mean() < 2.0
