"""An API upload must never strand an image (issue 10), against a real Azurite.

The upload writes two things: the bytes (``training-images``) and the label record (``images``
table). A crash between the two used to leave a record without bytes, which every later upload
answered ``OKDuplicate`` and training could not read. Now the blob comes first; a blob without
its record is completed by a re-upload or by the ingest function (from the blob's metadata), and
a record left without bytes (by the old order) gets them back on a re-upload.

Crashes are simulated by writing only one of the two directly (the state a crash leaves), or by
a real failure: a store whose SAS may read the tables but not write them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from azure.storage.blob import AccountSasPermissions, ContentSettings

from tests.conftest import TEST_TRAINING_KEY
from tests.hostile.test_drop_paths import sas_connection_string
from visionpipe import names
from visionpipe.api.context import RequestContext
from visionpipe.api.images import Upload, blob_path, create_images
from visionpipe.api.models import ImageStatus
from visionpipe.local.azurite import Azurite
from visionpipe.local.bridge import blob_created_event
from visionpipe.local.samples import make_image
from visionpipe.pipeline.ingest import API_TAGS_METADATA, API_UPLOAD_MARKER, UNTAGGED_FOLDER
from visionpipe.rejections import Rejection
from visionpipe.settings import StorageSettings, get_settings
from visionpipe.storage import Storage
from visionpipe.stores.label_store import MULTILABEL, ImageFacts, LabelStore, Project, Tag, image_id
from visionpipe.stores.registry import Registry
from visionpipe.validation import validate_image

HEADERS = {"Training-Key": TEST_TRAINING_KEY}


@pytest.fixture
def multilabel(label_store: LabelStore, project_name: str) -> Project:
    return label_store.create_project(project_name, MULTILABEL)


@pytest.fixture
def two_tags(label_store: LabelStore, multilabel: Project) -> tuple[Tag, Tag]:
    return (label_store.create_tag(multilabel.id, "cat"),
            label_store.create_tag(multilabel.id, "dog"))


@pytest.fixture(scope="module")
def read_only_tables(storage: Storage, azurite: Azurite) -> Iterator[Storage]:
    """Storage whose SAS may read and list, not write: the record write fails for real."""
    yield Storage(StorageSettings(connection_string=sas_connection_string(
        azurite, AccountSasPermissions(read=True, list=True))))


def facts_of(data: bytes) -> ImageFacts:
    checked = validate_image(data, get_settings().training_limits)
    assert not isinstance(checked, Rejection), checked
    return ImageFacts(checked.sha256, checked.width, checked.height, checked.format,
                      checked.size_bytes)


def api_path(project: Project, tag: Tag | None, data: bytes) -> str:
    """Where the API puts these bytes when ``tag`` is the upload's first tag."""
    facts = facts_of(data)
    return blob_path(project, tag, image_id(facts.sha256), facts.format)


def blob_props(storage: Storage, path: str) -> object | None:
    client = storage.container(names.TRAINING_IMAGES).get_blob_client(path)
    return client.get_blob_properties() if client.exists() else None


def blob_bytes(storage: Storage, path: str) -> bytes:
    return storage.container(names.TRAINING_IMAGES).download_blob(path).readall()


def write_blob_only(storage: Storage, path: str, data: bytes,
                    metadata: dict[str, str]) -> None:
    """What an upload that stopped after its first step leaves: the marked bytes, no record."""
    storage.container(names.TRAINING_IMAGES).upload_blob(
        path, data, metadata=metadata,
        content_settings=ContentSettings(content_type="image/jpeg"))


def deliver_ingest_event(storage: Storage, local_host: str, path: str) -> None:
    """The BlobCreated event Event Grid sends for ``path``, through the local host's webhook."""
    props = storage.container(names.TRAINING_IMAGES).get_blob_client(path).get_blob_properties()
    event = blob_created_event(storage, names.TRAINING_IMAGES, path, props.etag, props.size,
                               props.content_settings.content_type)
    hook = f"{local_host}/runtime/webhooks/EventGrid?functionName={names.INGEST_FUNCTION}"
    response = httpx.post(hook, json=[event], headers={"aeg-event-type": "Notification"})
    assert response.status_code == 202


def upload_over_http(local_host: str, project: Project, data: bytes,
                     tag_ids: list[str]) -> dict[str, object]:
    url = (f"{local_host}/customvision/v3.4-preview/training/projects/{project.id}"
           "/images/files")
    body = {"images": [{"name": "x.jpg", "contents": base64.b64encode(data).decode()}],
            "tagIds": tag_ids}
    response = httpx.post(url, json=body, headers=HEADERS)
    assert response.status_code in (200, 207), response.text
    (image,) = response.json()["images"]
    return dict(image)


# --- a real failure between the two writes ------------------------------------------------------
def test_a_failed_record_write_keeps_the_bytes_and_ingest_records_them(
    storage: Storage, read_only_tables: Storage, label_store: LabelStore, multilabel: Project,
    two_tags: tuple[Tag, Tag], local_host: str
) -> None:
    data = make_image("circle", 71)
    tag_ids = tuple(t.id for t in two_tags)
    ctx = RequestContext(storage, LabelStore(read_only_tables), Registry(storage),
                         get_settings().training_limits)
    answer = create_images(ctx, multilabel.id, [Upload(data, tag_ids)])
    summary = answer.body
    assert answer.status == 207
    assert summary["images"][0]["status"] == ImageStatus.ERROR_STORAGE
    assert "Authorization" not in str(summary)  # no storage detail in the answer

    path = api_path(multilabel, two_tags[0], data)
    props = blob_props(storage, path)
    assert props is not None, "the bytes must be written before the record"
    assert props.metadata[API_UPLOAD_MARKER[0]] == API_UPLOAD_MARKER[1]  # type: ignore[attr-defined]
    sha = facts_of(data).sha256
    assert label_store.get_image(multilabel.id, sha) is None

    for _ in range(2):  # Event Grid reports the blob (at least once)
        deliver_ingest_event(storage, local_host, path)
    record = label_store.get_image(multilabel.id, sha)
    assert record is not None
    assert set(record.tag_ids) == set(tag_ids) and record.blob_paths == (path,)

    again = upload_over_http(local_host, multilabel, data, list(tag_ids))
    assert again["status"] == ImageStatus.OK_DUPLICATE
    assert label_store.get_image(multilabel.id, sha) == record


