"""Shared fixtures: one real Azurite per test session (adlfs-style), fresh names per test."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from msrest.authentication import ApiKeyCredentials

from visionpipe import names
from visionpipe.client.client import VisionpipeClient
from visionpipe.local.azurite import Azurite, free_port, start_azurite
from visionpipe.settings import reset_settings
from visionpipe.storage import Storage, get_storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Iteration, Registry

TEST_TRAINING_KEY = "test-training-key"
TEST_PREDICTION_KEY = "test-prediction-key"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A real Azurite, started once for the session, on free ports, state in memory."""
    location = tmp_path_factory.mktemp("azurite")
    instance = start_azurite(location, free_port(), free_port(), free_port(), in_memory=True,
                             log_file=location / "azurite.log")
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def storage(azurite: Azurite) -> Iterator[Storage]:
    """The process's storage, pointed at the session's Azurite, with every resource created.

    The environment is set the way the Functions host sets it from app settings, so code that
    reads settings (``get_settings()``) sees the test Azurite and the test keys.
    """
    saved = dict(os.environ)
    os.environ[names.STORAGE_CONNECTION] = azurite.connection_string
    os.environ[names.SETTING_TRAINING_KEY] = TEST_TRAINING_KEY
    os.environ[names.SETTING_PREDICTION_KEY] = TEST_PREDICTION_KEY
    os.environ["AzureWebJobsStorage"] = azurite.connection_string  # noqa: SIM112
    os.environ[names.SETTING_TRAINING_REQUESTS_QUEUE] = names.TRAINING_REQUESTS
    os.environ[names.SETTING_TRAINING_EVENTS_QUEUE] = names.TRAINING_EVENTS
    reset_settings()
    instance = get_storage()
    instance.ensure_resources()
    yield instance
    os.environ.clear()
    os.environ.update(saved)
    reset_settings()


@pytest.fixture
def label_store(storage: Storage) -> LabelStore:
    return LabelStore(storage)


@pytest.fixture
def registry(storage: Storage) -> Registry:
    return Registry(storage)


@pytest.fixture
def project_name() -> str:
    """A project name no other test uses (tests share one Azurite)."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def function_app_module(storage: Storage) -> object:
    """``function_app``, imported once after the environment points at the test Azurite."""
    import function_app

    return function_app


@pytest.fixture(scope="module")
def local_host(function_app_module: object) -> Iterator[str]:
    """The local Functions host serving ``function_app.app`` over real HTTP; yields its base URL.

    Module-scoped so its queue listeners only run while the tests that want them do.
    """
    from visionpipe.local.host import start_host

    running = start_host(function_app_module.app, port=free_port())  # type: ignore[attr-defined]
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def bridge(storage: Storage, local_host: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[object]:
    """The Event Grid bridge watching the drop containers and posting to ``local_host``."""
    from visionpipe.local.bridge import EventGridBridge

    state = tmp_path_factory.mktemp("bridge") / "state.json"
    # Blobs left by earlier test modules were delivered by their own bridge: start from here.
    delivered = {
        container: {b.name: b.etag for b in storage.container(container).list_blobs()}
        for container in names.EVENT_SUBSCRIPTIONS
    }
    state.write_text(json.dumps({"delivered": delivered}))
    instance = EventGridBridge(storage, local_host, state, poll_interval=0.1).start()
    yield instance
    instance.stop()


@pytest.fixture
def app_setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str | None], None]]:
    """Change an app setting for one test, as a restart with new settings would (the settings
    are read once per process)."""

    def change(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        reset_settings()

    yield change
    reset_settings()  # read again, lazily, once monkeypatch has restored the environment


@pytest.fixture
def project(label_store: LabelStore, project_name: str) -> Project:
    """A fresh multiclass project."""
    return label_store.create_project(project_name)


@pytest.fixture
def published(registry: Registry, label_store: LabelStore, project: Project) -> Iteration:
    """A tiny real ONNX iteration of ``project`` (tests/model_factory.py), published as "prod"."""
    from tests.model_factory import register_color_iteration
    from visionpipe.pipeline.publishing import publish

    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")
    return iteration


# --- the visionpipe CLI and its HTTP client (tests/cli_runner.py runs the commands) ---
@pytest.fixture
def cli_env(local_host: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The local host and the test keys as the CLI's environment; a wide terminal, so tables
    do not wrap what the tests look for."""
    monkeypatch.setenv("VISIONPIPE_ENDPOINT", local_host)
    monkeypatch.setenv("VISIONPIPE_TRAINING_KEY", TEST_TRAINING_KEY)
    monkeypatch.setenv("VISIONPIPE_PREDICTION_KEY", TEST_PREDICTION_KEY)
    monkeypatch.setenv("COLUMNS", "200")
    return local_host


@pytest.fixture
def client(local_host: str) -> Iterator[VisionpipeClient]:
    """The CLI's HTTP client on the local host, for setting up and reading back."""
    with VisionpipeClient(local_host, TEST_TRAINING_KEY, TEST_PREDICTION_KEY) as c:
        yield c


# --- the official Custom Vision SDK on the local host ---
@pytest.fixture
def trainer(local_host: str) -> CustomVisionTrainingClient:
    """The SDK's training client with the test key (a module may override it)."""
    return CustomVisionTrainingClient(
        local_host, ApiKeyCredentials(in_headers={"Training-key": TEST_TRAINING_KEY}))


@pytest.fixture
def predictor(local_host: str) -> CustomVisionPredictionClient:
    """The SDK's prediction client with the test key."""
    return CustomVisionPredictionClient(
        local_host, ApiKeyCredentials(in_headers={"Prediction-key": TEST_PREDICTION_KEY}))
