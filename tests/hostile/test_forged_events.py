"""Forged and early ``TrainingCompleted`` events on ``training-events``: anyone who can write to
the queue can send one, so an event completes (and auto-publishes) an iteration only when
``models/{project}/{iteration}/`` holds that iteration's manifest and the model the manifest
fingerprints. Anything else is ignored with a log line.

The events function's own code (``on_training_event``) against real Azurite, auto-publish on.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from azure.functions.queue import QueueMessage

from functions.training_events import on_training_event
from tests.model_factory import build_color_model, overall, register_color_iteration
from visionpipe.manifest import MANIFEST_FILE, MODEL_FILE
from visionpipe.messages import TRAINING_COMPLETED, TRAINING_FAILED, TrainingEvent
from visionpipe.pipeline.publishing import SETTING_AUTO_PUBLISH, SETTING_AUTO_PUBLISH_NAME
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Iteration, IterationStatus, Registry


@pytest.fixture(autouse=True)
def auto_publish(app_setting: Callable[[str, str | None], None]) -> None:
    app_setting(SETTING_AUTO_PUBLISH, "true")
    app_setting(SETTING_AUTO_PUBLISH_NAME, None)


def deliver(project_id: str, iteration_id: str, status: str = TRAINING_COMPLETED,
            dequeue: int = 1) -> None:
    body = TrainingEvent(project_id, iteration_id, status).to_json().encode()
    msg = QueueMessage(id="forged", body=body, dequeue_count=dequeue, pop_receipt="r")
    on_training_event.build().get_user_function()(msg)


def published(registry: Registry, project_id: str) -> dict[str, str]:
    pubs = registry.publications(project_id)
    assert pubs is not None
    return {name: p.iteration_id for name, p in pubs.by_name.items()}


def status(registry: Registry, iteration: Iteration) -> IterationStatus:
    row = registry.get_iteration(iteration.project_id, iteration.id)
    assert row is not None
    return row.status


def copy_artifacts(registry: Registry, source: Iteration, target: Iteration,
                   files: tuple[str, ...] = (MODEL_FILE, MANIFEST_FILE)) -> None:
    for name in files:
        data = registry.download_artifact(source.project_id, source.id, name)
        registry.upload_artifact(target.project_id, target.id, name, data, "x/y")


def assert_ignored(registry: Registry, iteration: Iteration, caplog: pytest.LogCaptureFixture,
                   why: str) -> None:
    assert status(registry, iteration) == IterationStatus.TRAINING, "completed without a model"
    assert published(registry, iteration.project_id) == {}, "published without a model"
    assert "ignoring TrainingCompleted" in caplog.text and why in caplog.text


def test_event_for_iteration_without_artifacts_is_ignored(
    registry: Registry, project: Project, caplog: pytest.LogCaptureFixture,
) -> None:
    training = registry.create_iteration(project.id)
    deliver(project.id, training.id)
    assert_ignored(registry, training, caplog, "no manifest.json")


def test_event_with_another_iterations_artifacts_is_ignored(
    registry: Registry, label_store: LabelStore, project: Project,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone copied a real iteration's model and manifest into the forged one's folder."""
    real = register_color_iteration(registry, label_store, project, metrics=overall(0.9),
                                    status=IterationStatus.TRAINING)
    forged = registry.create_iteration(project.id)
    copy_artifacts(registry, real, forged)
    deliver(project.id, forged.id)
    assert_ignored(registry, forged, caplog, f"belongs to iteration '{real.id}'")