# --- blob written, record not (the state the new order can leave) -------------------------------
@pytest.mark.parametrize("shape", ["tagged-metadata", "untagged", "legacy-folder-only"])
def test_ingest_records_a_marked_blob_without_a_record(
    storage: Storage, label_store: LabelStore, multilabel: Project, two_tags: tuple[Tag, Tag],
    local_host: str, shape: str
) -> None:
    data = make_image("square", 72)
    marker = dict([API_UPLOAD_MARKER])
    if shape == "tagged-metadata":
        path = api_path(multilabel, two_tags[1], data)
        metadata = {**marker, API_TAGS_METADATA: f"{two_tags[1].id},{two_tags[0].id}"}
        expected = {two_tags[0].id, two_tags[1].id}
    elif shape == "untagged":
        path = api_path(multilabel, None, data)
        metadata, expected = marker, set()
    else:  # written before tag ids were kept in metadata: the folder names the first tag
        path = api_path(multilabel, two_tags[0], data)
        metadata, expected = marker, {two_tags[0].id}
    assert (path.split("/")[1] == UNTAGGED_FOLDER) == (shape == "untagged")
    write_blob_only(storage, path, data, metadata)

    sha = facts_of(data).sha256
    deliver_ingest_event(storage, local_host, path)
    record = label_store.get_image(multilabel.id, sha)
    assert record is not None, "a marked blob without a record must be recorded"
    assert set(record.tag_ids) == expected and record.blob_paths == (path,)
    assert "_untagged" not in {t.name for t in label_store.list_tags(multilabel.id)}

    deliver_ingest_event(storage, local_host, path)  # a duplicate delivery changes nothing
    assert label_store.get_image(multilabel.id, sha) == record
    assert blob_bytes(storage, path) == data


def test_a_reupload_completes_a_blob_without_a_record_without_rewriting_it(
    storage: Storage, label_store: LabelStore, multilabel: Project, two_tags: tuple[Tag, Tag],
    local_host: str
) -> None:
    data = make_image("triangle", 73)
    path = api_path(multilabel, two_tags[0], data)
    write_blob_only(storage, path, data, {**dict([API_UPLOAD_MARKER]),
                                          API_TAGS_METADATA: two_tags[0].id})
    before = blob_props(storage, path)

    image = upload_over_http(local_host, multilabel, data, [two_tags[0].id])
    assert image["status"] == ImageStatus.OK
    record = label_store.get_image(multilabel.id, facts_of(data).sha256)
    assert record is not None and record.tag_ids == (two_tags[0].id,)
    assert record.blob_paths == (path,)
    after = blob_props(storage, path)
    assert after is not None and after.etag == before.etag  # type: ignore[attr-defined]


# --- record written, blob not (the state the old order left behind) ------------------------------
@pytest.mark.parametrize("where", ["api-path", "drop-path"])
def test_a_reupload_gives_a_record_without_bytes_its_bytes(
    storage: Storage, label_store: LabelStore, multilabel: Project, two_tags: tuple[Tag, Tag],
    local_host: str, where: str
) -> None:
    data = make_image("circle", 74)
    facts = facts_of(data)
    recorded_path = (api_path(multilabel, two_tags[0], data) if where == "api-path"
                     else f"{multilabel.name}/{two_tags[0].name}/from-the-drop-folder.jpg")
    stranded = label_store.create_image(multilabel, (two_tags[0].id,), facts, recorded_path)
    assert blob_props(storage, recorded_path) is None

    # the re-upload names another first tag, so its own path differs from the record's
    image = upload_over_http(local_host, multilabel, data, [two_tags[1].id, two_tags[0].id])
    assert image["status"] == ImageStatus.OK_DUPLICATE
    assert blob_bytes(storage, recorded_path) == data, "the stranded record must get its bytes"
    assert label_store.get_image(multilabel.id, facts.sha256) == stranded.image
    own_path = api_path(multilabel, two_tags[1], data)
    assert blob_props(storage, own_path) is None  # nothing left behind under the new path

    # and the event for the rewritten blob finds it labelled: nothing changes
    deliver_ingest_event(storage, local_host, recorded_path)
    assert label_store.get_image(multilabel.id, facts.sha256) == stranded.image


def test_a_reupload_under_the_same_tag_rewrites_the_missing_bytes(
    storage: Storage, label_store: LabelStore, multilabel: Project, two_tags: tuple[Tag, Tag],
    local_host: str
) -> None:
    data = make_image("square", 75)
    facts = facts_of(data)
    path = api_path(multilabel, two_tags[0], data)
    label_store.create_image(multilabel, (two_tags[0].id,), facts, path)

    image = upload_over_http(local_host, multilabel, data, [two_tags[0].id])
    assert image["status"] in (ImageStatus.OK, ImageStatus.OK_DUPLICATE)
    assert blob_bytes(storage, path) == data
    props = blob_props(storage, path)
    assert props.metadata[API_UPLOAD_MARKER[0]] == API_UPLOAD_MARKER[1]  # type: ignore[attr-defined]
