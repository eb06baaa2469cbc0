"""Object detection at serving time without torch: the input picture and the graph's answer.

The exported detector (training_job.detection_export) ends in its own box decoding and NMS, so
the ONNX graph already answers, for one ``1 x 3 x S x S`` picture:

* ``boxes``  ``(N, 4)`` float32: ``left, top, width, height`` as fractions of the picture,
* ``scores`` ``(N,)`` float32: probabilities, best first, all >= the manifest's score floor,
* ``labels`` ``(N,)`` int64: the tag's index in the manifest's ``tags`` order,

with ``N <= maxDetections``. This module holds what serving still needs: the preprocessing
(stretch the whole picture to ``S x S``, no crop: a centre crop would cut objects off, and with a
plain stretch normalised boxes on the input are normalised boxes on the picture, whatever its
aspect ratio), a defensive read of the outputs into predictions, and the manifest fields that
describe both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from visionpipe.boxes import NormalizedBox
from visionpipe.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessingSpec, normalize

DOMAIN_TYPE = "ObjectDetection"
RESIZE_STRETCH = "stretch"
BOX_FORMAT = "ltwh-normalized"  # left, top, width, height as fractions of the picture
OUTPUT_NAMES = ("boxes", "scores", "labels")
INPUT_NAME = "input"
SCORE_FLOOR = 0.01
MAX_DETECTIONS = 200


@dataclass(frozen=True)
class DetectionPreprocessing:
    """How to turn an upright RGB picture into the detector's input tensor: stretch (bilinear) to
    ``input_size`` x ``input_size``, scale to [0, 1], normalise with ``mean``/``std``, NCHW
    float32, batch of one."""

    input_size: int = 320
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_mode: str = RESIZE_STRETCH
    interpolation: str = "bilinear"
    input_name: str = INPUT_NAME

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.input_size, self.input_size)

    @property
    def min_decode_size(self) -> tuple[int, int]:
        return (self.input_size, self.input_size)

    def normalization(self) -> PreprocessingSpec:
        """The classification spec, used here only for its mean/std lookup table."""
        return PreprocessingSpec(resize=self.input_size, crop=self.input_size, mean=self.mean,
                                 std=self.std, input_name=self.input_name,
                                 input_shape=self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "resizeMode": self.resize_mode,
            "inputSize": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "channelOrder": "RGB",
            "layout": "NCHW",
            "inputName": self.input_name,
            "inputShape": list(self.input_shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectionPreprocessing:
        prep = cls(
            input_size=int(d["inputSize"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            resize_mode=d.get("resizeMode", RESIZE_STRETCH),
            interpolation=d.get("interpolation", "bilinear"),
            input_name=d.get("inputName", INPUT_NAME),
        )
        if prep.resize_mode != RESIZE_STRETCH:
            raise ValueError(f"unsupported resize mode {prep.resize_mode!r}")
        if prep.interpolation != "bilinear":
            raise ValueError(f"unsupported interpolation {prep.interpolation!r}")
        if d.get("channelOrder", "RGB") != "RGB" or d.get("layout", "NCHW") != "NCHW":
            raise ValueError("unsupported input layout")
        return prep


def stretch_picture(picture: Image.Image, prep: DetectionPreprocessing) -> np.ndarray:
    """An upright RGB picture -> the ``(S, S, 3)`` uint8 array the detector sees."""
    size = (prep.input_size, prep.input_size)
    img = picture.convert("RGB") if picture.mode != "RGB" else picture
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def to_detection_input(picture: Image.Image, prep: DetectionPreprocessing) -> np.ndarray:
    """An upright RGB picture -> the ``(1, 3, S, S)`` float32 input."""
    return normalize(stretch_picture(picture, prep)[None], prep.normalization())


@dataclass(frozen=True)
class BoxPrediction(NormalizedBox):
    """One detected object: the tag's index in the manifest's tags, its probability, its box."""

    tag_index: int
    probability: float
    left: float
    top: float
    width: float
    height: float


def read_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    num_tags: int,
    *,
    score_floor: float = SCORE_FLOOR,
    max_detections: int = MAX_DETECTIONS,
) -> list[BoxPrediction]:
    """The graph's outputs as predictions, best first.

    The graph already decodes, suppresses, sorts and caps; this re-checks it anyway (a model file
    is data, not trusted code): non-finite rows, unknown labels and boxes of no area are dropped,
    edges are clipped into the picture, the floor and the cap are applied again.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels_ = np.asarray(labels).reshape(-1)
    if not (len(b) == len(s) == len(labels_)):
        raise ValueError(f"outputs disagree on the number of boxes: {len(b)}, {len(s)}, "
                         f"{len(labels_)}")
    left = np.clip(b[:, 0], 0.0, 1.0)
    top = np.clip(b[:, 1], 0.0, 1.0)
    right = np.clip(b[:, 0] + b[:, 2], 0.0, 1.0)
    bottom = np.clip(b[:, 1] + b[:, 3], 0.0, 1.0)
    ok = (np.isfinite(b).all(axis=1) & np.isfinite(s) & (s >= score_floor)
          & (labels_ >= 0) & (labels_ < num_tags) & (right > left) & (bottom > top))
    keep = np.flatnonzero(ok)
    keep = keep[np.argsort(-s[keep], kind="stable")][:max_detections]
    return [BoxPrediction(int(labels_[i]), float(s[i]), float(left[i]), float(top[i]),
                          float(right[i] - left[i]), float(bottom[i] - top[i])) for i in keep]


def detection_manifest_fields(
    prep: DetectionPreprocessing,
    *,
    architecture: str,
    score_floor: float = SCORE_FLOOR,
    max_detections: int = MAX_DETECTIONS,
    nms_iou: float = 0.5,
    output_names: Sequence[str] = OUTPUT_NAMES,
) -> dict[str, Any]:
    """The manifest entries serving needs for a detector (beside the common ones: tags, onnx
    file/opset/sha256, metrics). Proposed layout: ``domainType`` at the top level,
    ``preprocessing`` replaced by the detection one, ``detection`` describing the outputs."""
    return {
        "domainType": DOMAIN_TYPE,
        "preprocessing": prep.to_dict(),
        "detection": {
            "architecture": architecture,
            "boxFormat": BOX_FORMAT,
            "outputs": {"boxes": output_names[0], "scores": output_names[1],
                        "labels": output_names[2]},
            "labelsAre": "tagIndex",  # index into the manifest's tags, no background class
            "scoreFloor": score_floor,
            "maxDetections": max_detections,
            "nmsIou": nms_iou,
            "postprocessInGraph": True,
        },
    }
