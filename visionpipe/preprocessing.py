"""The one preprocessing truth shared by training (evaluation, parity check) and serving.

The training job writes a :class:`PreprocessingSpec` into the iteration manifest; serving reads it
from there and never re-declares it, so the two cannot drift apart. The numpy implementation here
is what both sides run on evaluation/serving images (training-time augmentation is the training
job's own business).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessingSpec:
    """How to turn an RGB picture into the model's input tensor.

    Resize the shorter side to ``resize`` (bilinear), centre-crop ``crop`` x ``crop``, scale to
    [0, 1], normalise with ``mean``/``std`` per channel, lay out as NCHW float32.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    input_name: str = "input"
    input_shape: tuple[int, ...] = field(default=(-1, 3, 224, 224))  # -1: dynamic batch axis

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "resize": d["resize"],
            "crop": d["crop"],
            "mean": list(d["mean"]),
            "std": list(d["std"]),
            "interpolation": d["interpolation"],
            "channelOrder": d["channel_order"],
            "layout": d["layout"],
            "inputName": d["input_name"],
            "inputShape": list(d["input_shape"]),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessingSpec:
        spec = cls(
            resize=int(d["resize"]),
            crop=int(d["crop"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            interpolation=d.get("interpolation", "bilinear"),
            channel_order=d.get("channelOrder", "RGB"),
            layout=d.get("layout", "NCHW"),
            input_name=d.get("inputName", "input"),
            input_shape=tuple(int(x) for x in d.get("inputShape", (-1, 3, d["crop"], d["crop"]))),
        )
        if spec.channel_order != "RGB" or spec.layout != "NCHW":
            raise ValueError(f"unsupported input layout {spec.channel_order}/{spec.layout}")
        if spec.interpolation != "bilinear":
            raise ValueError(f"unsupported interpolation {spec.interpolation!r}")
        return spec

    @property
    def min_decode_size(self) -> tuple[int, int]:
        """The smallest decoded size that still gives full-resolution input (for JPEG draft)."""
        return (self.resize, self.resize)


def resize_and_crop(img: Image.Image, spec: PreprocessingSpec) -> Image.Image:
    """Resize the shorter side to ``spec.resize`` and centre-crop ``spec.crop`` (torchvision's
    ``Resize(resize)`` + ``CenterCrop(crop)`` semantics, including its rounding)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = spec.resize, int(spec.resize * h / w)
    else:
        new_w, new_h = int(spec.resize * w / h), spec.resize
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left = int(round((new_w - spec.crop) / 2.0))
    top = int(round((new_h - spec.crop) / 2.0))
    return img.crop((left, top, left + spec.crop, top + spec.crop))


def crop_box(size: tuple[int, int], spec: PreprocessingSpec) -> tuple[float, float, float, float]:
    """The region of a ``size`` picture that ``Resize(resize)`` + ``CenterCrop(crop)`` keeps, in
    source pixels (same rounding as :func:`resize_and_crop`)."""
    w, h = size
    if w <= h:
        new_w, new_h = spec.resize, int(spec.resize * h / w)
    else:
        new_w, new_h = int(spec.resize * w / h), spec.resize
    left = int(round((new_w - spec.crop) / 2.0))
    top = int(round((new_h - spec.crop) / 2.0))
    sx, sy = w / new_w, h / new_h
    return (left * sx, top * sy, (left + spec.crop) * sx, (top + spec.crop) * sy)


def resize_crop_fast(img: Image.Image, spec: PreprocessingSpec) -> Image.Image:
    """:func:`resize_and_crop` in one resampling pass over the kept region only.

    Pillow's ``resize(box=...)`` keeps the full-image filter scale and sample positions (and reads
    source pixels just outside the box), so the result equals resize-then-crop up to float
    rounding (at most 1 level on a handful of pixels) at about half the cost: the discarded
    margins are never computed.
    """
    return img.resize((spec.crop, spec.crop), Image.Resampling.BILINEAR,
                      box=crop_box(img.size, spec))


@lru_cache(maxsize=32)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalised value of every 8-bit level, per channel."""
    scale = np.asarray([1.0 / (255.0 * s) for s in std], dtype=np.float32)
    offset = np.asarray([m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32)
    levels = np.arange(256, dtype=np.float32)
    table = levels[None, :] * scale[:, None] - offset[:, None]
    table.setflags(write=False)
    return table


def normalize_into(out: np.ndarray, hwc_uint8: np.ndarray, spec: PreprocessingSpec) -> None:
    """Write one (H, W, 3) uint8 picture into ``out`` (3, H, W) float32, normalised.

    A per-channel table lookup: the same float32 arithmetic as :func:`normalize` done once per
    level instead of once per pixel, and the NCHW transpose for free (about 3-4x cheaper).
    """
    table = _lookup_table(spec.mean, spec.std)
    planes = hwc_uint8.transpose(2, 0, 1)
    for c in range(3):
        np.take(table[c], planes[c], out=out[c])


def normalize(batch_hwc_uint8: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, scaled and normalised per channel."""
    n, h, w, _ = batch_hwc_uint8.shape
    out = np.empty((n, 3, h, w), dtype=np.float32)
    for i in range(n):
        normalize_into(out[i], batch_hwc_uint8[i], spec)
    return out


def to_input(images: list[Image.Image], spec: PreprocessingSpec) -> np.ndarray:
    """RGB PIL images -> the model's input batch."""
    crops = [np.asarray(resize_and_crop(im.convert("RGB"), spec), dtype=np.uint8) for im in images]
    return normalize(np.stack(crops), spec)


def prepare_image(data: bytes, spec: PreprocessingSpec) -> np.ndarray:
    """Validated image bytes -> the (crop, crop, 3) uint8 picture the model sees (serving path).

    A JPEG is decoded at the smallest DCT scale whose result still covers ``resize`` on the
    shorter side (libjpeg skips most of the work), a much larger picture of another format is
    shrunk by an integer factor before any conversion, then it is resized and cropped in one pass,
    all inside one decode slot (the full-size pixels never outlive it). EXIF orientation is applied
    first, as everywhere. The prediction routes do not come here: they take the picture that
    validation decoded (:func:`crop_picture`).
    """
    from visionpipe.imaging import decode_for_model, decode_slot

    with decode_slot():
        return crop_picture(decode_for_model(data, spec.min_decode_size), spec)


def crop_picture(picture: Image.Image, spec: PreprocessingSpec) -> np.ndarray:
    """An upright RGB picture -> the (crop, crop, 3) uint8 array the model sees."""
    return np.asarray(resize_crop_fast(picture, spec), dtype=np.uint8)
