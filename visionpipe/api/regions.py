"""Training API: object detection regions -- boxes on training images (Custom Vision v3.3).

``POST images/regions`` (``ImageRegionCreateBatch`` -> ``ImageRegionCreateSummary``),
``DELETE images/regions?regionIds=``, ``POST images/{imageId}/regionproposals`` and
``POST tagsandregions/suggestions``, plus the box check that uploads with ``regions`` share, so a
box is refused the same way however it arrives. Boxes are ``{left, top, width, height}`` as
fractions of the image from its top-left corner; regions exist only in object detection projects
(a classification project answers ``BadRequestImageRegions``, as the service does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from visionpipe.annotations import EDGE_TOLERANCE
from visionpipe.api import errors as api_errors
from visionpipe.api.adapter import WithStatus
from visionpipe.api.context import RequestContext
from visionpipe.api.errors import ApiError
from visionpipe.api.models import region_to_dict
from visionpipe.api.values import Values, is_id
from visionpipe.rejections import Reason
from visionpipe.stores.label_store import ImageRecord, Project, RegionOutcome
from visionpipe.training_rules import MAX_REGIONS_PER_IMAGE

if TYPE_CHECKING:
    from visionpipe.serving.core import ServingCore
    from visionpipe.storage import Storage

MAX_REGION_ENTRIES = 64  # entries per create_image_regions call and ids per delete (the SDK's)

Box = tuple[float, float, float, float]


class BadRegion(ValueError):
    """A region entry that cannot be a box; ``reason`` is the drop folder's reason code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def regions_error(message: str) -> ApiError:
    return api_errors.bad_request("BadRequestImageRegions", message)


def require_detection(project: Project) -> None:
    """Regions belong to object detection projects only."""
    if not project.detection:
        raise regions_error("Regions can only be added to images of an object detection project "
                            "(this project's domain is a classification domain)")


def _coordinate(entry: Values, name: str) -> float:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRegion(Reason.BAD_ANNOTATION, f"{name} must be a number")
    value = float(value)
    if math.isnan(value):
        raise BadRegion(Reason.BAD_ANNOTATION, f"{name} is not a number")
    if math.isinf(value):
        raise BadRegion(Reason.BOX_OUT_OF_BOUNDS, f"{name} is infinite")
    return value


def check_box(entry: Values) -> Box:
    """``left, top, width, height`` of an entry as a box inside the image, or :class:`BadRegion`.

    Strictly: finite numbers, a positive width and height, edges within [0, 1]; an overshoot of
    at most ``EDGE_TOLERANCE`` (rounding in a client's pixel-to-fraction sum) is clipped, as the
    drop folder's annotation parser does, so both paths store the same box."""
    left, top, width, height = (_coordinate(entry, n) for n in ("left", "top", "width", "height"))
    if width <= 0 or height <= 0:
        raise BadRegion(Reason.BAD_ANNOTATION, "width and height must be greater than 0")
    right, bottom = left + width, top + height
    tol = EDGE_TOLERANCE
    if left < -tol or top < -tol or right > 1 + tol or bottom > 1 + tol:
        raise BadRegion(Reason.BOX_OUT_OF_BOUNDS,
                        "the box reaches outside the image (edges are fractions in [0, 1])")
    if left >= 0 and top >= 0 and right <= 1 and bottom <= 1:
        return (left, top, width, height)  # as sent: a client reads back what it wrote
    left, top = max(left, 0.0), max(top, 0.0)
    right, bottom = min(right, 1.0), min(bottom, 1.0)
    if right <= left or bottom <= top:
        raise BadRegion(Reason.BOX_OUT_OF_BOUNDS, "the box lies outside the image")
    return (left, top, right - left, bottom - top)


def region_entry(entry: Values) -> tuple[str, Box]:
    """A ``Region`` (``tagId`` and a box) as (tag id, box), or :class:`BadRegion`."""
    tag_id = entry.get("tagId")
    if not isinstance(tag_id, str) or not is_id(tag_id):
        raise BadRegion(Reason.BAD_ANNOTATION, "tagId must be a tag id")
    return tag_id.strip().lower(), check_box(entry)


def upload_regions(entry: Values) -> tuple[tuple[str, Box], ...]:
    """An upload entry's ``regions`` (absent: none), or :class:`BadRegion`."""
    raw = entry.get("regions")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise BadRegion(Reason.BAD_ANNOTATION, "regions must be a list of objects")
    if len(raw) > MAX_REGIONS_PER_IMAGE:
        raise BadRegion(Reason.TOO_MANY_REGIONS,
                        f"{len(raw)} regions; at most {MAX_REGIONS_PER_IMAGE} per image")
    return tuple(region_entry(Values(r)) for r in raw)


