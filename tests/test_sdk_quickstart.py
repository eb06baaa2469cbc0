"""The success test of the HTTP API (ARCHITECTURE.md, "HTTP API"): Microsoft's Custom Vision Python
quickstart,
run with the official SDK (``azure-cognitiveservices-vision-customvision``) against the local
host, with only the endpoint and the keys changed.

A real training worker consumes the queue meanwhile: the training job's own ``--watch`` loop in a
subprocess, on the CPU, with the smallest configuration that still learns two colours apart
(MobileNetV3-Small, 64 px, a few epochs, random init, TorchScript export).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.model_factory import color_image
from tests.training_worker import watching_worker, worker_log
from visionpipe.storage import Storage

pytestmark = pytest.mark.slow

TRAINING_DEADLINE_S = 150


@pytest.fixture(scope="module")
def worker(storage: Storage, local_host: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """A CPU worker with a small, quick classifier."""
    with watching_worker(
            storage, tmp_path_factory.mktemp("sdk-worker"), "tr-sdk",
            "--backbone", "mobilenet_v3_small", "--resize", "72", "--crop", "64",
            "--epochs", "15", "--patience", "15", "--batch-size", "8", "--lr", "3e-3",
            "--exporter", "torchscript") as process:
        yield process


def test_custom_vision_python_quickstart(local_host: str,
                                         worker: subprocess.Popen[bytes]) -> None:
    from azure.cognitiveservices.vision.customvision.prediction import (
        CustomVisionPredictionClient,
    )
    from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
    from azure.cognitiveservices.vision.customvision.training.models import (
        CustomVisionErrorException,
        ImageFileCreateBatch,
        ImageFileCreateEntry,
    )
    from msrest.authentication import ApiKeyCredentials

    # --- what changes: the endpoint and the keys ---
    ENDPOINT = local_host  # noqa: N806
    training_key = TEST_TRAINING_KEY
    prediction_key = TEST_PREDICTION_KEY
    prediction_resource_id = "/subscriptions/x/resourceGroups/y/providers/visionpipe/local"

    # --- the quickstart, as Microsoft wrote it (two colours instead of two tree species) ---
    credentials = ApiKeyCredentials(in_headers={"Training-key": training_key})
    trainer = CustomVisionTrainingClient(ENDPOINT, credentials)
    prediction_credentials = ApiKeyCredentials(in_headers={"Prediction-key": prediction_key})
    predictor = CustomVisionPredictionClient(ENDPOINT, prediction_credentials)

    publish_iteration_name = "classifyModel"
    project = trainer.create_project(f"quickstart-{uuid.uuid4()}")
    red_tag = trainer.create_tag(project.id, "Red")
    blue_tag = trainer.create_tag(project.id, "Blue")

    for tag, colour in ((red_tag, "red"), (blue_tag, "blue")):
        image_list = [
            ImageFileCreateEntry(name=f"{colour}_{n}.jpg",
                                 contents=color_image(colour, size=(256, 256), seed=n),
                                 tag_ids=[tag.id])
            for n in range(1, 11)
        ]
        upload_result = trainer.create_images_from_files(
            project.id, ImageFileCreateBatch(images=image_list))
        assert upload_result.is_batch_successful, [i.status for i in upload_result.images]

    iteration = trainer.train_project(project.id)
    assert iteration.status == "Training"
    deadline = time.monotonic() + TRAINING_DEADLINE_S
    while iteration.status != "Completed":
        assert iteration.status != "Failed", iteration.training_error_details
        assert time.monotonic() < deadline, f"still {iteration.status}:\n{worker_log(worker)}"
        assert worker.poll() is None, f"worker exited:\n{worker_log(worker)}"
        time.sleep(1)
        iteration = trainer.get_iteration(project.id, iteration.id)

    performance = trainer.get_iteration_performance(project.id, iteration.id)
    assert {t.name for t in performance.per_tag_performance} == {"Red", "Blue"}
    assert 0.0 <= performance.precision <= 1.0 and 0.0 <= performance.average_precision <= 1.0
    strict = trainer.get_iteration_performance(project.id, iteration.id, threshold=0.99)
    assert strict.recall <= performance.recall

    with pytest.raises(CustomVisionErrorException) as nothing_changed:
        trainer.train_project(project.id)
    assert nothing_changed.value.error.code == "BadRequestTrainingNotNeeded"

    trainer.publish_iteration(project.id, iteration.id, publish_iteration_name,
                              prediction_resource_id)
    published = trainer.get_iteration(project.id, iteration.id)
    assert published.publish_name == publish_iteration_name

    test_image = color_image("red", size=(300, 300), seed=99)
    results = predictor.classify_image(project.id, publish_iteration_name, test_image)
    assert results.iteration == iteration.id
    nostore = predictor.classify_image_with_no_store(project.id, publish_iteration_name,
                                                     color_image("blue", (300, 300), seed=98))

    def red(result: object) -> float:
        return next(p.probability for p in result.predictions  # type: ignore[attr-defined]
                    if p.tag_name == "Red")

    # The tiny CPU model (a few epochs, random init) tells the colours apart; how well is
    # test_training's business (held-out accuracy), not this API test's.
    print(f"P(Red | red picture) {red(results):.3f}, P(Red | blue picture) {red(nostore):.3f}")
    assert red(results) > red(nostore)

    quick = trainer.quick_test_image(project.id, test_image, iteration_id=iteration.id)
    assert quick.predictions[0].tag_name == results.predictions[0].tag_name
    assert red(quick) == pytest.approx(red(results), abs=1e-5)  # the same model, same answer

    # --- beyond the quickstart: the rest of the training-side operations ---
    from azure.cognitiveservices.vision.customvision.training.models import (
        PredictionQueryToken,
        SuggestedTagAndRegionQueryToken,
    )

    stored = trainer.query_predictions(project.id, PredictionQueryToken(order_by="Newest"))
    assert results.id in {p.id for p in stored.results}
    assert nostore.id not in {p.id for p in stored.results}
    suggested = trainer.query_suggested_images(
        project.id, iteration.id, SuggestedTagAndRegionQueryToken(
            tag_ids=[red_tag.id, blue_tag.id], threshold=0.0, max_count=10))
    assert results.id in {s.id for s in suggested.results}
    counts = trainer.query_suggested_image_count(
        project.id, iteration.id, tag_ids=[red_tag.id], threshold=0.0)
    assert counts[red_tag.id] >= 1
    trainer.delete_prediction(project.id, [results.id])
    left = trainer.query_predictions(project.id, PredictionQueryToken(order_by="Newest"))
    assert results.id not in {p.id for p in left.results}

    count = trainer.get_image_performance_count(project.id, iteration.id)
    image_performances = trainer.get_image_performances(project.id, iteration.id)
    assert count == len(image_performances) >= 2
    assert {t.tag_name for p in image_performances for t in p.tags} <= {"Red", "Blue"}

    renamed = trainer.update_iteration(project.id, iteration.id, name="first model")
    assert renamed.name == "first model"
    with pytest.raises(CustomVisionErrorException) as published_one:
        trainer.delete_iteration(project.id, iteration.id)
    assert published_one.value.error.code == "BadRequestIterationIsPublished"

    export = trainer.export_iteration(project.id, iteration.id, "ONNX")
    assert export.status == "Done"
    model = httpx.get(export.download_uri, timeout=30)
    assert model.status_code == 200 and len(model.content) > 100_000
    assert [e.platform for e in trainer.get_exports(project.id, iteration.id)] == ["ONNX"]

    trainer.unpublish_iteration(project.id, iteration.id)
    assert [i.id for i in trainer.get_iterations(project.id)] == [iteration.id]
    trainer.delete_iteration(project.id, iteration.id)
    assert trainer.get_iterations(project.id) == []
    trainer.delete_project(project.id)
    with pytest.raises(CustomVisionErrorException):
        trainer.get_project(project.id)
