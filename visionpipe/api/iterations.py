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
from typing import TYPE_CHECKING, Any

from visionpipe import names
from visionpipe.api import errors as api_errors
from visionpipe.api.context import RequestContext
from visionpipe.manifest import METRICS_FILE, overall_section
from visionpipe.messages import EXPORT_FLAVORS
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Iteration, IterationStatus, NotFound, Publications, Registry
from visionpipe.timestamps import iso

if TYPE_CHECKING:
    import azure.functions as func

# What a trained iteration exports to (visionpipe.api.export converts and serves them).
EXPORT_PLATFORMS = tuple(EXPORT_FLAVORS)
MAX_TAKE = 256


@dataclass(frozen=True)
class IterationApi:
    """The iteration routes over one request's :class:`RequestContext` (a thin view: the
    context holds the stores and the lookups)."""

    ctx: RequestContext

    @classmethod
    def for_request(cls, req: func.HttpRequest) -> IterationApi:
        return cls(RequestContext.for_request(req))

    @property
    def storage(self) -> Storage:
        return self.ctx.storage

    @property
    def registry(self) -> Registry:
        return self.ctx.registry

    @property
    def label_store(self) -> LabelStore:
        return self.ctx.label_store

    # --- lookups --------------------------------------------------------------------------------
    def project(self, project_id: str) -> Project:
        return self.ctx.project(project_id)

    def iteration(self, project_id: str, iteration_id: str) -> Iteration:
        return self.ctx.iteration(project_id, iteration_id)

    def publications(self, project_id: str) -> Publications:
        return self.ctx.publications(project_id)

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

    def trained(self, project_id: str, iteration_id: str) -> Iteration:
        iteration = self.iteration(project_id, iteration_id)
        if iteration.status != IterationStatus.COMPLETED:
            raise api_errors.iteration_not_trained(str(iteration.status))
        return iteration

    def performance(self, project_id: str, iteration_id: str,
                    threshold: float = 0.5) -> dict[str, Any]:
        """Custom Vision's ``IterationPerformance`` at ``threshold``."""
        from visionpipe.metrics import recompute

        if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
            raise api_errors.bad_request("BadRequestInvalid", "threshold must be within [0, 1]")
        iteration = self.trained(project_id, iteration_id)
        doc = self.metrics_document(iteration)
        if doc is not None and "predictions" in doc:
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
        iteration = self.trained(project_id, iteration_id)
        doc = self.metrics_document(iteration)
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
            record = self.label_store.get_image(project_id, sample.get("sha256", ""))
            created = iso(record.created) if record else None
            ranked = sorted(zip(sample["probabilities"], column_ids, strict=False),
                            key=lambda pt: -pt[0])
            rows.append({
                "id": sample["imageId"],
                "created": created,
                "width": record.width if record else 0,
                "height": record.height if record else 0,
                "imageUri": None,
                "thumbnailUri": None,
                "tags": [{"tagId": t, "tagName": name_of.get(t, t), "created": created}
                         for t in labels],
                "regions": None,
                "predictions": [
                    {"probability": float(p), "tagId": t, "tagName": name_of.get(t, t),
                     "boundingBox": None, "tagType": "Regular"}
                    for p, t in ranked
                ],
            })
        return rows

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
