"""The ``predict-images`` drop folder: predictions in Custom Vision's shape, written as JSON.

The drop folder (docs/ARCHITECTURE.md, "Storage layout (one storage account)"):
``predict-images/{project name}/{name}.{ext}`` gets its answer in
``predictions/{project name}/{name}.{ext}.json``: the ImagePrediction (docs/ARCHITECTURE.md,
"Messages"), or an error
``{"id", "project", "created", "error": {"code", "message"}}``. Whatever goes wrong with the input
(unknown project, refused image, nothing published) is answered in the result file *and* the
input is kept in quarantine with the same reason; nothing is dropped silently. A server-side
problem (a model that does not load) is answered in the result file and the input stays where it
is, so it can be dropped again once the model is fixed.

An object detection project's published iteration answers boxes (``boundingBox`` per
prediction, best first, Custom Vision's shape). With ``DROP_PREDICT_ANNOTATED_IMAGES`` set to
true, the picture with its boxes drawn (those of at least 50%) is written beside the JSON as
``predictions/{project name}/{name}.{ext}.annotated.jpg``.

Event Grid delivers at least once: the prediction id comes from the blob's path and ETag, so a
redelivery writes the same result blob and the same prediction-store row again (nothing is
doubled); a redelivery after a quarantine finds nothing to do. The handler costs two storage round
trips on the happy path (download; result blob and store row written in parallel).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContentSettings
from PIL import Image, ImageDraw, ImageOps

from visionpipe import names
from visionpipe.blob_names import is_safe_blob_name, unsafe_reason
from visionpipe.pipeline import lifecycle_events
from visionpipe.pipeline.events import BlobCreated
from visionpipe.rejections import Reason, Rejection
from visionpipe.serving.core import (
    Detection,
    ModelUnavailable,
    NoPublishedIteration,
    PreparedImage,
    ServingCore,
    UndecodableImage,
    get_serving,
)
from visionpipe.serving.results import PredictionResult
from visionpipe.settings import Settings
from visionpipe.storage import Storage, io_pool
from visionpipe.stores import prediction_images
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.prediction_store import (
    SOURCE_DROP,
    PredictionStore,
    TagProbability,
)
from visionpipe.stores.quarantine import (
    REASON_SUFFIX,
    is_reserved_name,
    quarantine_blob,
    record_unsafe_name,
)
from visionpipe.timestamps import now_iso

log = logging.getLogger(__name__)

RESULT_SUFFIX = ".json"
#: A detection's picture with its boxes drawn (when DROP_PREDICT_ANNOTATED_IMAGES is true).
ANNOTATED_SUFFIX = ".annotated.jpg"
#: Boxes below this probability are in the JSON but not drawn (the service answers boxes down to
#: a 1% floor, like Custom Vision; a picture of all of them would be unreadable).
ANNOTATED_MIN_PROBABILITY = 0.5
ANNOTATED_MAX_SIDE = 1600  # the drawn picture's longest side, in pixels
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (128, 128, 0))
_ID_NAMESPACE = uuid.UUID("0b7f5d0e-3c2a-4f59-9a51-6c1e2d7f8a90")
_SOURCE_ETAG = "sourceetag"  # result blob metadata: the input version the result answers
#: How long a drop folder's project name -> project lookup is reused (a rename or delete through
#: the API is seen by the drop folder after at most this long).
PROJECT_CACHE_SECONDS = 30.0



#: Reason codes of the drop folder beyond validation's (those of docs/ARCHITECTURE.md,
#: "Image rules (both paths)" are shared).
NO_PUBLISHED_ITERATION = Reason.NO_PUBLISHED_ITERATION
MODEL_UNAVAILABLE = Reason.MODEL_UNAVAILABLE


class DropOutcome(StrEnum):
    PREDICTED = "predicted"
    REJECTED = "rejected"  # error result + input quarantined
    FAILED = "failed"  # error result, input left in place (server-side problem)
    GONE = "gone"  # the input no longer exists (an earlier delivery quarantined it)


def error_result(prediction_id: str, project_id: str | None, code: str,
                 message: str) -> dict[str, Any]:
    return {
        "id": prediction_id,
        "project": project_id,
        "created": now_iso(),
        "error": {"code": code, "message": message},
    }


def drop_prediction_id(path: str, etag: str) -> str:
    """The same blob version always gets the same prediction id (redeliveries overwrite)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{names.PREDICT_IMAGES}/{path}@{etag.strip(chr(34))}"))


def result_path(path: str) -> str:
    return path + RESULT_SUFFIX


def annotated_path(path: str) -> str:
    """Where a detection's annotated picture goes, beside its JSON (inside ``predictions``)."""
    return path + ANNOTATED_SUFFIX


