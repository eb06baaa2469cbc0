"""Hostile annotation files in a detection project's drop folder (issue 12), against a real Azurite.

Every refused file is quarantined with an annotation reason code in the quarantine's reason-record
shape and its image (when it has one) stays visible, untagged; nothing is expanded, fetched,
guessed or lost, and a second delivery of any event changes nothing more.
"""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.detection_drops import SIZE, boxes_of, close, coco, drop, truth, voc
from tests.detection_samples import TAGS, scenes
from tests.drops import typed, upload
from visionpipe import names
from visionpipe.annotations import MAX_ANNOTATION_FILE_BYTES, Region
from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID
from visionpipe.pipeline.events import BlobCreated
from visionpipe.pipeline.ingest import Outcome, ingest_training_blob
from visionpipe.rejections import Reason
from visionpipe.settings import get_settings
from visionpipe.storage import Storage
from visionpipe.stores.annotation_pairs import AnnotationPairs
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.quarantine import REASON_SUFFIX, digest_path, quarantine_path

CLASSES = list(TAGS)
BOX = (Region("square", 0.1, 0.1, 0.3, 0.3),)


@pytest.fixture
def det(label_store: LabelStore) -> Project:
    return label_store.create_project(f"hd-{uuid.uuid4().hex[:10]}",
                                      domain_id=GENERAL_DETECTION_DOMAIN_ID)


@pytest.fixture(scope="module")
def picture() -> bytes:
    return scenes(1, seed=3, size=SIZE)[0][0]


def reason(storage: Storage, path: str) -> dict[str, object]:
    blob = storage.container(names.QUARANTINE).download_blob(
        quarantine_path(names.TRAINING_IMAGES, path) + REASON_SUFFIX)
    return dict(json.loads(blob.readall()))


def in_drop(storage: Storage, path: str) -> bool:
    return storage.container(names.TRAINING_IMAGES).get_blob_client(path).exists()


def refused(storage: Storage, path: str, data: bytes, code: Reason) -> dict[str, object]:
    """Drop ``data`` twice: quarantined once (the second delivery finds it gone), with ``code``
    in a reason record of the usual shape."""
    results = drop(storage, path, data, times=2)
    assert [r.outcome for r in results] == [Outcome.QUARANTINED, Outcome.GONE], results
    record = reason(storage, path)
    assert record["reason"] == str(code), record
    assert set(record) >= {"reason", "message", "source", "quarantinedAt", "eventId"}
    assert record["source"]["path"] == path  # type: ignore[index]
    assert not in_drop(storage, path)
    return record


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY a "lol">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
    + ']><annotation><object><name>&j;</name><bndbox><xmin>0</xmin><ymin>0</ymin>'
    '<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>').encode()


def test_billion_laughs_voc_is_quarantined_never_expanded(
        storage: Storage, label_store: LabelStore, det: Project, picture: bytes) -> None:
    p = det.name
    drop(storage, f"{p}/a.png", picture)
    refused(storage, f"{p}/a.xml", BILLION_LAUGHS, Reason.BAD_ANNOTATION)
    assert boxes_of(label_store, det, f"{p}/a.png") == []
    assert label_store.list_tags(det.id) == []


def test_xxe_voc_never_reads_the_file_it_names(
        storage: Storage, label_store: LabelStore, det: Project, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    data = (f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY x SYSTEM "file://{secret}">]>'
            "<annotation><object><name>&x;</name><bndbox><xmin>0</xmin><ymin>0</ymin>"
            "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>").encode()
    record = refused(storage, f"{det.name}/x.xml", data, Reason.BAD_ANNOTATION)
    assert "TOPSECRET" not in json.dumps(record)
    assert all("TOPSECRET" not in t.name for t in label_store.list_tags(det.id))


