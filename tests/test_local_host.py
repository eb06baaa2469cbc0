"""The local Functions host: routes, the Event Grid webhook and queue-trigger semantics, over
real HTTP and a real Azurite queue."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import azure.functions as func
import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage

from tests.drops import wait_for
from visionpipe.local.azurite import free_port
from visionpipe.local.host import HttpRoute, RunningHost, start_host
from visionpipe.storage import Storage


def _route(template: str) -> HttpRoute:
    return HttpRoute("f", template, None, "req", lambda req: None)


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("health", "/health", {}),
        ("health", "/HEALTH/", {}),
        ("a/{id}/b", "/a/42/b", {"id": "42"}),
        ("a/{id:guid}/b", "/a/x/b", {"id": "x"}),
        ("a/{name?}", "/a", {}),
        ("files/{*rest}", "/files/x/y.png", {"rest": "x/y.png"}),
        ("a/{id}/b", "/a/42/c", None),
        ("a/{id}", "/a/1/2", None),
    ],
)
def test_route_templates(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert _route(template).match(path) == expected


class Recorder:
    """A tiny app whose triggers record what the host hands them."""

    def __init__(self, queue_name: str) -> None:
        self.queue_bodies: list[tuple[bytes, int]] = []
        self.events: list[func.EventGridEvent] = []
        self.lock = threading.Lock()
        app = func.FunctionApp()

        @app.function_name("echo")
        @app.route(route="things/{thingId}", methods=["POST"],
                   auth_level=func.AuthLevel.ANONYMOUS)
        def echo(req: func.HttpRequest) -> func.HttpResponse:
            body = {"thingId": req.route_params["thingId"], "q": req.params.get("q"),
                    "body": req.get_body().decode(), "key": req.headers.get("x-key")}
            return func.HttpResponse(json.dumps(body), status_code=201,
                                     mimetype="application/json")

        @app.function_name("boom")
        @app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
        def boom(req: func.HttpRequest) -> func.HttpResponse:
            raise RuntimeError("handler failed")

        @app.function_name("on_event")
        @app.event_grid_trigger(arg_name="event")
        def on_event(event: func.EventGridEvent) -> None:
            with self.lock:
                self.events.append(event)
            if event.subject.endswith("/fail"):
                raise RuntimeError("event handler failed")

        @app.function_name("on_message")
        @app.queue_trigger(arg_name="msg", queue_name="%TEST_QUEUE%",
                           connection="VISIONPIPE_STORAGE")
        def on_message(msg: QueueMessage) -> None:
            with self.lock:
                self.queue_bodies.append((msg.get_body(), msg.dequeue_count))
            if msg.get_json().get("fail"):
                raise RuntimeError("queue handler failed")

        self.app = app


@pytest.fixture
def recorder(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Recorder, str,
                                                                                 RunningHost]]:
    queue_name = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("TEST_QUEUE", queue_name)
    storage.queues.create_queue(queue_name)
    rec = Recorder(queue_name)
    host_json = {"extensions": {"http": {"routePrefix": ""}, "queues": {
        "maxDequeueCount": 5, "visibilityTimeout": "00:00:00", "maxPollingInterval": "00:00:00.2"}}}
    running = start_host(rec.app, port=free_port(), host_json=host_json)
    yield rec, queue_name, running
    running.stop()


def test_http_trigger_gets_route_query_headers_and_body(recorder: tuple) -> None:
    _, _, running = recorder
    response = httpx.post(f"{running.url}/things/abc?q=1", content=b"hello",
                          headers={"X-Key": "k"})
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"thingId": "abc", "q": "1", "body": "hello", "key": "k"}


def test_http_unknown_route_and_wrong_method_are_404_and_failures_500(recorder: tuple) -> None:
    _, _, running = recorder
    assert httpx.get(f"{running.url}/nowhere").status_code == 404
    assert httpx.get(f"{running.url}/things/abc").status_code == 404
    assert httpx.get(f"{running.url}/boom").status_code == 500


def test_event_grid_webhook_validation_and_delivery(recorder: tuple) -> None:
    rec, _, running = recorder
    hook = f"{running.url}/runtime/webhooks/EventGrid?functionName=on_event"
    validation = [{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                   "subject": "", "data": {"validationCode": "abc-123"}}]
    answer = httpx.post(hook, json=validation, headers={"aeg-event-type": "SubscriptionValidation"})
    assert answer.json() == {"validationResponse": "abc-123"}

    event = {"id": "e1", "eventType": "Microsoft.Storage.BlobCreated", "subject": "/x/ok",
             "topic": "t", "eventTime": "2026-11-22T10:00:00Z", "data": {"api": "PutBlob"},
             "dataVersion": ""}
    ok = httpx.post(hook, json=[event], headers={"aeg-event-type": "Notification"})
    assert ok.status_code == 202
    assert rec.events[-1].id == "e1" and rec.events[-1].get_json() == {"api": "PutBlob"}
    assert rec.events[-1].event_time is not None

    failed = httpx.post(hook, json=[{**event, "subject": "/x/fail"}],
                        headers={"aeg-event-type": "Notification"})
    assert failed.status_code == 500  # Event Grid retries on a non-2xx answer
    unknown = httpx.post(f"{running.url}/runtime/webhooks/EventGrid?functionName=nope",
                         json=[event])
    assert unknown.status_code == 404


def test_queue_trigger_decodes_base64_and_deletes_on_success(
    recorder: tuple, storage: Storage
) -> None:
    rec, queue_name, _ = recorder
    storage.queue(queue_name).send_message(json.dumps({"hello": "world"}).encode())
    wait_for(lambda: rec.queue_bodies)
    assert json.loads(rec.queue_bodies[0][0]) == {"hello": "world"}
    assert rec.queue_bodies[0][1] == 1
    wait_for(lambda: storage.queue(queue_name).get_queue_properties().approximate_message_count
             == 0)


def peek(client: object) -> list[object]:
    """Messages of a queue that may not exist yet (the host creates the poison queue)."""
    try:
        return list(client.peek_messages(max_messages=5))  # type: ignore[attr-defined]
    except ResourceNotFoundError:
        return []


def test_failing_message_is_tried_max_dequeue_count_times_then_poisoned(
    recorder: tuple, storage: Storage
) -> None:
    rec, queue_name, _ = recorder
    storage.queue(queue_name).send_message(json.dumps({"fail": True}).encode())
    poison = storage.queue(queue_name + "-poison")
    poisoned = wait_for(lambda: peek(poison), timeout=20)
    assert [count for _, count in rec.queue_bodies] == [1, 2, 3, 4, 5]
    assert json.loads(poisoned[0].content) == {"fail": True}
    assert storage.queue(queue_name).get_queue_properties().approximate_message_count == 0


def test_message_that_is_not_base64_fails_like_the_real_host(
    recorder: tuple, storage: Storage
) -> None:
    rec, queue_name, _ = recorder
    storage.queues.get_queue_client(queue_name).send_message("not base64 at all!")
    raw_poison = storage.queues.get_queue_client(queue_name + "-poison")
    poisoned = wait_for(lambda: peek(raw_poison), timeout=20)
    assert poisoned[0].content == "not base64 at all!"
    assert rec.queue_bodies == []  # the function never saw an undecodable body
