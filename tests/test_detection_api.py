"""Object detection through the official Custom Vision SDK, over real HTTP to the local host on
Azurite: detection domains and projects, regions (at upload, ``create_image_regions``,
``delete_image_regions``, ``Image.regions``) and ``detect_image`` on a published detection
iteration.

The routes are tested with a hand-built ONNX graph with the exported detector's interface
(input ``input`` 1x3xSxS; outputs ``boxes`` ltwh fractions, ``scores``, ``labels`` int64) that
answers fixed boxes, so every number in the answer is known; one test serves the real exported
detector (training_job.detection_export, random init, no training).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
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
    ImageRegionCreateEntry,
    PredictionQueryToken,
    Region,
)
from onnx import TensorProto, helper

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.model_factory import color_image
from visionpipe import names
from visionpipe.detection_decode import DetectionPreprocessing, detection_manifest_fields
from visionpipe.domains import DETECTION_DOMAIN_IDS, GENERAL_DETECTION_DOMAIN_ID
from visionpipe.local.azurite import free_port
from visionpipe.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, TagOutput
from visionpipe.storage import Storage
from visionpipe.stores.label_store import ImageFacts, ImageRegion, LabelStore, Project
from visionpipe.stores.prediction_store import PredictionStore
from visionpipe.stores.registry import Iteration, IterationStatus, Registry
from visionpipe.training_rules import MAX_REGIONS_PER_IMAGE

TRAINING = {"Training-Key": TEST_TRAINING_KEY}
PREDICTION = {"Prediction-Key": TEST_PREDICTION_KEY}
CLASSIFICATION_GENERAL = "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31"
TINY = DetectionPreprocessing(input_size=32)
TAGS = ("cat", "dog")
TABLE_STRING_CHARS = 32 * 1024  # a Table string property: 64 KiB of UTF-16
#: What the fixed detector answers (label = index into TAGS), deliberately not best first, with
#: one box under the service's floor that must not be answered.
FIXED_BOXES = ((0.5, 0.5, 0.25, 0.25), (0.1, 0.2, 0.3, 0.4), (0.0, 0.0, 0.5, 0.5))
FIXED_SCORES = (0.6, 0.9, 0.005)
FIXED_LABELS = (1, 0, 0)


# --- a detector with fixed answers and its registration ---------------------------------------
def build_fixed_detector(prep: DetectionPreprocessing = TINY) -> bytes:
    """An ONNX graph with the exported detector's interface that answers ``FIXED_*``."""
    n = len(FIXED_SCORES)

    def const(name: str, dtype: int, dims: list[int], values: list[Any]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name],
                                value=helper.make_tensor(name + "_v", dtype, dims, values))

    graph = helper.make_graph(
        [const("boxes", TensorProto.FLOAT, [n, 4], [v for b in FIXED_BOXES for v in b]),
         const("scores", TensorProto.FLOAT, [n], list(FIXED_SCORES)),
         const("labels", TensorProto.INT64, [n], list(FIXED_LABELS))],
        "fixed_detector",
        [helper.make_tensor_value_info(prep.input_name, TensorProto.FLOAT,
                                       list(prep.input_shape))],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [n, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [n]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="visionpipe-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def register_detection_iteration(registry: Registry, label_store: LabelStore, project: Project,
                                 model: bytes, prep: DetectionPreprocessing = TINY,
                                 tags: tuple[str, ...] = TAGS) -> Iteration:
    """A Completed detection iteration whose artifacts are ``model``, as the training job would
    write them (manifest fields from visionpipe.detection_decode)."""
    tag_rows = [label_store.get_or_create_tag(project.id, name) for name in tags]
    iteration = registry.create_iteration(project.id)
    fields = detection_manifest_fields(prep, architecture="test-detector")
    manifest = Manifest(
        project_id=project.id, iteration_id=iteration.id,
        classification_type=project.classification_type,
        tags=tuple(TagOutput(t.id, t.name) for t in tag_rows),
        preprocessing=prep.normalization(), backbone="test-detector", pretrained=False,
        onnx_opset=17, model_sha256=hashlib.sha256(model).hexdigest(),
        created=datetime.now(UTC).isoformat(), domain_type=fields["domainType"],
        detection_preprocessing=prep, detection=fields["detection"],
    )
    registry.upload_artifact(project.id, iteration.id, MODEL_FILE, model,
                             "application/octet-stream")
    registry.upload_artifact(project.id, iteration.id, MANIFEST_FILE,
                             manifest.to_json().encode(), "application/json")
    return registry.update_iteration(project.id, iteration.id, status=IterationStatus.COMPLETED,
                                     trainedAt=datetime.now(UTC))


@pytest.fixture
def detection_project(label_store: LabelStore) -> Project:
    """A fresh object detection project (its own name: ``project`` may be used beside it)."""
    return label_store.create_project(f"det-{uuid.uuid4().hex[:10]}",
                                      domain_id=GENERAL_DETECTION_DOMAIN_ID)


@pytest.fixture
def published_detector(registry: Registry, label_store: LabelStore,
                       detection_project: Project) -> Iteration:
    from visionpipe.pipeline.publishing import publish

    iteration = register_detection_iteration(registry, label_store, detection_project,
                                             build_fixed_detector())
    publish(registry, label_store, detection_project.id, iteration.id, "prod")
    return iteration


@dataclass
class PictureServer:
    """A real HTTP server on 127.0.0.1 serving one picture at /p.jpg."""

    port: int
    picture: bytes
    hits: list[str] = field(default_factory=list)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/p.jpg"


@pytest.fixture
def picture_server() -> Iterator[PictureServer]:
    state = PictureServer(free_port(), color_image("green", seed=77))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            state.hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(state.picture)))
            self.end_headers()
            self.wfile.write(state.picture)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _boxes(prediction: Any) -> list[tuple[str, float, tuple[float, ...]]]:
    return [(p.tag_name, round(p.probability, 4),
             tuple(round(v, 4) for v in (p.bounding_box.left, p.bounding_box.top,
                                         p.bounding_box.width, p.bounding_box.height)))
            for p in prediction.predictions]


