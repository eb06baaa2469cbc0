"""Hostile HTTP against the local Functions host, over raw sockets (visionpipe/local/host.py).

Every refusal is an answer in Custom Vision's error shape (``{"code", "message"}``), never a
dropped connection and never a 5xx; a body over the route's limit is refused from its
Content-Length, before it is read.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.conftest import TEST_PREDICTION_KEY
from visionpipe.local.host import MULTIPART_SLACK_BYTES
from visionpipe.settings import get_settings
from visionpipe.stores.label_store import Project
from visionpipe.stores.registry import Iteration

#: A host that answers waits at most this long; one that hangs fails the test instead.
ANSWER_SECONDS = 10.0


def _address(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body; raises if the host hangs or hangs up."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the host closed the connection without answering: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the host closed the connection mid-answer")
        body += chunk
    return status, headers, body[:length]


def _exchange(base: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send a raw request head (and ``body``) and read the answer."""
    with socket.create_connection(_address(base), timeout=ANSWER_SECONDS) as sock:
        sock.sendall(head.encode() + body)
        return _read_response(sock)


def _error(body: bytes) -> dict[str, str]:
    parsed = json.loads(body)
    assert set(parsed) == {"code", "message"}, parsed
    assert isinstance(parsed["code"], str) and isinstance(parsed["message"], str)
    return parsed


def _predict_path(project_id: str) -> str:
    return f"/customvision/v3.1/prediction/{project_id}/classify/iterations/prod/image/nostore"


# --- Content-Length ------------------------------------------------------------------------------
@pytest.mark.parametrize("length_headers", [
    "Content-Length: abc\r\n",
    "Content-Length: -5\r\n",
    "Content-Length: 1e3\r\n",
    "Content-Length: 5\r\nContent-Length: 6\r\n",
    "Content-Length: ٣\r\n",  # a non-ASCII digit (UTF-8 bytes on the wire)
])
def test_a_bad_content_length_is_answered_400(local_host: str, length_headers: str) -> None:
    head = (f"POST /customvision/v3.1/prediction/x/classify/iterations/prod/image HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\n{length_headers}\r\n")
    status, headers, body = _exchange(local_host, head, b"hello")
    assert status == 400
    assert headers.get("content-type", "").startswith("application/json")
    assert "content-length" in _error(body)["message"].lower()


def test_a_chunked_body_is_refused_with_411(local_host: str) -> None:
    head = ("POST /customvision/v3.1/prediction/x/classify/iterations/prod/image HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, _, body = _exchange(local_host, head, b"5\r\nhello\r\n0\r\n\r\n")
    assert status == 411
    _error(body)


# --- body size -----------------------------------------------------------------------------------
def test_a_100_mb_body_is_refused_from_its_header_before_it_is_read(
    local_host: str, project: Project, published: Iteration
) -> None:
    """Only 64 KB of the announced 100 MB are sent: an answer proves nothing waited for the
    rest (the old host read the whole body first, and hung here)."""
    announced = 100 * 1024 * 1024
    head = (f"POST {_predict_path(project.id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Prediction-Key: {TEST_PREDICTION_KEY}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {announced}\r\n\r\n")
    status, headers, body = _exchange(local_host, head, b"\0" * 65536)
    assert status == 413
    assert headers.get("connection", "").lower() == "close"
    error = _error(body)
    assert error["code"] == "BadRequestImageSizeBytes"
    assert f"{announced:,}" in error["message"]


def test_one_byte_over_the_prediction_limit_is_413_and_at_the_limit_reaches_the_app(
    local_host: str, project: Project, published: Iteration
) -> None:
    limit = get_settings().prediction_limits.max_bytes + MULTIPART_SLACK_BYTES
    head = (f"POST {_predict_path(project.id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Prediction-Key: {TEST_PREDICTION_KEY}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n")
    over, _, body = _exchange(local_host, head.format(n=limit + 1), b"\xff" * (limit + 1))
    assert over == 413
    assert _error(body)["code"] == "BadRequestImageSizeBytes"
    # At the limit the app itself answers (the image is over 4 MB: its own 400).
    at, _, body = _exchange(local_host, head.format(n=limit), b"\xff" * limit)
    assert at == 400
    assert "too_large" in _error(body)["message"]


# --- Event Grid ----------------------------------------------------------------------------------
def _event_grid(base: str, payload: object, event_type: str = "Notification",
                function: str = "predict_image") -> tuple[int, dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    head = (f"POST /runtime/webhooks/EventGrid?functionName={function} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\naeg-event-type: {event_type}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return _exchange(base, head, body)


@pytest.mark.parametrize("payload", [
    [],
    [{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}],
    [{"id": "1", "data": "not an object"}],
    ["not an event"],
    {"id": "1", "data": {"validationCode": 42}},
])
def test_a_malformed_subscription_validation_is_answered_400(
    local_host: str, payload: object
) -> None:
    status, headers, body = _event_grid(local_host, payload, "SubscriptionValidation")
    assert status == 400
    assert headers.get("content-type", "").startswith("application/json")
    _error(body)


def test_a_well_formed_subscription_validation_still_succeeds(local_host: str) -> None:
    payload = [{"id": "1", "data": {"validationCode": "abc-123"}}]
    status, _, body = _event_grid(local_host, payload, "SubscriptionValidation")
    assert status == 200 and json.loads(body) == {"validationResponse": "abc-123"}


@pytest.mark.parametrize("function", ["predict_image", "ingest_training_image"])
@pytest.mark.parametrize("data", ["a string", [1, 2], 5, None, True])
def test_event_grid_data_that_is_not_an_object_is_400_never_500(
    local_host: str, function: str, data: object
) -> None:
    payload = [{"id": "1", "eventType": "Microsoft.Storage.BlobCreated", "subject": "/x",
                "eventTime": "2026-11-29T00:00:00Z", "dataVersion": "1", "data": data}]
    status, _, body = _event_grid(local_host, payload, function=function)
    assert status == 400
    assert "data" in _error(body)["message"]


@pytest.mark.parametrize("payload", [[], [7], "text", {}])
def test_event_grid_bodies_without_events_are_400(local_host: str, payload: object) -> None:
    status, _, body = _event_grid(local_host, payload)
    assert status == 400
    _error(body)
