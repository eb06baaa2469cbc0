"""The prediction drop folder: ``predict-images/{project}/...`` -> ``predictions/...json``.

Library and trigger tests use real binding objects against the session's Azurite; the end-to-end
tests go through the Event Grid bridge and the local Functions host.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import pytest

from functions.predict import predict_image
from tests.drops import grid_event, typed, upload, wait_for
from tests.model_factory import color_image
from visionpipe import names
from visionpipe.local.bridge import EventGridBridge
from visionpipe.manifest import MODEL_FILE
from visionpipe.pipeline.drop_predict import (
    DropFolderPredictor,
    DropOutcome,
    annotated_path,
    draw_boxes,
    drop_prediction_id,
)
from visionpipe.settings import ImageLimits, get_settings
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.prediction_store import PredictionStore
from visionpipe.stores.quarantine import REASON_SUFFIX
from visionpipe.stores.registry import Iteration, Registry


def read_result(storage: Storage, path: str) -> dict[str, object] | None:
    blob = storage.container(names.PREDICTIONS).get_blob_client(path + ".json")
    if not blob.exists():
        return None
    return dict(json.loads(blob.download_blob().readall()))


def read_reason(storage: Storage, path: str) -> dict[str, object]:
    blob = storage.container(names.QUARANTINE).get_blob_client(
        f"{names.PREDICT_IMAGES}/{path}{REASON_SUFFIX}")
    return dict(json.loads(blob.download_blob().readall()))


def input_exists(storage: Storage, path: str) -> bool:
    return bool(storage.container(names.PREDICT_IMAGES).get_blob_client(path).exists())


def test_predict_binding_metadata() -> None:
    built = predict_image.build()
    assert built.get_function_name() == names.PREDICT_FUNCTION
    trigger = built.get_trigger().get_dict_repr()
    assert trigger["type"] == "eventGridTrigger"
    assert trigger["name"] == "event"
    assert names.EVENT_SUBSCRIPTIONS[names.PREDICT_IMAGES] == names.PREDICT_FUNCTION


def test_dropped_image_gets_a_custom_vision_result_and_a_store_row(
    storage: Storage, project: Project, published: Iteration
) -> None:
    path = f"{project.name}/batch 1/a.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, color_image("blue", seed=1))
    predict_image.build().get_user_function()(grid_event(raw))

    result = read_result(storage, path)
    assert result is not None
    assert set(result) == {"id", "project", "iteration", "created", "predictions"}
    assert result["project"] == project.id and result["iteration"] == published.id
    assert datetime.fromisoformat(str(result["created"]).replace("Z", "+00:00"))
    predictions = result["predictions"]
    assert isinstance(predictions, list) and len(predictions) == 3
    assert [set(p) for p in predictions] == [{"probability", "tagId", "tagName", "tagType"}] * 3
    assert {p["tagType"] for p in predictions} == {"Regular"}
    assert predictions[0]["tagName"] == "blue" and predictions[0]["probability"] > 0.9
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert input_exists(storage, path)  # a predicted input stays where it was dropped

    row = PredictionStore(storage).get(project.id, str(result["id"]))
    assert row is not None
    assert row.iteration_id == published.id and row.publish_name == "prod"
    # the picture is kept in prediction-images (the drop may go away), with a thumbnail beside it
    assert row.blob_path == f"{names.PREDICTION_IMAGES}/{project.id}/{row.id}/original.jpg"
    assert row.predictions[0].tag_name == "blue"


def test_redelivered_event_rewrites_the_same_answer(
    storage: Storage, project: Project, published: Iteration
) -> None:
    path = f"{project.name}/again.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, color_image("red", seed=2))
    predictor = DropFolderPredictor(storage, get_settings())
    first = predictor.handle(typed(raw, names.PREDICT_IMAGES))
    second = predictor.handle(typed(raw, names.PREDICT_IMAGES))
    assert first.outcome == second.outcome == DropOutcome.PREDICTED
    assert first.prediction_id == second.prediction_id == drop_prediction_id(
        path, str(raw["data"]["eTag"]))  # type: ignore[index]
    result = read_result(storage, path)
    assert result is not None and result["id"] == first.prediction_id
    rows = [r for r in PredictionStore(storage).list(project.id)
            if r.image_sha256 == hashlib.sha256(color_image("red", seed=2)).hexdigest()]
    assert len(rows) == 1

    # A new version under the same name is a new prediction.
    raw2 = upload(storage, names.PREDICT_IMAGES, path, color_image("green", seed=2))
    third = predictor.handle(typed(raw2, names.PREDICT_IMAGES))
    assert third.outcome == DropOutcome.PREDICTED and third.prediction_id != first.prediction_id
    result = read_result(storage, path)
    assert result is not None and result["predictions"][0]["tagName"] == "green"  # type: ignore[index]


def _assert_rejected(storage: Storage, path: str, code: str, project_id: str | None) -> None:
    result = read_result(storage, path)
    assert result is not None
    assert set(result) == {"id", "project", "created", "error"}
    assert result["project"] == project_id
    error = result["error"]
    assert isinstance(error, dict) and error["code"] == code and error["message"]
    assert read_reason(storage, path)["reason"] == code
    assert not input_exists(storage, path)
    assert storage.container(names.QUARANTINE).get_blob_client(
        f"{names.PREDICT_IMAGES}/{path}").exists()


def test_unknown_project_is_answered_and_quarantined(
    storage: Storage, project_name: str
) -> None:
    path = f"{project_name}/x.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, color_image("red"))
    predict_image.build().get_user_function()(grid_event(raw))
    _assert_rejected(storage, path, "unknown_project", None)


def test_nothing_published_is_answered_and_quarantined(
    storage: Storage, project: Project
) -> None:
    path = f"{project.name}/x.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, color_image("red"))
    predict_image.build().get_user_function()(grid_event(raw))
    _assert_rejected(storage, path, "no_published_iteration", project.id)
    result = read_result(storage, path)
    assert "publish" in str(result["error"])  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"just some text, not a picture", "unsupported_format"),
        (b"", "empty"),
        (color_image("red", size=(100, 100)), "too_small"),
        (color_image("red")[:2000], "corrupt"),
    ],
)
def test_refused_images_are_answered_and_quarantined(
    storage: Storage, project: Project, published: Iteration, data: bytes, code: str
) -> None:
    path = f"{project.name}/bad-{uuid.uuid4().hex[:6]}.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, data)
    predict_image.build().get_user_function()(grid_event(raw))
    _assert_rejected(storage, path, code, project.id)


def test_too_large_is_refused_without_reading_it(
    storage: Storage, project: Project, published: Iteration
) -> None:
    path = f"{project.name}/big.png"
    data = color_image("red", fmt="PNG")
    raw = upload(storage, names.PREDICT_IMAGES, path, data)
    settings = replace(get_settings(), prediction_limits=ImageLimits(max_bytes=len(data) - 1))
    result = DropFolderPredictor(storage, settings).handle(typed(raw, names.PREDICT_IMAGES))
    assert result.outcome == DropOutcome.REJECTED and result.code == "too_large"
    _assert_rejected(storage, path, "too_large", project.id)


def test_a_blob_outside_a_project_folder_is_answered_and_quarantined(storage: Storage) -> None:
    path = f"loose-{uuid.uuid4().hex[:8]}.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, color_image("red"))
    predict_image.build().get_user_function()(grid_event(raw))
    _assert_rejected(storage, path, "bad_path", None)


def test_a_broken_model_is_answered_and_the_input_kept(
    storage: Storage, registry: Registry, project: Project, published: Iteration
) -> None:
    registry._models.delete_blob(Registry.artifact_path(project.id, published.id, MODEL_FILE))
    path = f"{project.name}/x.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, color_image("red"))
    predict_image.build().get_user_function()(grid_event(raw))
    result = read_result(storage, path)
    assert result is not None and result["error"]["code"] == "model_unavailable"  # type: ignore[index]
    assert input_exists(storage, path)


def test_a_redelivery_after_quarantine_is_harmless(storage: Storage, project_name: str) -> None:
    path = f"{project_name}/x.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, color_image("red"))
    handler = predict_image.build().get_user_function()
    handler(grid_event(raw))
    handler(grid_event(raw))  # source is in quarantine now: nothing to do, no error
    assert read_result(storage, path) is not None


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"eventType": "Microsoft.Storage.BlobDeleted"}, "unknown event type"),
        ({"subject": "/blobServices/default/containers/training-images/blobs/p/a.jpg"},
         "not 'predict-images'"),
        ({"data": {"api": "PutBlock", "url": ""}}, "data.api 'PutBlock'"),
    ],
)
def test_other_events_are_refused_loudly(
    storage: Storage, project_name: str, caplog: pytest.LogCaptureFixture,
    override: dict[str, object], why: str,
) -> None:
    path = f"{project_name}/a.jpg"
    raw = upload(storage, names.PREDICT_IMAGES, path, color_image("red"))
    with caplog.at_level(logging.ERROR):
        predict_image.build().get_user_function()(grid_event(raw, **override))
    assert why in caplog.text
    assert read_result(storage, path) is None and input_exists(storage, path)


# --- end to end: Azurite -> bridge -> local host -> function -------------------------------------
def test_drop_to_result_through_the_bridge(
    storage: Storage, project: Project, published: Iteration, bridge: EventGridBridge
) -> None:
    upload(storage, names.PREDICT_IMAGES, f"{project.name}/cam/1.jpg", color_image("green"))
    upload(storage, names.PREDICT_IMAGES, f"{project.name}/cam/2.txt", b"not an image")
    ok = wait_for(lambda: read_result(storage, f"{project.name}/cam/1.jpg"), timeout=10)
    assert ok["iteration"] == published.id
    assert ok["predictions"][0]["tagName"] == "green"  # type: ignore[index]
    bad = wait_for(lambda: read_result(storage, f"{project.name}/cam/2.txt"), timeout=10)
    assert bad["error"]["code"] == "unsupported_format"  # type: ignore[index]
    wait_for(lambda: not input_exists(storage, f"{project.name}/cam/2.txt"), timeout=10)


def test_pixels_that_do_not_decode_are_answered_as_corrupt(
    storage: Storage, project: Project, published: Iteration
) -> None:
    """Validation's decode is the model's decode: pixels cut short are the input's fault."""
    path = f"{project.name}/x.png"
    whole = color_image("red", fmt="PNG")
    raw = upload(storage, names.PREDICT_IMAGES, path, whole[: len(whole) // 2])
    predict_image.build().get_user_function()(grid_event(raw))
    _assert_rejected(storage, path, "corrupt", project.id)


# --- object detection projects --------------------------------------------------------------
@pytest.fixture
def detector(registry: Registry, label_store: LabelStore) -> tuple[Project, Iteration]:
    """A detection project whose published iteration answers fixed boxes
    (tests/test_detection_api.py: ``FIXED_*``, one of them under the service's floor)."""
    from tests.test_detection_api import build_fixed_detector, register_detection_iteration
    from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID
    from visionpipe.pipeline.publishing import publish

    project = label_store.create_project(f"pd-{uuid.uuid4().hex[:10]}",
                                         domain_id=GENERAL_DETECTION_DOMAIN_ID)
    iteration = register_detection_iteration(registry, label_store, project,
                                             build_fixed_detector())
    publish(registry, label_store, project.id, iteration.id, "prod")
    return project, iteration


def _predict_detection(storage: Storage, project: Project, path: str, data: bytes
                       ) -> tuple[dict[str, object], object]:
    event = typed(upload(storage, names.PREDICT_IMAGES, path, data), names.PREDICT_IMAGES)
    outcome = DropFolderPredictor(storage, get_settings()).handle(event)
    assert outcome.outcome == DropOutcome.PREDICTED, outcome
    result = read_result(storage, path)
    assert result is not None
    return result, outcome


def test_a_detection_project_answers_boxes_in_custom_vision_shape(
        storage: Storage, detector: tuple[Project, Iteration]) -> None:
    from tests.test_detection_api import FIXED_BOXES, FIXED_LABELS, FIXED_SCORES, TAGS

    project, iteration = detector
    path = f"{project.name}/shelf/a.jpg"
    result, _ = _predict_detection(storage, project, path, color_image("red", seed=4))
    assert result["iteration"] == iteration.id
    predictions = result["predictions"]
    assert isinstance(predictions, list)
    kept = [i for i, s in enumerate(FIXED_SCORES) if s >= 0.01]  # the floor drops the rest
    assert len(predictions) == len(kept)
    assert [p["probability"] for p in predictions] == sorted(
        (pytest.approx(FIXED_SCORES[i]) for i in kept), key=lambda a: -a.expected)
    for p in predictions:
        assert set(p) == {"probability", "tagId", "tagName", "boundingBox", "tagType"}
        assert p["tagType"] == "Regular"
        i = next(i for i in kept if abs(FIXED_SCORES[i] - p["probability"]) < 1e-6)
        assert p["tagName"] == TAGS[FIXED_LABELS[i]]
        assert p["boundingBox"] == pytest.approx(dict(zip(
            ("left", "top", "width", "height"), FIXED_BOXES[i], strict=True)))
    # no picture unless the setting asks for one
    assert not storage.container(names.PREDICTIONS).get_blob_client(
        annotated_path(path)).exists()


def test_annotated_picture_beside_the_json_when_the_setting_asks(
        storage: Storage, detector: tuple[Project, Iteration],
        app_setting: Callable[[str, str | None], None]) -> None:
    from PIL import Image

    from tests.test_detection_api import FIXED_BOXES, FIXED_SCORES

    app_setting(names.SETTING_DROP_PREDICT_ANNOTATED_IMAGES, "true")
    project, _ = detector
    path = f"{project.name}/b.png"
    original = color_image((128, 128, 128), size=(400, 300), fmt="PNG", seed=5)
    _predict_detection(storage, project, path, original)
    blob = storage.container(names.PREDICTIONS).get_blob_client(annotated_path(path))
    assert blob.get_blob_properties().content_settings.content_type == "image/jpeg"
    drawn = Image.open(io.BytesIO(blob.download_blob().readall()))
    assert drawn.format == "JPEG" and drawn.size == (400, 300)
    plain = Image.open(io.BytesIO(original)).convert("RGB")
    # the best box's left edge is drawn in a colour far from the grey picture; a box under
    # the drawing threshold (or the floor) leaves the picture as it was
    best = max(range(len(FIXED_SCORES)), key=lambda i: FIXED_SCORES[i])
    left, top, width, height = FIXED_BOXES[best]
    edge = (round(left * 400) + 1, round((top + height / 2) * 300))
    assert sum(abs(a - b) for a, b in zip(drawn.getpixel(edge), plain.getpixel(edge),
                                          strict=True)) > 120
    inside = (round((left + width / 2) * 400), round((top + height / 2) * 300))
    assert sum(abs(a - b) for a, b in zip(drawn.getpixel(inside), plain.getpixel(inside),
                                          strict=True)) < 60


def test_draw_boxes_keeps_the_picture_upright_and_bounded() -> None:
    """EXIF orientation is applied before drawing (boxes are fractions of the upright picture)
    and a big picture is drawn at most ANNOTATED_MAX_SIDE a side."""
    from PIL import Image

    from visionpipe.stores.prediction_store import TagProbability

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    Image.new("RGB", (300, 200), (20, 20, 20)).save(buf, "JPEG", exif=exif)
    box = TagProbability(0.9, "t", "thing", (0.0, 0.0, 0.5, 0.5))
    drawn = Image.open(io.BytesIO(draw_boxes(buf.getvalue(), [box])))
    assert drawn.size == (200, 300)
    big = io.BytesIO()
    Image.new("RGB", (4000, 1000)).save(big, "PNG")
    assert Image.open(io.BytesIO(draw_boxes(big.getvalue(), [box]))).size == (1600, 400)