EXPECTED = [("cat", 0.9, (0.1, 0.2, 0.3, 0.4)), ("dog", 0.6, (0.5, 0.5, 0.25, 0.25))]


# --- the manifest ---------------------------------------------------------------------------------
def test_detection_manifest_round_trips_and_classification_stays_the_default() -> None:
    fields = detection_manifest_fields(TINY, architecture="x")
    manifest = Manifest("p", "i", "Multiclass", (TagOutput("t", "cat"),), TINY.normalization(),
                        "x", False, 17, "0" * 64, domain_type=fields["domainType"],
                        detection_preprocessing=TINY, detection=fields["detection"])
    text = manifest.to_json()
    assert json.loads(text)["preprocessing"]["resizeMode"] == "stretch"
    again = Manifest.from_json(text)
    assert again.is_detection and again.detection_preprocessing == TINY
    assert again.detection == fields["detection"] and again == manifest
    plain = json.loads(text)
    plain.pop("domainType")
    with pytest.raises(KeyError):  # without its type, the detector's preprocessing is unreadable
        Manifest.from_dict(plain)


# --- domains and projects -------------------------------------------------------------------------
def test_detection_domains_are_listed_and_projects_keep_their_type(
        trainer: CustomVisionTrainingClient) -> None:
    listed = trainer.get_domains()
    detection = {d.id: d for d in listed if d.type == "ObjectDetection"}
    assert set(detection) == DETECTION_DOMAIN_IDS
    assert {d.name for d in detection.values()} >= {"General", "Logo", "Products on Shelves",
                                                    "General (compact)"}
    # the detection quickstart looks its domain up this way
    general = next(d for d in listed if d.type == "ObjectDetection" and d.name == "General")
    assert trainer.get_domain(general.id).type == "ObjectDetection"
    created = trainer.create_project(f"det-{uuid.uuid4().hex[:8]}", domain_id=general.id)
    try:
        assert created.settings.domain_id == general.id
        compact = next(d for d in detection.values() if d.name == "General (compact)")
        created.settings.domain_id = compact.id
        moved = trainer.update_project(created.id, created)
        assert moved.settings.domain_id == compact.id
        created.settings.domain_id = CLASSIFICATION_GENERAL
        with pytest.raises(CustomVisionErrorException) as raised:
            trainer.update_project(created.id, created)
        assert raised.value.error.code == "BadRequestProjectUnsupportedDomainTypeChange"
    finally:
        trainer.delete_project(created.id)


def _boxed_images(label_store: LabelStore, project: Project, tag_id: str, n: int,
                  first: int = 0) -> None:
    """``n`` training images (rows with a blob path) carrying one box of ``tag_id`` each."""
    for seed in range(first, first + n):
        sha = hashlib.sha256(f"{project.id}-{tag_id}-{seed}".encode()).hexdigest()
        label_store.create_image(project, (), ImageFacts(sha, 640, 480, "JPEG", 1000),
                                 f"{project.name}/boxes/{seed}.jpg", regions=(
                                     ImageRegion(str(uuid.uuid4()), tag_id, 0.1, 0.1, 0.3, 0.3),))