def test_huge_annotation_files_are_refused_unread(storage: Storage, det: Project) -> None:
    p = det.name
    padding = b"<!-- " + b"x" * MAX_ANNOTATION_FILE_BYTES + b" -->"
    huge_voc = voc(BOX).replace(b"<annotation>", b"<annotation>" + padding)
    record = refused(storage, f"{p}/big.xml", huge_voc, Reason.BAD_ANNOTATION)
    assert "at most" in str(record["message"])
    refused(storage, f"{p}/big.txt", b"0 0.5 0.5 0.1 0.1\n" * 60_000, Reason.BAD_ANNOTATION)
    refused(storage, f"{p}/classes.txt", b"a\n" * (MAX_ANNOTATION_FILE_BYTES // 2 + 1),
            Reason.BAD_ANNOTATION)


@pytest.mark.parametrize(("name", "line", "code"), [
    ("nan", "0 nan 0.5 0.1 0.1", Reason.BAD_ANNOTATION),
    ("inf", "0 0.5 inf 0.1 0.1", Reason.BOX_OUT_OF_BOUNDS),
    ("negative", "0 0.5 0.5 -0.1 0.1", Reason.BAD_ANNOTATION),
    ("outside", "0 1.5 0.5 0.2 0.2", Reason.BOX_OUT_OF_BOUNDS),
    ("huge", "0 0.5 0.5 1e308 0.1", Reason.BOX_OUT_OF_BOUNDS),
    ("hex", "0 0x1p-1 0.5 0.1 0.1", Reason.BAD_ANNOTATION),
])
def test_bad_yolo_numbers_are_refused_on_arrival(
        storage: Storage, det: Project, name: str, line: str, code: Reason) -> None:
    """Refused before the image or the class names exist: nothing waits on a bad file."""
    refused(storage, f"{det.name}/{name}.txt", line.encode() + b"\n", code)


@pytest.mark.parametrize(("name", "edges", "code"), [
    ("nan", ("NaN", "0", "5", "5"), Reason.BAD_ANNOTATION),
    ("inverted", ("50", "50", "10", "10"), Reason.BAD_ANNOTATION),
    ("negative", ("-40", "0", "20", "20"), Reason.BOX_OUT_OF_BOUNDS),
    ("beyond", ("10", "10", "400", "20"), Reason.BOX_OUT_OF_BOUNDS),
])
def test_bad_voc_boxes_are_refused_once_the_image_size_is_known(
        storage: Storage, label_store: LabelStore, det: Project, picture: bytes, name: str,
        edges: tuple[str, str, str, str], code: Reason) -> None:
    """Both orders: the box file first (refused on arrival or when its image comes) and the
    image first (refused on arrival); the image stays, untagged, either way."""
    x0, y0, x1, y1 = edges
    data = (f"<annotation><size><width>{SIZE}</width><height>{SIZE}</height></size><object>"
            f"<name>square</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
            f"<ymax>{y1}</ymax></bndbox></object></annotation>").encode()
    p = det.name
    pictures = scenes(2, seed=sum(map(ord, name)), size=SIZE)  # other bytes per case
    # image first
    drop(storage, f"{p}/i/{name}.png", pictures[0][0])
    refused(storage, f"{p}/i/{name}.xml", data, code)
    # box file first
    drop(storage, f"{p}/b/{name}.xml", data, times=2)
    drop(storage, f"{p}/b/{name}.png", pictures[1][0], times=2)
    assert reason(storage, f"{p}/b/{name}.xml")["reason"] == str(code)
    assert not in_drop(storage, f"{p}/b/{name}.xml")
    for path in (f"{p}/i/{name}.png", f"{p}/b/{name}.png"):
        assert boxes_of(label_store, det, path) == []


def test_coco_naming_an_undeclared_image_is_refused_whole(
        storage: Storage, label_store: LabelStore, det: Project, picture: bytes) -> None:
    doc = json.loads(coco([("a.png", BOX)], CLASSES))
    doc["annotations"][0]["image_id"] = 999
    drop(storage, f"{det.name}/a.png", picture)
    refused(storage, f"{det.name}/set.json", json.dumps(doc).encode(), Reason.UNKNOWN_IMAGE)
    assert boxes_of(label_store, det, f"{det.name}/a.png") == []


@pytest.mark.parametrize("file_name", ["../other/a.png", "/etc/a.png", "a/./b.png", "a\\b.png",
                                       "sub/../../x.png"])
def test_coco_traversal_file_names_are_refused(storage: Storage, det: Project,
                                               file_name: str) -> None:
    data = coco([(file_name, BOX)], CLASSES)
    record = refused(storage, f"{det.name}/t.json", data, Reason.BAD_ANNOTATION)
    assert "safe relative file name" in str(record["message"])


def test_coco_nan_constant_and_duplicated_images_are_refused(storage: Storage,
                                                             det: Project) -> None:
    nan = coco([("a.png", BOX)], CLASSES).replace(b'"bbox": [', b'"bbox": [NaN, ')
    refused(storage, f"{det.name}/nan.json", nan, Reason.BAD_ANNOTATION)
    twice = json.loads(coco([("a.png", BOX), ("b.png", BOX)], CLASSES))
    twice["images"][1]["file_name"] = "a.png"
    refused(storage, f"{det.name}/twice.json", json.dumps(twice).encode(),
            Reason.BAD_ANNOTATION)


def test_too_many_regions_and_bad_tag_names(storage: Storage, label_store: LabelStore,
                                            det: Project, picture: bytes) -> None:
    p = det.name
    many = voc([Region("square", 0.001 * i, 0.0, 0.5, 0.5) for i in range(301)])
    refused(storage, f"{p}/many.xml", many, Reason.TOO_MANY_REGIONS)
    drop(storage, f"{p}/slash.png", picture)
    refused(storage, f"{p}/slash.xml", voc([Region("a/../b", 0.1, 0.1, 0.2, 0.2)]),
            Reason.BAD_ANNOTATION)
    assert label_store.list_tags(det.id) == []


def test_duplicate_boxes_and_repeated_files_make_one_region_each(
        storage: Storage, label_store: LabelStore, det: Project, picture: bytes) -> None:
    """The same box twice in one file, the same file under VOC and COCO, every event twice:
    one region per (tag, box); tag names differing only in case are one tag."""
    p = det.name
    drop(storage, f"{p}/d.png", picture, times=2)
    drop(storage, f"{p}/d.xml", voc([*BOX, *BOX]), times=2)
    drop(storage, f"{p}/d.json", coco([("d.png", BOX)], CLASSES), times=2)
    found = boxes_of(label_store, det, f"{p}/d.png")
    assert found is not None and len(found) == 1
    drop(storage, f"{p}/e.xml", voc([Region("SQUARE", 0.5, 0.5, 0.2, 0.2)]))
    drop(storage, f"{p}/e.png", scenes(1, seed=8, size=SIZE)[0][0])
    assert [t.name for t in label_store.list_tags(det.id)] == ["square"]


def test_box_files_outside_a_detection_project_are_quarantined(
        storage: Storage, project: Project, project_name: str) -> None:
    """A classification project's drop folder, and a project that does not exist: the file is
    kept in quarantine with a reason that says what to do, never parsed."""
    record = refused(storage, f"{project.name}/cat/a.xml", BILLION_LAUGHS,
                     Reason.UNSUPPORTED_FORMAT)
    assert "object detection project" in str(record["message"])
    refused(storage, f"nope-{uuid.uuid4().hex[:8]}/tag/a.json", b"{}", Reason.UNKNOWN_PROJECT)


@pytest.mark.parametrize("suffix", ["../../models/x.xml", "a/%2e%2e/x.xml", "a//x.txt",
                                    "a/\u0000.json", "x.xml.reason.json"])
def test_hostile_names_in_a_detection_project(storage: Storage, det: Project,
                                               suffix: str) -> None:
    """Traversal, encoded dots, empty segments, control characters and reserved names: a
    reason record under the name's digest (or the reserved-name refusal), no blob addressed."""
    path = f"{det.name}/{suffix}"
    event = BlobCreated(event_id=str(uuid.uuid4()), container=names.TRAINING_IMAGES, path=path,
                        api="PutBlob", etag="0x1", content_length=10, url="http://x/y")
    for _ in range(2):
        result = ingest_training_blob(event, storage, get_settings())
        assert result.outcome in (Outcome.QUARANTINED, Outcome.GONE)
        assert result.rejection is not None and result.rejection.reason == Reason.BAD_PATH
    if suffix.endswith(REASON_SUFFIX):
        return  # safe but reserved: nothing there to move (the blob was never uploaded)
    record = storage.container(names.QUARANTINE).download_blob(
        digest_path(names.TRAINING_IMAGES, path) + REASON_SUFFIX).readall()
    assert json.loads(record)["reason"] == "bad_path"


def test_halves_racing_each_other_lose_nothing(storage: Storage, label_store: LabelStore,
                                               det: Project) -> None:
    """Image and box file events handled at the same moment (a barrier per pair), with a COCO
    file naming the same image racing too: the ETag-guarded pair row keeps every half, so each
    image ends with its boxes, whichever thread wrote first."""
    p = det.name
    pictures = scenes(6, seed=21, size=SIZE)
    events = []
    for i, (image, regions) in enumerate(pictures):
        events.append([
            typed(upload(storage, names.TRAINING_IMAGES, f"{p}/r/{i}.png", image),
                  names.TRAINING_IMAGES),
            typed(upload(storage, names.TRAINING_IMAGES, f"{p}/r/{i}.xml", voc(regions)),
                  names.TRAINING_IMAGES),
            typed(upload(storage, names.TRAINING_IMAGES, f"{p}/r/{i}.json",
                         coco([(f"{i}.png", regions)], CLASSES)), names.TRAINING_IMAGES),
        ])
    settings = get_settings()
    for trio in events:
        barrier = threading.Barrier(len(trio))

        def handle(event: BlobCreated, barrier: threading.Barrier = barrier) -> Outcome:
            barrier.wait()
            return ingest_training_blob(event, storage, settings).outcome

        with ThreadPoolExecutor(len(trio)) as pool:
            list(pool.map(handle, trio))
    for i, (_, regions) in enumerate(pictures):
        found = boxes_of(label_store, det, f"{p}/r/{i}.png")
        assert close(found, truth(regions), 0.01 / SIZE + 1e-9), (i, found)
        pair = AnnotationPairs(storage).get(det.id, f"{p}/r/{i}.png")
        assert pair is not None and set(pair.sources) == {f"{p}/r/{i}.xml", f"{p}/r/{i}.json"}


def test_a_coco_file_over_its_limit_is_refused_unread(storage: Storage, det: Project,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The COCO limit (16 MiB) is lowered for the test so the file stays small: the size is
    judged from the blob's properties, before any download or parse."""
    import visionpipe.pipeline.detection_ingest as detection_ingest

    monkeypatch.setattr(detection_ingest, "MAX_COCO_FILE_BYTES", 200)
    data = coco([("a.png", BOX)], CLASSES) + b" " * 200
    record = refused(storage, f"{det.name}/big.json", data, Reason.BAD_ANNOTATION)
    assert "at most 200" in str(record["message"])


def test_a_yaml_alias_bomb_as_class_names_is_refused(storage: Storage, det: Project) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]"
              for i in range(8)]  # 9**9 strings if it were expanded
    bomb = "\n".join(lines) + "\nnames: [*i, *i, *i]\n"
    refused(storage, f"{det.name}/y/data.yaml", bomb.encode(), Reason.BAD_ANNOTATION)
    refused(storage, f"{det.name}/y/classes.txt", b"cat\n\ndog\n", Reason.BAD_ANNOTATION)
    refused(storage, f"{det.name}/z/data.yaml", b"!!python/object/apply:os.system ['true']\n",
            Reason.BAD_ANNOTATION)