def _entry_dict(image_id: str, tag_id: str, box: Box) -> dict[str, Any]:
    left, top, width, height = box
    return {"imageId": image_id, "tagId": tag_id, "left": left, "top": top, "width": width,
            "height": height}


def create_image_regions(ctx: RequestContext, project_id: str, batch: Values) -> WithStatus:
    """``ImageRegionCreateBatch`` -> ``ImageRegionCreateSummary``: 200, or 207 when some entry
    was ``exceeded`` (its image holds ``MAX_REGIONS_PER_IMAGE`` regions already).

    The whole batch is checked before anything is written (unknown image or tag, a bad box:
    400 ``BadRequestImageRegions``), then each image is changed in one conditional write."""
    store = ctx.label_store
    project = ctx.project(project_id)
    require_detection(project)
    raw = batch.get("regions")
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise regions_error("regions must be a list of objects")
    if not 0 < len(raw) <= MAX_REGION_ENTRIES:
        raise api_errors.bad_request("BadRequestExceededBatchSize",
                                     f"The batch has {len(raw)} regions; it holds 1 to "
                                     f"{MAX_REGION_ENTRIES}")
    tags = {t.id: t for t in store.list_tags(project_id)}
    entries: list[tuple[str, str, Box]] = []
    records: dict[str, ImageRecord] = {}
    for position, item in enumerate(raw):
        entry = Values(item)
        image = entry.get("imageId")
        try:
            tag_id, box = region_entry(entry)
        except BadRegion as e:
            raise regions_error(f"region {position}: {e} ({e.reason})") from e
        if tag_id not in tags:
            raise regions_error(f"region {position}: unknown tag {tag_id}")
        if not isinstance(image, str) or not is_id(image):
            raise regions_error(f"region {position}: imageId must be an image id")
        image = image.strip().lower()
        if image not in records:
            record = store.find_image(project_id, image)
            if record is None:
                raise regions_error(f"region {position}: unknown image {image}")
            records[image] = record
        entries.append((image, tag_id, box))
    created: list[dict[str, Any]] = []
    duplicated: list[dict[str, Any]] = []
    exceeded: list[dict[str, Any]] = []
    for image, record in records.items():
        mine = [(t, b) for i, t, b in entries if i == image]
        outcomes = store.add_image_regions(project, record.sha256, mine, MAX_REGIONS_PER_IMAGE)
        if outcomes is None:  # deleted since it was found
            raise regions_error(f"unknown image {image}")
        for (tag_id, box), (outcome, region) in zip(mine, outcomes, strict=True):
            if outcome == RegionOutcome.CREATED and region is not None:
                created.append({"imageId": image,
                                **region_to_dict(region, tags, record.created)})
            elif outcome == RegionOutcome.DUPLICATED:
                duplicated.append(_entry_dict(image, tag_id, box))
            else:
                exceeded.append(_entry_dict(image, tag_id, box))
    body = {"created": created, "duplicated": duplicated, "exceeded": exceeded}
    return WithStatus(body, 207 if exceeded else 200)


def delete_image_regions(ctx: RequestContext, project_id: str,
                         region_ids: Sequence[str]) -> None:
    """``DELETE images/regions?regionIds=``: unknown ids are ignored, as the service does for
    images; a tag whose last region on an image went leaves that image's tags."""
    store = ctx.label_store
    project = ctx.project(project_id)
    require_detection(project)
    ids = {r.strip().lower() for r in region_ids if r.strip()}
    if not ids:
        raise regions_error("regionIds is required")
    if len(ids) > MAX_REGION_ENTRIES:
        raise api_errors.bad_request("BadRequestExceededBatchSize",
                                     f"at most {MAX_REGION_ENTRIES} region ids per call")
    for record in store.images_with_regions(project_id, ids):
        store.delete_image_regions(project_id, record.sha256, ids)


# --- region proposals ---------------------------------------------------------------------------
def no_detector() -> ApiError:
    return api_errors.bad_request(
        "BadRequestNotSupported",
        "Region proposals come from a trained object detection iteration; the project has none")