def test_training_a_detection_project_needs_fifteen_boxed_images_per_tag(
        trainer: CustomVisionTrainingClient, label_store: LabelStore,
        detection_project: Project) -> None:
    """Custom Vision's detection minimum: 15 images with a box of each tag (a tag set on an image
    without a box does not count), refused before anything is queued."""
    cat = label_store.get_or_create_tag(detection_project.id, "cat")
    dog = label_store.get_or_create_tag(detection_project.id, "dog")
    _boxed_images(label_store, detection_project, cat.id, 15)
    _boxed_images(label_store, detection_project, dog.id, 14)
    for seed in range(3):  # tagged dog, but no box: not a detection training image
        sha = hashlib.sha256(f"{detection_project.id}-plain-{seed}".encode()).hexdigest()
        label_store.create_image(detection_project, (dog.id,),
                                 ImageFacts(sha, 640, 480, "JPEG", 1000),
                                 f"{detection_project.name}/dog/{seed}.jpg")
    with pytest.raises(CustomVisionErrorException) as raised:
        trainer.train_project(detection_project.id)
    assert raised.value.error.code == "BadRequestDetectionTrainingValidationFailed"
    assert "at least 15 images" in raised.value.error.message
    assert "'dog' (14)" in raised.value.error.message
    assert trainer.get_iterations(detection_project.id) == []


# --- performance of a detector --------------------------------------------------------------------
#: metrics.json of a detection iteration as the training job stores it: per test image the true
#: boxes [tag index, left, top, width, height] and the served ones [tag index, probability, ...].
#: Image A: a cat found exactly, a dog that is not there; image B: a dog found at IoU 0.777.
DETECTIONS_DOC = {"samples": [
    {"imageId": "a", "sha256": "a" * 64, "regions": [[0, 0.1, 0.1, 0.2, 0.2]],
     "predictions": [[0, 0.9, 0.1, 0.1, 0.2, 0.2], [1, 0.6, 0.5, 0.5, 0.2, 0.2]]},
    {"imageId": "b", "sha256": "b" * 64, "regions": [[1, 0.5, 0.5, 0.4, 0.4]],
     "predictions": [[1, 0.8, 0.55, 0.5, 0.4, 0.4]]},
]}


@pytest.fixture
def scored_detector(registry: Registry, label_store: LabelStore,
                    detection_project: Project) -> Iteration:
    iteration = register_detection_iteration(registry, label_store, detection_project,
                                             build_fixed_detector())
    tags = {t.name: t.id for t in label_store.list_tags(detection_project.id)}
    doc = {"trainImages": 30, "validationImages": 3, "split": "test",
           "detections": {"tagIds": [tags["cat"], tags["dog"]], "tagNames": ["cat", "dog"],
                          **DETECTIONS_DOC}}
    registry.upload_artifact(detection_project.id, iteration.id, "metrics.json",
                             json.dumps(doc).encode(), "application/json")
    return iteration


@pytest.mark.parametrize(("threshold", "overlap", "expected"), [
    # (precision, recall, mAP), per tag {name: (precision, recall, AP)}
    (0.5, 0.5, ((2 / 3, 1.0, 1.0), {"cat": (1.0, 1.0, 1.0), "dog": (0.5, 1.0, 1.0)})),
    (0.5, 0.9, ((1 / 3, 0.5, 0.5), {"cat": (1.0, 1.0, 1.0), "dog": (0.0, 0.0, 0.0)})),
    (0.85, 0.5, ((1.0, 0.5, 1.0), {"cat": (1.0, 1.0, 1.0), "dog": (0.0, 0.0, 1.0)})),
    (0.95, 0.3, ((0.0, 0.0, 1.0), {"cat": (0.0, 0.0, 1.0), "dog": (0.0, 0.0, 1.0)})),
])
def test_detection_performance_at_threshold_and_overlap(
        trainer: CustomVisionTrainingClient, detection_project: Project,
        scored_detector: Iteration, threshold: float, overlap: float,
        expected: tuple[tuple[float, float, float], dict[str, tuple[float, float, float]]]
) -> None:
    """Recomputed at request time from the stored boxes: precision/recall of the boxes at or
    above ``threshold``, a box right when IoU >= ``overlapThreshold`` with a true box of its tag,
    AP per tag at that IoU (threshold-free) and their mean as ``averagePrecision``."""
    perf = trainer.get_iteration_performance(detection_project.id, scored_detector.id,
                                             threshold=threshold, overlap_threshold=overlap)
    (precision, recall, mean_ap), per_tag = expected
    assert (perf.precision, perf.recall, perf.average_precision) == pytest.approx(
        (precision, recall, mean_ap))
    got = {t.name: (t.precision, t.recall, t.average_precision) for t in perf.per_tag_performance}
    assert set(got) == set(per_tag)
    for name, figures in per_tag.items():
        assert got[name] == pytest.approx(figures), name


