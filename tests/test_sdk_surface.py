"""The rest of the Custom Vision SDK's surface, with the official SDK over real HTTP to the local
host: errors the SDK can read for anything the app does not route, classify by URL, stored
predictions that keep their picture (the active-learning loop), image metadata and artifacts.

``tests/test_sdk_census.py`` checks that every SDK operation is exercised here (or elsewhere) or
listed as not supported.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any

import azure.functions as func
import httpx
import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.prediction.models import (
    CustomVisionErrorException as PredictionError,
)
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
    ImageIdCreateBatch,
    ImageIdCreateEntry,
    PredictionQueryToken,
)
from msrest.authentication import ApiKeyCredentials
from msrest.exceptions import HttpOperationError
from PIL import Image

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.model_factory import color_image
from visionpipe import names
from visionpipe.domains import DETECTION_DOMAIN_IDS
from visionpipe.local.azurite import free_port
from visionpipe.local.host import LocalHost
from visionpipe.manifest import MANIFEST_FILE, MODEL_FILE
from visionpipe.storage import Storage
from visionpipe.stores import prediction_images
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.prediction_store import PredictionStore
from visionpipe.stores.registry import Iteration, Registry

TRAINING = {"Training-Key": TEST_TRAINING_KEY}
DETECTION_GENERAL = "da2e3a8a-40a5-4171-82f4-58522f70fbc1"


def trainer_for(endpoint: str) -> CustomVisionTrainingClient:
    return CustomVisionTrainingClient(
        endpoint, ApiKeyCredentials(in_headers={"Training-key": TEST_TRAINING_KEY}))


def predictor_for(endpoint: str) -> CustomVisionPredictionClient:
    return CustomVisionPredictionClient(
        endpoint, ApiKeyCredentials(in_headers={"Prediction-key": TEST_PREDICTION_KEY}))


# --- routing: the local host orders routes as the Functions host does ---------------------------
def _answering(name: str) -> Callable[[func.HttpRequest], func.HttpResponse]:
    def handler(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(name)

    handler.__name__ = name
    return handler


def test_local_host_orders_routes_as_aspnet_routing_does() -> None:
    """Literal segments beat parameters, parameters beat a catch-all, segment by segment, in
    whatever order the routes were registered (ASP.NET routing's inbound precedence)."""
    app = func.FunctionApp()
    for name, route in (("catch_all", "x/{*rest}"), ("param", "x/{a}"),
                        ("param_first", "a/{x}/c"), ("literal_first", "a/b/{y}")):
        app.function_name(name)(app.route(route=route, methods=["GET"],
                                          auth_level=func.AuthLevel.ANONYMOUS)(_answering(name)))
    host = LocalHost(app, {"extensions": {"http": {"routePrefix": ""}}})

    def served_by(path: str) -> str:
        status, _, body = host.handle_http("GET", f"http://h{path}", {}, b"")
        assert status == 200, status
        return body.decode()

    assert served_by("/x/one") == "param"
    assert served_by("/x/one/two") == "catch_all"
    assert served_by("/a/b/c") == "literal_first"
    assert served_by("/a/z/c") == "param_first"


# --- errors for what no route takes -------------------------------------------------------------
def test_unknown_path_is_a_custom_vision_404_the_sdk_raises(local_host: str) -> None:
    """An SDK call that reaches no route raises the SDK's own exception (an empty 404 made SDK
    3.1.1 raise TypeError)."""
    nowhere = trainer_for(local_host + "/customvision/nowhere")
    with pytest.raises(CustomVisionErrorException) as raised:
        nowhere.get_projects()
    assert raised.value.error.code == "NotFound"
    with pytest.raises(PredictionError) as raised_p:
        predictor_for(local_host + "/customvision/nowhere").classify_image(
            str(uuid.uuid4()), "prod", color_image("red"))
    assert raised_p.value.error.code == "NotFound"

    for method, path in (("GET", "/customvision/v3.3/training/nothing"),
                         ("POST", "/customvision"),
                         ("DELETE", "/customvision/v3.3/training/projects/p/no/such/thing")):
        answer = httpx.request(method, local_host + path, headers=TRAINING)
        assert answer.status_code == 404, (method, path)
        assert answer.json()["code"] == "NotFound"
        assert set(answer.json()) == {"code", "message"}


def test_wrong_method_is_a_405_naming_the_allowed_ones(local_host: str,
                                                       trainer: CustomVisionTrainingClient) -> None:
    url = local_host + "/customvision/v3.3/training/projects"
    answer = httpx.put(url, headers=TRAINING)
    assert answer.status_code == 405
    assert answer.json()["code"] == "MethodNotAllowed"
    assert answer.headers["Allow"] == "GET, POST"
    # what every SDK operation does with an unexpected status: it reads the body as its error
    response = trainer._client.send(trainer._client.put(url, headers=TRAINING))
    error = CustomVisionErrorException(trainer._deserialize, response)
    assert error.error.code == "MethodNotAllowed"


def test_the_catch_all_leaves_other_routes_alone(local_host: str) -> None:
    """Literal routes, the portal and the health probe are not shadowed by the catch-all."""
    assert httpx.get(local_host + "/customvision/v3.3/training/domains",
                     headers=TRAINING).status_code == 200
    assert httpx.get(local_host + "/portal/").status_code == 200
    assert httpx.get(local_host + "/health").status_code in (200, 503)
    # a served path with a bad version is the route's own 404, not the catch-all's 405
    assert httpx.get(local_host + "/customvision/v9.9/training/projects",
                     headers=TRAINING).status_code == 404


def test_detection_projects_are_accepted(trainer: CustomVisionTrainingClient) -> None:
    """An object detection domain makes an object detection project (it used to be refused);
    an unknown domain id is still refused."""
    created = trainer.create_project(f"det-{uuid.uuid4().hex[:8]}", domain_id=DETECTION_GENERAL)
    try:
        assert created.settings.domain_id == DETECTION_GENERAL
        assert trainer.get_project(created.id).settings.domain_id == DETECTION_GENERAL
        assert trainer.get_domain(DETECTION_GENERAL).type == "ObjectDetection"
    finally:
        trainer.delete_project(created.id)
    with pytest.raises(CustomVisionErrorException) as unknown:
        trainer.create_project(f"det-{uuid.uuid4().hex[:8]}", domain_id=str(uuid.uuid4()))
    assert unknown.value.error.code == "BadRequestProjectUnknownDomain"


# --- classify by URL ----------------------------------------------------------------------------
@dataclass
class ImageServer:
    """A real HTTP server on 127.0.0.1 serving one picture at /red.jpg, counting requests."""

    port: int
    picture: bytes
    hits: list[str] = field(default_factory=list)

    def url(self, path: str = "/red.jpg") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server_state = ImageServer(free_port(), color_image("red", seed=31))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            server_state.hits.append(self.path)
            if self.path != "/red.jpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(server_state.picture)))
            self.end_headers()
            self.wfile.write(server_state.picture)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", server_state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server_state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _kept_blobs(storage: Storage, project_id: str, prediction_id: str) -> list[str]:
    return [b.name for b in storage.container(names.PREDICTION_IMAGES)
            .list_blobs(name_starts_with=f"{project_id}/{prediction_id}/")]


def test_classify_image_url_stores_and_nostore_keeps_nothing(
    predictor: CustomVisionPredictionClient, trainer: CustomVisionTrainingClient,
    storage: Storage, project: Project,
    published: Iteration, image_server: ImageServer,
    app_setting: Callable[[str, str | None], None],
) -> None:
    app_setting(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "127.0.0.0/8")
    stored = predictor.classify_image_url(project.id, "prod", url=image_server.url())
    assert stored.predictions[0].tag_name == "red" and stored.iteration == published.id
    row = PredictionStore(storage).get(project.id, stored.id)
    assert row is not None and row.image_sha256 == hashlib.sha256(image_server.picture).hexdigest()
    assert len(_kept_blobs(storage, project.id, stored.id)) == 2  # the picture and its thumbnail

    kept_nothing = predictor.classify_image_url_with_no_store(project.id, "prod",
                                                              url=image_server.url())
    assert kept_nothing.predictions[0].tag_name == "red"
    assert PredictionStore(storage).get(project.id, kept_nothing.id) is None
    assert _kept_blobs(storage, project.id, kept_nothing.id) == []
    assert image_server.hits == ["/red.jpg"] * 2

    # quick test by URL keeps its picture too (any Completed iteration, through the same fetcher)
    quick = trainer.quick_test_image_url(project.id, url=image_server.url(),
                                         iteration_id=published.id)
    assert quick.predictions[0].tag_name == "red"
    assert len(_kept_blobs(storage, project.id, quick.id)) == 2

    # v3.0 shares the routes
    v30 = httpx.post(f"{predictor.config.endpoint}/customvision/v3.0/prediction/{project.id}/"
                     "classify/iterations/prod/url/nostore",
                     json={"url": image_server.url()},
                     headers={"Prediction-Key": TEST_PREDICTION_KEY})
    assert v30.status_code == 200, v30.text


def test_classify_image_url_refuses_private_addresses(
    predictor: CustomVisionPredictionClient, project: Project, published: Iteration,
    image_server: ImageServer,
) -> None:
    """Without URL_FETCH_ALLOWED_NETWORKS a loopback URL is refused before any request."""
    for call in (predictor.classify_image_url, predictor.classify_image_url_with_no_store):
        with pytest.raises(PredictionError) as raised:
            call(project.id, "prod", url=image_server.url())
        assert raised.value.error.code == "BadRequestImageUrl"
        assert "127.0.0.1" not in raised.value.error.message
    with pytest.raises(PredictionError) as unknown:  # an unknown name: 404, nothing fetched
        predictor.classify_image_url(project.id, "nope", url=image_server.url())
    assert unknown.value.error.code == "NotFoundIteration"
    assert image_server.hits == []


# --- stored predictions keep their picture ------------------------------------------------------
def _picture(url: str) -> httpx.Response:
    answer = httpx.get(url, headers=TRAINING)
    assert answer.status_code == 200, answer.text
    return answer


def test_stored_prediction_keeps_its_picture_and_becomes_a_training_image(
    trainer: CustomVisionTrainingClient, predictor: CustomVisionPredictionClient,
    storage: Storage, label_store: LabelStore, project: Project, published: Iteration,
) -> None:
    """The active-learning loop: predict (stored), find it with its picture's URIs, add it to
    the training set with a tag."""
    picture = color_image("red", size=(640, 480), seed=41)
    prediction = predictor.classify_image(project.id, "prod", picture)
    private = predictor.classify_image_with_no_store(project.id, "prod",
                                                     color_image("red", seed=42))
    quick = trainer.quick_test_image(project.id, color_image("blue", seed=43),
                                     iteration_id=published.id)

    found = {p.id: p for p in trainer.query_predictions(
        project.id, PredictionQueryToken(order_by="Newest")).results}
    assert private.id not in found
    stored = found[prediction.id]
    original = _picture(stored.original_image_uri)
    assert original.content == picture
    thumbnail = Image.open(BytesIO(_picture(stored.thumbnail_uri).content))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= prediction_images.THUMBNAIL_SIDE
    assert found[quick.id].original_image_uri  # quick test keeps its picture too
    assert _picture(found[quick.id].original_image_uri).content == color_image("blue", seed=43)
    # the picture route wants the training key
    assert httpx.get(stored.original_image_uri).status_code == 401

    red = label_store.find_tag(project.id, "red")
    assert red is not None
    created = trainer.create_images_from_predictions(project.id, ImageIdCreateBatch(
        images=[ImageIdCreateEntry(id=prediction.id, tag_ids=[red.id]),
                ImageIdCreateEntry(id=private.id, tag_ids=[red.id])]))
    statuses = [i.status for i in created.images]
    assert statuses == ["OK", "ErrorSource"], statuses
    image = label_store.get_image(project.id, hashlib.sha256(picture).hexdigest())
    assert image is not None and image.tag_ids == (red.id,)


def test_prediction_picture_of_nothing_is_a_404(trainer: CustomVisionTrainingClient,
                                                local_host: str, project: Project) -> None:
    base = (f"{local_host}/customvision/v3.3/training/projects/{project.id}/predictions/"
            f"{uuid.uuid4()}")
    for kind in ("original", "thumbnail"):
        answer = httpx.get(f"{base}/{kind}", headers=TRAINING)
        assert answer.status_code == 404 and answer.json()["code"] == "NotFoundImage"


# --- image metadata -----------------------------------------------------------------------------
def test_image_metadata_is_set_at_upload_updated_and_returned(
    trainer: CustomVisionTrainingClient, label_store: LabelStore, project: Project,
) -> None:
    tag = trainer.create_tag(project.id, "green")
    created = trainer.create_images_from_files(project.id, ImageFileCreateBatch(
        images=[ImageFileCreateEntry(name="g.jpg", contents=color_image("green", seed=51),
                                     tag_ids=[tag.id])],
        metadata={"camera": "north"}))
    assert created.is_batch_successful
    image_id = created.images[0].image.id
    assert created.images[0].image.metadata == {"camera": "north"}

    unknown = str(uuid.uuid4())
    summary = trainer.update_image_metadata(project.id, [image_id, unknown], {"site": "A"})
    assert not summary.is_batch_successful  # 207: one image is unknown
    by_id = {e.image_id: e for e in summary.images}
    assert by_id[image_id].status == "OK"
    assert by_id[image_id].metadata == {"camera": "north", "site": "A"}
    assert by_id[unknown].status == "ErrorImageNotFound"
    [image] = trainer.get_images_by_ids(project.id, [image_id])
    assert image.metadata == {"camera": "north", "site": "A"}
    # a tag change keeps the metadata
    trainer.delete_image_tags(project.id, [image_id], [tag.id])
    assert trainer.get_images_by_ids(project.id, [image_id])[0].metadata == {
        "camera": "north", "site": "A"}

    # more than 10 pairs on one image: that image fails, nothing is written
    nine = {f"k{i}": "v" for i in range(9)}
    over = trainer.update_image_metadata(project.id, [image_id], nine)
    assert over.images[0].status == "ErrorLimitExceed"
    assert trainer.get_images_by_ids(project.id, [image_id])[0].metadata == {
        "camera": "north", "site": "A"}


@pytest.mark.parametrize(("ids", "metadata", "code"), [
    (1, {"k" * 129: "v"}, "BadRequestImageMetadataKey"),
    (1, {"": "v"}, "BadRequestImageMetadataKey"),
    (1, {"k": "v" * 257}, "BadRequestImageMetadataValue"),
    (1, {f"k{i}": "v" for i in range(11)}, "BadRequestImageMetadataKey"),
    (65, {"k": "v"}, "BadRequestExceededBatchSize"),
])
def test_image_metadata_limits_are_the_services(
    trainer: CustomVisionTrainingClient, project: Project, ids: int, metadata: dict[str, str],
    code: str,
) -> None:
    with pytest.raises(CustomVisionErrorException) as raised:
        trainer.update_image_metadata(project.id, [str(uuid.uuid4()) for _ in range(ids)],
                                      metadata)
    assert raised.value.error.code == code


def test_upload_with_bad_metadata_is_refused(trainer: CustomVisionTrainingClient,
                                             project: Project) -> None:
    with pytest.raises(CustomVisionErrorException) as raised:
        trainer.create_images_from_files(project.id, ImageFileCreateBatch(
            images=[ImageFileCreateEntry(name="g.jpg", contents=color_image("green", seed=52))],
            metadata={"k": "v" * 257}))
    assert raised.value.error.code == "BadRequestImageMetadataValue"


# --- artifacts ----------------------------------------------------------------------------------
def test_get_artifact_serves_an_iterations_artifacts(
    trainer: CustomVisionTrainingClient, registry: Registry, project: Project,
    published: Iteration,
) -> None:
    model = b"".join(trainer.get_artifact(project.id, f"{published.id}/{MODEL_FILE}"))
    assert model == registry.download_artifact(project.id, published.id, MODEL_FILE)
    manifest = json.loads(b"".join(trainer.get_artifact(project.id,
                                                        f"{published.id}/{MANIFEST_FILE}")))
    assert manifest["iterationId"] == published.id


def test_get_artifact_refuses_other_paths(
    trainer: CustomVisionTrainingClient, local_host: str, registry: Registry,
    label_store: LabelStore, project: Project, published: Iteration,
) -> None:
    from tests.model_factory import register_color_iteration

    other = label_store.create_project(f"other-{uuid.uuid4().hex[:8]}")
    theirs = register_color_iteration(registry, label_store, other)
    assert registry.download_artifact(other.id, theirs.id, MODEL_FILE)  # it is there
    url = f"{local_host}/customvision/v3.4-preview/training/projects/{project.id}/artifacts"
    for path in (f"{theirs.id}/{MODEL_FILE}",  # another project's iteration
                 f"../{other.id}/{theirs.id}/{MODEL_FILE}",
                 f"{published.id}/../../{other.id}/{theirs.id}/{MODEL_FILE}",
                 f"{published.id}/%2e%2e/{MODEL_FILE}",
                 f"{published.id}/config.json",  # not a served artifact
                 f"{published.id}",
                 f"/{published.id}/{MODEL_FILE}",
                 f"{published.id}//{MODEL_FILE}",
                 f"{uuid.uuid4()}/{MODEL_FILE}"):
        answer = httpx.get(url, params={"path": path}, headers=TRAINING)
        assert answer.status_code == 404, path
        assert answer.json()["code"] == "NotFound"
    with pytest.raises(HttpOperationError):
        b"".join(trainer.get_artifact(project.id, f"../{other.id}/{theirs.id}/{MODEL_FILE}"))
    no_key = httpx.get(url, params={"path": f"{published.id}/{MODEL_FILE}"})
    assert no_key.status_code == 401


# --- what is supported, said the same way everywhere --------------------------------------------
def test_every_listed_domain_is_accepted_compact_ones_included(
    trainer: CustomVisionTrainingClient,
) -> None:
    """``get_domains`` and project creation agree (the README says compact domains are
    supported), object detection domains included."""
    listed = trainer.get_domains()
    assert any("(compact)" in d.name for d in listed)
    assert {d.id for d in listed} >= DETECTION_DOMAIN_IDS
    for domain in listed:
        created = trainer.create_project(f"dom-{uuid.uuid4().hex[:8]}", domain_id=domain.id)
        try:
            assert created.settings.domain_id == domain.id
        finally:
            trainer.delete_project(created.id)


def test_pictures_older_than_the_retention_have_no_uris(
    trainer: CustomVisionTrainingClient, storage: Storage, project: Project,
    published: Iteration, app_setting: Callable[[str, str | None], None],
) -> None:
    """In Azure a lifecycle rule deletes pictures after PREDICTION_IMAGE_RETENTION_DAYS; a stored
    prediction older than that is answered without URIs (and its picture route is a 404)."""
    from datetime import UTC, datetime, timedelta

    from visionpipe.stores.prediction_store import SOURCE_API, StoredPrediction

    old_id = str(uuid.uuid4())
    kept = prediction_images.keep(storage, project.id, old_id, color_image("red", seed=61),
                                  "JPEG")
    PredictionStore(storage).record(StoredPrediction(
        old_id, project.id, published.id, datetime.now(UTC) - timedelta(days=31), (),
        SOURCE_API, blob_path=kept))

    def stored() -> Any:
        results = trainer.query_predictions(project.id, PredictionQueryToken()).results
        return next(p for p in results if p.id == old_id)

    assert stored().original_image_uri is None and stored().thumbnail_uri is None
    app_setting(names.SETTING_PREDICTION_IMAGE_RETENTION_DAYS, "60")
    assert stored().original_image_uri is not None
    assert _picture(stored().thumbnail_uri).headers["Content-Type"].startswith("image/jpeg")


def test_deleting_a_project_deletes_its_kept_pictures(
    trainer: CustomVisionTrainingClient, storage: Storage, registry: Registry,
    label_store: LabelStore, project: Project,
) -> None:
    from tests.model_factory import register_color_iteration

    iteration = register_color_iteration(registry, label_store, project)  # trained, unpublished
    quick = trainer.quick_test_image(project.id, color_image("green", seed=71),
                                     iteration_id=iteration.id)
    assert len(_kept_blobs(storage, project.id, quick.id)) == 2
    trainer.delete_project(project.id)
    assert _kept_blobs(storage, project.id, quick.id) == []
