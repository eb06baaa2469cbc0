"""Lifecycle events: the real code paths (HTTP publish and export, the training-events function,
the ingest quarantine) emit CloudEvents into the local store (``EVENT_GRID_TOPIC_ENDPOINT``
unset), which ``visionpipe events`` reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from typer.testing import CliRunner

from functions.training_events import on_training_event
from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.drops import typed, upload, wait_for
from tests.model_factory import register_color_iteration
from visionpipe import names
from visionpipe.client.cli import app
from visionpipe.client.client import VisionpipeClient
from visionpipe.messages import TRAINING_COMPLETED, TRAINING_FAILED, TrainingEvent
from visionpipe.pipeline import lifecycle_events
from visionpipe.pipeline.ingest import Outcome, ingest_training_blob
from visionpipe.settings import get_settings
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import IterationStatus, Registry

runner = CliRunner()


@pytest.fixture
def client(local_host: str) -> Iterator[VisionpipeClient]:
    with VisionpipeClient(local_host, TEST_TRAINING_KEY, TEST_PREDICTION_KEY) as c:
        yield c


def events_about(storage: Storage, subject_part: str, event_type: str) -> list[dict[str, Any]]:
    return [e for _, e in lifecycle_events.read_local(storage, limit=100_000)
            if e["type"] == event_type and subject_part in e["subject"]]


def one_event(storage: Storage, subject_part: str, event_type: str) -> dict[str, Any]:
    return wait_for(lambda: events_about(storage, subject_part, event_type))[0]


def test_publish_and_export_over_http_emit_cloudevents(
        client: VisionpipeClient, storage: Storage, registry: Registry,
        label_store: LabelStore, project: Project) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    assert client.publish(project.id, iteration.id, "prod")
    event = one_event(storage, iteration.id, lifecycle_events.ITERATION_PUBLISHED)
    assert event["specversion"] == "1.0" and event["source"] == f"/visionpipe/projects/{project.id}"
    assert event["subject"] == f"projects/{project.id}/iterations/{iteration.id}"
    assert event["data"] == {"projectId": project.id, "iterationId": iteration.id,
                             "publishName": "prod"}
    # Publishing the same thing again changes nothing, and says nothing.
    assert client.publish(project.id, iteration.id, "prod")
    assert len(events_about(storage, iteration.id, lifecycle_events.ITERATION_PUBLISHED)) == 1

    client.export(project.id, iteration.id)
    exported = one_event(storage, iteration.id, lifecycle_events.EXPORT_COMPLETED)
    assert exported["data"]["platform"] == "ONNX"

    result = runner.invoke(app, ["events", "--json", "--type",
                                 lifecycle_events.ITERATION_PUBLISHED])
    assert result.exit_code == 0, result.output
    shown = [json.loads(line) for line in result.output.splitlines()]
    assert event["id"] in {e["id"] for e in shown}
    assert {e["type"] for e in shown} == {lifecycle_events.ITERATION_PUBLISHED}


def deliver(project_id: str, iteration_id: str, status: str) -> None:
    body = TrainingEvent(project_id, iteration_id, status).to_json().encode()
    on_training_event.build().get_user_function()(
        QueueMessage(id="m1", body=body, dequeue_count=1, pop_receipt="r"))


def test_training_outcomes_emit_completed_and_failed(
        storage: Storage, registry: Registry, label_store: LabelStore, project: Project,
        app_setting: Any) -> None:
    app_setting(names.SETTING_AUTO_PUBLISH, "false")
    trained = register_color_iteration(registry, label_store, project,
                                       metrics={"overall": {"precision": 0.9, "recall": 0.8,
                                                            "averagePrecision": 0.85}})
    deliver(project.id, trained.id, TRAINING_COMPLETED)
    done = one_event(storage, trained.id, lifecycle_events.ITERATION_COMPLETED)
    assert done["data"]["status"] == "Completed"
    assert done["data"]["metrics"] == pytest.approx(
        {"averagePrecision": 0.85, "precision": 0.9, "recall": 0.8})

    failing = register_color_iteration(registry, label_store, project,
                                       status=IterationStatus.TRAINING)
    registry.update_iteration(project.id, failing.id, status=IterationStatus.FAILED,
                              failureReason="out of memory")
    deliver(project.id, failing.id, TRAINING_FAILED)
    failed = one_event(storage, failing.id, lifecycle_events.ITERATION_FAILED)
    assert failed["data"]["failureReason"] == "out of memory"
    # A forged Completed for the failed one is ignored: no event claims it completed.
    deliver(project.id, failing.id, TRAINING_COMPLETED)
    assert not events_about(storage, failing.id, lifecycle_events.ITERATION_COMPLETED)


def test_quarantine_emits_image_quarantined(storage: Storage, project_name: str) -> None:
    path = f"{project_name}/cats/broken.jpg"
    event = typed(upload(storage, names.TRAINING_IMAGES, path, b"\xff\xd8 not really a jpeg"),
                  names.TRAINING_IMAGES)
    assert ingest_training_blob(event, storage, get_settings()).outcome == Outcome.QUARANTINED
    quarantined = one_event(storage, path, lifecycle_events.IMAGE_QUARANTINED)
    assert quarantined["subject"] == f"{names.TRAINING_IMAGES}/{path}"
    assert quarantined["data"]["reason"] in ("corrupt", "unsupported_format")
    assert quarantined["data"]["quarantinePath"].startswith(names.TRAINING_IMAGES)
    # The same delivery again: the blob is gone, nothing is moved, nothing more is said.
    assert ingest_training_blob(event, storage, get_settings()).outcome == Outcome.GONE
    assert len(events_about(storage, path, lifecycle_events.IMAGE_QUARANTINED)) == 1


def test_the_same_fact_has_the_same_id() -> None:
    a = lifecycle_events.iteration_published("p", "i", "prod")
    b = lifecycle_events.iteration_published("p", "i", "prod")
    c = lifecycle_events.iteration_published("p", "i", "staging")
    assert a.id == b.id != c.id
    assert set(lifecycle_events.EVENT_TYPES) == {
        "Visionpipe.ImageQuarantined", "Visionpipe.IterationCompleted",
        "Visionpipe.IterationFailed", "Visionpipe.IterationPublished",
        "Visionpipe.ExportCompleted"}


def test_bicep_declares_the_topic_its_sender_role_and_the_setting() -> None:
    """The topic, Entra-only, CloudEvents; the Function identity may send to it and to nothing
    wider; the app learns its endpoint; azd sees it as an output (checkov runs in test_infra)."""
    from tests.test_infra import (
        BICEP_FILES,
        NAMES_JSON,
        BicepParser,
        app_settings,
        body,
        rel,
        resources_of_type,
    )

    parser = BicepParser()
    parsed = {rel(path): parser.parse(file_path=path) for path in BICEP_FILES}
    module = parsed["infra/modules/eventgrid-topic.bicep"]
    (topic,) = resources_of_type(module, "Microsoft.EventGrid/topics").values()
    properties = body(topic)["properties"]
    assert properties["inputSchema"] == "CloudEventSchemaV1_0"
    assert properties["disableLocalAuth"] is True
    (role,) = resources_of_type(module, "Microsoft.Authorization/roleAssignments").values()
    assert body(role)["scope"] == "topic"  # the topic only, not the resource group
    assert module["variables"]["eventGridDataSender"]["value"] == \
        "d5a91429-5739-47e2-a06b-3470a27159e7"  # EventGrid Data Sender
    main = parsed["infra/main.bicep"]
    declared = main["modules"]["eventGridTopic"]["config"]
    assert declared["params"]["publisherPrincipalId"] == "identities.outputs.functionPrincipalId"
    assert main["modules"]["functionApp"]["config"]["params"]["eventGridTopicEndpoint"] == \
        "eventGridTopic.outputs.endpoint"
    assert "EVENT_GRID_TOPIC_ENDPOINT" in main["outputs"]
    settings = app_settings(parsed, json.loads(NAMES_JSON.read_text(encoding="utf-8")))
    assert settings[names.SETTING_EVENT_GRID_TOPIC_ENDPOINT] == "eventGridTopicEndpoint"


def test_follow_yields_events_as_they_arrive(storage: Storage) -> None:
    import threading

    start = lifecycle_events.read_local(storage, limit=100_000)
    after = start[-1][0] if start else ""
    stop = threading.Event()
    seen: list[dict[str, Any]] = []

    def reader() -> None:
        for event in lifecycle_events.follow(storage, after=after, interval=0.05, stop=stop):
            seen.append(event)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        event = lifecycle_events.iteration_published("p-follow", "i-follow", "prod")
        assert lifecycle_events.publish(event, storage)
        wait_for(lambda: [e for e in seen if e["id"] == event.id])
    finally:
        stop.set()
        thread.join(timeout=10)