@pytest.mark.parametrize("query", ["overlapThreshold=abc", "overlapThreshold=-0.1",
                                   "overlapThreshold=1.5", "overlapThreshold=nan",
                                   "threshold=2&overlapThreshold=0.5",
                                   "overlapThreshold=" + "9" * 5000])
def test_detection_performance_refuses_bad_thresholds(
        local_host: str, detection_project: Project, scored_detector: Iteration,
        query: str) -> None:
    answer = httpx.get(f"{local_host}/customvision/v3.3/training/projects/"
                       f"{detection_project.id}/iterations/{scored_detector.id}/performance?"
                       f"{query}", headers=TRAINING, timeout=30)
    assert answer.status_code in (400, 414), answer.text
    if answer.status_code == 400:
        assert set(answer.json()) >= {"code", "message"}


def test_detection_image_performances_carry_true_and_predicted_boxes(
        trainer: CustomVisionTrainingClient, label_store: LabelStore,
        detection_project: Project, scored_detector: Iteration) -> None:
    images = {i.id: i for i in trainer.get_image_performances(detection_project.id,
                                                              scored_detector.id)}
    assert set(images) == {"a", "b"}
    assert trainer.get_image_performance_count(detection_project.id, scored_detector.id) == 2
    a = images["a"]
    assert [(r.tag_name, r.left, r.top, r.width, r.height) for r in a.regions] == [
        ("cat", 0.1, 0.1, 0.2, 0.2)]
    assert [(p.tag_name, p.probability, p.bounding_box.left) for p in a.predictions] == [
        ("cat", 0.9, 0.1), ("dog", 0.6, 0.5)]
    dog = next(t.id for t in label_store.list_tags(detection_project.id) if t.name == "dog")
    only_dogs = trainer.get_image_performances(detection_project.id, scored_detector.id,
                                               tag_ids=[dog])
    assert [i.id for i in only_dogs] == ["b"]


def test_quick_test_on_a_detector_answers_boxes(
        trainer: CustomVisionTrainingClient, detection_project: Project,
        published_detector: Iteration, picture_server: PictureServer,
        app_setting: Callable[[str, str | None], None]) -> None:
    """Quick test of a detection iteration answers what ``detect_image`` answers (it used to
    refuse: the classify path cannot run a detector)."""
    app_setting(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "127.0.0.0/8")
    picture = color_image("red", size=(400, 300), seed=6)
    quick = trainer.quick_test_image(detection_project.id, picture,
                                     iteration_id=published_detector.id)
    assert _boxes(quick) == EXPECTED and quick.iteration == published_detector.id
    by_url = trainer.quick_test_image_url(detection_project.id, url=picture_server.url(),
                                          iteration_id=published_detector.id, store=False)
    assert _boxes(by_url) == EXPECTED
    default = trainer.quick_test_image(detection_project.id, picture, store=False)
    assert _boxes(default) == EXPECTED  # no iteration id: the published one


# --- regions -------------------------------------------------------------------------------------
def _region_ids(image: Any) -> dict[str, tuple[str, tuple[float, ...]]]:
    return {r.region_id: (r.tag_name, (r.left, r.top, r.width, r.height))
            for r in image.regions or []}


def test_regions_at_upload_added_listed_and_deleted(
        trainer: CustomVisionTrainingClient) -> None:
    project = trainer.create_project(f"det-{uuid.uuid4().hex[:8]}",
                                     domain_id=GENERAL_DETECTION_DOMAIN_ID)
    try:
        cat = trainer.create_tag(project.id, "cat")
        dog = trainer.create_tag(project.id, "dog")
        entry = ImageFileCreateEntry(
            name="a.jpg", contents=color_image("red", seed=1),
            regions=[Region(tag_id=cat.id, left=0.1, top=0.1, width=0.5, height=0.5),
                     Region(tag_id=dog.id, left=0.6, top=0.0, width=0.4, height=1.0 + 1e-4)])
        summary = trainer.create_images_from_files(project.id, ImageFileCreateBatch(
            images=[entry, ImageFileCreateEntry(name="b.jpg",
                                                contents=color_image("blue", seed=2))]))
        assert summary.is_batch_successful, [i.status for i in summary.images]
        first, second = (i.image for i in summary.images)
        regions = _region_ids(first)
        assert sorted(regions.values()) == [("cat", (0.1, 0.1, 0.5, 0.5)),
                                            ("dog", (0.6, 0.0, 0.4, 1.0))]  # overshoot clipped
        assert {t.tag_name for t in first.tags} == {"cat", "dog"}  # tagged with its regions' tags
        assert second.regions is None and second.tags is None

        added = trainer.create_image_regions(project.id, regions=[
            ImageRegionCreateEntry(image_id=second.id, tag_id=dog.id, left=0.0, top=0.0,
                                   width=0.5, height=0.5),
            ImageRegionCreateEntry(image_id=first.id, tag_id=cat.id, left=0.1, top=0.1,
                                   width=0.5, height=0.5),  # already there
        ])
        assert [(r.image_id, r.tag_name) for r in added.created] == [(second.id, "dog")]
        assert [(d.image_id, d.tag_id) for d in added.duplicated] == [(first.id, cat.id)]
        assert added.exceeded == []
        new_region = added.created[0].region_id

        (listed,) = trainer.get_images_by_ids(project.id, [second.id])
        assert _region_ids(listed) == {new_region: ("dog", (0.0, 0.0, 0.5, 0.5))}
        assert [t.tag_name for t in listed.tags] == ["dog"]
        tagged = trainer.get_tagged_images(project.id, tag_ids=[dog.id])
        assert {i.id for i in tagged} == {first.id, second.id}

        dog_on_first = next(k for k, v in regions.items() if v[0] == "dog")
        trainer.delete_image_regions(project.id, [new_region, dog_on_first,
                                                  str(uuid.uuid4())])  # unknown ids: ignored
        after = {i.id: i for i in trainer.get_images(project.id)}
        assert after[second.id].regions is None and after[second.id].tags is None
        assert [r.tag_name for r in after[first.id].regions] == ["cat"]
        assert [t.tag_name for t in after[first.id].tags] == ["cat"]
        assert trainer.get_untagged_image_count(project.id) == 1
    finally:
        trainer.delete_project(project.id)


