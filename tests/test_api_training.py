"""Train, quick test and prediction-store routes over real HTTP (the local host)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from functions.training_api import TRAIN_ROUTE, train_project
from tests.conftest import TEST_TRAINING_KEY
from tests.model_factory import color_image, register_color_iteration
from tests.training_worker import own_request_queue
from visionpipe.api.training import dataset_fingerprint
from visionpipe.pipeline import publishing
from visionpipe.storage import Storage
from visionpipe.stores.label_store import ImageFacts, LabelStore, Project
from visionpipe.stores.prediction_store import PredictionStore
from visionpipe.stores.registry import IterationStatus, Registry

KEY = {"Training-Key": TEST_TRAINING_KEY}


@pytest.fixture(scope="module")
def request_queue(storage: Storage) -> Iterator[str]:
    """A queue of this module's own behind ``TRAINING_REQUESTS_QUEUE`` (Azurite is shared)."""
    with own_request_queue(storage, "tr-api") as name:
        yield name


@pytest.fixture(scope="module")
def client(local_host: str, request_queue: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_host + "/customvision/v3.4-preview/training",
                      headers=KEY, timeout=30) as c:
        yield c


def label(label_store: LabelStore, project: Project, tag_name: str, n: int) -> list[str]:
    """``n`` labelled image records under ``tag_name`` (bytes are never read by the route)."""
    tag = label_store.get_or_create_tag(project.id, tag_name)
    shas = []
    for i in range(n):
        sha = hashlib.sha256(f"{project.id}/{tag_name}/{i}".encode()).hexdigest()
        label_store.add_image(project, tag, ImageFacts(sha, 300, 300, "JPEG", 999),
                              f"{project.name}/{tag_name}/{i}.jpg")
        shas.append(sha)
    return shas


def queued(storage: Storage, queue: str) -> list[dict[str, object]]:
    messages = storage.queues.get_queue_client(queue).peek_messages(max_messages=32)
    return [json.loads(base64.b64decode(m.content)) for m in messages]


def test_binding_metadata() -> None:
    trigger = train_project.build().get_trigger().get_dict_repr()
    assert trigger["route"] == TRAIN_ROUTE == \
        "customvision/{apiVersion}/training/projects/{projectId}/train"
    assert [str(getattr(m, "value", m)) for m in trigger["methods"]] == ["POST"]


def test_train_creates_iteration_and_queues_request(
        client: httpx.Client, storage: Storage, registry: Registry, label_store: LabelStore,
        project: Project, request_queue: str) -> None:
    label(label_store, project, "cat", 5)
    label(label_store, project, "dog", 6)
    r = client.post(f"/projects/{project.id}/train",
                    params={"trainingType": "Regular", "reservedBudgetInHours": "0",
                            "forceTrain": "false", "notificationEmailAddress": "a@b.c"})
    assert r.status_code == 200, r.text
    it = r.json()
    assert it["status"] == "Training" and it["projectId"] == project.id
    assert it["name"] == "Iteration 1" and it["trainingType"] == "Regular"
    row = registry.get_iteration(project.id, it["id"])
    assert row is not None and row.status == IterationStatus.TRAINING
    assert row.dataset_fingerprint == dataset_fingerprint(
        label_store.list_images(project.id), [t.id for t in label_store.list_tags(project.id)])
    mine = [m for m in queued(storage, request_queue) if m.get("iterationId") == it["id"]]
    assert len(mine) == 1
    assert mine[0]["projectId"] == project.id and mine[0]["trainingType"] == "Regular"

    # A training in progress blocks another one.
    r = client.post(f"/projects/{project.id}/train")
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestTrainingAlreadyInProgress")

    # Completed, and nothing changed: refused unless forced.
    registry.update_iteration(project.id, it["id"], status=IterationStatus.COMPLETED)
    r = client.post(f"/projects/{project.id}/train")
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestTrainingNotNeeded")
    r = client.post(f"/projects/{project.id}/train", params={"forceTrain": "true"})
    assert r.status_code == 200 and r.json()["name"] == "Iteration 2"
    registry.update_iteration(project.id, r.json()["id"], status=IterationStatus.COMPLETED)

    # One more image is a change.
    label(label_store, project, "cat", 6)
    r = client.post(f"/projects/{project.id}/train", params={"trainingType": "Advanced",
                                                             "reservedBudgetInHours": "1"})
    assert r.status_code == 200
    assert (r.json()["trainingType"], r.json()["reservedBudgetInHours"]) == ("Advanced", 1)


