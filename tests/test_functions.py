"""Trigger modules through real binding objects, and the app's names against the contract."""

from __future__ import annotations

import logging

import azure.functions as func
import pytest

from functions.health import health
from functions.ingest import ingest_training_image
from tests.drops import grid_event, upload
from visionpipe import names
from visionpipe.local.host import indexed_functions
from visionpipe.local.samples import make_image
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore


def test_app_functions_match_the_contract(function_app_module: object) -> None:
    functions = {f.get_function_name(): f for f in
                 indexed_functions(function_app_module.app)}  # type: ignore[attr-defined]
    assert names.INGEST_FUNCTION in functions
    assert names.HEALTH_FUNCTION in functions
    for container, function in names.EVENT_SUBSCRIPTIONS.items():
        assert function in functions, f"{container}: no function {function}"
        trigger = functions[function].get_trigger().get_dict_repr()
        assert trigger["type"] == "eventGridTrigger", container


def test_ingest_binding_metadata() -> None:
    built = ingest_training_image.build()
    assert built.get_function_name() == names.INGEST_FUNCTION
    trigger = built.get_trigger().get_dict_repr()
    assert trigger["type"] == "eventGridTrigger"
    assert trigger["name"] == "event"


def test_health_binding_metadata() -> None:
    trigger = health.build().get_trigger().get_dict_repr()
    assert trigger["type"] == "httpTrigger"
    assert trigger["route"] == "health"
    assert [str(getattr(m, "value", m)) for m in trigger["methods"]] == ["GET"]
    assert str(getattr(trigger["authLevel"], "value", trigger["authLevel"])) == "anonymous"


def test_ingest_handler_records_a_label(
    storage: Storage, label_store: LabelStore, project_name: str
) -> None:
    raw = upload(storage, names.TRAINING_IMAGES, f"{project_name}/sun/a.jpg",
                 make_image("circle", 11))
    ingest_training_image.build().get_user_function()(grid_event(raw))
    project = label_store.find_project(project_name)
    assert project is not None
    assert len(label_store.list_images(project.id)) == 1


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"eventType": "Microsoft.Storage.BlobDeleted"}, "unknown event type"),
        ({"subject": "/blobServices/default/containers/predictions/blobs/p/t/a.jpg"},
         "not 'training-images'"),
        ({"data": {"api": "PutBlock", "url": ""}}, "data.api 'PutBlock'"),
    ],
)
def test_ingest_refuses_other_events_with_a_logged_reason(
    storage: Storage, label_store: LabelStore, project_name: str,
    caplog: pytest.LogCaptureFixture, override: dict[str, object], why: str,
) -> None:
    raw = upload(storage, names.TRAINING_IMAGES, f"{project_name}/sun/a.jpg",
                 make_image("circle", 12))
    with caplog.at_level(logging.ERROR, logger="functions.ingest"):
        ingest_training_image.build().get_user_function()(grid_event(raw, **override))
    assert any(why in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert label_store.find_project(project_name) is None


def test_health_handler_answers_ok(storage: Storage) -> None:
    response = health.build().get_user_function()(
        func.HttpRequest("GET", "http://localhost/health", body=b""))
    assert response.status_code == 200