def region_proposals(ctx: RequestContext, project_id: str, image_id: str,
                     core: ServingCore | None = None) -> dict[str, Any]:
    """``POST images/{imageId}/regionproposals`` -> ``ImageRegionProposal``: the boxes the
    project's newest Completed detection iteration finds on the image, class-agnostic (a
    labeller starts from them and picks the tags), best first.

    Without such an iteration: 400 ``BadRequestNotSupported`` (no class-agnostic proposer yet)."""
    from visionpipe.serving.core import ModelUnavailable, get_serving
    from visionpipe.stores.registry import IterationStatus

    storage, store, registry = ctx.storage, ctx.label_store, ctx.registry
    project = ctx.project(project_id)
    require_detection(project)
    record = store.find_image(project_id, image_id)
    if record is None:
        raise ApiError(404, "NotFoundImage", "Invalid image")
    core = core or get_serving(storage)
    session = None
    for iteration in reversed(registry.list_iterations(project_id)):
        if iteration.status != IterationStatus.COMPLETED:
            continue
        try:
            candidate = core.session(project_id, iteration.id)
        except ModelUnavailable:
            continue
        if candidate.is_detection:
            session = candidate
            break
    if session is None:
        raise no_detector()
    data = _image_bytes(storage, record)
    if data is None:
        raise ApiError(404, "NotFoundImage", "Invalid image")
    from visionpipe.serving.core import UndecodableImage

    try:
        detection = session.detect(data)
    except UndecodableImage as e:
        raise api_errors.bad_request("BadRequestImageFormat", str(e)) from e
    except ModelUnavailable as e:
        raise api_errors.model_unavailable(str(e)) from e
    return {
        "projectId": project_id,
        "imageId": record.id,
        "proposals": [{"confidence": box.probability, "boundingBox": box.bounding_box()}
                      for box in detection.boxes],
    }


# --- suggested tags and regions -----------------------------------------------------------------
def _image_bytes(storage: Storage, record: ImageRecord) -> bytes | None:
    from azure.core.exceptions import ResourceNotFoundError

    from visionpipe import names

    container = storage.container(names.TRAINING_IMAGES)
    for path in record.blob_paths:
        try:
            return bytes(container.download_blob(path).readall())
        except ResourceNotFoundError:
            continue
    return None


def suggest_tags_and_regions(ctx: RequestContext, project_id: str, iteration_id: str | None,
                             image_ids: Sequence[str],
                             core: ServingCore | None = None) -> list[dict[str, Any]]:
    """``POST tagsandregions/suggestions?iterationId=&imageIds=`` -> ``SuggestedTagAndRegion``
    per image: a Completed iteration's predictions on training images (boxes for a detector,
    tags for a classifier), so labelling starts from suggestions. Unknown image ids are left
    out; ``predictionUncertainty`` is 1 - the best probability (0 when sure, 1 when nothing)."""
    from datetime import UTC, datetime

    from visionpipe.serving.core import ModelUnavailable, UndecodableImage, get_serving
    from visionpipe.stores.registry import IterationStatus
    from visionpipe.timestamps import iso

    storage, store, registry = ctx.storage, ctx.label_store, ctx.registry
    ctx.project(project_id)
    if not iteration_id or not is_id(iteration_id):
        raise api_errors.bad_request("BadRequest", "iterationId is required")
    ids = list(dict.fromkeys(i.strip().lower() for i in image_ids if i.strip()))
    if not ids:
        raise api_errors.bad_request("BadRequest", "imageIds is required")
    if len(ids) > MAX_REGION_ENTRIES:
        raise api_errors.bad_request("BadRequestExceededBatchSize",
                                     f"at most {MAX_REGION_ENTRIES} image ids per call")
    iteration = registry.get_iteration(project_id, iteration_id)
    if iteration is None:
        raise api_errors.iteration_not_found()
    if iteration.status != IterationStatus.COMPLETED:
        raise api_errors.iteration_not_trained(str(iteration.status))
    core = core or get_serving(storage)
    try:
        session = core.session(project_id, iteration.id)
    except ModelUnavailable as e:
        raise api_errors.model_unavailable(str(e)) from e
    out = []
    for image_id in ids:
        record = store.find_image(project_id, image_id)
        data = _image_bytes(storage, record) if record is not None else None
        if record is None or data is None:
            continue
        try:
            if session.is_detection:
                found = session.detect(data)
                predictions = [
                    {"probability": box.probability, "tagId": tag_id, "tagName": tag_name,
                     "boundingBox": box.bounding_box(), "tagType": found.tag_type(tag_id)}
                    for box, tag_id, tag_name in found.ranked()]
            else:
                answer = session.classify(data)
                predictions = [
                    {"probability": p, "tagId": tag_id, "tagName": tag_name,
                     "boundingBox": None, "tagType": answer.tag_type(tag_id)}
                    for p, tag_id, tag_name in answer.ranked()]
        except UndecodableImage as e:
            raise api_errors.bad_request("BadRequestImageFormat", str(e)) from e
        except ModelUnavailable as e:
            raise api_errors.model_unavailable(str(e)) from e
        best = predictions[0]["probability"] if predictions else 0.0
        out.append({"id": record.id, "project": project_id, "iteration": iteration.id,
                    "created": iso(datetime.now(UTC)), "predictions": predictions,
                    "predictionUncertainty": 1.0 - float(best)})
    return out