def detection_result(detection: Detection, prediction_id: str) -> PredictionResult:
    """Custom Vision's ``ImagePrediction`` of a detector: boxes, best first."""
    return PredictionResult.from_detection(detection, prediction_id)


def draw_boxes(data: bytes, predictions: Sequence[TagProbability], *,
               min_probability: float = ANNOTATED_MIN_PROBABILITY,
               max_side: int = ANNOTATED_MAX_SIDE) -> bytes:
    """The (already validated) picture, upright, at most ``max_side`` pixels a side, with the
    boxes of at least ``min_probability`` drawn and labelled ``tag probability%``; as JPEG.

    Boxes are fractions of the upright picture (the detector sees it upright), so they are drawn
    on the EXIF-rotated picture, scaled to its size.
    """
    with Image.open(io.BytesIO(data)) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    picture.thumbnail((max_side, max_side))
    width, height = picture.size
    draw = ImageDraw.Draw(picture)
    line = max(2, round(min(width, height) / 150))
    drawn = 0
    for p in predictions:
        if p.bounding_box is None or p.probability < min_probability:
            continue
        left, top, w, h = p.bounding_box
        x0, y0 = left * width, top * height
        colour = BOX_COLOURS[drawn % len(BOX_COLOURS)]
        drawn += 1
        draw.rectangle((x0, y0, x0 + w * width, y0 + h * height), outline=colour, width=line)
        label = f"{p.tag_name[:40]} {p.probability:.0%}"
        _, text_top, _, text_bottom = draw.textbbox((0, 0), label)
        at = (x0 + line, max(0.0, y0 - (text_bottom - text_top) - 3))  # above the box if room
        draw.rectangle(draw.textbbox(at, label), fill=colour)
        draw.text(at, label, fill=(255, 255, 255))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=90)
    return out.getvalue()


@dataclass(frozen=True)
class DropResult:
    path: str  # inside predict-images
    outcome: DropOutcome
    result_path: str | None = None  # inside predictions
    prediction_id: str | None = None
    code: str | None = None  # error code when not predicted