def _post(base: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{base}/customvision/v3.3/training/projects/{path}", headers=TRAINING,
                      content=json.dumps(body).encode(), timeout=30)


@pytest.mark.parametrize(("box", "why"), [
    ({"left": -0.1, "top": 0.1, "width": 0.2, "height": 0.2}, "box_out_of_bounds"),
    ({"left": 0.5, "top": 0.1, "width": 0.6, "height": 0.2}, "box_out_of_bounds"),
    ({"left": 0.1, "top": 0.1, "width": 0.0, "height": 0.2}, "bad_annotation"),
    ({"left": 0.1, "top": 0.1, "width": -0.1, "height": 0.2}, "bad_annotation"),
    ({"left": 0.1, "top": 0.1, "width": 1e308, "height": 0.2}, "box_out_of_bounds"),
    ({"left": "0.1", "top": 0.1, "width": 0.2, "height": 0.2}, "bad_annotation"),
    ({"left": True, "top": 0.1, "width": 0.2, "height": 0.2}, "bad_annotation"),
    ({"top": 0.1, "width": 0.2, "height": 0.2}, "bad_annotation"),
])
def test_bad_boxes_are_refused_and_nothing_is_written(
        local_host: str, label_store: LabelStore, detection_project: Project,
        box: dict[str, Any], why: str) -> None:
    tag = label_store.get_or_create_tag(detection_project.id, "cat")
    image = _record(label_store, detection_project)
    good = {"imageId": image, "tagId": tag.id, "left": 0.1, "top": 0.1, "width": 0.2,
            "height": 0.2}
    answer = _post(local_host, f"{detection_project.id}/images/regions",
                   {"regions": [good, {"imageId": image, "tagId": tag.id, **box}]})
    assert answer.status_code == 400
    assert answer.json()["code"] == "BadRequestImageRegions" and why in answer.json()["message"]
    record = label_store.find_image(detection_project.id, image)
    assert record is not None and record.regions == ()  # the good entry was not written either

    upload = _post(local_host, f"{detection_project.id}/images/files", {"images": [{
        "name": "x.jpg", "contents": base64.b64encode(color_image("red", seed=9)).decode(),
        "regions": [{"tagId": tag.id, **box}]}]})
    assert upload.status_code == 207
    assert why in upload.json()["images"][0]["reason"]


def test_nan_coordinates_are_a_400(local_host: str, label_store: LabelStore,
                                   detection_project: Project) -> None:
    tag = label_store.get_or_create_tag(detection_project.id, "cat")
    image = _record(label_store, detection_project)
    raw = (f'{{"regions": [{{"imageId": "{image}", "tagId": "{tag.id}", "left": NaN, '
           '"top": 0, "width": 0.1, "height": 0.1}]}')
    answer = httpx.post(f"{local_host}/customvision/v3.3/training/projects/"
                        f"{detection_project.id}/images/regions", headers=TRAINING,
                        content=raw.encode(), timeout=30)
    assert answer.status_code == 400 and answer.json()["code"]


