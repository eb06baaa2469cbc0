"""Issue 12's done-when: Microsoft's Python object detection quickstart, run with the official SDK
(``azure-cognitiveservices-vision-customvision``) against the local host, with only the endpoint
and the keys changed, and a real training worker training a real detector on the CPU.

The quickstart's steps, as Microsoft wrote them: look up the General object detection domain,
create a project with it, create tags, upload images with their regions
(``ImageFileCreateEntry(regions=[Region(...)])`` through ``create_images_from_files``), train,
poll until Completed, publish, ``detect_image`` with the prediction client. Pictures are
synthetic scenes of red squares and blue circles (tests/detection_samples.py) instead of forks
and scissors, and the boxes answered must overlap the truth on scenes held back from training.

The worker is the training job's own ``--watch`` loop in a subprocess, with the smallest
detector that still learns the scenes from a random init on a CPU in about a minute: Faster
R-CNN MobileNetV3-FPN at 128 px with a lighter box head and RoI budget (``--detection-*``
options; the same code path as the domains' detectors).
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.detection_samples import scene
from tests.training_worker import watching_worker, worker_log
from visionpipe.annotations import Region
from visionpipe.detection_metrics import Detection, GroundTruth, evaluate, iou
from visionpipe.storage import Storage

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

SIZE = 128  # detector input side
SCENE = 256  # picture side: Custom Vision refuses training images under 256 px
TRAIN_SCENES = 44  # >= 15 pictures per tag with boxes of it (Custom Vision's minimum)
HELD_BACK = 24
TRAINING_DEADLINE_S = 600  # a shared, busy box; ~60-90 s of training on two quiet cores


def scenes(n: int, seed: int) -> list[tuple[bytes, tuple]]:
    """Scenes of one or two objects of a quarter to nearly half the picture's side: what a
    detector learns from a random init in about a minute of CPU (the test's budget)."""
    rng = np.random.default_rng(seed)
    return [scene(rng, SCENE, min_side=0.28, max_side=0.48, max_objects=2) for _ in range(n)]


@pytest.fixture(scope="module")
def worker(storage: Storage, local_host: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """A CPU worker with a small detector: what trains from a random init in about a minute."""
    with watching_worker(
            storage, tmp_path_factory.mktemp("detection-worker"), "tr-det",
            "--detection-input-size", str(SIZE), "--detection-epochs", "24",
            "--detection-patience", "24", "--detection-batch-size", "4", "--detection-lr", "1e-3",
            "--detection-box-head", "256", "--detection-roi-samples", "32",
            "--detection-rpn-proposals", "100", "--threads", "1") as process:
        yield process


def right(prediction: Any, regions: tuple[Region, ...]) -> bool:
    """A predicted box has the tag of a true box it overlaps by IoU >= 0.5."""
    box = prediction.bounding_box
    return any(r.tag == prediction.tag_name and iou(
        (r.left, r.top, r.width, r.height), (box.left, box.top, box.width, box.height)) >= 0.5
        for r in regions)


def test_custom_vision_python_object_detection_quickstart(
        local_host: str, worker: subprocess.Popen[bytes]) -> None:
    from azure.cognitiveservices.vision.customvision.prediction import (
        CustomVisionPredictionClient,
    )
    from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
    from azure.cognitiveservices.vision.customvision.training.models import (
        CustomVisionErrorException,
        ImageFileCreateBatch,
        ImageFileCreateEntry,
        Region,
    )
    from msrest.authentication import ApiKeyCredentials

    # --- what changes: the endpoint and the keys ---
    ENDPOINT = local_host  # noqa: N806
    training_key = TEST_TRAINING_KEY
    prediction_key = TEST_PREDICTION_KEY
    prediction_resource_id = "/subscriptions/x/resourceGroups/y/providers/visionpipe/local"

    # --- the quickstart, as Microsoft wrote it (squares and circles instead of forks and
    # scissors) ---
    credentials = ApiKeyCredentials(in_headers={"Training-key": training_key})
    trainer = CustomVisionTrainingClient(ENDPOINT, credentials)
    prediction_credentials = ApiKeyCredentials(in_headers={"Prediction-key": prediction_key})
    predictor = CustomVisionPredictionClient(ENDPOINT, prediction_credentials)

    publish_iteration_name = "detectModel"
    obj_detection_domain = next(domain for domain in trainer.get_domains()
                                if domain.type == "ObjectDetection" and domain.name == "General")
    project = trainer.create_project(f"detection-quickstart-{uuid.uuid4()}",
                                     domain_id=obj_detection_domain.id)
    square_tag = trainer.create_tag(project.id, "square")
    circle_tag = trainer.create_tag(project.id, "circle")
    tag_id = {"square": square_tag.id, "circle": circle_tag.id}

    tagged_images_with_regions = []
    for n, (picture, regions) in enumerate(scenes(TRAIN_SCENES, seed=1)):
        tagged_images_with_regions.append(ImageFileCreateEntry(
            name=f"scene_{n}.png", contents=picture,
            regions=[Region(tag_id=tag_id[r.tag], left=r.left, top=r.top, width=r.width,
                            height=r.height) for r in regions]))
    upload_result = trainer.create_images_from_files(
        project.id, ImageFileCreateBatch(images=tagged_images_with_regions))
    assert upload_result.is_batch_successful, [i.status for i in upload_result.images]

    started = time.monotonic()
    iteration = trainer.train_project(project.id)
    while iteration.status != "Completed":
        assert iteration.status != "Failed", iteration.training_error_details
        assert time.monotonic() - started < TRAINING_DEADLINE_S, \
            f"still {iteration.status}:\n{worker_log(worker)}"
        assert worker.poll() is None, f"worker exited:\n{worker_log(worker)}"
        time.sleep(1)
        iteration = trainer.get_iteration(project.id, iteration.id)
    training_seconds = time.monotonic() - started

    trainer.publish_iteration(project.id, iteration.id, publish_iteration_name,
                              prediction_resource_id)

    # held-back scenes (another seed: never uploaded), through the prediction client
    held_back = scenes(HELD_BACK, seed=2)
    hits, best_hits = 0, 0
    truth: list[GroundTruth] = []
    found: list[Detection] = []
    for n, (picture, regions) in enumerate(held_back):
        results = predictor.detect_image(project.id, publish_iteration_name, picture)
        assert results.iteration == iteration.id
        probabilities = [p.probability for p in results.predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert len(results.predictions) <= 200
        truth += [GroundTruth(str(n), r.tag, r.left, r.top, r.width, r.height) for r in regions]
        found += [Detection(str(n), p.tag_name, p.probability, p.bounding_box.left,
                            p.bounding_box.top, p.bounding_box.width, p.bounding_box.height)
                  for p in results.predictions]
        confident = [p for p in results.predictions if p.probability >= 0.5]
        hits += any(right(p, regions) for p in confident)
        best_hits += bool(results.predictions) and right(results.predictions[0], regions)
    held_map = evaluate(truth, found, iou_threshold=0.5).mean_average_precision or 0.0
    print(f"detector: {training_seconds:.0f}s from train_project to Completed; on {HELD_BACK} "
          f"held-back scenes: a box >= 0.5 right on {hits}, the best box right on {best_hits}, "
          f"mAP@0.5 {held_map:.3f}")
    # the bar: boxes overlapping the truth (IoU >= 0.5, right tag) on most images
    assert hits > HELD_BACK / 2, f"only {hits}/{HELD_BACK} held-back scenes have a right box"

    # --- beyond the quickstart: performance at an overlap threshold, quick test, images ---
    performance = trainer.get_iteration_performance(project.id, iteration.id, threshold=0.5,
                                                    overlap_threshold=0.5)
    assert {t.name for t in performance.per_tag_performance} == {"square", "circle"}
    assert 0.0 <= performance.precision <= 1.0 and 0.0 < performance.average_precision <= 1.0
    strict = trainer.get_iteration_performance(project.id, iteration.id, threshold=0.5,
                                               overlap_threshold=0.95)
    assert strict.average_precision < performance.average_precision  # tighter boxes: fewer hits
    assert strict.recall <= performance.recall
    with pytest.raises(CustomVisionErrorException) as bad_overlap:
        trainer.get_iteration_performance(project.id, iteration.id, overlap_threshold=1.5)
    assert bad_overlap.value.response.status_code == 400

    picture = held_back[0][0]
    quick = trainer.quick_test_image(project.id, picture, iteration_id=iteration.id)
    served = predictor.detect_image_with_no_store(project.id, publish_iteration_name, picture)
    assert quick.predictions and quick.predictions[0].bounding_box is not None
    assert [(p.tag_name, round(p.probability, 4)) for p in quick.predictions[:5]] == \
        [(p.tag_name, round(p.probability, 4)) for p in served.predictions[:5]]

    count = trainer.get_image_performance_count(project.id, iteration.id)
    image_performances = trainer.get_image_performances(project.id, iteration.id)
    assert count == len(image_performances) >= 1
    for image in image_performances:
        assert image.regions and {r.tag_name for r in image.regions} <= {"square", "circle"}
        assert all(p.bounding_box is not None for p in image.predictions)

    with pytest.raises(CustomVisionErrorException) as nothing_changed:
        trainer.train_project(project.id)
    assert nothing_changed.value.error.code == "BadRequestTrainingNotNeeded"
    trainer.unpublish_iteration(project.id, iteration.id)
    trainer.delete_project(project.id)
