"""Deleting a project removes everything it owns, and is refused while it trains.

A project is built with one of everything (API and drop-folder images, tags, iterations with
model blobs and a dataset split, the published pointer, a held training lock, stored predictions
and their blobs, predict drops, quarantine entries under the name and under its digest), deleted
over real HTTP, and then every container and every table is listed for anything that still
carries its id or its name.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_TRAINING_KEY
from tests.model_factory import color_image, register_color_iteration
from tests.training_worker import own_request_queue
from visionpipe import names
from visionpipe.pipeline.publishing import publish, unpublish
from visionpipe.rejections import Reason, Rejection
from visionpipe.storage import Storage
from visionpipe.stores.label_store import ImageFacts, LabelStore, Project, name_key
from visionpipe.stores.prediction_store import (
    SOURCE_API,
    PredictionStore,
    StoredPrediction,
    TagProbability,
)
from visionpipe.stores.quarantine import (
    REASON_SUFFIX,
    digest_path,
    quarantine_blob,
    record_unsafe_name,
)
from visionpipe.stores.registry import IterationStatus, Registry

KEY = {"Training-Key": TEST_TRAINING_KEY}
ROUNDS = 5


@pytest.fixture(scope="module")
def request_queue(storage: Storage) -> Iterator[str]:
    """A queue of this module's own behind ``TRAINING_REQUESTS_QUEUE`` (Azurite is shared)."""
    with own_request_queue(storage, "tr-del") as name:
        yield name


@pytest.fixture(scope="module")
def api(local_host: str, request_queue: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_host + "/customvision/v3.3/training", headers=KEY,
                      timeout=60) as client:
        yield client


def code_of(response: httpx.Response) -> str:
    return str(response.json().get("code", ""))


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(calls))

    def one(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(one, calls))


def upload_files(api: httpx.Client, project_id: str, images: list[bytes],
                 tag_ids: list[str]) -> httpx.Response:
    body = {"images": [{"name": f"{i}.jpg", "contents": base64.b64encode(d).decode()}
                       for i, d in enumerate(images)], "tagIds": tag_ids}
    return api.post(f"/projects/{project_id}/images/files", json=body)


def put(storage: Storage, container: str, path: str, data: bytes = b"x") -> None:
    storage.container(container).upload_blob(path, data, overwrite=True)


def leftovers(storage: Storage, project: Project) -> list[str]:
    """Every blob and row, in every container and table, that names the project."""
    name = project.name.casefold()
    hint = name_key(project.name)[:16]
    found = []
    for container in names.CONTAINERS:
        for blob in storage.container(container).list_blobs():
            text = blob.name.casefold()
            if project.id in text or name in text or f"/{hint}/" in text:
                found.append(f"{container}/{blob.name}")
    for table in names.TABLES:
        for row in storage.table(table).list_entities():
            values = [str(v).casefold() for v in row.values()]
            if any(project.id in v or name in v for v in values):
                found.append(f"table {table}: {row['PartitionKey']}/{row['RowKey']}")
    return found


def trainable(label_store: LabelStore, project: Project) -> None:
    for tag_name in ("a", "b"):
        tag = label_store.get_or_create_tag(project.id, tag_name)
        for i in range(5):
            sha = f"{uuid.uuid4().hex}{uuid.uuid4().hex}"
            label_store.add_image(project, tag, ImageFacts(sha, 300, 300, "JPEG", 999),
                                  f"{project.name}/{tag_name}/{i}.jpg")


