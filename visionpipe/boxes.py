"""Custom Vision's one box shape, shared by the boxes people bring and the boxes a model answers.

A box is ``left, top, width, height`` as fractions of the image, from the top-left corner
(Custom Vision's ``BoundingBox`` / ``Region``). An annotation's region
(:class:`visionpipe.annotations.Region`) and a detector's answer
(:class:`visionpipe.detection_decode.BoxPrediction`) are the same box with different company (a
tag name; a tag index and a probability), so the box's behaviour lives here once. It sits below
both modules (they are independent core modules that may not import each other).
"""

from __future__ import annotations


class NormalizedBox:
    """Mixin for frozen dataclasses with ``left``, ``top``, ``width`` and ``height`` fields."""

    __slots__ = ()
    left: float
    top: float
    width: float
    height: float

    def bounding_box(self) -> dict[str, float]:
        """Custom Vision's ``boundingBox`` / region shape."""
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}

    @property
    def corners(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` as fractions of the image."""
        return (self.left, self.top, self.left + self.width, self.top + self.height)