def test_train_with_selected_tags(client: httpx.Client, storage: Storage,
                                  label_store: LabelStore, project: Project,
                                  request_queue: str) -> None:
    label(label_store, project, "a", 5)
    label(label_store, project, "b", 5)
    label(label_store, project, "c", 2)  # too few, but not selected
    tags = {t.name: t.id for t in label_store.list_tags(project.id)}
    r = client.post(f"/projects/{project.id}/train", json={"selectedTags": [tags["a"], tags["b"]]})
    assert r.status_code == 200, r.text
    mine = [m for m in queued(storage, request_queue) if m.get("iterationId") == r.json()["id"]]
    assert sorted(mine[0]["selectedTags"]) == sorted([tags["a"], tags["b"]])  # type: ignore


def test_train_refusals(client: httpx.Client, label_store: LabelStore,
                        project: Project, registry: Registry) -> None:
    label(label_store, project, "cat", 5)
    r = client.post(f"/projects/{project.id}/train")
    assert (r.status_code, r.json()["code"]) == (
        400, "BadRequestMultiClassClassificationTrainingValidationFailed")
    label(label_store, project, "dog", 4)
    r = client.post(f"/projects/{project.id}/train")
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestTrainingValidationFailed")
    assert "'dog' (4)" in r.json()["message"]
    r = client.post(f"/projects/{project.id}/train", params={"trainingType": "Turbo"})
    assert r.status_code == 400
    r = client.post(f"/projects/{project.id}/train", json={"selectedTags": [str(uuid.uuid4())]})
    assert (r.status_code, r.json()["code"]) == (404, "NotFoundTag")
    r = client.post(f"/projects/{uuid.uuid4()}/train")
    assert (r.status_code, r.json()["code"]) == (404, "NotFoundProject")
    r = client.post(f"/projects/{project.id}/train", headers={"Training-Key": "wrong"})
    assert r.status_code == 401
    assert registry.list_iterations(project.id) == []


# --- quick test -----------------------------------------------------------------------------------
def test_quick_test_unpublished_iteration(client: httpx.Client, storage: Storage,
                                          registry: Registry, label_store: LabelStore,
                                          project: Project) -> None:
    it = register_color_iteration(registry, label_store, project)
    other = register_color_iteration(registry, label_store, project, permutation=(1, 2, 0))
    url = f"/projects/{project.id}/quicktest/image"
    r = client.post(url, params={"iterationId": it.id, "store": "false"},
                    files={"imageData": ("red.jpg", color_image("red"), "image/jpeg")})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["iteration"] == it.id and result["project"] == project.id
    assert result["predictions"][0]["tagName"] == "red"
    assert PredictionStore(storage).get(project.id, result["id"]) is None

    # octet-stream, another iteration, stored (the service's default)
    r = client.post(url, params={"iterationId": other.id}, content=color_image("red", seed=3),
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    assert r.json()["predictions"][0]["tagName"] == "blue"
    assert PredictionStore(storage).get(project.id, r.json()["id"]) is not None

    # no iterationId: the published one, else the newest completed one
    r = client.post(url, content=color_image("green"))
    assert r.json()["iteration"] == other.id
    publishing.publish(registry, label_store, project.id, it.id, "prod")
    r = client.post(url, content=color_image("green"))
    assert r.json()["iteration"] == it.id and r.json()["predictions"][0]["tagName"] == "green"


def test_quick_test_refusals(client: httpx.Client, registry: Registry, label_store: LabelStore,
                             project: Project) -> None:
    url = f"/projects/{project.id}/quicktest/image"
    r = client.post(url, content=color_image("red"))
    assert (r.status_code, r.json()["code"]) == (404, "NotFoundProjectDefaultIteration")
    training = registry.create_iteration(project.id)
    r = client.post(url, params={"iterationId": training.id}, content=color_image("red"))
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestIterationIsNotTrained")
    it = register_color_iteration(registry, label_store, project)
    r = client.post(url, params={"iterationId": it.id}, content=b"not an image")
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestImageFormat")
    r = client.post(url, params={"iterationId": it.id}, content=b"")
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestImageStream")


@pytest.fixture
def image_server() -> Iterator[str]:
    picture = color_image("blue", seed=7)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/blue.jpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(picture)))
            self.end_headers()
            self.wfile.write(picture)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_quick_test_url(client: httpx.Client, registry: Registry, label_store: LabelStore,
                        project: Project, image_server: str,
                        app_setting: Callable[[str, str | None], None]) -> None:
    # The image server is on loopback, which the SSRF guard refuses unless the operator allows it.
    app_setting("URL_FETCH_ALLOWED_NETWORKS", "127.0.0.0/8")
    it = register_color_iteration(registry, label_store, project)
    url = f"/projects/{project.id}/quicktest/url"
    r = client.post(url, params={"iterationId": it.id, "store": "false"},
                    json={"url": image_server + "/blue.jpg"})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["tagName"] == "blue"
    r = client.post(url, json={"url": image_server + "/missing.jpg"})
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestImageUrl")
    r = client.post(url, json={"url": "file:///etc/passwd"})
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestImageUrl")