def test_event_with_a_model_the_manifest_does_not_record_is_ignored(
    registry: Registry, label_store: LabelStore, project: Project,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The manifest is the iteration's own, the model.onnx beside it is not."""
    iteration = register_color_iteration(registry, label_store, project,
                                         status=IterationStatus.TRAINING)
    registry.upload_artifact(project.id, iteration.id, MODEL_FILE,
                             build_color_model(permutation=(2, 0, 1)), "application/octet-stream")
    deliver(project.id, iteration.id)
    assert_ignored(registry, iteration, caplog, "SHA-256 differs")


@pytest.mark.parametrize(
    ("what", "why"),
    [("manifest-only", "no model.onnx"), ("manifest-not-json", "not a manifest"),
     ("manifest-not-object", "not a manifest")],
)
def test_event_with_incomplete_artifacts_is_ignored(
    registry: Registry, label_store: LabelStore, project: Project,
    caplog: pytest.LogCaptureFixture, what: str, why: str,
) -> None:
    real = register_color_iteration(registry, label_store, project,
                                    status=IterationStatus.TRAINING)
    forged = registry.create_iteration(project.id)
    if what == "manifest-only":
        manifest = json.loads(registry.download_artifact(project.id, real.id, MANIFEST_FILE))
        manifest["iterationId"] = forged.id
        registry.upload_artifact(project.id, forged.id, MANIFEST_FILE,
                                 json.dumps(manifest).encode(), "application/json")
    else:
        copy_artifacts(registry, real, forged, (MODEL_FILE,))
        body = b"{not json" if what == "manifest-not-json" else b"[1, 2]"
        registry.upload_artifact(project.id, forged.id, MANIFEST_FILE, body, "application/json")
    deliver(project.id, forged.id)
    assert_ignored(registry, forged, caplog, why)


def test_early_event_then_the_real_one_then_a_duplicate(
    registry: Registry, label_store: LabelStore, project: Project,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An event that arrives before the artifacts is ignored; the real one (same iteration,
    artifacts in place) completes and publishes it; delivering it again changes nothing."""
    iteration = registry.create_iteration(project.id)
    deliver(project.id, iteration.id)
    assert_ignored(registry, iteration, caplog, "no manifest.json")

    # the job registers the model (the colour model's artifacts, moved into place)
    source = register_color_iteration(registry, label_store, project, metrics=overall(0.8),
                                      status=IterationStatus.TRAINING)
    manifest = json.loads(registry.download_artifact(project.id, source.id, MANIFEST_FILE))
    manifest["iterationId"] = iteration.id
    registry.upload_artifact(project.id, iteration.id, MODEL_FILE,
                             registry.download_artifact(project.id, source.id, MODEL_FILE),
                             "application/octet-stream")
    registry.upload_artifact(project.id, iteration.id, MANIFEST_FILE,
                             json.dumps(manifest).encode(), "application/json")
    registry.delete_iteration(project.id, source.id)

    deliver(project.id, iteration.id, dequeue=1)
    done = registry.get_iteration(project.id, iteration.id)
    assert done is not None and done.status == IterationStatus.COMPLETED
    assert published(registry, project.id) == {"latest": iteration.id}
    pubs = registry.publications(project.id)
    assert pubs is not None
    first_publication = pubs.by_name["latest"]

    deliver(project.id, iteration.id, dequeue=2)  # at-least-once: the same event again
    again = registry.get_iteration(project.id, iteration.id)
    assert again is not None and again.status == IterationStatus.COMPLETED
    assert again.trained_at == done.trained_at and again.metrics == done.metrics
    pubs = registry.publications(project.id)
    assert pubs is not None and pubs.by_name == {"latest": first_publication}


def test_forged_failed_event_does_not_fail_a_completed_iteration(
    registry: Registry, label_store: LabelStore, project: Project,
    caplog: pytest.LogCaptureFixture,
) -> None:
    served = register_color_iteration(registry, label_store, project, metrics=overall(0.9))
    deliver(project.id, served.id)
    assert published(registry, project.id) == {"latest": served.id}
    deliver(project.id, served.id, TRAINING_FAILED)
    assert status(registry, served) == IterationStatus.COMPLETED
    assert published(registry, project.id) == {"latest": served.id}
    assert "ignoring TrainingFailed" in caplog.text
