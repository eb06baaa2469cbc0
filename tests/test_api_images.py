"""Image uploads, queries, image tags and deletes through the real SDK and raw HTTP."""

from __future__ import annotations

import base64
import http.server
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
    ImageIdCreateBatch,
    ImageIdCreateEntry,
    ImageTagCreateEntry,
    ImageUrlCreateBatch,
    ImageUrlCreateEntry,
)
from msrest.authentication import ApiKeyCredentials

from tests.conftest import TEST_TRAINING_KEY
from visionpipe import names
from visionpipe.api.models import REASON_STATUS
from visionpipe.api.url_fetch import SETTING_ALLOWED_NETWORKS
from visionpipe.local.samples import bad_files, make_image
from visionpipe.rejections import Reason
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore
from visionpipe.stores.prediction_store import PredictionStore, StoredPrediction

HEADERS = {"Training-Key": TEST_TRAINING_KEY}


@pytest.fixture(scope="module")
def trainer(local_host: str) -> Iterator[CustomVisionTrainingClient]:
    client = CustomVisionTrainingClient(
        local_host, ApiKeyCredentials(in_headers={"Training-key": TEST_TRAINING_KEY}))
    yield client
    client.close()  # a kept-alive connection would hold the local host's shutdown


@pytest.fixture
def project_id(trainer: CustomVisionTrainingClient, project_name: str) -> str:
    return str(trainer.create_project(project_name).id)


def images_url(local_host: str, project_id: str, suffix: str = "") -> str:
    return f"{local_host}/customvision/v3.4-preview/training/projects/{project_id}/images{suffix}"


def file_entry(data: bytes, name: str = "x.jpg", tag_ids: list[str] | None = None) -> dict:
    return {"name": name, "contents": base64.b64encode(data).decode(), "tagIds": tag_ids}


def test_files_upload_lands_in_the_store(trainer: CustomVisionTrainingClient, project_id: str,
                                         project_name: str, storage: Storage,
                                         label_store: LabelStore, local_host: str) -> None:
    tag = trainer.create_tag(project_id, "cat")
    data = make_image("circle", 1)
    summary = trainer.create_images_from_files(project_id, ImageFileCreateBatch(
        images=[ImageFileCreateEntry(name="a.jpg", contents=data)], tag_ids=[tag.id]))
    assert summary.is_batch_successful
    result = summary.images[0]
    assert result.status == "OK"
    image = result.image
    assert (image.width, image.height) == (320, 320)
    assert [(t.tag_id, t.tag_name) for t in image.tags] == [(tag.id, "cat")]

    record = label_store.find_image(project_id, image.id)
    assert record is not None and record.tag_ids == (tag.id,)
    assert record.blob_paths == (f"{project_name}/cat/{image.id}.jpg",)
    blob = storage.container(names.TRAINING_IMAGES).get_blob_client(record.blob_paths[0])
    assert blob.download_blob().readall() == data

    original = httpx.get(image.original_image_uri, headers=HEADERS)
    assert original.status_code == 200 and original.content == data
    assert original.headers["content-type"].startswith("image/jpeg")

    again = trainer.create_images_from_files(project_id, ImageFileCreateBatch(
        images=[ImageFileCreateEntry(name="b.jpg", contents=data, tag_ids=[tag.id])]))
    assert again.is_batch_successful
    assert again.images[0].status == "OKDuplicate"
    assert again.images[0].image.id == image.id
    assert trainer.get_tagged_image_count(project_id) == 1


def test_batch_over_64_is_refused(local_host: str, project_id: str) -> None:
    data = make_image("square", 2, size=(256, 256))
    body = {"images": [file_entry(data, f"{i}.jpg") for i in range(65)]}
    r = httpx.post(images_url(local_host, project_id, "/files"), json=body, headers=HEADERS)
    assert r.status_code == 400
    assert r.json()["code"] == "BadRequestImageBatch"


def test_mixed_batch_is_207_with_statuses(local_host: str, project_id: str,
                                          trainer: CustomVisionTrainingClient) -> None:
    bad = bad_files()
    chosen = ["empty.jpg", "notes.jpg", "truncated.jpg", "tiny.png", "sliver.jpg",
              "claims_12000x600.bmp", "bomb_20000.png", "huge.jpg"]
    good = make_image("checker", 3)
    entries = [file_entry(good, "good.jpg")] + [file_entry(bad[n][0], n) for n in chosen]
    r = httpx.post(images_url(local_host, project_id, "/files"), json={"images": entries},
                   headers=HEADERS, timeout=60)
    assert r.status_code == 207
    body = r.json()
    assert body["isBatchSuccessful"] is False
    statuses = [i["status"] for i in body["images"]]
    expected = ["OK"] + [str(REASON_STATUS[Reason(bad[n][1])]) for n in chosen]
    assert statuses == expected
    assert "ErrorImageFormat" in statuses and "ErrorImageSize" in statuses
    assert "ErrorImageDimensions" in statuses
    assert body["images"][1]["image"] is None
    assert trainer.get_untagged_image_count(project_id) == 1  # only the good one


