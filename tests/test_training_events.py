"""The ``training-events`` queue function: metrics recorded, failures explained, the auto-publish
gate never trading a published iteration for a worse one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest
from azure.functions.queue import QueueMessage

from functions.training_events import on_training_event
from tests.drops import wait_for
from tests.model_factory import overall, register_color_iteration
from visionpipe import names
from visionpipe.manifest import METRICS_FILE
from visionpipe.messages import TRAINING_COMPLETED, TRAINING_FAILED, BadMessage, TrainingEvent
from visionpipe.pipeline.publishing import (
    FAILED_WITHOUT_REASON,
    SETTING_AUTO_PUBLISH,
    SETTING_AUTO_PUBLISH_NAME,
    AutoPublishConfig,
    OverallMetrics,
    UnknownIteration,
    overall_metrics,
    publish,
)
from visionpipe.settings import get_settings
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import IterationStatus, Registry


@pytest.fixture
def auto_publish(app_setting: Callable[[str, str | None], None]) -> None:
    app_setting(SETTING_AUTO_PUBLISH, "true")
    app_setting(SETTING_AUTO_PUBLISH_NAME, None)


@pytest.fixture(scope="module", autouse=True)
def queue_settings() -> Iterator[None]:
    """The queue-name settings the host resolves ``%TRAINING_EVENTS_QUEUE%`` from (set before
    the module's local host starts its queue listeners; kept if the environment has them)."""
    added = []
    for setting, value in ((names.SETTING_TRAINING_EVENTS_QUEUE, names.TRAINING_EVENTS),
                           (names.SETTING_TRAINING_REQUESTS_QUEUE, names.TRAINING_REQUESTS)):
        if setting not in os.environ:
            os.environ[setting] = value
            added.append(setting)
    yield
    for setting in added:
        os.environ.pop(setting, None)


def message(project_id: str, iteration_id: str, status: str, dequeue: int = 1) -> QueueMessage:
    body = TrainingEvent(project_id, iteration_id, status).to_json().encode()
    return QueueMessage(id="m1", body=body, dequeue_count=dequeue, pop_receipt="r")


def deliver(msg: QueueMessage) -> None:
    on_training_event.build().get_user_function()(msg)


def published_ids(registry: Registry, project_id: str) -> dict[str, str]:
    pubs = registry.publications(project_id)
    assert pubs is not None
    return {name: p.iteration_id for name, p in pubs.by_name.items()}


def test_binding_metadata() -> None:
    built = on_training_event.build()
    assert built.get_function_name() == names.TRAINING_EVENTS_FUNCTION
    trigger = built.get_trigger().get_dict_repr()
    assert trigger["type"] == "queueTrigger"
    assert trigger["queueName"] == f"%{names.SETTING_TRAINING_EVENTS_QUEUE}%"
    assert trigger["connection"] == names.STORAGE_CONNECTION


def test_completed_records_metrics_and_does_not_publish_by_default(
    registry: Registry, label_store: LabelStore, project: Project,
    app_setting: Callable[[str, str | None], None],
) -> None:
    app_setting(SETTING_AUTO_PUBLISH, None)
    iteration = register_color_iteration(registry, label_store, project,
                                         status=IterationStatus.TRAINING)
    registry.upload_artifact(project.id, iteration.id, METRICS_FILE,
                             json.dumps(overall(0.8)).encode(), "application/json")
    deliver(message(project.id, iteration.id, TRAINING_COMPLETED))
    after = registry.get_iteration(project.id, iteration.id)
    assert after is not None
    assert after.status == IterationStatus.COMPLETED and after.trained_at is not None
    assert overall_metrics(after.metrics) == OverallMetrics(0.8, 0.9, 0.9)
    assert published_ids(registry, project.id) == {}
    deliver(message(project.id, iteration.id, TRAINING_COMPLETED, dequeue=2))  # repeat: harmless


def test_auto_publish_first_iteration(
    registry: Registry, label_store: LabelStore, project: Project, auto_publish: None
) -> None:
    iteration = register_color_iteration(registry, label_store, project, metrics=overall(0.7))
    deliver(message(project.id, iteration.id, TRAINING_COMPLETED))
    assert published_ids(registry, project.id) == {"latest": iteration.id}


def test_auto_publish_never_replaces_with_worse(
    registry: Registry, label_store: LabelStore, project: Project, auto_publish: None
) -> None:
    good = register_color_iteration(registry, label_store, project, metrics=overall(0.9))
    deliver(message(project.id, good.id, TRAINING_COMPLETED))
    worse = register_color_iteration(registry, label_store, project, metrics=overall(0.6))
    deliver(message(project.id, worse.id, TRAINING_COMPLETED))
    assert published_ids(registry, project.id) == {"latest": good.id}
    unknown = register_color_iteration(registry, label_store, project)  # no metrics at all
    deliver(message(project.id, unknown.id, TRAINING_COMPLETED))
    assert published_ids(registry, project.id) == {"latest": good.id}
    equal = register_color_iteration(registry, label_store, project, metrics=overall(0.9))
    deliver(message(project.id, equal.id, TRAINING_COMPLETED))
    assert published_ids(registry, project.id) == {"latest": equal.id}
    better = register_color_iteration(registry, label_store, project, metrics=overall(0.95))
    deliver(message(project.id, better.id, TRAINING_COMPLETED))
    assert published_ids(registry, project.id) == {"latest": better.id}


def test_auto_publish_respects_what_a_person_published(
    registry: Registry, label_store: LabelStore, project: Project, auto_publish: None
) -> None:
    manual = register_color_iteration(registry, label_store, project, metrics=overall(0.9))
    publish(registry, label_store, project.id, manual.id, "prod")
    worse = register_color_iteration(registry, label_store, project, metrics=overall(0.5))
    deliver(message(project.id, worse.id, TRAINING_COMPLETED))
    assert published_ids(registry, project.id) == {"prod": manual.id}


def test_auto_publish_keeps_the_name_a_person_gave_before_the_event_arrived(
    registry: Registry, label_store: LabelStore, project: Project, auto_publish: None
) -> None:
    """The worker marks the iteration Completed before its event is handled, so a person can
    publish it first (``make demo`` does: ``status --watch`` ends, ``publish --name demo``). The
    late event, or a second delivery of it, must not rename that publication to ``latest``:
    on the old code the demo's ``predict`` then got 404 for ``demo`` on a slow machine."""
    from visionpipe.pipeline.publishing import handle_training_event

    iteration = register_color_iteration(registry, label_store, project, metrics=overall(0.7))
    publish(registry, label_store, project.id, iteration.id, "demo")
    for _ in range(2):
        deliver(message(project.id, iteration.id, TRAINING_COMPLETED))
        assert published_ids(registry, project.id) == {"demo": iteration.id}
    outcome = handle_training_event(
        TrainingEvent(project.id, iteration.id, TRAINING_COMPLETED), registry, label_store,
        AutoPublishConfig(True, "latest"))
    assert outcome.gate is not None and not outcome.gate.publish
    assert "already published as 'demo'" in outcome.gate.reason


def test_auto_publish_name_is_a_setting(
    registry: Registry, label_store: LabelStore, project: Project,
    app_setting: Callable[[str, str | None], None],
) -> None:
    app_setting(SETTING_AUTO_PUBLISH, "1")
    app_setting(SETTING_AUTO_PUBLISH_NAME, "nightly")
    assert AutoPublishConfig.from_settings(get_settings()) == AutoPublishConfig(True, "nightly")
    iteration = register_color_iteration(registry, label_store, project, metrics=overall(0.7))
    deliver(message(project.id, iteration.id, TRAINING_COMPLETED))
    assert published_ids(registry, project.id) == {"nightly": iteration.id}


def test_failed_records_the_reason(registry: Registry, label_store: LabelStore,
                                   project: Project, auto_publish: None) -> None:
    with_reason = register_color_iteration(registry, label_store, project,
                                           status=IterationStatus.TRAINING)
    registry.update_iteration(project.id, with_reason.id, failureReason="out of memory")
    deliver(message(project.id, with_reason.id, TRAINING_FAILED))
    after = registry.get_iteration(project.id, with_reason.id)
    assert after is not None
    assert after.status == IterationStatus.FAILED and after.failure_reason == "out of memory"

    silent = register_color_iteration(registry, label_store, project,
                                      status=IterationStatus.TRAINING)
    deliver(message(project.id, silent.id, TRAINING_FAILED))
    after = registry.get_iteration(project.id, silent.id)
    assert after is not None and after.failure_reason == FAILED_WITHOUT_REASON
    assert published_ids(registry, project.id) == {}


def test_bad_messages_fail_loudly(project: Project) -> None:
    with pytest.raises(BadMessage):
        deliver(QueueMessage(id="x", body=b"{not json", dequeue_count=1))
    with pytest.raises(BadMessage):
        deliver(QueueMessage(id="x", body=json.dumps(
            {"type": "Export", "Content": {"projectId": "p", "iterationId": "i",
                                           "trainingStatus": "TrainingCompleted"}}).encode()))
    with pytest.raises(UnknownIteration):
        deliver(message(project.id, "00000000-0000-0000-0000-000000000000", TRAINING_COMPLETED))


def test_through_the_queue_and_the_local_host(
    storage: Storage, registry: Registry, label_store: LabelStore,
    project: Project, auto_publish: None, local_host: str,
) -> None:
    iteration = register_color_iteration(registry, label_store, project, metrics=overall(0.8))
    storage.queue(names.TRAINING_EVENTS).send_message(
        TrainingEvent(project.id, iteration.id, TRAINING_COMPLETED).to_json().encode())
    wait_for(lambda: published_ids(registry, project.id) == {"latest": iteration.id},
             timeout=15)
