"""The prediction store's routes of the training API: query and delete stored predictions, and
suggested images (the active-learning loop), read from the rows the prediction paths write
(:mod:`visionpipe.stores.prediction_store`).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from visionpipe import names
from visionpipe.api import errors as api_errors
from visionpipe.api.iterations import IterationApi
from visionpipe.api.values import Values
from visionpipe.timestamps import iso

MAX_QUERY_RESULTS = 256
MAX_DELETE_IDS = 64


#: (project id, prediction id, "original" | "thumbnail") -> the URL of a kept picture.
ImageLinks = Callable[[str, str, str], str]
PICTURE_KINDS = ("original", "thumbnail")


def image_links(request_url: str, api_version: str) -> ImageLinks:
    """Links to the picture routes (``functions/prediction_images_api.py``, ``Training-Key``),
    built on :func:`~visionpipe.api.export_links.public_base_url` like every link the app gives."""
    from visionpipe.api.export_links import public_base_url

    base = public_base_url(request_url)

    def link(project_id: str, prediction_id: str, kind: str) -> str:
        return (f"{base}/customvision/{api_version}/training/projects/{project_id}/predictions/"
                f"{prediction_id}/{kind}")

    return link


def _has_picture(p: Any) -> bool:
    """Whether a row's picture was kept and is still within its retention (in Azure a lifecycle
    rule deletes it after ``PREDICTION_IMAGE_RETENTION_DAYS``)."""
    from visionpipe.settings import get_settings
    from visionpipe.stores.prediction_images import thumbnail_of

    if thumbnail_of(p.blob_path) is None:
        return False
    created = p.created if p.created.tzinfo else p.created.replace(tzinfo=UTC)
    kept_for = timedelta(days=get_settings().prediction_image_retention_days)
    return datetime.now(UTC) - created < kept_for


# --- the prediction store -----------------------------------------------------------------------
def _stored_json(p: Any, links: ImageLinks | None = None) -> dict[str, Any]:
    """A stored prediction row as Custom Vision's ``StoredImagePrediction``, with its picture's
    URIs while the picture is kept."""
    shown = links is not None and _has_picture(p)
    original = links(p.project_id, p.id, "original") if shown and links else None
    thumbnail = links(p.project_id, p.id, "thumbnail") if shown and links else None
    return {
        "resizedImageUri": original,
        "thumbnailUri": thumbnail,
        "originalImageUri": original,
        "domain": None,
        "id": p.id,
        "project": p.project_id,
        "iteration": p.iteration_id,
        "created": iso(p.created),
        "predictions": [{"boundingBox": None, **t.to_dict()}
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


def query_predictions(api: IterationApi, project_id: str, token: Values,
                      links: ImageLinks | None = None) -> dict[str, Any]:
    """``POST projects/{projectId}/predictions/query``: PredictionQueryToken -> Result."""
    from visionpipe.stores.prediction_store import PredictionStore

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
    return {"token": out_token, "results": [_stored_json(p, links) for p in page]}


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
               token: Values, links: ImageLinks | None = None) -> list[dict[str, Any]]:
    from visionpipe.stores.prediction_store import PredictionStore

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
        row = _stored_json(p, links)
        row["predictions"] = [{"boundingBox": None, **t.to_dict()}
                              for t in kept]
        row.update(width=None, height=None, predictionUncertainty=uncertainty)
        out.append(row)
    return out


def suggested_images(api: IterationApi, project_id: str, iteration_id: str | None,
                     token: Values, links: ImageLinks | None = None) -> dict[str, Any]:
    """``POST projects/{projectId}/images/suggested``: the most uncertain stored predictions
    first (``sortBy`` UncertaintyAscending reverses it)."""
    ascending = token.string("sortBy") == "UncertaintyAscending"
    skip, take = _page(token)
    session = token.string("session") or str(uuid.uuid4())
    rows = _suggested(api, project_id, iteration_id, token, links)
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


def prediction_picture(api: IterationApi, project_id: str, prediction_id: str,
                       kind: str) -> tuple[bytes, str]:
    """The kept picture (``original``) or its thumbnail of a stored prediction, and its content
    type; 404 ``NotFoundImage`` when there is none (``/nostore``, an old row, a deleted one)."""
    from visionpipe.api.values import is_id
    from visionpipe.stores import prediction_images
    from visionpipe.stores.prediction_store import PredictionStore

    api.project(project_id)
    gone = api_errors.ApiError(404, "NotFoundImage", "No kept picture for this prediction")
    if kind not in PICTURE_KINDS or not is_id(prediction_id):
        raise gone
    row = PredictionStore(api.storage).get(project_id, prediction_id)
    if row is None or not _has_picture(row):
        raise gone
    path = row.blob_path if kind == "original" else prediction_images.thumbnail_of(row.blob_path)
    found = prediction_images.read(api.storage, path or "")
    if found is None:
        raise gone
    return found
