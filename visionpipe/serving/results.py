"""Custom Vision's ``ImagePrediction``: what a classification or detection answers, on every
path.

The HTTP prediction routes, quick test and the drop folder all answer in this one shape, and the
prediction store keeps it (``stored``), so a prediction reads the same wherever it was made.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from visionpipe.serving.core import Classification, Detection
from visionpipe.stores.prediction_store import StoredPrediction, TagProbability
from visionpipe.timestamps import now_iso


@dataclass(frozen=True)
class PredictionResult:
    """Custom Vision's ``ImagePrediction``."""

    id: str
    project_id: str
    iteration_id: str
    created: datetime
    predictions: tuple[TagProbability, ...]

    @classmethod
    def from_classification(cls, c: Classification, prediction_id: str | None = None,
                            created: datetime | None = None) -> PredictionResult:
        return cls(
            id=prediction_id or str(uuid.uuid4()),
            project_id=c.project_id,
            iteration_id=c.iteration_id,
            created=created or datetime.now(UTC),
            predictions=tuple(TagProbability(p, tag_id, name, tag_type=c.tag_type(tag_id))
                              for p, tag_id, name in c.ranked()),
        )

    @classmethod
    def from_detection(cls, d: Detection, prediction_id: str | None = None,
                       created: datetime | None = None) -> PredictionResult:
        """A detector's ``ImagePrediction``: boxes, best first (the HTTP routes and the drop
        folder both answer this one shape)."""
        return cls(
            id=prediction_id or str(uuid.uuid4()),
            project_id=d.project_id,
            iteration_id=d.iteration_id,
            created=created or datetime.now(UTC),
            predictions=tuple(
                TagProbability(box.probability, tag_id, tag_name,
                               (box.left, box.top, box.width, box.height), d.tag_type(tag_id))
                for box, tag_id, tag_name in d.ranked()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project": self.project_id,
            "iteration": self.iteration_id,
            "created": now_iso(self.created),
            "predictions": [p.to_dict() for p in self.predictions],
        }

    def stored(self, source: str, **extra: str) -> StoredPrediction:
        return StoredPrediction(self.id, self.project_id, self.iteration_id, self.created,
                                self.predictions, source, **extra)