# --- the prediction store -----------------------------------------------------------------------
def test_query_delete_and_suggested(client: httpx.Client, storage: Storage, registry: Registry,
                                    label_store: LabelStore, project: Project) -> None:
    it = register_color_iteration(registry, label_store, project)
    url = f"/projects/{project.id}/quicktest/image"
    sure = client.post(url, params={"iterationId": it.id},
                       content=color_image("red", seed=1)).json()
    grey = client.post(url, params={"iterationId": it.id},
                       content=color_image((128, 128, 128), seed=2)).json()
    green = client.post(url, params={"iterationId": it.id},
                        content=color_image("green", seed=3)).json()
    red = label_store.find_tag(project.id, "red")
    assert red is not None

    q = f"/projects/{project.id}/predictions/query"
    everything = client.post(q, json={}).json()
    assert [p["id"] for p in everything["results"]] == [green["id"], grey["id"], sure["id"]]
    assert everything["token"]["continuation"] is None
    assert everything["results"][0]["predictions"][0]["tagName"] == "green"
    oldest = client.post(q, json={"orderBy": "Oldest", "maxCount": 2}).json()
    assert [p["id"] for p in oldest["results"]] == [sure["id"], grey["id"]]
    rest = client.post(q, json={**oldest["token"]}).json()
    assert [p["id"] for p in rest["results"]] == [green["id"]]
    reds = client.post(q, json={"tags": [{"id": red.id, "minThreshold": 0.5}],
                                "iterationId": it.id}).json()
    assert [p["id"] for p in reds["results"]] == [sure["id"]]
    assert client.post(q, json={"iterationId": str(uuid.uuid4())}).json()["results"] == []

    s = f"/projects/{project.id}/images/suggested"
    suggested = client.post(s, params={"iterationId": it.id}, json={}).json()
    assert suggested["results"][0]["id"] == grey["id"]  # the least certain first
    assert suggested["results"][0]["predictionUncertainty"] > \
        suggested["results"][-1]["predictionUncertainty"]
    counts = client.post(s + "/count", params={"iterationId": it.id},
                         json={"tagIds": [red.id], "threshold": 0.5}).json()
    assert counts == {red.id: 1}

    r = client.delete(f"/projects/{project.id}/predictions", params={"ids": f"{sure['id']},nope"})
    assert r.status_code == 204
    left = client.post(q, json={}).json()["results"]
    assert [p["id"] for p in left] == [green["id"], grey["id"]]
    r = client.delete(f"/projects/{project.id}/predictions")
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestPredictionIdsMissing")