def test_multipart_and_raw_uploads(local_host: str, project_id: str,
                                   trainer: CustomVisionTrainingClient) -> None:
    tag = trainer.create_tag(project_id, "dog")
    files = [("imageData", (f"{i}.jpg", make_image("stripes", i), "image/jpeg"))
             for i in range(3)]
    r = httpx.post(images_url(local_host, project_id), params={"tagIds": tag.id}, files=files,
                   headers=HEADERS)
    assert r.status_code == 200, r.text
    assert [i["status"] for i in r.json()["images"]] == ["OK"] * 3
    raw = httpx.post(images_url(local_host, project_id), content=make_image("stripes", 9),
                     headers={**HEADERS, "Content-Type": "application/octet-stream"})
    assert raw.status_code == 200 and raw.json()["images"][0]["status"] == "OK"
    # the SDK's own multipart
    summary = trainer.create_images_from_data(project_id, make_image("stripes", 10),
                                              tag_ids=[tag.id])
    assert summary.is_batch_successful
    assert trainer.get_tagged_image_count(project_id) == 4
    assert trainer.get_untagged_image_count(project_id) == 1
    bad = trainer.create_images_from_data(project_id, b"not an image")
    assert not bad.is_batch_successful and bad.images[0].status == "ErrorImageFormat"
    unknown = trainer.create_images_from_data(project_id, make_image("stripes", 11),
                                              tag_ids=[str(uuid.uuid4())])
    assert unknown.images[0].status == "ErrorInvalidTag"


def test_untagged_then_tagged_queries_and_deletes(trainer: CustomVisionTrainingClient,
                                                  project_id: str, storage: Storage,
                                                  label_store: LabelStore) -> None:
    cat = trainer.create_tag(project_id, "cat")
    dog = trainer.create_tag(project_id, "dog")
    ids = [trainer.create_images_from_data(project_id, make_image("circle", i)).images[0].image.id
           for i in range(3)]
    assert {i.id for i in trainer.get_untagged_images(project_id)} == set(ids)
    assert trainer.get_tagged_images(project_id) == []

    created = trainer.create_image_tags(project_id, tags=[
        ImageTagCreateEntry(image_id=ids[0], tag_id=cat.id),
        ImageTagCreateEntry(image_id=ids[1], tag_id=cat.id),
        ImageTagCreateEntry(image_id=ids[1], tag_id=dog.id),  # multiclass: a second tag
    ])
    assert {(e.image_id, e.tag_id) for e in created.created} == {(ids[0], cat.id),
                                                                (ids[1], cat.id)}
    assert [(e.image_id, e.tag_id) for e in created.exceeded] == [(ids[1], dog.id)]
    again = trainer.create_image_tags(project_id, tags=[
        ImageTagCreateEntry(image_id=ids[0], tag_id=cat.id)])
    assert [e.image_id for e in again.duplicated] == [ids[0]]

    tagged = trainer.get_tagged_images(project_id, tag_ids=[cat.id])
    assert {i.id for i in tagged} == {ids[0], ids[1]}
    assert [i.id for i in trainer.get_tagged_images(project_id, order_by="Oldest", take=1)] == [
        ids[0]]
    assert [i.id for i in trainer.get_tagged_images(project_id, take=1, skip=1)] == [ids[0]]
    assert trainer.get_untagged_image_count(project_id) == 1
    assert len(trainer.get_images(project_id)) == 3
    assert trainer.get_image_count(project_id, tagging_status="Tagged") == 2
    by_id = trainer.get_images_by_ids(project_id, image_ids=[ids[2], ids[0], str(uuid.uuid4())])
    assert [i.id for i in by_id] == [ids[2], ids[0]]
    assert by_id[1].tags[0].tag_name == "cat"

    trainer.delete_image_tags(project_id, image_ids=[ids[1]], tag_ids=[cat.id])
    assert trainer.get_tagged_image_count(project_id) == 1

    record = label_store.find_image(project_id, ids[2])
    assert record is not None
    trainer.delete_images(project_id, image_ids=[ids[2]])
    assert label_store.find_image(project_id, ids[2]) is None
    blob = storage.container(names.TRAINING_IMAGES).get_blob_client(record.blob_paths[0])
    assert not blob.exists()
    trainer.delete_images(project_id, all_images=True)
    assert trainer.get_images(project_id) == []