def test_delete_removes_everything_the_project_owns(
        api: httpx.Client, storage: Storage, label_store: LabelStore, registry: Registry,
        project_name: str) -> None:
    created = api.post("/projects", params={"name": project_name})
    assert created.status_code == 200, created.text
    project = label_store.get_project(created.json()["id"])
    assert project is not None
    # Images and tags through the API (records, blobs in training-images/{name}/).
    tag = api.post(f"/projects/{project.id}/tags", params={"name": "red"}).json()
    assert upload_files(api, project.id, [color_image("red", seed=i) for i in range(3)],
                        [tag["id"]]).status_code == 200
    # A drop-folder image, under another spelling of the name (names are case-free).
    drop_path = f"{project.name.upper()}/red/drop.jpg"
    data = color_image("red", seed=99)
    put(storage, names.TRAINING_IMAGES, drop_path, data)
    import hashlib

    red = label_store.find_tag(project.id, "red")
    assert red is not None
    label_store.add_image(project, red, ImageFacts(hashlib.sha256(data).hexdigest(), 320, 320,
                                                   "JPEG", len(data)), drop_path)
    # Iterations: one with its model blobs, published then unpublished (the pointer stays),
    # one that failed (the lock row stays), the dataset split of each.
    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")
    unpublish(registry, project.id, iteration.id)
    failed = registry.start_training(project.id)
    registry.update_iteration(project.id, failed.id, status=IterationStatus.FAILED)
    for it in (iteration, failed):
        put(storage, names.DATASETS, f"{project.id}/{it.id}.jsonl", b"{}\n")
    # Predictions: store rows, a predict drop and its result blob.
    PredictionStore(storage).record(StoredPrediction(
        str(uuid.uuid4()), project.id, iteration.id, datetime.now(UTC),
        (TagProbability(0.9, tag["id"], "red"),), SOURCE_API))
    put(storage, names.PREDICT_IMAGES, f"{project.name}/p.jpg")
    put(storage, names.PREDICTIONS, f"{project.name}/p.jpg.json", b"{}")
    # Quarantine: a moved drop, and an unsafe name's record under the name's digest folder.
    put(storage, names.TRAINING_IMAGES, f"{project.name}/red/bad.jpg", b"not an image")
    quarantine_blob(storage, names.TRAINING_IMAGES, f"{project.name}/red/bad.jpg",
                    Rejection(Reason.CORRUPT, "test"))
    record_unsafe_name(storage, names.PREDICT_IMAGES, f"{project.name}/a%2e%2e/x.jpg")
    assert storage.container(names.QUARANTINE).get_blob_client(
        digest_path(names.PREDICT_IMAGES, f"{project.name}/a%2e%2e/x.jpg")
        + REASON_SUFFIX).exists()
    # A detection drop's pending pair (a box file waiting for its image).
    from visionpipe.stores.annotation_pairs import AnnotationPairs

    AnnotationPairs(storage).note_source(project.id, f"{project.name}/boxes/a.jpg",
                                         f"{project.name}/boxes/a.xml")
    before = leftovers(storage, project)
    for expected in (names.TRAINING_IMAGES, names.MODELS, names.DATASETS, names.PREDICT_IMAGES,
                     names.PREDICTIONS, names.QUARANTINE, "table projects", "table tags",
                     "table images", "table iterations", "table predictions",
                     f"table {names.ANNOTATION_PAIRS_TABLE}"):
        assert any(f.startswith(expected) for f in before), f"the setup has no {expected}"

    deleted = api.delete(f"/projects/{project.id}")
    assert deleted.status_code == 204, deleted.text

    assert leftovers(storage, project) == []
    assert api.get(f"/projects/{project.id}").status_code == 404
    # The name is free again.
    again = api.post("/projects", params={"name": project.name})
    assert again.status_code == 200, again.text


@pytest.mark.parametrize("status", ["Training", "Queued"])
def test_delete_is_refused_while_a_training_is_in_progress(
        api: httpx.Client, storage: Storage, label_store: LabelStore, registry: Registry,
        project: Project, status: str) -> None:
    trainable(label_store, project)
    r = api.post(f"/projects/{project.id}/train")
    assert r.status_code == 200, r.text
    iteration_id = r.json()["id"]
    registry.update_iteration(project.id, iteration_id, status=status)
    before = leftovers(storage, project)

    refused = api.delete(f"/projects/{project.id}")
    assert (refused.status_code, code_of(refused)) == (400, "BadRequestTrainingAlreadyInProgress")
    assert set(refused.json()) == {"code", "message"}
    assert leftovers(storage, project) == before  # nothing was deleted

    registry.update_iteration(project.id, iteration_id, status=IterationStatus.FAILED)
    assert api.delete(f"/projects/{project.id}").status_code == 204
    assert leftovers(storage, project) == []


def test_delete_racing_train(api: httpx.Client, storage: Storage, request_queue: str,
                             label_store: LabelStore, registry: Registry) -> None:
    """Either the training wins (the delete is refused) or the delete does (nothing is left,
    no training is queued for the deleted project)."""
    outcomes = []
    for _ in range(ROUNDS):
        project = label_store.create_project(f"test-{uuid.uuid4().hex[:10]}")
        trainable(label_store, project)
        train, delete = race([lambda p=project: api.post(f"/projects/{p.id}/train"),
                              lambda p=project: api.delete(f"/projects/{p.id}")])
        outcomes.append((train.status_code, delete.status_code))
        if delete.status_code == 204:
            assert train.status_code in (400, 404), train.text
            assert leftovers(storage, project) == []
        else:
            assert (delete.status_code, code_of(delete)) == (
                400, "BadRequestTrainingAlreadyInProgress")
            assert train.status_code == 200
            assert label_store.get_project(project.id) is not None
            assert [i.id for i in registry.list_iterations(project.id)] == [train.json()["id"]]
        queue = storage.queues.get_queue_client(request_queue)
        messages = [base64.b64decode(m.content) for m in queue.peek_messages(max_messages=32)]
        assert sum(project.id.encode() in m for m in messages) == (
            1 if train.status_code == 200 else 0)
        queue.clear_messages()


def test_delete_racing_uploads(api: httpx.Client, storage: Storage,
                               label_store: LabelStore) -> None:
    """Images uploaded while the project is deleted leave no records and no tags behind."""
    images = [color_image("green", seed=1000 + i) for i in range(ROUNDS * 24)]
    for round_ in range(ROUNDS):
        project = label_store.create_project(f"test-{uuid.uuid4().hex[:10]}")
        tag = label_store.create_tag(project.id, "green")
        batch = images[round_ * 24:(round_ + 1) * 24]
        upload, delete = race([
            lambda p=project, b=batch, t=tag.id: upload_files(api, p.id, b, [t]),
            lambda p=project: api.delete(f"/projects/{p.id}")])
        assert delete.status_code == 204, delete.text
        assert upload.status_code in (200, 207, 404), upload.text
        assert list(label_store.iter_images(project.id)) == [], f"round {round_}"
        assert label_store.list_tags(project.id) == []
        assert label_store.get_project(project.id) is None
