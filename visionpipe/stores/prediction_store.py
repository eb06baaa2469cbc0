"""The prediction store: one row per stored prediction in the ``predictions`` table.

Custom Vision keeps what its prediction endpoint saw so that people can query it and turn good
examples into training images ("suggested" / active learning); the later API queries read these
rows. PartitionKey = project id, RowKey = prediction id. A drop-folder prediction's id is derived
from the blob path and ETag, so a redelivered event writes the same row again (an upsert), never
a second one.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from visionpipe import names, tag_types
from visionpipe.storage import Storage

#: How many (probability, tag) pairs a row keeps, most probable first; a Table property holds
#: 64 KiB, and ranking queries only ever look at the top of the list.
STORED_PREDICTIONS = 50

SOURCE_DROP = "drop"  # predict-images drop folder
SOURCE_API = "api"  # HTTP /classify/.../image


def _box(raw: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(raw, dict):
        return None
    return (float(raw["left"]), float(raw["top"]), float(raw["width"]), float(raw["height"]))


REGULAR_TAG_TYPE = tag_types.REGULAR


@dataclass(frozen=True)
class TagProbability:
    probability: float
    tag_id: str
    tag_name: str
    # An object detection prediction's box: left, top, width, height as fractions of the image.
    bounding_box: tuple[float, float, float, float] | None = None
    # Custom Vision's ``tagType`` (Regular / Negative), from the iteration's manifest.
    tag_type: str = REGULAR_TAG_TYPE

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"probability": self.probability, "tagId": self.tag_id,
                                "tagName": self.tag_name, "tagType": self.tag_type}
        if self.bounding_box is not None:
            left, top, width, height = self.bounding_box
            body["boundingBox"] = {"left": left, "top": top, "width": width, "height": height}
        return body


@dataclass(frozen=True)
class StoredPrediction:
    id: str
    project_id: str
    iteration_id: str
    created: datetime
    predictions: tuple[TagProbability, ...]
    source: str
    publish_name: str = ""
    blob_path: str = ""  # "{container}/{path}" of the image, when it is kept in storage
    image_sha256: str = ""
    application: str = ""

    def to_entity(self) -> dict[str, Any]:
        top = self.predictions[:STORED_PREDICTIONS]
        best = top[0] if top else None
        return {
            "PartitionKey": self.project_id,
            "RowKey": self.id,
            "iterationId": self.iteration_id,
            "created": self.created,
            "predictions": json.dumps([p.to_dict() for p in top]),
            "topTagId": best.tag_id if best else "",
            "topTagName": best.tag_name if best else "",
            "topProbability": best.probability if best else 0.0,
            "source": self.source,
            "publishName": self.publish_name,
            "blobPath": self.blob_path,
            "imageSha256": self.image_sha256,
            "application": self.application,
        }

    @classmethod
    def from_entity(cls, e: dict[str, Any]) -> StoredPrediction:
        return cls(
            id=e["RowKey"],
            project_id=e["PartitionKey"],
            iteration_id=e["iterationId"],
            created=e["created"],
            predictions=tuple(
                TagProbability(float(p["probability"]), p["tagId"], p["tagName"],
                               _box(p.get("boundingBox")),
                               tag_types.stored_or_regular(p.get("tagType")))
                for p in json.loads(e.get("predictions") or "[]")
            ),
            source=e.get("source", ""),
            publish_name=e.get("publishName", ""),
            blob_path=e.get("blobPath", ""),
            image_sha256=e.get("imageSha256", ""),
            application=e.get("application", ""),
        )


class PredictionStore:
    def __init__(self, storage: Storage) -> None:
        self._table = storage.table(names.PREDICTIONS_TABLE)

    def record(self, prediction: StoredPrediction) -> None:
        """Write (or rewrite, for a redelivered event) one prediction row."""
        self._table.upsert_entity(prediction.to_entity(), mode=UpdateMode.REPLACE)

    def get(self, project_id: str, prediction_id: str) -> StoredPrediction | None:
        try:
            return StoredPrediction.from_entity(self._table.get_entity(project_id, prediction_id))
        except ResourceNotFoundError:
            return None

    def delete_project(self, project_id: str) -> int:
        """Delete every stored prediction of a project; how many rows there were."""
        rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": project_id},
                                          select=["PartitionKey", "RowKey"])
        keys = [r["RowKey"] for r in rows]
        for key in keys:
            with suppress(ResourceNotFoundError):
                self._table.delete_entity(project_id, key)
        return len(keys)

    def list(self, project_id: str) -> list[StoredPrediction]:
        rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": project_id})
        return sorted((StoredPrediction.from_entity(r) for r in rows), key=lambda p: p.created)