def test_multiclass_refuses_two_tags_multilabel_takes_them(
        trainer: CustomVisionTrainingClient, project_id: str) -> None:
    a, b = trainer.create_tag(project_id, "a"), trainer.create_tag(project_id, "b")
    summary = trainer.create_images_from_data(project_id, make_image("square", 5),
                                              tag_ids=[a.id, b.id])
    assert summary.images[0].status == "ErrorTagLimitExceed"

    project = trainer.get_project(project_id)
    project.settings.classification_type = "Multilabel"
    trainer.update_project(project_id, project)
    summary = trainer.create_images_from_data(project_id, make_image("square", 5),
                                              tag_ids=[a.id, b.id])
    assert summary.images[0].status == "OK"
    assert {t.tag_name for t in summary.images[0].image.tags} == {"a", "b"}
    project.settings.classification_type = "Multiclass"
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.update_project(project_id, project)
    assert exc.value.error.code == "BadRequestNotSupported"


class _Images(http.server.BaseHTTPRequestHandler):
    data = make_image("square", 21)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        self.wfile.write(self.data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_uploads(trainer: CustomVisionTrainingClient, project_id: str, image_server: str,
                     app_setting: Callable[[str, str | None], None]) -> None:
    app_setting(SETTING_ALLOWED_NETWORKS, None)
    batch = ImageUrlCreateBatch(images=[
        ImageUrlCreateEntry(url=f"{image_server}/a.jpg"),
        ImageUrlCreateEntry(url="http://169.254.169.254/latest/meta-data/"),
        ImageUrlCreateEntry(url="file:///etc/passwd"),
    ])
    refused = trainer.create_images_from_urls(project_id, batch)
    assert not refused.is_batch_successful
    assert [i.status for i in refused.images] == ["ErrorSource"] * 3
    assert refused.images[0].source_url == f"{image_server}/a.jpg"

    app_setting(SETTING_ALLOWED_NETWORKS, "127.0.0.1/32")
    allowed = trainer.create_images_from_urls(project_id, ImageUrlCreateBatch(images=[
        ImageUrlCreateEntry(url=f"{image_server}/a.jpg"),
        ImageUrlCreateEntry(url=f"{image_server}/redirect"),  # to the metadata endpoint
    ]))
    assert [i.status for i in allowed.images] == ["OK", "ErrorSource"]
    assert allowed.images[0].image.width == 320


def test_images_from_stored_predictions(trainer: CustomVisionTrainingClient, project_id: str,
                                        storage: Storage) -> None:
    data = make_image("checker", 31)
    path = f"api-test/{uuid.uuid4().hex}.jpg"
    storage.container(names.PREDICT_IMAGES).upload_blob(path, data)
    prediction_id = str(uuid.uuid4())
    PredictionStore(storage).record(StoredPrediction(
        id=prediction_id, project_id=project_id, iteration_id=str(uuid.uuid4()),
        created=datetime.now(UTC), predictions=(), source="api",
        blob_path=f"{names.PREDICT_IMAGES}/{path}"))
    tag = trainer.create_tag(project_id, "checker")
    summary = trainer.create_images_from_predictions(project_id, ImageIdCreateBatch(
        images=[ImageIdCreateEntry(id=prediction_id), ImageIdCreateEntry(id=str(uuid.uuid4()))],
        tag_ids=[tag.id]))
    assert [i.status for i in summary.images] == ["OK", "ErrorSource"]
    assert trainer.get_tagged_image_count(project_id, tag_ids=[tag.id]) == 1


def test_unknown_project(trainer: CustomVisionTrainingClient) -> None:
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.create_images_from_data(str(uuid.uuid4()), make_image("circle", 1))
    assert exc.value.error.code == "NotFoundProject"


def test_ingest_event_for_an_api_blob_changes_nothing(
        trainer: CustomVisionTrainingClient, project_id: str, storage: Storage,
        label_store: LabelStore, local_host: str) -> None:
    """Event Grid reports API-written blobs to the ingest function too: it must leave the
    record as the API made it (untagged stays untagged; nothing is quarantined)."""
    from visionpipe.local.bridge import blob_created_event

    tag = trainer.create_tag(project_id, "cat")
    tagged = trainer.create_images_from_data(project_id, make_image("circle", 41),
                                             tag_ids=[tag.id]).images[0].image
    untagged = trainer.create_images_from_data(project_id, make_image("circle", 42)
                                               ).images[0].image
    container = storage.container(names.TRAINING_IMAGES)
    hook = f"{local_host}/runtime/webhooks/EventGrid?functionName={names.INGEST_FUNCTION}"
    for image in (tagged, untagged):
        record = label_store.find_image(project_id, image.id)
        assert record is not None
        props = container.get_blob_client(record.blob_paths[0]).get_blob_properties()
        assert props.metadata["visionpipe_source"] == "api"
        event = blob_created_event(storage, names.TRAINING_IMAGES, record.blob_paths[0],
                                   props.etag, props.size, props.content_settings.content_type)
        response = httpx.post(hook, json=[event], headers={"aeg-event-type": "Notification"})
        assert response.status_code == 202
        after = label_store.find_image(project_id, image.id)
        assert after == record
        assert container.get_blob_client(record.blob_paths[0]).exists()
    assert trainer.get_untagged_image_count(project_id) == 1
    assert trainer.get_tagged_image_count(project_id) == 1