def _record(label_store: LabelStore, project: Project, seed: int = 0) -> str:
    """An untagged image record (no blob: the region routes only read the table)."""
    sha = hashlib.sha256(f"{project.id}-{seed}".encode()).hexdigest()
    added = label_store.create_image(project, (), ImageFacts(sha, 640, 480, "JPEG", 1000),
                                     f"{project.name}/_untagged/{seed}.jpg")
    return added.image.id


def test_unknown_image_tag_and_batch_size(local_host: str, label_store: LabelStore,
                                          detection_project: Project) -> None:
    tag = label_store.get_or_create_tag(detection_project.id, "cat")
    image = _record(label_store, detection_project)
    box = {"left": 0.1, "top": 0.1, "width": 0.2, "height": 0.2}
    path = f"{detection_project.id}/images/regions"
    for entry in ({"imageId": str(uuid.uuid4()), "tagId": tag.id, **box},
                  {"imageId": image, "tagId": str(uuid.uuid4()), **box}):
        answer = _post(local_host, path, {"regions": [entry]})
        assert answer.status_code == 400 and answer.json()["code"] == "BadRequestImageRegions"
    over = [{"imageId": image, "tagId": tag.id, **box}] * 65
    assert _post(local_host, path, {"regions": over}).json()["code"] == \
        "BadRequestExceededBatchSize"
    assert _post(local_host, path, {"regions": []}).status_code == 400


def test_regions_are_refused_on_classification_projects(
        local_host: str, trainer: CustomVisionTrainingClient, label_store: LabelStore,
        project: Project) -> None:
    tag = label_store.get_or_create_tag(project.id, "cat")
    image = _record(label_store, project)
    with pytest.raises(CustomVisionErrorException) as raised:
        trainer.create_image_regions(project.id, regions=[
            ImageRegionCreateEntry(image_id=image, tag_id=tag.id, left=0.1, top=0.1, width=0.2,
                                   height=0.2)])
    assert raised.value.error.code == "BadRequestImageRegions"
    with pytest.raises(CustomVisionErrorException) as at_upload:
        trainer.create_images_from_files(project.id, ImageFileCreateBatch(images=[
            ImageFileCreateEntry(name="a.jpg", contents=color_image("red", seed=3),
                                 regions=[Region(tag_id=tag.id, left=0.1, top=0.1, width=0.2,
                                                 height=0.2)])]))
    assert at_upload.value.error.code == "BadRequestImageRegions"
    assert label_store.list_images(project.id)[0].regions == ()


def test_three_hundred_regions_fit_and_the_next_one_is_exceeded(
        local_host: str, storage: Storage, label_store: LabelStore,
        detection_project: Project) -> None:
    """300 regions with full-precision floats stay within a Table string property (64 KiB,
    32K characters per column) and round-trip exactly; the 301st is ``exceeded`` (207)."""
    tag = label_store.get_or_create_tag(detection_project.id, "cat")
    image = _record(label_store, detection_project)
    rng = np.random.default_rng(5)
    wanted = []
    for i in range(MAX_REGIONS_PER_IMAGE):
        left, top = (float(v) for v in rng.uniform(0, 0.5, 2))
        wanted.append({"imageId": image, "tagId": tag.id, "left": left, "top": top,
                       "width": 1 / 3 + i * 1e-9, "height": math.pi / 10})
    path = f"{detection_project.id}/images/regions"
    for start in range(0, len(wanted), 64):
        answer = _post(local_host, path, {"regions": wanted[start:start + 64]})
        assert answer.status_code == 200, answer.text
    record = label_store.find_image(detection_project.id, image)
    assert record is not None and len(record.regions) == MAX_REGIONS_PER_IMAGE
    assert [r.box for r in record.regions] == [
        (w["left"], w["top"], w["width"], w["height"]) for w in wanted]
    row = storage.table(names.IMAGES_TABLE).get_entity(detection_project.id, record.sha256)
    columns = [v for k, v in row.items() if k.startswith("regions")]
    assert len(columns) > 1 and all(len(v) <= TABLE_STRING_CHARS for v in columns)
    one_more = {**wanted[0], "left": 0.9, "width": 0.05}
    answer = _post(local_host, path, {"regions": [one_more, wanted[1]]})
    assert answer.status_code == 207
    body = answer.json()
    assert len(body["exceeded"]) == 1 and len(body["duplicated"]) == 1 and body["created"] == []

    many = [{"tagId": tag.id, "left": 0.1, "top": 0.1, "width": 0.1, "height": 0.1}] * 301
    upload = _post(local_host, f"{detection_project.id}/images/files", {"images": [{
        "name": "x.jpg", "contents": base64.b64encode(color_image("red", seed=8)).decode(),
        "regions": many}]})
    assert upload.json()["images"][0]["status"] == "ErrorRegionLimitExceed"


