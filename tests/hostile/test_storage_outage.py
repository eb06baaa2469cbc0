"""A storage outage is answered in seconds, and the app recovers by itself when storage is back.

A dedicated Azurite (on disk, free ports) and the local Functions host in a subprocess whose
environment points at it (settings are read once per process, so the host cannot share this
process's). Azurite is stopped: ``GET /health`` must say 503 within 5 s, and API calls must fail
within 10 s with Custom Vision's JSON error (503 ``ServiceUnavailable``) that gives nothing
internal away. Azurite is started again on the same ports: the same host process answers
``/health`` 200 and serves the API again, no restart.

Before the fix the SDK's default retries (ten, from 15 s up) held ``/health`` for 83.8 s and a
prediction for 81 s.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.model_factory import color_image
from visionpipe import names
from visionpipe.local.azurite import Azurite, free_port, start_azurite
from visionpipe.settings import StorageSettings, azurite_connection_string
from visionpipe.storage import Storage

REPO = Path(__file__).resolve().parents[2]
HEALTH_LIMIT = 5.0  # seconds
API_LIMIT = 10.0
CLIENT_TIMEOUT = 30.0  # the old code held requests ~80 s: fail on that, do not wait it out


@dataclass
class Stack:
    azurite: Azurite
    location: Path
    host: subprocess.Popen[bytes]
    url: str
    log: Path

    def restart_azurite(self) -> None:
        self.azurite = start_azurite(self.location, self.azurite.blob_port,
                                     self.azurite.queue_port, self.azurite.table_port,
                                     log_file=self.location / "azurite.log")
        Storage(StorageSettings(connection_string=self.azurite.connection_string)
                ).ensure_resources()


def host_env(connection: str) -> dict[str, str]:
    """This process's environment with the storage settings pointing at ``connection``; the
    storage resilience settings are left to their defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(
        (names.STORAGE_CONNECTION, "STORAGE_", "HEALTH_TIMEOUT", "AzureWebJobsStorage"))}
    env.update({
        names.STORAGE_CONNECTION: connection,
        "AzureWebJobsStorage": connection,
        names.SETTING_TRAINING_KEY: TEST_TRAINING_KEY,
        names.SETTING_PREDICTION_KEY: TEST_PREDICTION_KEY,
        names.SETTING_TRAINING_REQUESTS_QUEUE: names.TRAINING_REQUESTS,
        names.SETTING_TRAINING_EVENTS_QUEUE: names.TRAINING_EVENTS,
        "PYTHONPATH": str(REPO),
    })
    return env


def wait_for_health(url: str, want: int, deadline_s: float, host: subprocess.Popen[bytes],
                    log: Path) -> None:
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        assert host.poll() is None, f"the host exited:\n{log.read_text()[-3000:]}"
        try:
            last = httpx.get(f"{url}/health", timeout=CLIENT_TIMEOUT).status_code
        except httpx.HTTPError as e:
            last = type(e).__name__
        if last == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"/health did not answer {want} within {deadline_s:.0f} s (last: "
                         f"{last}):\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    location = tmp_path_factory.mktemp("outage-azurite")
    azurite = start_azurite(location, free_port(), free_port(), free_port(),
                            log_file=location / "azurite.log")
    Storage(StorageSettings(connection_string=azurite.connection_string)).ensure_resources()
    port = free_port()
    log = location / "host.log"
    with open(log, "wb") as out:
        host = subprocess.Popen(
            [sys.executable, "-m", "visionpipe.local.host", "--port", str(port),
             "--settings", str(location / "no-local-settings.json")],
            cwd=REPO, env=host_env(azurite.connection_string), stdout=out,
            stderr=subprocess.STDOUT)
    made = Stack(azurite, location, host, f"http://127.0.0.1:{port}", log)
    try:
        wait_for_health(made.url, 200, 120, host, log)
        yield made
    finally:
        host.terminate()
        try:
            host.wait(timeout=20)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait()
        made.azurite.stop()


def test_health_gives_up_on_storage_that_never_answers() -> None:
    """Storage that accepts connections and then says nothing (a hung front end): the health
    probe gives up within its timeout instead of waiting out reads and retries."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    storage = Storage(StorageSettings(
        connection_string=azurite_connection_string("127.0.0.1", port, port, port)))
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            storage.ping()
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - inspected below
            outcome.append(e)

    t0 = time.monotonic()
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    prober.join(timeout=CLIENT_TIMEOUT)
    elapsed = time.monotonic() - t0
    stop.set()
    acceptor.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()
    assert not prober.is_alive(), f"ping still waiting after {CLIENT_TIMEOUT:.0f} s"
    assert accepted, "the probe never reached the hung storage"
    assert outcome and outcome[0] is not None and elapsed < HEALTH_LIMIT, (outcome, elapsed)
    print(f"\nhung storage: ping gave up after {elapsed:.2f} s ({type(outcome[0]).__name__})")


def timed(method: str, url: str, **kwargs: object) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    response = httpx.request(method, url, timeout=CLIENT_TIMEOUT, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - t0


def assert_unavailable(response: httpx.Response, stack: Stack) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == "ServiceUnavailable" and body["message"]
    for detail in ("127.0.0.1", str(stack.azurite.blob_port), str(stack.azurite.table_port),
                   "Errno", "refused", "Traceback"):
        assert detail not in response.text, f"{detail!r} leaked: {response.text}"


def test_outage_is_answered_in_seconds_and_recovered_from_without_restart(
    stack: Stack, record_property: pytest.RecordProperty,
) -> None:
    projects = f"{stack.url}/customvision/v3.3/training/projects"
    training = {"Training-Key": TEST_TRAINING_KEY}
    predict = (f"{stack.url}/customvision/v3.0/prediction/{uuid.uuid4()}/classify/iterations/"
               "prod/image")
    prediction = {"Prediction-Key": TEST_PREDICTION_KEY,
                  "Content-Type": "application/octet-stream"}
    image = color_image("red")
    assert httpx.get(projects, headers=training, timeout=CLIENT_TIMEOUT).status_code == 200
    pid = stack.host.pid

    stack.azurite.stop()

    health, health_s = timed("GET", f"{stack.url}/health")
    listed, list_s = timed("GET", projects, headers=training)
    predicted, predict_s = timed("POST", predict, headers=prediction, content=image)
    for name, value in (("health_s", health_s), ("list_projects_s", list_s),
                        ("predict_s", predict_s)):
        record_property(name, round(value, 2))
    print(f"\noutage: /health {health.status_code} in {health_s:.2f} s, list projects "
          f"{listed.status_code} in {list_s:.2f} s, predict {predicted.status_code} in "
          f"{predict_s:.2f} s")
    assert health.status_code == 503 and health_s < HEALTH_LIMIT
    assert list_s < API_LIMIT and predict_s < API_LIMIT
    assert_unavailable(listed, stack)
    assert_unavailable(predicted, stack)

    t0 = time.monotonic()
    stack.restart_azurite()
    wait_for_health(stack.url, 200, 30, stack.host, stack.log)
    print(f"recovered: /health 200 {time.monotonic() - t0:.2f} s after Azurite was restarted")
    assert stack.host.pid == pid and stack.host.poll() is None, "the host was not restarted"
    again = httpx.get(projects, headers=training, timeout=CLIENT_TIMEOUT)
    assert again.status_code == 200, again.text
