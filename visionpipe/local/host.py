"""A thin in-process stand-in for the Azure Functions host (ARCHITECTURE.md, "Local stack").

Azure Functions Core Tools cannot be installed here (their installer downloads a binary), so this
indexes ``function_app.app`` and serves, on 127.0.0.1, what the real host serves:

- HTTP triggers, with ``host.json``'s ``routePrefix`` (visionpipe sets it to "");
- the Event Grid webhook ``POST /runtime/webhooks/EventGrid?functionName=...`` (with the
  subscription-validation handshake);
- queue triggers with the real host's semantics: base64 message bodies, ``maxDequeueCount`` from
  host.json (5), failed messages made visible again after ``visibilityTimeout``, and the
  ``{queue}-poison`` queue for messages that keep failing.

It is a development tool, not a product: it must not grow features the real host lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions.queue import QueueMessage

log = logging.getLogger("visionpipe.local.host")

REPO = Path(__file__).resolve().parents[2]
EVENT_GRID_WEBHOOK = "/runtime/webhooks/eventgrid"
#: The Functions host's own request body limit (100 MB); the prediction routes get their image
#: limit instead (:meth:`LocalHost.body_limit`), so a huge body is refused before it is read.
HOST_MAX_BODY_BYTES = 100 * 1024 * 1024
#: Room for the multipart framing around a prediction image of the maximum size.
MULTIPART_SLACK_BYTES = 64 * 1024
#: Event Grid delivers at most 1 MB per request.
EVENT_GRID_MAX_BODY_BYTES = 1024 * 1024
#: After refusing a body, read (and drop) at most this much of what is still in flight, so the
#: client sees the answer instead of a reset connection.
_DRAIN_BYTES = 8 * 1024 * 1024
_DRAIN_SECONDS = 1.0


def error_body(code: str, message: str) -> bytes:
    """Custom Vision's error shape, for what the host itself refuses."""
    return json.dumps({"code": code, "message": message}).encode()


def _bad_request(message: str) -> tuple[int, dict[str, str], bytes]:
    return 400, {"Content-Type": "application/json"}, error_body("BadRequest", message)


def load_local_settings(path: Path) -> dict[str, str]:
    """``local.settings.json``'s Values, as ``func start`` reads them."""
    if not path.exists():
        return {}
    values = json.loads(path.read_text()).get("Values", {})
    return {str(k): str(v) for k, v in values.items()}


def apply_settings(values: Mapping[str, str]) -> None:
    """Put settings into the environment without overriding what is already set."""
    for key, value in values.items():
        os.environ.setdefault(key, value)