def test_a_deleted_tag_takes_its_regions_with_it(label_store: LabelStore,
                                                 detection_project: Project) -> None:
    cat = label_store.get_or_create_tag(detection_project.id, "cat")
    dog = label_store.get_or_create_tag(detection_project.id, "dog")
    sha = hashlib.sha256(b"tag-delete").hexdigest()
    regions = (ImageRegion(str(uuid.uuid4()), cat.id, 0.1, 0.1, 0.2, 0.2),
               ImageRegion(str(uuid.uuid4()), dog.id, 0.5, 0.5, 0.2, 0.2))
    label_store.create_image(detection_project, (), ImageFacts(sha, 64, 64, "PNG", 10),
                             "p/_untagged/x.png", regions=regions)
    label_store.delete_tag(detection_project.id, dog.id)
    record = label_store.get_image(detection_project.id, sha)
    assert record is not None and record.regions == regions[:1] and record.tag_ids == (cat.id,)


def test_concurrent_region_writes_to_one_image_all_land(label_store: LabelStore,
                                                         detection_project: Project) -> None:
    """Regions are changed read-modify-write under the row's ETag: eight writers adding to the
    same image at once lose nothing (without the condition, last writer wins)."""
    from concurrent.futures import ThreadPoolExecutor

    tag = label_store.get_or_create_tag(detection_project.id, "cat")
    image = _record(label_store, detection_project, seed=42)
    record = label_store.find_image(detection_project.id, image)
    assert record is not None

    def add(writer: int) -> None:
        boxes = [(tag.id, (0.01 * writer, 0.01 * k, 0.1, 0.1)) for k in range(5)]
        assert label_store.add_image_regions(detection_project, record.sha256, boxes, 300)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(add, range(8)))
    after = label_store.get_image(detection_project.id, record.sha256)
    assert after is not None and len(after.regions) == 40
    assert len({r.region_id for r in after.regions}) == 40 and after.tag_ids == (tag.id,)


def test_region_proposals_and_suggestions_come_from_a_trained_detector(
        trainer: CustomVisionTrainingClient, registry: Registry, label_store: LabelStore,
        detection_project: Project) -> None:
    created = trainer.create_images_from_files(detection_project.id, ImageFileCreateBatch(
        images=[ImageFileCreateEntry(name="a.jpg", contents=color_image("red", seed=21))]))
    image = created.images[0].image
    with pytest.raises(CustomVisionErrorException) as none_yet:
        trainer.get_image_region_proposals(detection_project.id, image.id)
    assert none_yet.value.error.code == "BadRequestNotSupported"

    iteration = register_detection_iteration(registry, label_store, detection_project,
                                             build_fixed_detector())  # not published: enough
    proposal = trainer.get_image_region_proposals(detection_project.id, image.id)
    assert proposal.image_id == image.id and proposal.project_id == detection_project.id
    assert [(round(p.confidence, 4), round(p.bounding_box.left, 4))
            for p in proposal.proposals] == [(0.9, 0.1), (0.6, 0.5)]
    with pytest.raises(CustomVisionErrorException) as unknown:
        trainer.get_image_region_proposals(detection_project.id, str(uuid.uuid4()))
    assert unknown.value.error.code == "NotFoundImage"

    (suggested,) = trainer.suggest_tags_and_regions(
        detection_project.id, iteration.id, [image.id, str(uuid.uuid4())])  # unknown: left out
    assert suggested.id == image.id and suggested.iteration == iteration.id
    assert _boxes(suggested) == EXPECTED
    assert suggested.prediction_uncertainty == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(CustomVisionErrorException) as no_iteration:
        trainer.suggest_tags_and_regions(detection_project.id, str(uuid.uuid4()), [image.id])
    assert no_iteration.value.error.code == "NotFoundIteration"


