"""Training, quick test and prediction-store queries of Custom Vision's training API.

- ``train``: refuses like the service before anything is queued (unknown/too few tags, fewer than
  5 images per tag, nothing changed since the last iteration, a training already running), then
  creates the iteration in status Training and enqueues its :class:`TrainingRequest` on
  ``training-requests`` (ARCHITECTURE.md, "Messages"). The training job moves it to Completed or
  Failed.
- "Nothing changed" is decided by a dataset fingerprint stored on the iteration row: a hash of the
  sorted (image sha256, selected tag ids) pairs plus the selected tags, i.e. exactly what the
  training job would train on. ``forceTrain=true`` trains anyway.
- ``quick_test``: classifies with any Completed iteration (published or not) through the process's
  serving core, so the session is shared with prediction and loaded once.
- prediction store queries and suggested images read the ``predictions`` table rows the
  prediction paths write (:mod:`visionpipe.stores.prediction_store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from visionpipe.api import errors as api_errors
from visionpipe.api.iterations import IterationApi
from visionpipe.messages import TRAINING_TYPES, TrainingRequest
from visionpipe.stores.label_store import ImageRecord, Project, Tag
from visionpipe.stores.registry import IterationStatus, TrainingInProgress
from visionpipe.training_rules import (
    MIN_IMAGES_PER_TAG,
    MIN_IMAGES_PER_TAG_DETECTION,
    MIN_TAGS,
    region_tagged,
)

log = logging.getLogger(__name__)



# --- training -----------------------------------------------------------------------------------
def dataset_fingerprint(records: Sequence[ImageRecord], selected: Sequence[str]) -> str:
    """What the training job would train on, as one hash (order-independent)."""
    chosen = set(selected)
    pairs = sorted(
        (r.sha256, tuple(sorted(t for t in r.tag_ids if t in chosen)))
        for r in records
        if r.blob_paths and chosen.intersection(r.tag_ids)
    )
    h = hashlib.sha256()
    h.update(json.dumps(sorted(chosen)).encode())
    for sha, tags in pairs:
        h.update(f"\n{sha}:{','.join(tags)}".encode())
    # object detection: a box moved, added or removed is another dataset (classification
    # images have no regions, so their fingerprints are unchanged)
    boxes = sorted((r.sha256, g.tag_id, g.left, g.top, g.width, g.height)
                   for r in records if r.blob_paths for g in r.regions if g.tag_id in chosen)
    if boxes:
        h.update(json.dumps(boxes).encode())
    return h.hexdigest()


def training_queue() -> str:
    """The queue the training job consumes (``TRAINING_REQUESTS_QUEUE`` may point elsewhere)."""
    from visionpipe.settings import get_settings

    return get_settings().training_requests_queue


def _selected_tags(tags: Sequence[Tag], requested: Sequence[str]) -> list[Tag]:
    by_id = {t.id: t for t in tags}
    if not requested:
        return list(tags)
    unknown = [t for t in requested if t not in by_id]
    if unknown:
        raise api_errors.ApiError(404, "NotFoundTag", f"unknown tag(s) {', '.join(unknown)}")
    return [by_id[t] for t in dict.fromkeys(requested)]


def train(
    api: IterationApi,
    project_id: str,
    *,
    training_type: str | None = None,
    reserved_budget_in_hours: int = 0,
    force_train: bool = False,
    selected_tags: Sequence[str] = (),
) -> dict[str, Any]:
    """``POST projects/{projectId}/train``: the new Iteration (status Training)."""
    project = api.project(project_id)
    _refuse_negative_detection(api, project)
    training_type = training_type or "Regular"
    if training_type not in TRAINING_TYPES:
        raise api_errors.bad_request("BadRequest",
                                     f"trainingType must be one of {', '.join(TRAINING_TYPES)}")
    if reserved_budget_in_hours < 0:
        raise api_errors.bad_request("BadRequestReservedBudgetInHoursNotEnoughForAdvancedTraining",
                                     "reservedBudgetInHours must not be negative")
    chosen = _selected_tags(api.label_store.list_tags(project.id), selected_tags)
    records = api.label_store.list_images(project.id)
    if project.detection:  # a detector trains on boxes: images count for their regions' tags
        records = region_tagged(records)
    _check_dataset(project, chosen, records)

    iterations = api.registry.list_iterations(project.id)
    if any(i.in_progress for i in iterations):
        raise training_in_progress()
    fingerprint = dataset_fingerprint(records, [t.id for t in chosen])
    trained = [i for i in iterations if i.status == IterationStatus.COMPLETED]
    if trained and trained[-1].dataset_fingerprint == fingerprint and not force_train:
        raise api_errors.bad_request(
            "BadRequestTrainingNotNeeded",
            "Nothing changed since the last training; pass forceTrain=true to train anyway")

    try:  # the project's training lock, taken with the new iteration (several instances race)
        iteration = api.registry.start_training(
            project.id,
            training_type=training_type,
            reserved_budget_in_hours=reserved_budget_in_hours,
            selected_tags=tuple(t.id for t in chosen) if selected_tags else (),
            classification_type=project.classification_type,
            dataset_fingerprint=fingerprint,
        )
    except TrainingInProgress as e:
        raise training_in_progress() from e
    if api.label_store.get_project(project.id) is None:
        # Deleted meanwhile: a delete holds the lock while it runs and removes the project row
        # before the lock, so nothing else will remove what we just wrote.
        api.registry.delete_project(project.id)
        raise api_errors.project_not_found()
    request = TrainingRequest(
        project_id=project.id,
        iteration_id=iteration.id,
        training_type=training_type,
        reserved_budget_in_hours=reserved_budget_in_hours,
        selected_tags=tuple(selected_tags),
    )
    try:
        api.storage.queue(training_queue()).send_message(request.to_json().encode())
    except Exception:
        # Nothing will ever train it: do not leave an iteration stuck in Training.
        api.registry.update_iteration(project.id, iteration.id,
                                      status=str(IterationStatus.FAILED),
                                      failureReason="the training request could not be queued")
        raise
    log.info("project %s: queued training of iteration %s (%s)", project.id, iteration.id,
             training_type)
    return api.to_json(iteration, project)


def _refuse_negative_detection(api: IterationApi, project: Project) -> None:
    """400 ``BadRequestDetectionTrainingNotAllowNegativeTag`` for an object detection project
    whose Negative tag has images, as the service answers (a detector learns boxes; "none of
    the tags" is an image without boxes). An empty Negative tag is no obstacle. Checked before
    the project's other refusals."""
    if not project.detection:
        return
    negative = api.label_store.negative_tag_id(project.id)
    if negative is not None and api.label_store.list_images(project.id, {negative}):
        raise api_errors.bad_request(
            "BadRequestDetectionTrainingNotAllowNegativeTag",
            "object detection projects cannot train with Negative-tagged images; remove the "
            "Negative tag from them, or delete it")


def training_in_progress() -> api_errors.ApiError:
    return api_errors.bad_request("BadRequestTrainingAlreadyInProgress",
                                  "a training of this project is already in progress")


def _check_dataset(project: Project, chosen: Sequence[Tag],
                   records: Sequence[ImageRecord]) -> None:
    """The service's refusals, checked before an iteration exists (the job re-checks)."""
    chosen_ids = {t.id for t in chosen}
    counts = Counter(t for r in records if r.blob_paths for t in r.tag_ids if t in chosen_ids)
    if len(chosen) < MIN_TAGS:
        code = ("BadRequestMultiLabelClassificationTrainingValidationFailed" if project.multilabel
                else "BadRequestMultiClassClassificationTrainingValidationFailed")
        raise api_errors.bad_request(code, f"Training needs at least {MIN_TAGS} tags, "
                                           f"the project has {len(chosen)}")
    minimum = MIN_IMAGES_PER_TAG_DETECTION if project.detection else MIN_IMAGES_PER_TAG
    short = [f"{t.name!r} ({counts[t.id]})" for t in chosen if counts[t.id] < minimum]
    if short:
        raise api_errors.bad_request(
            "BadRequestDetectionTrainingValidationFailed" if project.detection
            else "BadRequestTrainingValidationFailed",
            f"Not enough images: every tag needs at least {minimum} images"
            f"{' with a region of it' if project.detection else ''}; "
            f"too few for {', '.join(short)}")
