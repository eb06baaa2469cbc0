"""The training drop folder end to end: Azurite -> Event Grid bridge -> local host -> function
-> table / quarantine, all real; plus the bridge's own delivery guarantees."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.drops import upload, wait_for
from visionpipe import names
from visionpipe.local.bridge import EventGridBridge
from visionpipe.local.samples import make_image
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore
from visionpipe.stores.quarantine import REASON_SUFFIX


def _record_count(label_store: LabelStore, project_name: str) -> int:
    project = label_store.find_project(project_name)
    return len(label_store.list_images(project.id)) if project else 0


def test_health_over_http(local_host: str) -> None:
    response = httpx.get(f"{local_host}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_upload_becomes_a_label_within_two_seconds(
    storage: Storage, label_store: LabelStore, bridge: EventGridBridge, project_name: str
) -> None:
    started = time.monotonic()
    upload(storage, names.TRAINING_IMAGES, f"{project_name}/cat/a.jpg", make_image("circle", 21))
    wait_for(lambda: _record_count(label_store, project_name) == 1, timeout=2.0)
    print(f"drop-to-label latency: {(time.monotonic() - started) * 1000:.0f} ms")


def test_rejected_upload_is_quarantined_within_two_seconds(
    storage: Storage, bridge: EventGridBridge, project_name: str
) -> None:
    path = f"{project_name}/cat/notes.jpg"
    upload(storage, names.TRAINING_IMAGES, path, b"this is not an image")
    reason_blob = storage.container(names.QUARANTINE).get_blob_client(
        f"{names.TRAINING_IMAGES}/{path}{REASON_SUFFIX}")
    wait_for(reason_blob.exists, timeout=2.0)
    assert json.loads(reason_blob.download_blob().readall())["reason"] == "unsupported_format"
    assert not storage.container(names.TRAINING_IMAGES).get_blob_client(path).exists()


def test_the_same_event_delivered_three_times_is_one_record(
    storage: Storage, label_store: LabelStore, local_host: str, project_name: str
) -> None:
    event = upload(storage, names.TRAINING_IMAGES, f"{project_name}/dog/b.png",
                   make_image("stripes", 22, fmt="PNG"))
    hook = f"{local_host}/runtime/webhooks/EventGrid?functionName={names.INGEST_FUNCTION}"
    for _ in range(3):
        response = httpx.post(hook, json=[event], headers={"aeg-event-type": "Notification"})
        assert response.status_code == 202
    assert _record_count(label_store, project_name) == 1


def test_many_uploads_all_arrive(
    storage: Storage, label_store: LabelStore, bridge: EventGridBridge, project_name: str
) -> None:
    for i in range(20):
        kind = ("circle", "stripes")[i % 2]
        upload(storage, names.TRAINING_IMAGES, f"{project_name}/{kind}/{i}.jpg",
               make_image(kind, 100 + i))
    wait_for(lambda: _record_count(label_store, project_name) == 20, timeout=15)


# --- the bridge's delivery guarantees, against a counting webhook ------------------------------
class CountingWebhook:
    """A real HTTP endpoint that counts deliveries per blob and can fail the first N."""

    def __init__(self, fail_first: int = 0) -> None:
        self.counts: Counter[str] = Counter()
        self.fail_first = fail_first
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                events = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    subject = events[0]["subject"]
                    outer.counts[subject.rsplit("/", 1)[1]] += 1
                    fail = outer.counts[subject.rsplit("/", 1)[1]] <= outer.fail_first
                self.send_response(500 if fail else 202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def watched(storage: Storage) -> Iterator[str]:
    name = f"drop-{uuid.uuid4().hex[:12]}"
    storage.blobs.create_container(name)
    yield name
    storage.blobs.delete_container(name)


def test_bridge_remembers_across_restarts_and_loses_nothing_while_down(
    storage: Storage, watched: str, tmp_path: Path
) -> None:
    webhook = CountingWebhook()
    state = tmp_path / "state.json"

    def bridge() -> EventGridBridge:
        return EventGridBridge(storage, webhook.url, state, {watched: "fn"}, poll_interval=0.05)

    first = bridge()
    upload(storage, watched, "p/t/before.jpg", b"1")
    assert first.poll_once() == 1
    first.stop()

    upload(storage, watched, "p/t/while-down.jpg", b"2")  # nobody is watching
    second = bridge().start()
    wait_for(lambda: webhook.counts["while-down.jpg"] == 1)
    upload(storage, watched, "p/t/before.jpg", b"overwritten")  # a new version: a new event
    wait_for(lambda: webhook.counts["before.jpg"] == 2)
    second.stop()
    webhook.close()
    assert webhook.counts == {"before.jpg": 2, "while-down.jpg": 1}


def test_bridge_retries_until_the_webhook_accepts(
    storage: Storage, watched: str, tmp_path: Path
) -> None:
    webhook = CountingWebhook(fail_first=2)
    bridge = EventGridBridge(storage, webhook.url, tmp_path / "s.json", {watched: "fn"},
                             poll_interval=0.05).start()
    upload(storage, watched, "p/t/flaky.jpg", b"x")
    wait_for(lambda: webhook.counts["flaky.jpg"] == 3, timeout=10)
    # Quiet afterwards, shown by state rather than by waiting: the success is recorded, and a
    # full poll of the container after it delivers nothing more.
    wait_for(lambda: "p/t/flaky.jpg" in json.loads((tmp_path / "s.json").read_text())
             .get("delivered", {}).get(watched, {}))
    bridge.stop()
    assert bridge.poll_once() == 0
    webhook.close()
    assert webhook.counts["flaky.jpg"] == 3  # two failures, one success, then quiet
