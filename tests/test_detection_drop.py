"""The detection drop folder: Pascal VOC, YOLO and COCO boxes beside images in
``training-images/{project}/...``, each half arriving first, twice, in any order.

Library tests run the ingest on each blob's event against a real Azurite; the last test drops
three folders in scrambled order through the real Event Grid bridge and local Functions host.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid

import pytest

from tests.detection_drops import SIZE, boxes_of, close, coco, drop, truth, voc, yolo
from tests.detection_samples import TAGS, scenes
from tests.drops import upload, wait_for
from visionpipe import names
from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID
from visionpipe.local.bridge import EventGridBridge
from visionpipe.pipeline.ingest import Outcome
from visionpipe.storage import Storage
from visionpipe.stores.annotation_pairs import AnnotationPairs, image_rejection_path, row_key
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.quarantine import REASON_SUFFIX, quarantine_path

CLASSES = list(TAGS)
PIXEL_TOL = 0.01 / SIZE + 1e-9  # VOC files here are written with two decimals of a pixel


@pytest.fixture
def detector_project(label_store: LabelStore) -> Project:
    return label_store.create_project(f"dd-{uuid.uuid4().hex[:10]}",
                                      domain_id=GENERAL_DETECTION_DOMAIN_ID)


@pytest.fixture(scope="module")
def samples() -> list[tuple[bytes, tuple]]:
    return scenes(6, seed=12, size=SIZE)


def outcomes(results: list) -> list[Outcome]:
    return [r.outcome for r in results]


def test_voc_image_first_and_xml_first_both_label_and_repeat_harmlessly(
        storage: Storage, label_store: LabelStore, detector_project: Project,
        samples: list) -> None:
    p = detector_project.name
    (img_a, regions_a), (img_b, regions_b) = samples[0], samples[1]
    # image first, then its box file; every event delivered twice
    assert outcomes(drop(storage, f"{p}/voc/a.png", img_a, times=2)) == [
        Outcome.LABELLED, Outcome.DUPLICATE]
    assert boxes_of(label_store, detector_project, f"{p}/voc/a.png") == []  # untagged so far
    assert outcomes(drop(storage, f"{p}/voc/a.xml", voc(regions_a), times=2)) == [
        Outcome.ANNOTATED, Outcome.ANNOTATED]
    # box file first, then its image
    assert outcomes(drop(storage, f"{p}/voc/b.xml", voc(regions_b), times=2)) == [
        Outcome.PENDING, Outcome.PENDING]
    assert outcomes(drop(storage, f"{p}/voc/b.png", img_b, times=2)) == [
        Outcome.LABELLED, Outcome.DUPLICATE]

    for path, regions in ((f"{p}/voc/a.png", regions_a), (f"{p}/voc/b.png", regions_b)):
        assert close(boxes_of(label_store, detector_project, path), truth(regions), PIXEL_TOL)
    tags = sorted(t.name for t in label_store.list_tags(detector_project.id))
    assert tags == sorted({r.tag for r in (*regions_a, *regions_b)})
    # the box files stay in the drop folder: they are the source of the boxes
    for name in ("a.xml", "b.xml"):
        assert storage.container(names.TRAINING_IMAGES).get_blob_client(
            f"{p}/voc/{name}").exists()
    # one pair row per image stem, under a hashed key, holding both halves
    pair = AnnotationPairs(storage).get(detector_project.id, f"{p}/voc/b.png")
    assert pair is not None and pair.complete and pair.sources == (f"{p}/voc/b.xml",)
    assert len(row_key(f"{p}/voc/b.png")) == 64


def test_yolo_every_order_of_label_image_and_class_names(
        storage: Storage, label_store: LabelStore, detector_project: Project,
        samples: list) -> None:
    p = detector_project.name
    pictures = scenes(6, seed=99, size=SIZE)  # other bytes per order: one image per content
    for n, order in enumerate(itertools.permutations(("image", "labels", "classes"))):
        image, regions = pictures[n]
        files = {"image": ("s.png", image), "labels": ("s.txt", yolo(regions, CLASSES)),
                 "classes": ("classes.txt", "\n".join(CLASSES).encode())}
        for part in order:
            name, data = files[part]
            drop(storage, f"{p}/yolo{n}/{name}", data, times=2)
        found = boxes_of(label_store, detector_project, f"{p}/yolo{n}/s.png")
        assert close(found, truth(regions), 2e-6), (order, found)


def test_yolo_names_from_data_yaml(storage: Storage, label_store: LabelStore,
                                   detector_project: Project, samples: list) -> None:
    p = detector_project.name
    image, regions = samples[3]
    reversed_classes = CLASSES[::-1]  # the yaml decides what index 0 means
    drop(storage, f"{p}/y/s.txt", yolo(regions, reversed_classes))
    drop(storage, f"{p}/y/s.jpg", image)
    assert boxes_of(label_store, detector_project, f"{p}/y/s.jpg") == []  # waits for names
    names_yaml = "names:\n" + "".join(f"  {i}: {c}\n" for i, c in enumerate(reversed_classes))
    assert outcomes(drop(storage, f"{p}/y/data.yaml", f"nc: 2\n{names_yaml}".encode())) == [
        Outcome.ANNOTATED]
    assert close(boxes_of(label_store, detector_project, f"{p}/y/s.jpg"), truth(regions), 2e-6)


def test_coco_before_between_and_after_its_images(
        storage: Storage, label_store: LabelStore, detector_project: Project,
        samples: list) -> None:
    p = detector_project.name
    entries = [(f"img/{i}.png", samples[i][1]) for i in range(3)]
    drop(storage, f"{p}/c/img/0.png", samples[0][0])
    assert outcomes(drop(storage, f"{p}/c/train.json", coco(entries, CLASSES), times=2)) == [
        Outcome.ANNOTATED, Outcome.ANNOTATED]
    drop(storage, f"{p}/c/img/1.png", samples[1][0], times=2)
    drop(storage, f"{p}/c/img/2.png", samples[2][0])
    for file_name, regions in entries:
        found = boxes_of(label_store, detector_project, f"{p}/c/{file_name}")
        assert close(found, truth(regions), 1e-6), (file_name, found)


def test_an_image_whose_boxes_never_come_stays_visible_untagged(
        storage: Storage, label_store: LabelStore, detector_project: Project,
        samples: list) -> None:
    p = detector_project.name
    assert outcomes(drop(storage, f"{p}/lonely.png", samples[4][0])) == [Outcome.LABELLED]
    (record,) = label_store.list_images(detector_project.id)
    assert record.tag_ids == () and record.regions == ()
    assert record.blob_paths == (f"{p}/lonely.png",)


def test_boxes_checked_against_the_true_image_size_when_the_pair_meets(
        storage: Storage, label_store: LabelStore, detector_project: Project,
        samples: list) -> None:
    """A VOC whose box fits the size it declares but not the real picture: accepted on arrival
    (its image is unknown), quarantined as box_out_of_bounds when the image comes; the image
    stays, untagged."""
    p = detector_project.name
    image, regions = samples[5]
    big = [type(r)(r.tag, 0.5, 0.5, 0.49, 0.49) for r in regions[:1]]
    data = voc(big, width=SIZE * 2, height=SIZE * 2, declared=(SIZE * 2, SIZE * 2))
    assert outcomes(drop(storage, f"{p}/z.xml", data)) == [Outcome.PENDING]
    assert outcomes(drop(storage, f"{p}/z.png", image)) == [Outcome.LABELLED]
    reason = json.loads(storage.container(names.QUARANTINE).download_blob(
        quarantine_path(names.TRAINING_IMAGES, f"{p}/z.xml") + REASON_SUFFIX).readall())
    assert reason["reason"] == "box_out_of_bounds"
    assert reason["source"]["path"] == f"{p}/z.xml"
    assert boxes_of(label_store, detector_project, f"{p}/z.png") == []


def test_one_bad_image_in_a_coco_file_gets_its_own_reason_record(
        storage: Storage, label_store: LabelStore, detector_project: Project,
        samples: list) -> None:
    p = detector_project.name
    doc = json.loads(coco([("g.png", samples[0][1]), ("b.png", samples[1][1])], CLASSES))
    bad_id = doc["images"][1]["id"]
    for ann in doc["annotations"]:
        if ann["image_id"] == bad_id:
            ann["bbox"][2] = -ann["bbox"][2]  # a negative width
    drop(storage, f"{p}/g.png", samples[0][0])
    drop(storage, f"{p}/b.png", samples[1][0])
    assert outcomes(drop(storage, f"{p}/set.json", json.dumps(doc).encode())) == [
        Outcome.ANNOTATED]
    assert close(boxes_of(label_store, detector_project, f"{p}/g.png"),
                 truth(samples[0][1]), 1e-6)
    assert boxes_of(label_store, detector_project, f"{p}/b.png") == []
    record = json.loads(storage.container(names.QUARANTINE).download_blob(
        image_rejection_path(names.TRAINING_IMAGES, f"{p}/set.json", "b.png")).readall())
    assert record["reason"] == "bad_annotation"
    assert record["source"] == {"container": names.TRAINING_IMAGES, "path": f"{p}/set.json",
                                "image": "b.png", "etag": record["source"]["etag"]}
    # the file stays: its other image's boxes came from it
    assert storage.container(names.TRAINING_IMAGES).get_blob_client(f"{p}/set.json").exists()


def test_three_formats_dropped_scrambled_through_event_grid_all_label(
        storage: Storage, label_store: LabelStore, bridge: EventGridBridge,
        detector_project: Project) -> None:
    """A VOC folder, a YOLO folder and a COCO file, uploaded in a shuffled order through the
    real bridge and local host: every image ends with its true boxes."""
    p = detector_project.name
    pictures = scenes(9, seed=5, size=SIZE)
    blobs: list[tuple[str, bytes]] = []
    expected: dict[str, list] = {}
    for i, (image, regions) in enumerate(pictures[:3]):
        blobs += [(f"{p}/voc/{i}.png", image), (f"{p}/voc/{i}.xml", voc(regions))]
        expected[f"{p}/voc/{i}.png"] = truth(regions)
    for i, (image, regions) in enumerate(pictures[3:6]):
        blobs += [(f"{p}/yolo/{i}.png", image), (f"{p}/yolo/{i}.txt", yolo(regions, CLASSES))]
        expected[f"{p}/yolo/{i}.png"] = truth(regions)
    blobs.append((f"{p}/yolo/classes.txt", "\n".join(CLASSES).encode()))
    entries = [(f"{i}.png", regions) for i, (_, regions) in enumerate(pictures[6:])]
    for i, (image, regions) in enumerate(pictures[6:]):
        blobs.append((f"{p}/coco/{i}.png", image))
        expected[f"{p}/coco/{i}.png"] = truth(regions)
    blobs.append((f"{p}/coco/annotations.json", coco(entries, CLASSES)))
    random.Random(7).shuffle(blobs)
    for path, data in blobs:
        upload(storage, names.TRAINING_IMAGES, path, data)

    def all_labelled() -> bool:
        return all(close(boxes_of(label_store, detector_project, path), want, PIXEL_TOL)
                   for path, want in expected.items())

    wait_for(all_labelled, timeout=30)
    assert len(label_store.list_images(detector_project.id)) == 9


def test_coco_pixel_boxes_follow_the_true_image_size_not_a_stale_declared_one(
        storage: Storage, label_store: LabelStore, detector_project: Project,
        samples: list) -> None:
    """A COCO file declaring 512x512 for 256x256 pictures (a stale export), boxes in the
    pictures' real pixels: whichever half comes first, the boxes are measured against the true
    size (the parse cached for the file's declared sizes is not used for these images)."""
    p = detector_project.name
    doc = json.loads(coco([("first.png", samples[0][1]), ("later.png", samples[1][1])],
                          CLASSES))
    for image in doc["images"]:
        image["width"] = image["height"] = SIZE * 2
    drop(storage, f"{p}/s/first.png", samples[0][0])
    drop(storage, f"{p}/s/stale.json", json.dumps(doc).encode())
    drop(storage, f"{p}/s/later.png", samples[1][0])
    for name, (_, regions) in (("first.png", samples[0]), ("later.png", samples[1])):
        found = boxes_of(label_store, detector_project, f"{p}/s/{name}")
        assert close(found, truth(regions), 1e-6), (name, found)
