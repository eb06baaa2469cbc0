"""Why an input was refused: one machine-readable reason code and one human message.

Reason codes are a public contract (docs/ARCHITECTURE.md, "Image rules"): they appear in
quarantine ``.reason.json`` files, in prediction error results and in the API's per-image
statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    # image content (visionpipe.validation)
    EMPTY = "empty"
    TOO_LARGE = "too_large"  # more bytes than the limit
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT = "corrupt"
    TOO_MANY_PIXELS = "too_many_pixels"  # decompression-bomb budget
    TOO_SMALL = "too_small"  # a side under the minimum
    DIMENSIONS_TOO_LARGE = "dimensions_too_large"  # a side over the maximum
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    # where and how it arrived (visionpipe.pipeline.ingest)
    BAD_PATH = "bad_path"
    CONFLICTING_TAG = "conflicting_tag"
    UNKNOWN_PROJECT = "unknown_project"
    # prediction drop folder (visionpipe.pipeline.drop_predict)
    NO_PUBLISHED_ITERATION = "no_published_iteration"
    MODEL_UNAVAILABLE = "model_unavailable"
    # box annotations (visionpipe.annotations)
    BAD_ANNOTATION = "bad_annotation"  # unreadable, malformed, hostile or inconsistent
    BOX_OUT_OF_BOUNDS = "box_out_of_bounds"  # a box outside the image, infinite or huge
    UNKNOWN_IMAGE = "unknown_image"  # refers to an image the file does not declare
    TOO_MANY_REGIONS = "too_many_regions"  # over 300 regions on one image


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": str(self.reason), "message": self.message}


class Rejected(Exception):
    """Raised by library code to refuse an input; carries the :class:`Rejection`."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.rejection = Rejection(reason, message)