def resolve_binding_expression(value: str) -> str:
    """``%SETTING%`` -> the setting's value, as the host resolves app-setting expressions."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise KeyError(f"binding expression %{name}% names an app setting that is not set")
        return os.environ[name]

    return re.sub(r"%([^%]+)%", sub, value)


def _parse_timespan(value: str | None, default: float) -> float:
    if not value:
        return default
    h, m, s = value.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    result = fn(**kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(result)  # type: ignore[arg-type]
    return result


_INDEX: dict[int, list[Any]] = {}
_INDEX_LOCK = threading.Lock()


def indexed_functions(app: func.FunctionApp) -> list[Any]:
    """``app.get_functions()``, called once per app (a second call raises) and remembered."""
    with _INDEX_LOCK:
        if id(app) not in _INDEX:
            _INDEX[id(app)] = list(app.get_functions())
        return _INDEX[id(app)]


# --- HTTP routes --------------------------------------------------------------------------------
@dataclass
class HttpRoute:
    function_name: str
    template: str
    methods: frozenset[str] | None  # None: every method
    arg_name: str
    fn: Callable[..., Any]
    pattern: re.Pattern[str] = field(init=False)
    #: ASP.NET routing's inbound precedence, one digit per segment (lower wins, compared segment
    #: by segment): 1 literal, 2 constrained parameter, 3 parameter, 4 constrained catch-all,
    #: 5 catch-all. So ``a/b/{y}`` beats ``a/{x}/c`` and ``x/{*rest}`` loses to everything.
    precedence: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        parts, digits = [], []
        for segment in self.template.strip("/").split("/"):
            m = re.fullmatch(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(:[^}?]+)?(\??)\}", segment)
            if m is None:
                parts.append("/" + re.escape(segment))
                digits.append(1)
                continue
            digits.append((5 if m.group(1) else 3) - (1 if m.group(3) else 0))
            if m.group(1):  # catch-all {*rest}
                parts.append(f"(?:/(?P<{m.group(2)}>.*))?")
            elif m.group(4):  # optional {name?}
                parts.append(f"(?:/(?P<{m.group(2)}>[^/]+))?")
            else:
                parts.append(f"/(?P<{m.group(2)}>[^/]+)")
        self.pattern = re.compile("".join(parts) + "/?", re.IGNORECASE)
        self.precedence = tuple(digits)

    def match(self, path: str) -> dict[str, str] | None:
        m = self.pattern.fullmatch(path)
        if m is None:
            return None
        return {k: v for k, v in m.groupdict().items() if v is not None}


@dataclass
class QueueTrigger:
    function_name: str
    queue_name: str
    connection: str
    arg_name: str
    fn: Callable[..., Any]


class LocalHost:
    """The indexed app plus the dispatch logic; :func:`serve` puts it behind HTTP."""

    def __init__(self, app: func.FunctionApp, host_json: dict[str, Any] | None = None) -> None:
        host_json = host_json or {}
        extensions = host_json.get("extensions", {})
        self.route_prefix = str(extensions.get("http", {}).get("routePrefix", "api")).strip("/")
        queues = extensions.get("queues", {})
        self.max_dequeue_count = int(queues.get("maxDequeueCount", 5))
        self.visibility_timeout = _parse_timespan(queues.get("visibilityTimeout"), 0.0)
        self.max_polling_interval = _parse_timespan(queues.get("maxPollingInterval"), 2.0)
        self.batch_size = int(queues.get("batchSize", 16))
        self.routes: list[HttpRoute] = []
        self.event_grid: dict[str, tuple[str, Callable[..., Any]]] = {}
        self.queue_triggers: list[QueueTrigger] = []
        self._index(app)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _index(self, app: func.FunctionApp) -> None:
        for f in indexed_functions(app):
            trigger = f.get_trigger().get_dict_repr()
            name, fn, arg = f.get_function_name(), f.get_user_function(), trigger["name"]
            kind = trigger["type"]
            if kind == "httpTrigger":
                methods = trigger.get("methods")
                route = trigger.get("route") or name
                full = f"{self.route_prefix}/{route}" if self.route_prefix else route
                allowed = frozenset(str(getattr(m, "value", m)).upper() for m in methods) \
                    if methods else None
                self.routes.append(HttpRoute(name, full, allowed, arg, fn))
            elif kind == "eventGridTrigger":
                self.event_grid[name.lower()] = (arg, fn)
            elif kind == "queueTrigger":
                self.queue_triggers.append(QueueTrigger(
                    name, trigger["queueName"], trigger["connection"], arg, fn))
            else:
                raise NotImplementedError(f"function {name}: trigger {kind!r} is not supported "
                                          "by the local host")
        # ASP.NET routing's order, whatever the registration order: segment by segment, literals
        # before parameters before catch-alls.
        self.routes.sort(key=lambda r: r.precedence)

    # --- HTTP -----------------------------------------------------------------------------------
    def body_limit(self, path: str) -> tuple[int, str]:
        """The most body bytes a request to ``path`` may carry, and the error code for more.

        The prediction routes take one image of at most MAX_PREDICTION_IMAGE_BYTES: anything much
        larger is refused before it is read, instead of being buffered whole and refused after.
        """
        lowered = path.lower()
        if lowered.rstrip("/") == EVENT_GRID_WEBHOOK:
            return EVENT_GRID_MAX_BODY_BYTES, "BadRequest"
        if "/prediction/" in lowered:
            from visionpipe.settings import get_settings

            limit = get_settings().prediction_limits.max_bytes + MULTIPART_SLACK_BYTES
            return limit, "BadRequestImageSizeBytes"
        return HOST_MAX_BODY_BYTES, "BadRequest"

    def handle_http(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(url)
        path = split.path
        if path.lower().rstrip("/") == EVENT_GRID_WEBHOOK:
            return self.handle_event_grid(dict(parse_qsl(split.query)), headers, body)
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            if route.methods is not None and method.upper() not in route.methods:
                continue
            request = func.HttpRequest(
                method=method.upper(), url=url, headers=headers,
                params=dict(parse_qsl(split.query, keep_blank_values=True)),
                route_params=params, body=body,
            )
            try:
                response = _call(route.fn, **{route.arg_name: request})
            except Exception:
                log.exception("Executed 'Functions.%s' (Failed)", route.function_name)
                return 500, {}, b""
            return self._http_response(response)
        return 404, {}, b""

    @staticmethod
    def _http_response(response: Any) -> tuple[int, dict[str, str], bytes]:
        if response is None:
            return 204, {}, b""
        if not isinstance(response, func.HttpResponse):
            response = func.HttpResponse(str(response))
        out = {k: v for k, v in response.headers.items()}
        if not any(k.lower() == "content-type" for k in out) and response.mimetype:
            charset = f"; charset={response.charset}" if response.charset else ""
            out["Content-Type"] = f"{response.mimetype}{charset}"
        return response.status_code, out, response.get_body() or b""

    # --- Event Grid -----------------------------------------------------------------------------
    def handle_event_grid(
        self, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        target = self.event_grid.get(query.get("functionName", "").lower())
        if target is None:
            return 404, {}, b""
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            payload = json.loads(body)
        except ValueError:
            return _bad_request("the body is not JSON")
        events = payload if isinstance(payload, list) else [payload]
        # Event Grid's schema: events are objects and their `data` is an object. Anything else is
        # the sender's mistake (a 400), never the function's failure (a 500 makes Event Grid retry).
        if not events:
            return _bad_request("the body holds no event")
        for raw in events:
            if not isinstance(raw, dict):
                return _bad_request("each event must be a JSON object")
            if not isinstance(raw.get("data"), dict):
                return _bad_request("an event's data must be a JSON object")
        if lowered.get("aeg-event-type") == "SubscriptionValidation":
            code = events[0].get("data", {}).get("validationCode")
            if not isinstance(code, str) or not code:
                return _bad_request("the validation event has no validationCode")
            answer = json.dumps({"validationResponse": code}).encode()
            return 200, {"Content-Type": "application/json"}, answer
        arg, fn = target
        for raw in events:
            event = func.EventGridEvent(
                id=raw.get("id", ""),
                data=raw.get("data", {}),
                topic=raw.get("topic", ""),
                subject=raw.get("subject", ""),
                event_type=raw.get("eventType", ""),
                event_time=_parse_time(raw.get("eventTime")),
                data_version=raw.get("dataVersion", ""),
            )
            try:
                _call(fn, **{arg: event})
            except Exception:
                log.exception("Executed 'Functions.%s' (Failed, id=%s)",
                              query.get("functionName"), event.id)
                return 500, {}, b""
        return 202, {}, b""

    # --- queues ---------------------------------------------------------------------------------
    def start_queue_listeners(self) -> None:
        for trigger in self.queue_triggers:
            thread = threading.Thread(target=self._listen, args=(trigger,), daemon=True,
                                      name=f"queue-{trigger.function_name}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _listen(self, trigger: QueueTrigger) -> None:
        from azure.storage.queue import QueueClient

        from visionpipe.settings import StorageSettings

        connection = StorageSettings.from_env(os.environ, trigger.connection).connection_string
        if connection is None:
            raise RuntimeError(f"{trigger.connection}: the local host needs a connection string")
        queue_name = resolve_binding_expression(trigger.queue_name)
        queue = QueueClient.from_connection_string(connection, queue_name)
        poison = QueueClient.from_connection_string(connection, queue_name + "-poison")
        delay, fastest = 0.05, 0.05
        with ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            while not self._stop.is_set():
                try:
                    messages = list(queue.receive_messages(
                        messages_per_page=self.batch_size, max_messages=self.batch_size,
                        visibility_timeout=600))
                except Exception as e:  # storage briefly unreachable: back off like the host
                    log.warning("queue %s: receive failed: %s", queue_name, e)
                    messages = []
                if not messages:
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.max_polling_interval)
                    continue
                delay = fastest
                list(pool.map(lambda m: self._process(trigger, queue, poison, m), messages))

    def _process(self, trigger: QueueTrigger, queue: Any, poison: Any, message: Any) -> None:
        if message.dequeue_count > self.max_dequeue_count:
            self._to_poison(queue, poison, message)
            return
        try:
            body = base64.b64decode(message.content, validate=True)
            payload = QueueMessage(
                id=message.id, body=body, dequeue_count=message.dequeue_count,
                expiration_time=message.expires_on, insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on, pop_receipt=message.pop_receipt,
            )
            _call(trigger.fn, **{trigger.arg_name: payload})
        except Exception:  # includes binascii.Error: an undecodable body fails like the host
            log.exception("Executed 'Functions.%s' (Failed, id=%s, dequeueCount=%s)",
                          trigger.function_name, message.id, message.dequeue_count)
            if message.dequeue_count >= self.max_dequeue_count:
                self._to_poison(queue, poison, message)
            else:
                queue.update_message(message, visibility_timeout=int(self.visibility_timeout))
            return
        queue.delete_message(message)

    def _to_poison(self, queue: Any, poison: Any, message: Any) -> None:
        from azure.core.exceptions import ResourceExistsError

        with suppress(ResourceExistsError):
            poison.create_queue()
        poison.send_message(message.content)
        queue.delete_message(message)
        log.error("message %s moved to %s after %s dequeues", message.id, poison.queue_name,
                  message.dequeue_count)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# --- the HTTP server ----------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostServer

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return  # refused and answered; the connection closes
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_port}"
        url = f"http://{host}{self.path}"
        status, headers, payload = self.server.host.handle_http(
            self.command, url, {k: v for k, v in self.headers.items()}, body)
        self._answer(status, headers, payload)

    def _answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _refuse(self, status: int, code: str, message: str, drain: bool = False) -> None:
        """Answer in Custom Vision's error shape and close: the rest of the body is not read, so
        the connection cannot carry another request."""
        self.close_connection = True
        self._answer(status, {"Content-Type": "application/json"}, error_body(code, message))
        if drain:
            self._drain()

    def _drain(self) -> None:
        """Read what the client is still sending, briefly, so closing does not reset the
        connection before it has read the answer."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        with suppress(OSError):
            self.wfile.flush()
            left = _DRAIN_BYTES
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.connection.settimeout(remaining)
                chunk = self.connection.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)

    def _read_body(self) -> bytes | None:
        """The request body, or None after refusing it: an unreadable Content-Length (400), a
        chunked body (411, the host needs the length up front) or one over the limit (413, before
        any of it is read; at most 8 MB / 1 s of it is then drained and dropped)."""
        values = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") and not values:
            self._refuse(411, "BadRequest", "send the body with a Content-Length")
            return None
        if not values:
            return b""
        raw = values[0].strip()
        if len(values) > 1 or not raw.isdigit() or not raw.isascii():
            self._refuse(400, "BadRequest", "the Content-Length header is not a byte count")
            return None
        length = int(raw)
        limit, code = self.server.host.body_limit(urlsplit(self.path).path)
        if length > limit:  # known from the header: refused before a byte of it is buffered
            self._refuse(413, code, f"the request body is {length:,} bytes; the limit is "
                                    f"{limit:,} bytes", drain=True)
            return None
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-body
            self.close_connection = True
            return None
        return body

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code.value if isinstance(code, HTTPStatus) else code
        log.info("%s %s -> %s", self.command, self.path.split("?")[0], status)


class HostServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, host: LocalHost, port: int) -> None:
        self.host = host
        super().__init__(("127.0.0.1", port), _Handler)


@dataclass
class RunningHost:
    host: LocalHost
    server: HostServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.host.stop()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def read_host_json(path: Path = REPO / "host.json") -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def start_host(app: func.FunctionApp, port: int = 7071,
               host_json: dict[str, Any] | None = None) -> RunningHost:
    """Index ``app`` and serve it in background threads (used by tests and by :func:`main`)."""
    host = LocalHost(app, read_host_json() if host_json is None else host_json)
    server = HostServer(host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="local-host")
    thread.start()
    host.start_queue_listeners()
    return RunningHost(host, server, thread)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve function_app.app like `func start`.")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--settings", type=Path, default=REPO / "local.settings.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    apply_settings(load_local_settings(args.settings))
    import sys

    sys.path.insert(0, str(REPO))
    from function_app import app

    running = start_host(app, args.port)
    log.info("local host on %s: %d HTTP route(s), Event Grid: %s, queues: %s", running.url,
             len(running.host.routes), ", ".join(running.host.event_grid) or "-",
             ", ".join(t.function_name for t in running.host.queue_triggers) or "-")
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    running.stop()


if __name__ == "__main__":
    main()
