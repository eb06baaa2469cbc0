"""Training, quick test and prediction-store queries of Custom Vision's training API.

- ``train``: refuses like the service before anything is queued (unknown/too few tags, fewer than
  5 images per tag, nothing changed since the last iteration, a training already running), then
  creates the iteration in status Training and enqueues its :class:`TrainingRequest` on
  ``training-requests`` (DESIGN §4). The training job moves it to Completed or Failed.
- "Nothing changed" is decided by a dataset fingerprint stored on the iteration row: a hash of the
  sorted (image sha256, selected tag ids) pairs plus the selected tags, i.e. exactly what the
  training job would train on. ``forceTrain=true`` trains anyway.
- ``quick_test``: classifies with any Completed iteration (published or not) through the process's
  serving core, so the session is shared with prediction and loaded once.
- prediction store queries and suggested images read the ``predictions`` table rows the
  prediction paths write (:mod:`visionpipe.prediction_store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from visionpipe import api_errors, names
from visionpipe.api_iterations import IterationApi, iso
from visionpipe.api_values import Values
from visionpipe.label_store import ImageRecord, Project, Tag
from visionpipe.messages import TRAINING_TYPES, TrainingRequest
from visionpipe.registry import Iteration, IterationStatus, TrainingInProgress

log = logging.getLogger(__name__)

MIN_IMAGES_PER_TAG = 5  # Custom Vision's minimum (and the training job's)
MIN_TAGS = 2
MAX_QUERY_RESULTS = 256
MAX_DELETE_IDS = 64


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
    training_type = training_type or "Regular"
    if training_type not in TRAINING_TYPES:
        raise api_errors.bad_request("BadRequest",
                                     f"trainingType must be one of {', '.join(TRAINING_TYPES)}")
    if reserved_budget_in_hours < 0:
        raise api_errors.bad_request("BadRequestReservedBudgetInHoursNotEnoughForAdvancedTraining",
                                     "reservedBudgetInHours must not be negative")
    chosen = _selected_tags(api.label_store.list_tags(project.id), selected_tags)
    records = api.label_store.list_images(project.id)
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
    short = [f"{t.name!r} ({counts[t.id]})" for t in chosen if counts[t.id] < MIN_IMAGES_PER_TAG]
    if short:
        raise api_errors.bad_request(
            "BadRequestTrainingValidationFailed",
            f"Not enough images: every tag needs at least {MIN_IMAGES_PER_TAG} images; "
            f"too few for {', '.join(short)}")


# --- quick test ---------------------------------------------------------------------------------
def default_iteration(api: IterationApi, project_id: str) -> Iteration:
    """No ``iterationId``: the most recently published iteration, else the newest Completed one
    (the service's "default iteration")."""
    latest = api.publications(project_id).latest
    if latest is not None:
        found = api.registry.get_iteration(project_id, latest.iteration_id)
        if found is not None:
            return found
    trained = [i for i in api.registry.list_iterations(project_id)
               if i.status == IterationStatus.COMPLETED]
    if not trained:
        raise api_errors.ApiError(404, "NotFoundProjectDefaultIteration",
                                  "the project has no trained iteration")
    return trained[-1]


def _quick_test_iteration(api: IterationApi, project_id: str,
                          iteration_id: str | None) -> Iteration:
    api.project(project_id)
    iteration = (api.iteration(project_id, iteration_id) if iteration_id
                 else default_iteration(api, project_id))
    if iteration.status != IterationStatus.COMPLETED:
        raise api_errors.iteration_not_trained(str(iteration.status))
    return iteration


def quick_test(api: IterationApi, project_id: str, data: bytes, *,
               iteration_id: str | None = None, store: bool = True) -> dict[str, Any]:
    """Classify ``data`` (already out of the request body) with one iteration, through the same
    :func:`~visionpipe.predict.classify_image` as the prediction routes."""
    from visionpipe.predict import classify_image
    from visionpipe.serving import get_serving
    from visionpipe.settings import get_settings

    iteration = _quick_test_iteration(api, project_id, iteration_id)
    publication = api.publications(project_id).for_iteration(iteration.id) if store else None
    result = classify_image(get_serving(api.storage), project_id, iteration.id, data,
                            get_settings().training_limits, store=store,
                            publish_name=publication.publish_name if publication else "",
                            storage=api.storage)
    return result.to_dict()


def quick_test_url(api: IterationApi, project_id: str, url: str, *,
                   iteration_id: str | None = None, store: bool = True) -> dict[str, Any]:
    """``quicktest/url``: the image fetched by :mod:`visionpipe.url_fetch` (the one fetcher, with
    its SSRF refusals and deadline), once the iteration is known to be usable."""
    from visionpipe.settings import get_settings
    from visionpipe.url_fetch import fetch_image

    _quick_test_iteration(api, project_id, iteration_id)
    data = fetch_image(url, get_settings().training_limits.max_bytes)
    return quick_test(api, project_id, data, iteration_id=iteration_id, store=store)


# --- the prediction store -----------------------------------------------------------------------
def _stored_json(p: Any) -> dict[str, Any]:
    """A stored prediction row as Custom Vision's ``StoredImagePrediction``."""
    return {
        "resizedImageUri": None,
        "thumbnailUri": None,
        "originalImageUri": None,
        "domain": None,
        "id": p.id,
        "project": p.project_id,
        "iteration": p.iteration_id,
        "created": iso(p.created),
        "predictions": [{**t.to_dict(), "boundingBox": None, "tagType": "Regular"}
                        for t in p.predictions],
    }


def _parse_time(value: Any, what: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as e:
        raise api_errors.bad_request("BadRequestPredictionInvalidQueryParameters",
                                     f"{what} is not an ISO-8601 time") from e
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _page(token: Values) -> tuple[int, int]:
    """(skip, take) from ``continuation`` (an offset we hand out) and ``maxCount``."""
    skip = token.integer("continuation", 0)
    take = token.integer("maxCount", 0) or MAX_QUERY_RESULTS
    if take > MAX_QUERY_RESULTS:
        raise api_errors.bad_request("BadRequestPredictionResultsExceededCount",
                                     f"maxCount must be at most {MAX_QUERY_RESULTS}")
    return max(0, skip), max(1, take)


def query_predictions(api: IterationApi, project_id: str,
                      token: Values) -> dict[str, Any]:
    """``POST projects/{projectId}/predictions/query``: PredictionQueryToken -> Result."""
    from visionpipe.prediction_store import PredictionStore

    api.project(project_id)
    iteration_id = token.string("iterationId")
    application = token.string("application")
    start = _parse_time(token.string("startTime", max_length=64), "startTime")
    end = _parse_time(token.string("endTime", max_length=64), "endTime")
    tag_filters = [(f.string("id"), f.number("minThreshold", 0.0, 0.0, 1.0),
                    f.number("maxThreshold", 1.0, 0.0, 1.0))
                   for f in token.objects("tags") or []]
    order = token.string("orderBy") or "Newest"
    skip, take = _page(token)
    session = token.string("session") or str(uuid.uuid4())
    rows = PredictionStore(api.storage).list(project_id)

    def keep(p: Any) -> bool:
        if iteration_id and p.iteration_id != iteration_id:
            return False
        if application and p.application != application:
            return False
        created = p.created if p.created.tzinfo else p.created.replace(tzinfo=UTC)
        if (start and created < start) or (end and created > end):
            return False
        probs = {t.tag_id: t.probability for t in p.predictions}
        for tag_id, low, high in tag_filters:
            prob = probs.get(tag_id or "", 0.0)
            if prob < low or prob > high:
                return False
        return True

    found = [p for p in rows if keep(p)]
    if order == "Suggested":  # the least certain first: most to learn from
        found.sort(key=lambda p: p.predictions[0].probability if p.predictions else 0.0)
    else:
        found.sort(key=lambda p: p.created, reverse=order != "Oldest")
    page = found[skip:skip + take]
    more = skip + take < len(found)
    out_token = {**token, "session": session,
                 "continuation": str(skip + take) if more else None}
    return {"token": out_token, "results": [_stored_json(p) for p in page]}


def delete_predictions(api: IterationApi, project_id: str, ids: Sequence[str]) -> None:
    """``DELETE projects/{projectId}/predictions?ids=...`` (unknown ids are ignored)."""
    from contextlib import suppress

    from azure.core.exceptions import ResourceNotFoundError

    api.project(project_id)
    if not ids:
        raise api_errors.bad_request("BadRequestPredictionIdsMissing", "ids is required")
    if len(ids) > MAX_DELETE_IDS:
        raise api_errors.bad_request("BadRequestPredictionIdsExceededCount",
                                     f"at most {MAX_DELETE_IDS} ids per call")
    table = api.storage.table(names.PREDICTIONS_TABLE)
    for prediction_id in ids:
        with suppress(ResourceNotFoundError):
            table.delete_entity(project_id, prediction_id)


def _suggested(api: IterationApi, project_id: str, iteration_id: str | None,
               token: Values) -> list[dict[str, Any]]:
    from visionpipe.prediction_store import PredictionStore

    if not iteration_id:
        raise api_errors.bad_request("BadRequestInvalid", "iterationId is required")
    tag_ids = set(token.strings("tagIds"))
    threshold = token.number("threshold", 0.0, 0.0, 1.0)
    api.iteration(project_id, iteration_id)
    out = []
    for p in PredictionStore(api.storage).list(project_id):
        if p.iteration_id != iteration_id:
            continue
        kept = [t for t in p.predictions
                if (not tag_ids or t.tag_id in tag_ids) and t.probability >= threshold]
        if not kept:
            continue
        # Uncertainty: 1 - the best probability (a model sure of its answer teaches little).
        uncertainty = 1.0 - (p.predictions[0].probability if p.predictions else 0.0)
        row = _stored_json(p)
        row["predictions"] = [{**t.to_dict(), "boundingBox": None, "tagType": "Regular"}
                              for t in kept]
        row.update(width=None, height=None, predictionUncertainty=uncertainty)
        out.append(row)
    return out


def suggested_images(api: IterationApi, project_id: str, iteration_id: str | None,
                     token: Values) -> dict[str, Any]:
    """``POST projects/{projectId}/images/suggested``: the most uncertain stored predictions
    first (``sortBy`` UncertaintyAscending reverses it)."""
    ascending = token.string("sortBy") == "UncertaintyAscending"
    skip, take = _page(token)
    session = token.string("session") or str(uuid.uuid4())
    rows = _suggested(api, project_id, iteration_id, token)
    rows.sort(key=lambda r: r["predictionUncertainty"], reverse=not ascending)
    more = skip + take < len(rows)
    out_token = {**token, "session": session,
                 "continuation": str(skip + take) if more else None}
    return {"token": out_token, "results": rows[skip:skip + take]}


def suggested_image_count(api: IterationApi, project_id: str, iteration_id: str | None,
                          token: Values) -> dict[str, int]:
    """``POST projects/{projectId}/images/suggested/count``: per tag id, how many suggestions."""
    rows = _suggested(api, project_id, iteration_id, token)
    counts: Counter[str] = Counter(t["tagId"] for r in rows for t in r["predictions"])
    return {t: counts.get(t, 0) for t in (token.strings("tagIds") or list(counts))}
