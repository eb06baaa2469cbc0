"""Predictions in Custom Vision's shape, for the HTTP routes and the ``predict-images`` drop folder.

Drop folder (DESIGN §2): ``predict-images/{project name}/{name}.{ext}`` gets its answer in
``predictions/{project name}/{name}.{ext}.json``: the ImagePrediction (DESIGN §4), or an error
``{"id", "project", "created", "error": {"code", "message"}}``. Whatever goes wrong with the input
(unknown project, refused image, nothing published) is answered in the result file *and* the
input is kept in quarantine with the same reason; nothing is dropped silently. A server-side
problem (a model that does not load) is answered in the result file and the input stays where it
is, so it can be dropped again once the model is fixed.

Event Grid delivers at least once: the prediction id comes from the blob's path and ETag, so a
redelivery writes the same result blob and the same prediction-store row again (nothing is
doubled); a redelivery after a quarantine finds nothing to do. The handler costs two storage round
trips on the happy path (download; result blob and store row written in parallel).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContentSettings

from visionpipe import api_errors, names
from visionpipe.api_models import iso
from visionpipe.blob_names import is_safe_blob_name, unsafe_reason
from visionpipe.events import BlobCreated
from visionpipe.label_store import LabelStore, Project
from visionpipe.multipart import BadBody, image_from_body
from visionpipe.prediction_store import (
    SOURCE_API,
    SOURCE_DROP,
    PredictionStore,
    StoredPrediction,
    TagProbability,
)
from visionpipe.quarantine import (
    REASON_SUFFIX,
    is_reserved_name,
    quarantine_blob,
    record_unsafe_name,
)
from visionpipe.rejections import Reason, Rejection
from visionpipe.serving import (
    Classification,
    ModelUnavailable,
    NoPublishedIteration,
    PreparedImage,
    ServingCore,
    UndecodableImage,
    get_serving,
)
from visionpipe.settings import ImageLimits, Settings, get_settings
from visionpipe.storage import Storage, get_storage

log = logging.getLogger(__name__)

RESULT_SUFFIX = ".json"
_ID_NAMESPACE = uuid.UUID("0b7f5d0e-3c2a-4f59-9a51-6c1e2d7f8a90")
_SOURCE_ETAG = "sourceetag"  # result blob metadata: the input version the result answers
#: How long a drop folder's project name -> project lookup is reused (a rename or delete through
#: the API is seen by the drop folder after at most this long).
PROJECT_CACHE_SECONDS = 30.0

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _background() -> ThreadPoolExecutor:
    """A few threads for storage writes that can overlap (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="visionpipe-io")
        return _pool

PREDICTION_API_VERSIONS = ("v3.0", "v3.1")

#: Reason codes of the drop folder beyond validation's (DESIGN §3 codes are shared).
NO_PUBLISHED_ITERATION = Reason.NO_PUBLISHED_ITERATION
MODEL_UNAVAILABLE = Reason.MODEL_UNAVAILABLE


class DropOutcome(StrEnum):
    PREDICTED = "predicted"
    REJECTED = "rejected"  # error result + input quarantined
    FAILED = "failed"  # error result, input left in place (server-side problem)
    GONE = "gone"  # the input no longer exists (an earlier delivery quarantined it)


def now_iso(moment: datetime | None = None) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``, as Custom Vision writes ``created``."""
    return iso(moment or datetime.now(UTC)) or ""


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
            predictions=tuple(TagProbability(p, tag_id, name) for p, tag_id, name in c.ranked()),
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
            classification = self.core.classify(project.id, checked)
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

        result = PredictionResult.from_classification(classification, prediction_id)
        publication = self.core.publications(project.id).for_iteration(result.iteration_id)
        row = result.stored(
            SOURCE_DROP,
            publish_name=publication.publish_name if publication else "",
            blob_path=f"{names.PREDICT_IMAGES}/{path}",
            image_sha256=checked.sha256,
        )
        # The result blob and the store row are independent writes: one round trip, not two.
        stored = _background().submit(self.store.record, row)
        self._write_result(path, etag, result.to_dict())
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

    def _reject(self, path: str, etag: str, prediction_id: str, project_id: str | None,
                rejection: Rejection, data: bytes | None = None) -> DropResult:
        code = str(rejection.reason)
        written = None
        if is_safe_blob_name(path):  # an unsafe name cannot be mirrored; its reason file says it
            self._write_result(path, etag,
                               error_result(prediction_id, project_id, code, rejection.message))
            written = result_path(path)
        quarantine_blob(self.storage, names.PREDICT_IMAGES, path, rejection, etag=etag,
                        data=data, context={"predictionId": prediction_id})
        return DropResult(path, DropOutcome.REJECTED, written, prediction_id, code)


# --- the HTTP prediction routes -------------------------------------------------------------------
def classify_request(
    project_id: str,
    published_name: str,
    body: bytes,
    content_type: str | None,
    *,
    store: bool,
    application: str = "",
    core: ServingCore | None = None,
) -> PredictionResult:
    """One ``/classify/iterations/{publishedName}/image[/nostore]`` request (key already
    checked). Raises :class:`~visionpipe.api_errors.ApiError` with Custom Vision's code."""
    core = core or get_serving()
    try:
        publication = core.resolve(project_id, published_name)
    except NoPublishedIteration as e:
        raise api_errors.iteration_not_found() from e
    try:
        data = image_from_body(body, content_type)
    except BadBody as e:
        raise api_errors.bad_request("BadRequestImageStream", str(e)) from e
    return classify_image(core, project_id, publication.iteration_id, data,
                          get_settings().prediction_limits, store=store,
                          publish_name=published_name, application=application)


def classify_image(core: ServingCore, project_id: str, iteration_id: str, data: bytes,
                   limits: ImageLimits, *, store: bool, publish_name: str = "",
                   application: str = "", storage: Storage | None = None) -> PredictionResult:
    """Validate, classify and (``store``) record one image of an API request: the one path of
    the prediction routes and the training API's quick test, so both refuse the same images
    with the same codes (an undecodable image is a 400, never a 500)."""
    if not data:
        raise api_errors.image_stream_missing()
    # Validation decodes at the model's scale and hands over the input: one decode per request.
    checked = core.prepare(project_id, data, limits, iteration_id=iteration_id)
    if isinstance(checked, Rejection):
        raise api_errors.from_rejection(checked)
    try:
        classification = core.session(project_id, iteration_id).classify(checked)
    except UndecodableImage as e:
        raise api_errors.bad_request("BadRequestImageFormat", f"{e} ({Reason.CORRUPT})") from e
    except ModelUnavailable as e:
        log.error("prediction %s/%s: %s", project_id, iteration_id, e)
        raise api_errors.model_unavailable(str(e)) from e
    result = PredictionResult.from_classification(classification)
    if store:
        PredictionStore(storage or get_storage()).record(result.stored(
            SOURCE_API, publish_name=publish_name, image_sha256=checked.sha256,
            application=application))
    return result
