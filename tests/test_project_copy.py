"""The service's own project copy (``export_project`` / ``import_project``) with the official SDK
over real HTTP to the local host and a real Azurite: classification and detection projects copy
with their tags, images (same bytes), regions and metadata and without iterations; a later change
to the source does not change what imports; retries and racing imports make one project; forged,
altered, expired, over-long and other-deployment tokens, unknown and deleted projects are refused
in Custom Vision's error shape.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
    Region,
)
from msrest.authentication import ApiKeyCredentials

from tests.conftest import TEST_TRAINING_KEY
from tests.drops import wait_for
from tests.model_factory import color_image
from visionpipe import names
from visionpipe.api import project_copy
from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID
from visionpipe.local.azurite import free_port, start_azurite
from visionpipe.settings import StorageSettings
from visionpipe.storage import Storage
from visionpipe.stores import project_copy as copies
from visionpipe.stores.label_store import LabelStore

TRAINING = {"Training-Key": TEST_TRAINING_KEY}
REPO = Path(__file__).resolve().parents[1]
OTHER_TRAINING_KEY = "other-deployment-training-key"
SHARED_COPY_KEY = "a-copy-key-both-deployments-share"


def _name() -> str:
    return f"copy-{uuid.uuid4().hex[:10]}"


def _refused(call: Any, status: int, code: str) -> str:
    with pytest.raises(CustomVisionErrorException) as raised:
        call()
    assert raised.value.response.status_code == status, raised.value.response.text
    assert raised.value.error.code == code
    return str(raised.value.error.message)


def _bytes_by_image(storage: Storage, store: LabelStore, project_id: str) -> dict[str, str]:
    """image id -> SHA-256 of the bytes its blob holds (read back from storage)."""
    out = {}
    for record in store.iter_images(project_id):
        data = storage.container(names.TRAINING_IMAGES).download_blob(
            record.blob_paths[0]).readall()
        out[record.id] = hashlib.sha256(data).hexdigest()
    return out


def _labels(trainer: CustomVisionTrainingClient, project_id: str) -> dict[str, Any]:
    """Everything a copy must keep, by names and ids that survive it."""
    tags = {t.name: (t.description, t.type, t.image_count) for t in trainer.get_tags(project_id)}
    images = {}
    for image in trainer.get_images(project_id, take=256):
        images[image.id] = (
            sorted(t.tag_name for t in image.tags or []),
            sorted((r.tag_name, round(r.left, 6), round(r.top, 6), round(r.width, 6),
                    round(r.height, 6)) for r in image.regions or []),
            image.metadata or {},
            (image.width, image.height),
        )
    return {"tags": tags, "images": images}


# --- classification ---------------------------------------------------------------------------
def test_classification_project_copies_and_later_changes_do_not_leak(
    trainer: CustomVisionTrainingClient, storage: Storage, label_store: LabelStore,
) -> None:
    source = trainer.create_project(_name(), description="kept", classification_type="Multilabel")
    red = trainer.create_tag(source.id, "red", description="warm")
    blue = trainer.create_tag(source.id, "blue")
    batch = ImageFileCreateBatch(images=[
        ImageFileCreateEntry(name="r.jpg", contents=color_image("red", seed=1), tag_ids=[red.id]),
        ImageFileCreateEntry(name="b.jpg", contents=color_image("blue", seed=2),
                             tag_ids=[blue.id]),
        ImageFileCreateEntry(name="rb.jpg", contents=color_image("green", seed=3),
                             tag_ids=[red.id, blue.id]),
    ], metadata={"camera": "north"})
    assert trainer.create_images_from_files(source.id, batch).is_batch_successful
    trainer.create_images_from_data(source.id, color_image((200, 200, 20), seed=4))  # untagged
    negative = trainer.create_tag(source.id, "nothing", type="Negative")
    trainer.create_images_from_data(source.id, color_image((90, 90, 90), seed=6),
                                    tag_ids=[negative.id])
    before = _labels(trainer, source.id)
    source_bytes = _bytes_by_image(storage, label_store, source.id)

    exported = trainer.export_project(source.id)
    assert (exported.image_count, exported.tag_count, exported.region_count,
            exported.iteration_count) == (5, 3, 0, 0)
    assert exported.token and exported.estimated_import_time_in_ms > 0

    # Changes after the export do not reach the import: a tag renamed, an image deleted, one more.
    red.name = "crimson"
    trainer.update_tag(source.id, red.id, red)
    deleted = next(i for i, v in before["images"].items() if v[0] == ["blue"])
    trainer.delete_images(source.id, [deleted])
    trainer.create_images_from_data(source.id, color_image((240, 240, 240), seed=5))

    target_name = _name()
    copied = trainer.import_project(exported.token, name=target_name)
    assert copied.id != source.id and copied.name == target_name
    assert copied.description == "kept"
    assert copied.settings.classification_type == "Multilabel"
    assert _labels(trainer, copied.id) == before
    assert _bytes_by_image(storage, label_store, copied.id) == source_bytes
    assert trainer.get_iterations(copied.id) == []  # models are not copied

    # A retry with the same token and name answers the same project and duplicates nothing.
    again = trainer.import_project(exported.token, name=target_name)
    assert again.id == copied.id
    assert _labels(trainer, copied.id) == before

    # Without a name: the source's name is taken, so the copy is "{name} (copy)"; once.
    unnamed = trainer.import_project(exported.token)
    assert unnamed.name == f"{source.name} (copy)"
    assert trainer.import_project(exported.token).id == unnamed.id
    assert _labels(trainer, unnamed.id) == before

    # A taken name the token did not create is the service's name error.
    _refused(lambda: trainer.import_project(exported.token, name=source.name), 400,
             "BadRequestProjectNameNotUnique")


# --- detection --------------------------------------------------------------------------------
def test_detection_project_copies_regions(trainer: CustomVisionTrainingClient,
                                          storage: Storage, label_store: LabelStore) -> None:
    source = trainer.create_project(_name(), domain_id=GENERAL_DETECTION_DOMAIN_ID)
    cat = trainer.create_tag(source.id, "cat")
    dog = trainer.create_tag(source.id, "dog", description="good")
    batch = ImageFileCreateBatch(images=[
        ImageFileCreateEntry(name="a.jpg", contents=color_image("red", seed=11), regions=[
            Region(tag_id=cat.id, left=0.1, top=0.1, width=0.5, height=0.5),
            Region(tag_id=dog.id, left=0.6, top=0.0, width=0.4, height=1.0)]),
        ImageFileCreateEntry(name="b.jpg", contents=color_image("blue", seed=12), regions=[
            Region(tag_id=dog.id, left=0.25, top=0.125, width=0.5, height=0.75)]),
    ], metadata={"site": "A"})
    assert trainer.create_images_from_files(source.id, batch).is_batch_successful
    before = _labels(trainer, source.id)
    exported = trainer.export_project(source.id)
    assert (exported.image_count, exported.tag_count, exported.region_count) == (2, 2, 3)

    copied = trainer.import_project(exported.token, name=_name())
    assert copied.settings.domain_id == GENERAL_DETECTION_DOMAIN_ID
    assert _labels(trainer, copied.id) == before
    assert (_bytes_by_image(storage, label_store, copied.id)
            == _bytes_by_image(storage, label_store, source.id))
    source_regions = {g.region_id for r in label_store.iter_images(source.id) for g in r.regions}
    copied_regions = {g.region_id for r in label_store.iter_images(copied.id) for g in r.regions}
    assert len(copied_regions) == 3 and not source_regions & copied_regions


def test_two_racing_imports_make_one_project(trainer: CustomVisionTrainingClient,
                                             label_store: LabelStore) -> None:
    source = trainer.create_project(_name())
    tag = trainer.create_tag(source.id, "only")
    trainer.create_images_from_files(source.id, ImageFileCreateBatch(images=[
        ImageFileCreateEntry(name=f"{i}.jpg", contents=color_image("red", seed=20 + i),
                             tag_ids=[tag.id]) for i in range(6)]))
    token = trainer.export_project(source.id).token
    name = _name()
    answers: list[Any] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            answers.append(trainer.import_project(token, name=name).id)
        except Exception as e:  # noqa: BLE001 - asserted below
            answers.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 2 and answers[0] == answers[1], answers
    assert [p.id for p in label_store.list_projects() if p.name == name] == [answers[0]]
    assert len(list(label_store.iter_images(answers[0]))) == 6
    assert len(label_store.list_tags(answers[0])) == 1


# --- hostile ----------------------------------------------------------------------------------
@pytest.fixture
def exported(trainer: CustomVisionTrainingClient) -> tuple[str, str]:
    """(source project id, token) of a small exported project."""
    source = trainer.create_project(_name())
    tag = trainer.create_tag(source.id, "t")
    trainer.create_images_from_data(source.id, color_image("red", seed=31), tag_ids=[tag.id])
    return source.id, trainer.export_project(source.id).token


def _resigned(token: str, **changes: Any) -> str:
    """``token`` with its claims changed and signed again with the real key (what only someone
    holding the key could make)."""
    key = project_copy.signing_key()
    parts = token.split(".")
    import json

    body = json.loads(project_copy._unb64(parts[1]))
    claims = project_copy.TokenClaims(body["p"], body["s"], body["d"], body["i"], body["e"],
                                      body.get("u", ""))
    values = {**claims.__dict__, **changes}
    return project_copy.make_token(project_copy.TokenClaims(**values), key)


def test_forged_tampered_expired_and_huge_tokens_are_refused(
    trainer: CustomVisionTrainingClient, exported: tuple[str, str], local_host: str,
) -> None:
    source_id, token = exported
    prefix, payload, signature = token.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    other_key = project_copy.make_token(project_copy.TokenClaims(
        source_id, str(uuid.uuid4()), "0" * 64, "x", int(time.time()) + 60), b"not the key")
    bad = {
        "garbage": "hello",
        "tampered payload": f"{prefix}.{flipped}.{signature}",
        "tampered signature": f"{prefix}.{payload}.{signature[::-1]}",
        "signed with another key": other_key,
        "no signature": f"{prefix}.{payload}.",
        "huge": f"{prefix}.{'A' * 5000}.{signature}",
        "expired": _resigned(token, expires=int(time.time()) - 1),
        "another deployment, no address": _resigned(token, deployment="elsewhere",
                                                    source_url=""),
        # names this host, which refuses it (not its deployment); fetching a private address
        # is refused before that anyway (no URL_FETCH_ALLOWED_NETWORKS)
        "another deployment, this address": _resigned(token, deployment="elsewhere"),
        "another snapshot digest": _resigned(token, digest="0" * 64),
    }
    for why, forged in bad.items():
        message = _refused(lambda t=forged: trainer.import_project(t, name=_name()), 400,
                           "BadRequestInvalidImportToken")
        assert why and message.startswith("Invalid import token")
    # an over-long query value is refused before the route reads it, still in the error shape
    response = httpx.post(f"{local_host}/customvision/v3.3/training/projects/import",
                          params={"token": "A" * 20_000}, headers=TRAINING)
    assert response.status_code == 400 and response.json()["code"]
    # no token, and no key
    response = httpx.post(f"{local_host}/customvision/v3.3/training/projects/import",
                          headers=TRAINING)
    assert (response.status_code, response.json()["code"]) == (400,
                                                               "BadRequestInvalidImportToken")
    response = httpx.post(f"{local_host}/customvision/v3.3/training/projects/import",
                          params={"token": token})
    assert response.status_code == 401
    # the real token still works after all that
    assert trainer.import_project(token, name=_name()).id


def test_a_changed_snapshot_is_refused(trainer: CustomVisionTrainingClient, storage: Storage,
                                       exported: tuple[str, str]) -> None:
    source_id, token = exported
    claims = project_copy.read_token(token, project_copy.signing_key(),
                                     _deployment(storage))
    path = copies.manifest_path(source_id, claims.export_id)
    blob = storage.container(names.DATASETS).get_blob_client(path)
    blob.upload_blob(blob.download_blob().readall().replace(b'"t"', b'"u"'), overwrite=True)
    _refused(lambda: trainer.import_project(token, name=_name()), 400,
             "BadRequestInvalidImportToken")


def _deployment(storage: Storage) -> str:
    return hashlib.sha256(storage.blobs.url.rstrip("/").encode()).hexdigest()[:24]


def test_unknown_and_deleted_projects_and_bad_names(trainer: CustomVisionTrainingClient,
                                                    exported: tuple[str, str],
                                                    storage: Storage) -> None:
    source_id, token = exported
    _refused(lambda: trainer.export_project(str(uuid.uuid4())), 404, "NotFoundProject")
    for bad in ("../escape", "a/b", " padded", "x" * 300):
        _refused(lambda n=bad: trainer.import_project(token, name=n), 400, "BadRequestProjectName")
    trainer.delete_project(source_id)
    _refused(lambda: trainer.import_project(token, name=_name()), 404, "NotFoundProject")
    # the snapshot went with the project
    leftovers = list(storage.container(names.DATASETS).list_blobs(
        name_starts_with=f"{source_id}/"))
    assert leftovers == []


def test_expired_exports_are_pruned_by_the_next_export(
    trainer: CustomVisionTrainingClient, storage: Storage, label_store: LabelStore,
    app_setting: Any,
) -> None:
    source = trainer.create_project(_name())
    tag = trainer.create_tag(source.id, "t")
    for seed in (41, 42):
        trainer.create_images_from_data(source.id, color_image("red", seed=seed),
                                        tag_ids=[tag.id])
    token = trainer.export_project(source.id).token
    claims = project_copy.read_token(token, project_copy.signing_key(), _deployment(storage))
    copied = trainer.import_project(token, name=_name())  # leaves a claim
    folder = f"{source.id}/{names.PROJECT_COPY_FOLDER}/"

    def blobs() -> set[str]:
        return {b.name[len(folder):] for b in storage.container(names.DATASETS).list_blobs(
            name_starts_with=folder)}

    first = blobs()
    assert f"exports/{claims.export_id}.json" in first
    assert any(b.startswith(f"imports/{claims.export_id}/") for b in first)
    assert sum(b.startswith("images/") for b in first) == 2
    # Nothing is pruned while the export is good; everything once it expired and aged.
    assert copies.prune(storage, source.id, 3600) == 0
    assert copies.prune(storage, source.id, 3600, now=time.time() + 2 * 86400) == len(first)
    assert blobs() == set()
    assert label_store.get_project(copied.id) is not None  # imports are projects of their own

    # Through the API: a short TTL, and the next export removes the expired one.
    app_setting(names.SETTING_PROJECT_COPY_TOKEN_TTL_SECONDS, "1")
    old = trainer.export_project(source.id).token
    time.sleep(1.1)
    _refused(lambda: trainer.import_project(old, name=_name()), 400,
             "BadRequestInvalidImportToken")
    old_id = project_copy.read_token(old, project_copy.signing_key(), _deployment(storage),
                                     now=0).export_id
    trainer.export_project(source.id)
    names_now = blobs()
    assert f"exports/{old_id}.json" not in names_now
    assert sum(b.startswith("exports/") for b in names_now) == 1
    assert sum(b.startswith("images/") for b in names_now) == 2  # copied again just now


# --- across deployments sharing the signing key -----------------------------------------------
@pytest.fixture
def other_deployment(tmp_path: Path) -> Iterator[str]:
    """A second deployment: its own Azurite and its own host process (another storage account,
    another training key), sharing only the project copy signing key; yields its URL."""
    azurite = start_azurite(tmp_path / "azurite", free_port(), free_port(), free_port(),
                            in_memory=True)
    port = free_port()
    env = {**os.environ, names.STORAGE_CONNECTION: azurite.connection_string,
           "AzureWebJobsStorage": azurite.connection_string,
           names.SETTING_TRAINING_KEY: OTHER_TRAINING_KEY,
           names.SETTING_PROJECT_COPY_SIGNING_KEY: SHARED_COPY_KEY, "PYTHONUNBUFFERED": "1"}
    Storage(StorageSettings.from_env(env)).ensure_resources()
    process = subprocess.Popen(
        [sys.executable, "-m", "visionpipe.local.host", "--port", str(port), "--settings",
         str(tmp_path / "none.json")], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=60)
        yield url
    finally:
        process.kill()  # nothing of it is kept: no need for its orderly shutdown
        process.wait(30)
        azurite.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_a_deployment_sharing_the_key_imports_anothers_export(
    other_deployment: str, trainer: CustomVisionTrainingClient, storage: Storage,
    label_store: LabelStore, app_setting: Any, local_host: str,
) -> None:
    source_trainer = CustomVisionTrainingClient(
        other_deployment, ApiKeyCredentials(in_headers={"Training-key": OTHER_TRAINING_KEY}))
    source = source_trainer.create_project(_name(), domain_id=GENERAL_DETECTION_DOMAIN_ID)
    cat = source_trainer.create_tag(source.id, "cat", description="meow")
    batch = ImageFileCreateBatch(images=[
        ImageFileCreateEntry(name=f"{i}.jpg", contents=color_image("red", seed=60 + i), regions=[
            Region(tag_id=cat.id, left=0.1 * i, top=0.1, width=0.5, height=0.5)])
        for i in range(3)], metadata={"site": "B"})
    assert source_trainer.create_images_from_files(source.id, batch).is_batch_successful
    before = _labels(source_trainer, source.id)
    token = source_trainer.export_project(source.id).token

    # Without the shared key here, the other deployment's token is a forgery.
    _refused(lambda: trainer.import_project(token, name=_name()), 400,
             "BadRequestInvalidImportToken")
    app_setting(names.SETTING_PROJECT_COPY_SIGNING_KEY, SHARED_COPY_KEY)
    # With it, the address is still an outbound request: a private one needs allowing.
    _refused(lambda: trainer.import_project(token, name=_name()), 400,
             "BadRequestInvalidImportToken")
    app_setting(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "127.0.0.0/8")
    name = _name()
    copied = trainer.import_project(token, name=name)
    assert _labels(trainer, copied.id) == before
    hashes = set(_bytes_by_image(storage, label_store, copied.id).values())
    assert len(hashes) == 3 and {r.sha256 for r in label_store.iter_images(copied.id)} == hashes
    assert trainer.import_project(token, name=name).id == copied.id  # a retry: the same one

    # The part route serves only what the token's manifest lists, and only with the token.
    part = f"{other_deployment}/visionpipe/v1/project-copies"
    assert httpx.get(f"{part}/manifest").json()["code"] == "BadRequestInvalidImportToken"
    assert httpx.get(f"{part}/{'0' * 64}", params={"token": token}).status_code == 404
    assert httpx.get(f"{part}/..%2F..%2Fx", params={"token": token}).status_code in (400, 404)
    # deleted at the source: the import is refused
    source_trainer.delete_project(source.id)
    _refused(lambda: trainer.import_project(token, name=_name()), 400,
             "BadRequestInvalidImportToken")
