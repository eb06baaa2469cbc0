"""The HTTP prediction routes: ``/classify/iterations/{publishedName}/{image|url}[/nostore]``
and, for object detection iterations, ``/detect/iterations/{publishedName}/{image|url}[/nostore]``.

Custom Vision's prediction API (v3.0 and v3.1) and the training API's quick test classify through
:func:`classify_image`, so both refuse the same images with the same codes; :func:`detect_image`
is its twin for detectors. Classify on a detector (or detect on a classifier) is a 400
``BadRequestNotSupported``. Errors are raised as :class:`~visionpipe.api.errors.ApiError` in the
service's shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from visionpipe.api import errors as api_errors
from visionpipe.api.context import RequestContext
from visionpipe.api.multipart import BadBody, image_from_body
from visionpipe.rejections import Reason, Rejection
from visionpipe.serving.core import (
    ModelUnavailable,
    NoPublishedIteration,
    PreparedImage,
    ServingCore,
    Session,
    UndecodableImage,
    WrongDomainType,
    get_serving,
)
from visionpipe.serving.results import PredictionResult
from visionpipe.settings import ImageLimits, get_settings
from visionpipe.storage import Storage
from visionpipe.stores import prediction_images
from visionpipe.stores.prediction_store import SOURCE_API, PredictionStore

log = logging.getLogger(__name__)


def predict_request(
    ctx: RequestContext,
    project_id: str,
    published_name: str,
    *,
    detect: bool,
    store: bool,
    body: bytes = b"",
    content_type: str | None = None,
    url: str | None = None,
    application: str = "",
    core: ServingCore | None = None,
) -> PredictionResult:
    """One ``/{classify|detect}/iterations/{publishedName}/{image|url}[/nostore]`` request (key
    already checked). The publication is resolved first, so nothing is read or fetched for an
    unknown project or name; a ``url`` is fetched by the one guarded fetcher (its SSRF refusals,
    size and time limits, a 400 ``BadRequestImageUrl`` for any failure), else the image is the
    request body. Raises :class:`~visionpipe.api.errors.ApiError` with Custom Vision's code."""
    core = core or get_serving()
    try:
        publication = core.resolve(project_id, published_name)
    except NoPublishedIteration as e:
        raise api_errors.iteration_not_found() from e
    limits = get_settings().prediction_limits
    if url is not None:
        from visionpipe.api.url_fetch import fetch_image

        data = fetch_image(url, limits.max_bytes)
    else:
        try:
            data = image_from_body(body, content_type)
        except BadBody as e:
            raise api_errors.bad_request("BadRequestImageStream", str(e)) from e
    run = detect_image if detect else classify_image
    return run(core, project_id, publication.iteration_id, data, limits, store=store,
               publish_name=published_name, application=application, storage=ctx.storage)


def classify_image(core: ServingCore, project_id: str, iteration_id: str, data: bytes,
                   limits: ImageLimits, *, store: bool, publish_name: str = "",
                   application: str = "", storage: Storage) -> PredictionResult:
    """Validate, classify and (``store``) record one image of an API request: the one path of
    the prediction routes and the training API's quick test, so both refuse the same images
    with the same codes (an undecodable image is a 400, never a 500)."""
    return _predict(core, project_id, iteration_id, data, limits,
                    lambda session, checked: PredictionResult.from_classification(
                        session.classify(checked)),
                    store=store, publish_name=publish_name, application=application,
                    storage=storage)


def detect_image(core: ServingCore, project_id: str, iteration_id: str, data: bytes,
                 limits: ImageLimits, *, store: bool, publish_name: str = "",
                 application: str = "", storage: Storage) -> PredictionResult:
    """Validate, detect and (``store``) record one image: ``predictions`` are boxes, best first,
    at most the manifest's ``maxDetections`` (200), no threshold beyond its tiny floor."""
    def boxes(session: Session, checked: PreparedImage) -> PredictionResult:
        return PredictionResult.from_detection(session.detect(checked))

    return _predict(core, project_id, iteration_id, data, limits, boxes, store=store,
                    publish_name=publish_name, application=application, storage=storage)


def _predict(core: ServingCore, project_id: str, iteration_id: str, data: bytes,
             limits: ImageLimits, run: Callable[[Session, PreparedImage], PredictionResult], *,
             store: bool, publish_name: str, application: str,
             storage: Storage) -> PredictionResult:
    """What classify and detect share: refuse an empty or invalid image, ``run`` the iteration's
    session on the one decode validation made, map serving's errors to the service's codes, and
    keep the picture and the row when ``store``."""
    if not data:
        raise api_errors.image_stream_missing()
    # Validation decodes at the model's scale and hands over the input: one decode per request.
    checked = core.prepare(project_id, data, limits, iteration_id=iteration_id)
    if isinstance(checked, Rejection):
        raise api_errors.from_rejection(checked)
    try:
        result = run(core.session(project_id, iteration_id), checked)
    except UndecodableImage as e:
        raise api_errors.bad_request("BadRequestImageFormat", f"{e} ({Reason.CORRUPT})") from e
    except WrongDomainType as e:  # before its base class: the caller's mistake, a 400
        raise wrong_domain_type(str(e)) from e
    except ModelUnavailable as e:
        log.error("prediction %s/%s: %s", project_id, iteration_id, e)
        raise api_errors.model_unavailable(str(e)) from e
    if store:  # the picture first, then the row that names it (as the service keeps both)
        kept = prediction_images.keep(storage, project_id, result.id, data,
                                      checked.image.format)
        PredictionStore(storage).record(result.stored(
            SOURCE_API, publish_name=publish_name, image_sha256=checked.sha256,
            application=application, blob_path=kept))
    return result


def wrong_domain_type(message: str) -> api_errors.ApiError:
    return api_errors.bad_request("BadRequestNotSupported", message)