# --- detect --------------------------------------------------------------------------------------
def test_detect_image_and_url_store_and_nostore(
        predictor: CustomVisionPredictionClient, trainer: CustomVisionTrainingClient,
        storage: Storage, detection_project: Project, published_detector: Iteration,
        picture_server: PictureServer, app_setting: Callable[[str, str | None], None]) -> None:
    app_setting(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "127.0.0.0/8")
    picture = color_image("red", size=(400, 300), seed=4)
    stored = predictor.detect_image(detection_project.id, "prod", picture)
    assert _boxes(stored) == EXPECTED and stored.iteration == published_detector.id
    row = PredictionStore(storage).get(detection_project.id, stored.id)
    assert row is not None and row.predictions[0].bounding_box == pytest.approx(
        (0.1, 0.2, 0.3, 0.4))
    # the stored-prediction queries answer the boxes too (they answered boundingBox null)
    queried = trainer.query_predictions(detection_project.id, PredictionQueryToken(
        iteration_id=published_detector.id, max_count=10))
    (found,) = [r for r in queried.results if r.id == stored.id]
    assert _boxes(found) == EXPECTED

    kept_nothing = predictor.detect_image_with_no_store(detection_project.id, "prod", picture)
    assert _boxes(kept_nothing) == EXPECTED
    assert PredictionStore(storage).get(detection_project.id, kept_nothing.id) is None

    by_url = predictor.detect_image_url(detection_project.id, "prod", url=picture_server.url())
    assert _boxes(by_url) == EXPECTED
    assert PredictionStore(storage).get(detection_project.id, by_url.id) is not None
    by_url_nostore = predictor.detect_image_url_with_no_store(detection_project.id, "prod",
                                                              url=picture_server.url())
    assert _boxes(by_url_nostore) == EXPECTED
    assert PredictionStore(storage).get(detection_project.id, by_url_nostore.id) is None
    assert len(picture_server.hits) == 2

    # the stored prediction's picture becomes a training image with the boxes a person drew
    cat = next(t for t in trainer.get_tags(detection_project.id) if t.name == "cat")
    created = trainer.create_images_from_predictions(detection_project.id, ImageIdCreateBatch(
        images=[ImageIdCreateEntry(id=stored.id, regions=[
            Region(tag_id=cat.id, left=0.1, top=0.2, width=0.3, height=0.4)])]))
    assert created.is_batch_successful
    (image,) = (i.image for i in created.images)
    assert [(r.tag_name, r.left) for r in image.regions] == [("cat", 0.1)]


def test_classify_on_a_detector_and_detect_on_a_classifier_are_refused(
        predictor: CustomVisionPredictionClient, detection_project: Project,
        published_detector: Iteration, project: Project, published: Iteration) -> None:
    picture = color_image("red", seed=5)
    with pytest.raises(PredictionError) as classify:
        predictor.classify_image(detection_project.id, "prod", picture)
    assert classify.value.error.code == "BadRequestNotSupported"
    with pytest.raises(PredictionError) as detect:
        predictor.detect_image_with_no_store(project.id, "prod", picture)
    assert detect.value.error.code == "BadRequestNotSupported"


def test_detect_refuses_bad_input_in_the_services_shape(
        local_host: str, detection_project: Project, published_detector: Iteration) -> None:
    base = (f"{local_host}/customvision/v3.1/prediction/{detection_project.id}/detect/"
            "iterations")
    not_an_image = httpx.post(f"{base}/prod/image/nostore", headers=PREDICTION,
                              content=b"not a picture", timeout=30)
    assert not_an_image.status_code == 400 and not_an_image.json()["code"]
    unknown = httpx.post(f"{base}/nope/image", headers=PREDICTION,
                         content=color_image("red"), timeout=30)
    assert unknown.status_code == 404 and unknown.json()["code"] == "NotFoundIteration"
    no_key = httpx.post(f"{base}/prod/image", content=color_image("red"), timeout=30)
    assert no_key.status_code == 401


def test_the_real_exported_detector_serves_through_the_core(
        tmp_path: Path, registry: Registry, label_store: LabelStore,
        detection_project: Project) -> None:
    """The training job's exported graph (random init, tiny input) loads in the serving core and
    answers boxes in the Custom Vision shape: inside the picture, best first, known tags."""
    from dataclasses import replace

    from training_job.detection_export import export_detector
    from training_job.detection_model import DetectorSpec, build_detector
    from visionpipe.serving.core import ServingCore
    from visionpipe.settings import get_settings

    spec = replace(DetectorSpec().scaled(64), box_head_size=32)
    built = build_detector(spec, len(TAGS), pretrained=False)
    prep = DetectionPreprocessing(input_size=spec.input_size)
    export_detector(built.model, spec, prep, tmp_path / MODEL_FILE)
    iteration = register_detection_iteration(registry, label_store, detection_project,
                                             (tmp_path / MODEL_FILE).read_bytes(), prep)
    core = ServingCore(registry)
    picture = color_image("blue", size=(400, 300), seed=6)
    prepared = core.prepare(detection_project.id, picture, get_settings().prediction_limits,
                            iteration_id=iteration.id)
    detection = core.session(detection_project.id, iteration.id).detect(prepared)  # type: ignore[arg-type]
    ranked = detection.ranked()
    assert 0 < len(ranked) <= 200  # untrained: near-uniform class scores, far above the floor
    scores = [b.probability for b, _, _ in ranked]
    assert scores == sorted(scores, reverse=True) and all(s >= 0.01 for s in scores)
    for box, _tag_id, name in ranked:
        assert name in TAGS
        assert box.left >= 0 and box.left + box.width <= 1 + 1e-6 and box.width > 0
        assert box.top >= 0 and box.top + box.height <= 1 + 1e-6 and box.height > 0
