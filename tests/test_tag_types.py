"""``Prediction.tagType`` through the official SDK: every answer names the type (Regular or
Negative) each tag had in the iteration's manifest.

Registered iterations, no training: the colour classifier (tests/model_factory.py) with its
"green" tag made Negative in the label store before registration (so the manifest records it,
as the training job's would), and the fixed detector (tests/test_detection_api.py) with a
manifest rewritten to type one of its tags. Classify, quick test, detect, the stored prediction
queries and image performances are checked; a manifest from before tags had types serves every
tag as Regular.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import PredictionQueryToken

from tests.model_factory import color_image, register_color_iteration, rewrite_manifest_tag_types
from tests.test_detection_api import build_fixed_detector, register_detection_iteration
from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID
from visionpipe.manifest import METRICS_FILE, Manifest, TagOutput
from visionpipe.metrics import predictions_document
from visionpipe.pipeline.publishing import publish
from visionpipe.storage import Storage
from visionpipe.stores.label_store import NEGATIVE_TAG, LabelStore, Project
from visionpipe.stores.prediction_store import PredictionStore, StoredPrediction
from visionpipe.stores.registry import Iteration, Registry

REGULAR, NEGATIVE = "Regular", "Negative"


@pytest.fixture
def negative_green(registry: Registry, label_store: LabelStore,
                   project: Project) -> Iterator[Iteration]:
    """The colour classifier with "green" a Negative tag, published as "prod"."""
    label_store.create_tag(project.id, "green", type=NEGATIVE_TAG)
    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")
    yield iteration
    registry.delete_project(project.id)
    label_store.delete_project(project.id)


def types_by_name(predictions: Sequence[Any]) -> dict[str, str]:
    """tag name -> ``tag_type`` of SDK ``Prediction`` objects."""
    return {p.tag_name: p.tag_type for p in predictions}


def test_the_manifest_records_tag_types_and_old_ones_read_regular(
        registry: Registry, project: Project, negative_green: Iteration) -> None:
    manifest = registry.read_manifest(project.id, negative_green.id)
    assert {t.name: t.type for t in manifest.tags} == {
        "red": REGULAR, "green": NEGATIVE, "blue": REGULAR}
    assert Manifest.from_json(manifest.to_json()) == manifest
    old = manifest.to_dict()
    for tag in old["tags"]:
        del tag["type"]
    assert {t.type for t in Manifest.from_dict(old).tags} == {REGULAR}
    with pytest.raises(ValueError, match="tag type"):
        Manifest.from_dict({**old, "tags": [{"id": "t", "name": "x", "type": "Sideways"}]})
    assert TagOutput("t", "x").to_dict() == {"id": "t", "name": "x", "type": REGULAR}


def test_classify_and_quick_test_answer_each_tags_type(
        project: Project, negative_green: Iteration, predictor: CustomVisionPredictionClient,
        trainer: CustomVisionTrainingClient) -> None:
    stored = predictor.classify_image(project.id, "prod", color_image("green", (256, 256)))
    nostore = predictor.classify_image_with_no_store(project.id, "prod",
                                                     color_image("red", (256, 256)))
    quick = trainer.quick_test_image(project.id, color_image("green", (256, 256), seed=3),
                                     iteration_id=negative_green.id, store=False)
    for result, top in ((stored, "green"), (nostore, "red"), (quick, "green")):
        assert result.predictions[0].tag_name == top
        assert types_by_name(result.predictions) == {
            "red": REGULAR, "green": NEGATIVE, "blue": REGULAR}

    # The stored row keeps the type and the query answers it (a row from before types: Regular).
    found = trainer.query_predictions(project.id, PredictionQueryToken(order_by="Newest"))
    (row,) = [p for p in found.results if p.id == stored.id]
    assert types_by_name(row.predictions) == {"red": REGULAR, "green": NEGATIVE,
                                              "blue": REGULAR}
    assert nostore.id not in {p.id for p in found.results}


def test_a_stored_row_without_types_reads_regular(
        storage: Storage, project: Project, negative_green: Iteration,
        predictor: CustomVisionPredictionClient) -> None:
    answer = predictor.classify_image(project.id, "prod", color_image("green", (256, 256)))
    row = PredictionStore(storage).get(project.id, answer.id)
    assert row is not None
    entity = row.to_entity()
    rows = json.loads(entity["predictions"])
    assert {r["tagType"] for r in rows} == {REGULAR, NEGATIVE}
    entity["predictions"] = json.dumps([{k: v for k, v in r.items() if k != "tagType"}
                                        for r in rows])
    assert {p.tag_type for p in StoredPrediction.from_entity(entity).predictions} == {REGULAR}


def test_image_performances_answer_the_manifest_types(
        registry: Registry, project: Project, negative_green: Iteration,
        trainer: CustomVisionTrainingClient) -> None:
    manifest = registry.read_manifest(project.id, negative_green.id)
    ids = [t.id for t in manifest.tags]
    green = next(t.id for t in manifest.tags if t.name == "green")
    doc = {"predictions": predictions_document(ids, [t.name for t in manifest.tags], [
        ("img-1", hashlib.sha256(b"one").hexdigest(), [green], [0.1, 0.8, 0.1])])}
    registry.upload_artifact(project.id, negative_green.id, METRICS_FILE,
                             json.dumps(doc).encode(), "application/json")
    (performance,) = trainer.get_image_performances(project.id, negative_green.id)
    assert performance.predictions[0].tag_name == "green"
    assert types_by_name(performance.predictions) == {
        "red": REGULAR, "green": NEGATIVE, "blue": REGULAR}


def test_a_manifest_without_types_still_serves_every_tag_as_regular(
        registry: Registry, label_store: LabelStore, project: Project,
        predictor: CustomVisionPredictionClient) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    rewrite_manifest_tag_types(registry, project.id, iteration.id, None)
    raw = json.loads(registry.download_artifact(project.id, iteration.id, "manifest.json"))
    assert all("type" not in t for t in raw["tags"])
    publish(registry, label_store, project.id, iteration.id, "prod")
    result = predictor.classify_image_with_no_store(project.id, "prod",
                                                    color_image("blue", (256, 256)))
    assert result.predictions[0].tag_name == "blue"
    assert {p.tag_type for p in result.predictions} == {REGULAR}


def test_detect_answers_each_boxes_tag_type(
        registry: Registry, label_store: LabelStore, predictor: CustomVisionPredictionClient,
        trainer: CustomVisionTrainingClient) -> None:
    project = label_store.create_project(f"det-types-{uuid.uuid4().hex[:8]}",
                                         domain_id=GENERAL_DETECTION_DOMAIN_ID)
    iteration = register_detection_iteration(registry, label_store, project,
                                             build_fixed_detector())
    rewrite_manifest_tag_types(registry, project.id, iteration.id, {"dog": NEGATIVE})
    publish(registry, label_store, project.id, iteration.id, "prod")
    picture = color_image("red", (256, 256))
    boxes = predictor.detect_image(project.id, "prod", picture)
    quick = trainer.quick_test_image(project.id, picture, iteration_id=iteration.id,
                                     store=False)
    for result in (boxes, quick):
        assert [p.tag_name for p in result.predictions] == ["cat", "dog"]
        assert [p.tag_type for p in result.predictions] == [REGULAR, NEGATIVE]
        assert result.predictions[0].bounding_box is not None
    # tag-and-region suggestions for a training image answer the same types
    uploaded = trainer.create_images_from_data(project.id, picture)
    (image_id,) = [i.image.id for i in uploaded.images]
    (suggested,) = trainer.suggest_tags_and_regions(project.id, iteration.id, [image_id])
    assert {p.tag_name: p.tag_type for p in suggested.predictions} == {
        "cat": REGULAR, "dog": NEGATIVE}
    registry.delete_project(project.id)
    label_store.delete_project(project.id)
