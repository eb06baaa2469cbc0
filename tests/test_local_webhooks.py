"""Local webhook subscriptions (visionpipe/local/webhooks.py) with a real HTTP receiver and the
real local event table: the CloudEvents validation handshake, structured-mode delivery with Event
Grid's headers, retries with growing backoff, what is not retried, events held until the
handshake passes, and the process the local stack starts from ``LOCAL_EVENT_WEBHOOKS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.drops import wait_for
from visionpipe import names
from visionpipe.local.stack import webhooks_wanted
from visionpipe.local.webhooks import WebhookDelivery
from visionpipe.pipeline import lifecycle_events
from visionpipe.settings import Settings
from visionpipe.storage import Storage

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Receiver:
    """A webhook receiver on a free port that answers as it is told and records every call."""

    url: str = ""
    allow_origin: str | None = "eventgrid.azure.net"  # None: refuse the handshake
    post_statuses: list[int] = field(default_factory=list)  # answers to the next POSTs (then 200)
    options: list[dict[str, str]] = field(default_factory=list)
    posts: list[tuple[float, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events_of(self, event_id: str) -> list[tuple[float, dict[str, str], dict[str, Any]]]:
        with self.lock:
            return [p for p in self.posts if p[2].get("id") == event_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's naming
            with state.lock:
                state.options.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200 if state.allow_origin else 403)
            if state.allow_origin:
                self.send_header("WebHook-Allowed-Origin", state.allow_origin)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                state.posts.append((time.monotonic(),
                                    {k.lower(): v for k, v in self.headers.items()},
                                    json.loads(body)))
                status = state.post_statuses.pop(0) if state.post_statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/api/events"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def delivery(storage: Storage, receiver: Receiver) -> Iterator[WebhookDelivery]:
    running = WebhookDelivery(storage, [receiver.url], retry_seconds=0.2, max_attempts=4,
                              poll_interval=0.1).start()
    yield running
    running.stop()


def _event(storage: Storage) -> lifecycle_events.LifecycleEvent:
    project = str(uuid.uuid4())
    event = lifecycle_events.iteration_published(project, str(uuid.uuid4()), "prod")
    assert lifecycle_events.publish(event, storage)
    return event


def test_handshake_then_cloudevents_delivery_with_event_grid_headers(
    storage: Storage, receiver: Receiver, delivery: WebhookDelivery,
) -> None:
    before = _event(storage)  # right after the subscription started: delivered too
    event = _event(storage)
    wait_for(lambda: receiver.events_of(event.id), timeout=10)
    [options] = receiver.options[:1]
    assert options["webhook-request-origin"] == "eventgrid.azure.net"
    [(_, headers, body)] = receiver.events_of(event.id)
    assert headers["content-type"] == "application/cloudevents+json; charset=utf-8"
    assert headers["aeg-delivery-count"] == "0"
    assert headers["aeg-event-type"] == "Notification"
    assert headers["aeg-subscription-name"] == "LOCAL-WEBHOOK-0"
    assert body == event.to_dict() | {"time": body["time"]}
    assert body["specversion"] == "1.0" and body["type"] == "Visionpipe.IterationPublished"
    wait_for(lambda: receiver.events_of(before.id), timeout=10)
    assert len(receiver.events_of(before.id)) == 1 and len(receiver.options) == 1


def test_events_published_before_the_subscription_are_not_sent(
    storage: Storage, receiver: Receiver,
) -> None:
    old = _event(storage)
    running = WebhookDelivery(storage, [receiver.url], retry_seconds=0.2, poll_interval=0.1)
    running.start()
    try:
        new = _event(storage)
        wait_for(lambda: receiver.events_of(new.id), timeout=10)
        assert receiver.events_of(old.id) == []
    finally:
        running.stop()


def test_retries_back_off_and_count_deliveries(storage: Storage, receiver: Receiver,
                                               delivery: WebhookDelivery) -> None:
    receiver.post_statuses.extend([503, 500])
    event = _event(storage)
    wait_for(lambda: len(receiver.events_of(event.id)) == 3, timeout=15)
    tries = receiver.events_of(event.id)
    assert [h["aeg-delivery-count"] for _, h, _ in tries] == ["0", "1", "2"]
    first_gap, second_gap = tries[1][0] - tries[0][0], tries[2][0] - tries[1][0]
    assert first_gap >= 0.19 and second_gap >= 0.39  # 0.2 s, then doubled
    assert event.id in delivery.subscribers[0].delivered


def test_bad_request_is_not_retried_and_attempts_are_bounded(
    storage: Storage, receiver: Receiver, delivery: WebhookDelivery,
) -> None:
    receiver.post_statuses.append(400)
    refused = _event(storage)
    wait_for(lambda: (refused.id, "refused") in delivery.subscribers[0].dropped, timeout=10)
    assert len(receiver.events_of(refused.id)) == 1
    receiver.post_statuses.extend([503] * 10)
    failing = _event(storage)
    wait_for(lambda: any(i == failing.id for i, _ in delivery.subscribers[0].dropped),
             timeout=20)
    assert len(receiver.events_of(failing.id)) == 4  # max_attempts


def test_events_wait_for_a_refused_handshake(storage: Storage, receiver: Receiver) -> None:
    receiver.allow_origin = None
    running = WebhookDelivery(storage, [receiver.url], retry_seconds=0.2,
                              poll_interval=0.1).start()
    try:
        event = _event(storage)
        wait_for(lambda: len(receiver.options) >= 2, timeout=10)  # refused, retried
        assert receiver.events_of(event.id) == []
        receiver.allow_origin = "*"
        wait_for(lambda: receiver.events_of(event.id), timeout=10)
    finally:
        running.stop()


def test_bad_urls_are_refused() -> None:
    for urls in ([], ["file:///etc/passwd"], ["ftp://x"]):
        with pytest.raises(ValueError):
            WebhookDelivery(None, urls)  # type: ignore[arg-type]


def test_the_setting_and_the_stack_process(storage: Storage, receiver: Receiver,
                                           tmp_path: Path) -> None:
    """``LOCAL_EVENT_WEBHOOKS`` in local.settings.json: the stack starts the delivery process,
    which reads it (and the retry settings) and delivers; it resumes from its state file."""
    values = {names.SETTING_LOCAL_EVENT_WEBHOOKS: f" {receiver.url} , http://127.0.0.1:9/x ",
              names.SETTING_LOCAL_WEBHOOK_RETRY_SECONDS: "0.2",
              names.SETTING_LOCAL_WEBHOOK_MAX_ATTEMPTS: "3"}
    parsed = Settings.from_env({**os.environ, **values})
    assert parsed.local_event_webhooks == (receiver.url, "http://127.0.0.1:9/x")
    assert (parsed.local_webhook_retry_seconds, parsed.local_webhook_max_attempts) == (0.2, 3)
    assert webhooks_wanted(values) and not webhooks_wanted({})
    template = json.loads((REPO / "local.settings.json.template").read_text())["Values"]
    assert names.SETTING_LOCAL_EVENT_WEBHOOKS in template

    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps({"Values": values}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "visionpipe.local.webhooks", "--settings", str(settings_file),
         "--state", str(tmp_path / "state.json"), "--interval", "0.1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: receiver.options, timeout=20)
        event = _event(storage)
        wait_for(lambda: receiver.events_of(event.id), timeout=15)
        wait_for(lambda: (tmp_path / "state.json").exists(), timeout=5)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert "delivering lifecycle events to" in output
    saved = json.loads((tmp_path / "state.json").read_text())["after"]
    assert saved.endswith(event.id)

