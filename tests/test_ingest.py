"""The training drop folder's library path against a real Azurite (no triggers, no HTTP)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.drops import typed, upload
from visionpipe import names
from visionpipe.local.samples import make_image
from visionpipe.pipeline.ingest import (
    Outcome,
    ingest_training_blob,
    parse_detection_path,
    parse_training_path,
)
from visionpipe.rejections import Reason, Rejected
from visionpipe.settings import Settings, get_settings
from visionpipe.storage import Storage
from visionpipe.stores.label_store import MULTILABEL, LabelStore
from visionpipe.stores.quarantine import REASON_SUFFIX, quarantine_path


def drop(storage: Storage, path: str, data: bytes, settings: Settings | None = None,
         times: int = 1) -> list[Outcome]:
    event = typed(upload(storage, names.TRAINING_IMAGES, path, data), names.TRAINING_IMAGES)
    return [
        ingest_training_blob(event, storage, settings or get_settings()).outcome
        for _ in range(times)
    ]


def reason_of(storage: Storage, path: str) -> dict[str, object]:
    blob = storage.container(names.QUARANTINE).download_blob(
        quarantine_path(names.TRAINING_IMAGES, path) + REASON_SUFFIX)
    return dict(json.loads(blob.readall()))


def exists(storage: Storage, container: str, path: str) -> bool:
    return storage.container(container).get_blob_client(path).exists()


def test_first_sight_creates_project_tag_and_record(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    data = make_image("circle", seed=1)
    assert drop(storage, f"{project_name}/round/a.jpg", data) == [Outcome.LABELLED]

    project = label_store.find_project(project_name)
    assert project is not None and project.classification_type == "Multiclass"
    (tag,) = label_store.list_tags(project.id)
    assert tag.name == "round"
    (image,) = label_store.list_images(project.id)
    assert image.tag_ids == (tag.id,)
    assert image.blob_paths == (f"{project_name}/round/a.jpg",)
    assert (image.width, image.height, image.format) == (320, 320, "JPEG")
    assert image.size_bytes == len(data)
    assert exists(storage, names.TRAINING_IMAGES, f"{project_name}/round/a.jpg")


def test_same_event_three_times_has_the_effect_of_one(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    outcomes = drop(storage, f"{project_name}/cat/x.png", make_image("stripes", 2, fmt="PNG"),
                    times=3)
    assert outcomes == [Outcome.LABELLED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    project = label_store.find_project(project_name)
    assert project is not None
    assert len(label_store.list_images(project.id)) == 1
    assert len(label_store.list_tags(project.id)) == 1
    assert len([p for p in label_store.list_projects() if p.name == project_name]) == 1


def test_multilabel_same_bytes_under_two_tags_is_one_image_with_two_tags(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    project = label_store.create_project(project_name, classification_type=MULTILABEL)
    data = make_image("checker", 3)
    assert drop(storage, f"{project_name}/indoor/p.jpg", data) == [Outcome.LABELLED]
    assert drop(storage, f"{project_name}/cat/p.jpg", data, times=2) == [
        Outcome.TAG_ADDED, Outcome.DUPLICATE]
    (image,) = label_store.list_images(project.id)
    names_of = {t.id: t.name for t in label_store.list_tags(project.id)}
    assert sorted(names_of[t] for t in image.tag_ids) == ["cat", "indoor"]
    assert sorted(image.blob_paths) == [f"{project_name}/cat/p.jpg", f"{project_name}/indoor/p.jpg"]


def test_multiclass_same_bytes_under_another_tag_is_a_conflict(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    data = make_image("triangle", 4)
    drop(storage, f"{project_name}/cat/q.jpg", data)
    assert drop(storage, f"{project_name}/dog/q.jpg", data) == [Outcome.QUARANTINED]

    reason = reason_of(storage, f"{project_name}/dog/q.jpg")
    assert reason["reason"] == Reason.CONFLICTING_TAG
    assert "'cat'" in str(reason["message"])
    assert not exists(storage, names.TRAINING_IMAGES, f"{project_name}/dog/q.jpg")
    kept = storage.container(names.QUARANTINE).download_blob(
        quarantine_path(names.TRAINING_IMAGES, f"{project_name}/dog/q.jpg")).readall()
    assert kept == data
    project = label_store.find_project(project_name)
    assert project is not None
    (image,) = label_store.list_images(project.id)
    assert len(image.tag_ids) == 1


def test_bad_image_is_quarantined_once_and_redelivery_is_harmless(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    data = make_image("circle", 5)[:2000]  # truncated JPEG
    path = f"{project_name}/cat/broken.jpg"
    assert drop(storage, path, data, times=3) == [Outcome.QUARANTINED, Outcome.GONE, Outcome.GONE]
    reason = reason_of(storage, path)
    assert reason["reason"] == Reason.CORRUPT
    assert reason["source"]["path"] == path  # type: ignore[index]
    assert not exists(storage, names.TRAINING_IMAGES, path)
    assert label_store.find_project(project_name) is None  # nothing recorded for bad input


def test_oversized_blob_is_quarantined_without_reading_it_into_the_store(
    storage: Storage, project_name: str
) -> None:
    small = dataclasses.replace(get_settings().training_limits, max_bytes=1000)
    settings = dataclasses.replace(get_settings(), training_limits=small)
    data = make_image("stripes", 6)
    path = f"{project_name}/cat/big.jpg"
    assert drop(storage, path, data, settings) == [Outcome.QUARANTINED]
    reason = reason_of(storage, path)
    assert reason["reason"] == Reason.TOO_LARGE
    assert reason["source"]["size"] == len(data)  # type: ignore[index]


def test_unknown_project_is_refused_when_auto_create_is_off(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    settings = dataclasses.replace(get_settings(), auto_create_projects=False)
    path = f"{project_name}/cat/a.jpg"
    assert drop(storage, path, make_image("circle", 7), settings) == [Outcome.QUARANTINED]
    assert reason_of(storage, path)["reason"] == Reason.UNKNOWN_PROJECT
    assert label_store.find_project(project_name) is None


@pytest.mark.parametrize(
    "path",
    [
        "loose.jpg",  # no project or tag folder
        "project/loose.jpg",  # no tag folder
        "project/tag/sub/deep.jpg",  # too deep
        "project/ /a.jpg",  # blank tag
        "project/ tag/a.jpg",  # outer spaces
        "project/../tag/a.jpg",  # traversal
        "project/./a.jpg",
        "project//a.jpg",  # empty tag
        "project/ta\x07g/a.jpg",  # control character
        "project\\tag\\a.jpg",
        "/project/tag/a.jpg",
    ],
)
def test_bad_drop_paths_are_rejected(path: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse_training_path(path)
    assert caught.value.rejection.reason == Reason.BAD_PATH


def test_unsafe_names_get_a_digest_path_in_quarantine() -> None:
    assert quarantine_path("training-images", "p/t/a.jpg") == "training-images/p/t/a.jpg"
    unsafe = quarantine_path("training-images", "p/../../etc/passwd")
    assert unsafe.startswith("training-images/_unsafe-names/") and ".." not in unsafe


@pytest.mark.parametrize("path", ["loose.jpg", "p/t/deeper/x.jpg", "p/ /x.jpg"])
def test_badly_named_blobs_are_quarantined_not_crashed_on(
    storage: Storage, project_name: str, path: str
) -> None:
    full = f"{project_name}-{path}"
    assert drop(storage, full, make_image("circle", 8)) == [Outcome.QUARANTINED]
    assert reason_of(storage, full)["reason"] == Reason.BAD_PATH
    assert not exists(storage, names.TRAINING_IMAGES, full)


# --- object detection projects (tests/test_detection_drop.py has the pairing) ------------------
@pytest.mark.parametrize(("path", "folders"), [
    ("p/a.jpg", ""), ("p/train/a.jpg", "train"), ("p/2024/batch 1/a.xml", "2024/batch 1")])
def test_detection_paths_take_any_folder_depth(path: str, folders: str) -> None:
    parsed = parse_detection_path(path)
    assert (parsed.project, parsed.tag, parsed.name) == ("p", folders, path.rsplit("/", 1)[1])


@pytest.mark.parametrize("path", ["a.jpg", "p/x.jpg.reason.json", "p/../q/a.jpg", " p/a.jpg"])
def test_detection_paths_refuse_what_the_drop_folder_refuses(path: str) -> None:
    with pytest.raises(Rejected) as e:
        parse_detection_path(path)
    assert e.value.rejection.reason == Reason.BAD_PATH


def test_a_detection_image_is_recorded_untagged_not_tagged_by_its_folder(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID

    project = label_store.create_project(project_name, domain_id=GENERAL_DETECTION_DOMAIN_ID)
    assert drop(storage, f"{project_name}/cat/a.jpg", make_image("circle", seed=31)) == [
        Outcome.LABELLED]
    (image,) = label_store.list_images(project.id)
    assert image.tag_ids == () and label_store.list_tags(project.id) == []


def test_a_box_file_in_a_classification_project_is_quarantined_unread(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    label_store.create_project(project_name)
    assert drop(storage, f"{project_name}/cat/a.txt", b"0 0.5 0.5 0.1 0.1\n", times=2) == [
        Outcome.QUARANTINED, Outcome.GONE]
    record = reason_of(storage, f"{project_name}/cat/a.txt")
    assert record["reason"] == "unsupported_format"
    assert "object detection project" in str(record["message"])