class DropFolderPredictor:
    """Answers one ``predict-images`` BlobCreated event."""

    def __init__(self, storage: Storage, settings: Settings, core: ServingCore | None = None,
                 label_store: LabelStore | None = None,
                 store: PredictionStore | None = None) -> None:
        self.storage = storage
        self.settings = settings
        self.core = core or get_serving(storage)
        self.label_store = label_store or LabelStore(storage)
        self.store = store or PredictionStore(storage)
        self._inputs = storage.container(names.PREDICT_IMAGES)
        self._results = storage.container(names.PREDICTIONS)

    def handle(self, blob: BlobCreated) -> DropResult:
        path = blob.path
        problem = unsafe_reason(path)
        if problem is not None:  # judged before any storage call is made with the name
            # (no prediction id: it is derived from the name, which may not even encode)
            record_unsafe_name(self.storage, names.PREDICT_IMAGES, path,
                               context={"eventId": blob.event_id})
            return DropResult(path, DropOutcome.REJECTED, code=str(Reason.BAD_PATH))
        project_name, _, name = path.partition("/")
        limits = self.settings.prediction_limits
        source = self._inputs.get_blob_client(path)
        data: bytes | None = None
        checked: PreparedImage | Rejection | None = None
        try:
            if blob.content_length is not None and blob.content_length > limits.max_bytes:
                props = source.get_blob_properties()  # refuse without downloading it
                etag = str(props.etag)
                if props.size > limits.max_bytes:
                    checked = Rejection(
                        Reason.TOO_LARGE, f"the file is {props.size:,} bytes; the limit is "
                                          f"{limits.max_bytes:,} bytes")
            if checked is None:
                downloader = source.download_blob()
                data = downloader.readall()
                etag = str(downloader.properties.etag)
        except ResourceNotFoundError:
            log.info("predict-images/%s is gone (answered by an earlier delivery)", path)
            return DropResult(path, DropOutcome.GONE)
        prediction_id = drop_prediction_id(path, etag)

        if not name or is_reserved_name(path):
            return self._reject(path, etag, prediction_id, None, Rejection(
                Reason.BAD_PATH,
                f"drop images as predict-images/{{project name}}/{{file name}} (names ending in "
                f"{REASON_SUFFIX!r} are reserved); got {path!r}"), data)
        project = self._find_project(project_name)
        if project is None:
            return self._reject(path, etag, prediction_id, None, Rejection(
                Reason.UNKNOWN_PROJECT,
                f"there is no project named {project_name!r}; create it (or train one) first"),
                data)
        if checked is None:
            assert data is not None
            checked = self.core.prepare(project.id, data, limits)  # the request's one decode
        if isinstance(checked, Rejection):
            return self._reject(path, etag, prediction_id, project.id, checked, data)
        assert data is not None

        try:
            # The published iteration's session decides the answer's kind: boxes or tags.
            session = self.core.session(project.id, self.core.resolve(project.id).iteration_id)
            if session.is_detection:
                result = detection_result(session.detect(checked), prediction_id)
            else:
                result = PredictionResult.from_classification(session.classify(checked),
                                                              prediction_id)
        except NoPublishedIteration:
            return self._reject(path, etag, prediction_id, project.id, Rejection(
                NO_PUBLISHED_ITERATION,
                f"project {project.name!r} has no published iteration; publish one "
                "(POST .../iterations/{iterationId}/publish) and drop the image again"), data)
        except UndecodableImage as e:
            return self._reject(path, etag, prediction_id, project.id,
                                Rejection(Reason.CORRUPT, str(e)), data)
        except ModelUnavailable as e:
            log.error("predict-images/%s: %s", path, e)
            self._write_result(path, etag, error_result(prediction_id, project.id,
                                                        MODEL_UNAVAILABLE, str(e)))
            return DropResult(path, DropOutcome.FAILED, result_path(path), prediction_id,
                              MODEL_UNAVAILABLE)

        publication = self.core.publications(project.id).for_iteration(result.iteration_id)
        publish_name = publication.publish_name if publication else ""
        sha256, fmt = checked.sha256, checked.image.format

        def keep_and_record() -> None:
            """The picture in prediction-images (the drop may be deleted or overwritten), then
            the row that names it."""
            kept = prediction_images.keep(self.storage, project.id, prediction_id, data, fmt)
            self.store.record(result.stored(SOURCE_DROP, publish_name=publish_name,
                                            blob_path=kept, image_sha256=sha256))

        # The result blob and the stored prediction are independent writes, made together.
        stored = io_pool("drop-results").submit(keep_and_record)
        self._write_result(path, etag, result.to_dict())
        if self.settings.drop_predict_annotated_images and session.is_detection:
            self._write_annotated(path, etag, data, result)
        stored.result()
        top = result.predictions[0] if result.predictions else None
        log.info("predict-images/%s -> %s (%.3f) with iteration %s", path,
                 top.tag_name if top else "-", top.probability if top else 0.0,
                 result.iteration_id)
        return DropResult(path, DropOutcome.PREDICTED, result_path(path), prediction_id)

    # --- helpers --------------------------------------------------------------------------------
    _projects: ClassVar[dict[str, tuple[Project, float]]] = {}  # process-wide: name -> (p, at)

    def _find_project(self, project_name: str) -> Project | None:
        """The project of a drop folder name; found ones are remembered for a short while (a
        drop folder sees the same few names over and over), unknown names are always asked."""
        key = project_name.strip().casefold()
        cached = self._projects.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[1] < PROJECT_CACHE_SECONDS:
            return cached[0]
        project = self.label_store.find_project(project_name)
        if project is not None:
            self._projects[key] = (project, now)
        return project

    def _write_result(self, path: str, etag: str, body: dict[str, Any]) -> None:
        self._results.upload_blob(
            result_path(path),
            json.dumps(body, indent=2),
            overwrite=True,
            metadata={_SOURCE_ETAG: etag.strip('"')},
            content_settings=ContentSettings(content_type="application/json"),
        )

    def _write_annotated(self, path: str, etag: str, data: bytes,
                         result: PredictionResult) -> None:
        """The picture with its boxes drawn, beside the JSON (``DROP_PREDICT_ANNOTATED_IMAGES``).
        A picture that will not draw is logged, never fails the prediction already written."""
        try:
            jpeg = draw_boxes(data, result.predictions)
        except (OSError, ValueError) as e:
            log.warning("predict-images/%s: no annotated picture: %s", path, e)
            return
        self._results.upload_blob(
            annotated_path(path), jpeg, overwrite=True,
            metadata={_SOURCE_ETAG: etag.strip('"')},
            content_settings=ContentSettings(content_type="image/jpeg"),
        )

    def _reject(self, path: str, etag: str, prediction_id: str, project_id: str | None,
                rejection: Rejection, data: bytes | None = None) -> DropResult:
        code = str(rejection.reason)
        written = None
        if is_safe_blob_name(path):  # an unsafe name cannot be mirrored; its reason file says it
            self._write_result(path, etag,
                               error_result(prediction_id, project_id, code, rejection.message))
            written = result_path(path)
        moved = quarantine_blob(self.storage, names.PREDICT_IMAGES, path, rejection, etag=etag,
                                data=data, context={"predictionId": prediction_id})
        lifecycle_events.quarantined(self.storage, names.PREDICT_IMAGES, path, rejection, moved,
                                     etag)
        return DropResult(path, DropOutcome.REJECTED, written, prediction_id, code)
