"""Iterations as Custom Vision's training API shows them: list, get, rename, delete,
performance at any threshold, per-image performance (exports: :mod:`visionpipe.api.export`).

Performance is recomputed from the raw test-set predictions the training job keeps in
``metrics.json`` (:func:`visionpipe.metrics.recompute`), so ``?threshold=0.8`` answers exactly what
the model does at 0.8, with the same code that produced the 0.5 figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from visionpipe import names
from visionpipe.api import errors as api_errors
from visionpipe.api.context import ContextView
from visionpipe.manifest import (
    MANIFEST_FILE,
    METRICS_FILE,
    REGULAR_TAG_TYPE,
    TagOutput,
    overall_section,
)
from visionpipe.messages import EXPORT_FLAVORS
from visionpipe.stores.label_store import Project
from visionpipe.stores.registry import Iteration, IterationStatus, NotFound, Publications
from visionpipe.timestamps import iso

# What a trained iteration exports to (visionpipe.api.export converts and serves them).
EXPORT_PLATFORMS = tuple(EXPORT_FLAVORS)
MAX_TAKE = 256


@dataclass(frozen=True)
class IterationApi(ContextView):
    """The iteration routes over one request's :class:`RequestContext` (a thin view: the
    context holds the stores and the lookups, :class:`ContextView` hands them on)."""

    # --- shapes ---------------------------------------------------------------------------------
    def to_json(self, iteration: Iteration, project: Project | None = None,
                pubs: Publications | None = None) -> dict[str, Any]:
        """Custom Vision's ``Iteration`` object."""
        project = project or self.project(iteration.project_id)
        pubs = pubs if pubs is not None else self.publications(iteration.project_id)
        publication = pubs.for_iteration(iteration.id)
        completed = iteration.status == IterationStatus.COMPLETED
        return {
            "id": iteration.id,
            "name": iteration.name,
            "status": str(iteration.status),
            "created": iso(iteration.created),
            "lastModified": iso(iteration.last_modified),
            "trainedAt": iso(iteration.trained_at),
            "projectId": iteration.project_id,
            "exportable": completed,
            "exportableTo": list(EXPORT_PLATFORMS) if completed else [],
            "domainId": project.domain_id,
            "classificationType": iteration.classification_type,
            "trainingType": iteration.training_type,
            "reservedBudgetInHours": iteration.reserved_budget_in_hours,
            "trainingTimeInMinutes": training_minutes(iteration),
            "publishName": publication.publish_name if publication else "",
            "originalPublishResourceId": publication.prediction_resource_id if publication
            else "",
            "customBaseModelInfo": None,
            "trainingErrorDetails": iteration.failure_reason or None,
        }

    # --- routes ---------------------------------------------------------------------------------
    def list(self, project_id: str) -> list[dict[str, Any]]:
        project = self.project(project_id)
        pubs = self.publications(project_id)
        iterations = self.registry.list_iterations(project_id)
        # The service lists the newest first.
        return [self.to_json(i, project, pubs) for i in reversed(iterations)]

    def get(self, project_id: str, iteration_id: str) -> dict[str, Any]:
        return self.to_json(self.iteration(project_id, iteration_id))

    def update(self, project_id: str, iteration_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: only the name can change (as in the service)."""
        iteration = self.iteration(project_id, iteration_id)
        name = body.get("name")
        if name is None:
            return self.to_json(iteration)
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise api_errors.bad_request("BadRequestIterationName",
                                         "name must be 1-256 characters")
        name = name.strip()
        others = (i for i in self.registry.list_iterations(project_id) if i.id != iteration_id)
        if any(i.name.casefold() == name.casefold() for i in others):
            raise api_errors.bad_request("BadRequestIterationNameNotUnique",
                                         f"another iteration is already named {name!r}")
        return self.to_json(self.registry.update_iteration(project_id, iteration_id, name=name))

    def delete(self, project_id: str, iteration_id: str) -> None:
        """Refused while published (the service's ``BadRequestIterationIsPublished``)."""
        self.iteration(project_id, iteration_id)
        if self.publications(project_id).for_iteration(iteration_id) is not None:
            raise api_errors.bad_request(
                "BadRequestIterationIsPublished",
                "the iteration is published; unpublish it before deleting it")
        self.registry.delete_iteration(project_id, iteration_id)
        from contextlib import suppress

        from azure.core.exceptions import ResourceNotFoundError

        with suppress(ResourceNotFoundError):
            self.storage.container(names.DATASETS).delete_blob(f"{project_id}/{iteration_id}.jsonl")

    # --- performance ----------------------------------------------------------------------------
    def metrics_document(self, iteration: Iteration) -> dict[str, Any] | None:
        try:
            raw = self.registry.download_artifact(iteration.project_id, iteration.id,
                                                  METRICS_FILE)
            doc = json.loads(raw)
        except (NotFound, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def tag_types(self, iteration: Iteration) -> dict[str, str]:
        """Tag id -> type (Regular / Negative) as the iteration's manifest recorded it when it
        was trained; empty when the manifest is missing or unreadable (every tag then answers
        Regular, as a manifest from before tags had types does)."""
        try:
            raw = json.loads(self.registry.download_artifact(iteration.project_id, iteration.id,
                                                             MANIFEST_FILE))
            return {t.id: t.type for t in (TagOutput.from_dict(d) for d in raw["tags"])}
        except (NotFound, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def performance(self, project_id: str, iteration_id: str, threshold: float = 0.5,
                    overlap_threshold: float = 0.5) -> dict[str, Any]:
        """Custom Vision's ``IterationPerformance`` at ``threshold`` (and, for an object
        detector, ``overlap_threshold``: the IoU a box needs with a true box to count)."""
        from visionpipe.metrics import DETECTIONS, recompute, recompute_detection

        for name, value in (("threshold", threshold), ("overlapThreshold", overlap_threshold)):
            if not 0.0 <= value <= 1.0 or math.isnan(value):
                raise api_errors.bad_request("BadRequestInvalid", f"{name} must be within [0, 1]")
        iteration = self.trained(project_id, iteration_id)
        doc = self.metrics_document(iteration)
        if doc is not None and isinstance(doc.get(DETECTIONS), dict):
            metrics = recompute_detection(doc, threshold, overlap_threshold)
        elif doc is not None and "predictions" in doc:
            metrics = recompute(doc, threshold)
        elif iteration.metrics:  # no raw predictions kept: the figures recorded at training time
            metrics = _flat(iteration.metrics)
        else:
            raise no_performance()
        return {
            "perTagPerformance": [
                {
                    "id": t["id"],
                    "name": t["name"],
                    "precision": float(t.get("precision", 0.0)),
                    "precisionStdDeviation": float(t.get("precisionStdDeviation", 0.0)),
                    "recall": float(t.get("recall", 0.0)),
                    "recallStdDeviation": float(t.get("recallStdDeviation", 0.0)),
                    "averagePrecision": float(t.get("averagePrecision", 0.0)),
                }
                for t in metrics.get("perTag", [])
            ],
            "precision": float(metrics.get("precision", 0.0)),
            "precisionStdDeviation": float(metrics.get("precisionStdDeviation", 0.0)),
            "recall": float(metrics.get("recall", 0.0)),
            "recallStdDeviation": float(metrics.get("recallStdDeviation", 0.0)),
            "averagePrecision": float(metrics.get("averagePrecision", 0.0)),
        }

    def _image_performances(self, project_id: str, iteration_id: str,
                            tag_ids: list[str]) -> list[dict[str, Any]]:
        from visionpipe.metrics import DETECTIONS

        iteration = self.trained(project_id, iteration_id)
        doc = self.metrics_document(iteration)
        type_of = self.tag_types(iteration) if doc is not None else {}
        if doc is not None and isinstance(doc.get(DETECTIONS), dict):
            return self._detection_image_performances(project_id, doc[DETECTIONS], tag_ids,
                                                      type_of)
        if doc is None or "predictions" not in doc:
            return []
        predictions = doc["predictions"]
        column_ids = list(predictions["tagIds"])
        column_names = list(predictions.get("tagNames") or column_ids)
        name_of = dict(zip(column_ids, column_names, strict=False))
        wanted = set(tag_ids)
        rows: list[dict[str, Any]] = []
        for sample in predictions.get("samples", []):
            labels = list(sample.get("labels", []))
            if wanted and not wanted.intersection(labels):
                continue
            ranked = sorted(zip(sample["probabilities"], column_ids, strict=False),
                            key=lambda pt: -pt[0])
            rows.append(self._image_row(project_id, sample, name_of, labels, None,
                                        [(float(p), t, None) for p, t in ranked], type_of))
        return rows

    def _detection_image_performances(self, project_id: str, document: dict[str, Any],
                                      tag_ids: list[str], type_of: dict[str, str]
                                      ) -> list[dict[str, Any]]:
        """An object detector's test images: ``regions`` the true boxes it was scored against,
        ``predictions`` every box it answered (down to the detector's floor, best first)."""
        column_ids = list(document["tagIds"])
        name_of = dict(zip(column_ids, document.get("tagNames") or column_ids, strict=False))
        wanted = set(tag_ids)
        rows: list[dict[str, Any]] = []
        for sample in document.get("samples", []):
            truth = [(column_ids[int(r[0])], tuple(map(float, r[1:5])))
                     for r in sample.get("regions", [])]
            labels = list(dict.fromkeys(t for t, _ in truth))
            if wanted and not wanted.intersection(labels):
                continue
            boxes = [(float(p[1]), column_ids[int(p[0])], tuple(map(float, p[2:6])))
                     for p in sorted(sample.get("predictions", []), key=lambda p: -p[1])]
            rows.append(self._image_row(project_id, sample, name_of, labels, truth, boxes,
                                        type_of))
        return rows

    def _image_row(self, project_id: str, sample: dict[str, Any], name_of: dict[str, str],
                   labels: list[str], regions: list[tuple[str, tuple[float, ...]]] | None,
                   predictions: list[tuple[float, str, tuple[float, ...] | None]],
                   type_of: dict[str, str]) -> dict[str, Any]:
        """Custom Vision's ``ImagePerformance``: the test image as the label store knows it now
        (created, size, region ids) with what the iteration was scored on and answered."""
        record = self.label_store.get_image(project_id, sample.get("sha256", ""))
        created = iso(record.created) if record else None
        region_ids = {(g.tag_id, *(round(v, 4) for v in g.box)): g.region_id
                      for g in (record.regions if record else ())}

        def ltwh(box: tuple[float, ...]) -> dict[str, float]:
            return dict(zip(("left", "top", "width", "height"), box, strict=True))

        return {
            "id": sample["imageId"],
            "created": created,
            "width": record.width if record else 0,
            "height": record.height if record else 0,
            "imageUri": None,
            "thumbnailUri": None,
            "tags": [{"tagId": t, "tagName": name_of.get(t, t), "created": created}
                     for t in labels],
            "regions": None if regions is None else [
                {"regionId": region_ids.get((t, *(round(v, 4) for v in box)), ""),
                 "tagName": name_of.get(t, t), "created": created, "tagId": t, **ltwh(box)}
                for t, box in regions],
            "predictions": [
                {"probability": p, "tagId": t, "tagName": name_of.get(t, t),
                 "boundingBox": ltwh(box) if box is not None else None,
                 "tagType": type_of.get(t, REGULAR_TAG_TYPE)}
                for p, t, box in predictions],
        }

    def image_performances(self, project_id: str, iteration_id: str, tag_ids: list[str],
                           order_by: str | None, take: int, skip: int) -> list[dict[str, Any]]:
        rows = self._image_performances(project_id, iteration_id, tag_ids)
        rows.sort(key=lambda r: r["created"] or "", reverse=(order_by or "Newest") != "Oldest")
        take = max(0, min(take, MAX_TAKE))
        return rows[max(0, skip):max(0, skip) + take]

    def image_performance_count(self, project_id: str, iteration_id: str,
                                tag_ids: list[str]) -> int:
        return len(self._image_performances(project_id, iteration_id, tag_ids))


def no_performance() -> api_errors.ApiError:
    return api_errors.ApiError(404, "NotFoundIterationPerformance",
                               "the iteration has no recorded performance")


def training_minutes(iteration: Iteration) -> int:
    seconds = iteration.timings.get("totalSeconds")
    if not isinstance(seconds, int | float) and iteration.trained_at is not None:
        seconds = (iteration.trained_at - iteration.created).total_seconds()
    if not isinstance(seconds, int | float):
        return 0
    return max(0, math.ceil(seconds / 60))


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics recorded as ``{"overall": {...}, "perTag": [...]}`` or flat, as one flat dict."""
    flat = dict(overall_section(metrics))
    flat["perTag"] = metrics.get("perTag", [])
    return flat
