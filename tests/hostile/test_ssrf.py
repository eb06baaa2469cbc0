"""Hostile URLs against every route that fetches one (``images/urls``, ``quicktest/url``,
``classify/.../url``), over real HTTP to the local host, with a real HTTP server on 127.0.0.1 as
the would-be victim:

- private, loopback, link-local and disguised addresses are refused without a single request
  reaching the victim;
- the error text is the same whether the host is private, the port closed or the answer a 404
  (no port scanner);
- the whole fetch, headers and body, ends within ``URL_FETCH_TIMEOUT_SECONDS`` + 1 s against a
  server that drips its body or its headers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.model_factory import color_image
from visionpipe import names
from visionpipe.api.url_fetch import UNREACHABLE
from visionpipe.local.azurite import free_port
from visionpipe.stores.label_store import Project
from visionpipe.stores.registry import Iteration

HEADERS = {"Training-Key": TEST_TRAINING_KEY}
IMAGE = color_image("red")
DRIP_INTERVAL = 0.25


@dataclass
class Victim:
    """A real HTTP server on 127.0.0.1 that counts what reaches it."""

    port: int
    hits: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(victim: Victim) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            victim.hits.append(self.path)
            try:
                if self.path == "/ok.jpg":
                    self._answer(200, IMAGE)
                elif self.path == "/drip-body":  # headers at once, then one byte at a time
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self._drip(b"x" * 100_000)
                elif self.path == "/drip-headers":  # the status line, then headers that drip
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self._drip(b"X-Slow: " + b"a" * 100_000)
                else:
                    self._answer(404, b"not here")
            except OSError:
                pass  # the client gave up: that is the point of the slow paths

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _drip(self, data: bytes) -> None:
            for i in range(len(data)):
                if victim.stop.wait(DRIP_INTERVAL):
                    return
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture
def victim() -> Iterator[Victim]:
    instance = Victim(free_port())
    server = ThreadingHTTPServer(("127.0.0.1", instance.port), _handler(instance))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield instance
    instance.stop.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def images_urls(base: str, project_id: str, url: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{base}/customvision/v3.3/training/projects/{project_id}/images/urls",
                      json={"images": [{"url": url}]}, headers=HEADERS, timeout=timeout)


def quicktest_url(base: str, project_id: str, url: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{base}/customvision/v3.3/training/projects/{project_id}/quicktest/url",
                      params={"store": "false"}, json={"url": url}, headers=HEADERS,
                      timeout=timeout)


def refusal(route: str, response: httpx.Response) -> str:
    """The text a client is told about a URL that was not fetched (route by route)."""
    if route == "images/urls":
        assert response.status_code == 207, response.text
        (image,) = response.json()["images"]
        assert image["status"] == "ErrorSource" and image["image"] is None
        return str(image["reason"])
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "BadRequestImageUrl"
    return str(body["message"])


def classify_url(base: str, project_id: str, url: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{base}/customvision/v3.1/prediction/{project_id}/classify/iterations/"
                      "prod/url/nostore", json={"url": url},
                      headers={"Prediction-Key": TEST_PREDICTION_KEY}, timeout=timeout)


ROUTES: dict[str, Callable[..., httpx.Response]] = {
    "images/urls": images_urls,
    "quicktest/url": quicktest_url,
    "classify/url": classify_url,
}

# {port} is the victim's port: each of these reaches it if the guard lets it through.
SSRF_TARGETS = [
    "http://127.0.0.1:{port}/ok.jpg",
    "http://localhost:{port}/ok.jpg",
    "http://2130706433:{port}/ok.jpg",  # 127.0.0.1 as one decimal number
    "http://0x7f000001:{port}/ok.jpg",  # ... as hex
    "http://127.0.0.2:{port}/ok.jpg",  # the rest of 127/8
    "http://0.0.0.0:{port}/ok.jpg",
    "http://[::1]:{port}/ok.jpg",
    "http://[::ffff:127.0.0.1]:{port}/ok.jpg",  # IPv4-mapped IPv6
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata endpoint
    "http://10.0.0.1/ok.jpg",
    "http://192.168.1.1/ok.jpg",
    "http://100.64.0.1/ok.jpg",  # shared address space
]


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("target", SSRF_TARGETS)
def test_private_targets_are_refused_without_a_request(
    local_host: str, project: Project, published: Iteration, victim: Victim, route: str,
    target: str,
) -> None:
    response = ROUTES[route](local_host, project.id, target.format(port=victim.port))
    assert refusal(route, response) == UNREACHABLE
    assert victim.hits == [], f"{route} fetched {target}"


@pytest.mark.parametrize("route", list(ROUTES))
def test_allowed_network_is_fetched(
    local_host: str, project: Project, published: Iteration, victim: Victim,
    app_setting: Callable[[str, str | None], None], route: str,
) -> None:
    """The operator's URL_FETCH_ALLOWED_NETWORKS lets a private server through (so the refusals
    above are the guard's doing, not a broken fetcher)."""
    app_setting(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "127.0.0.0/8")
    response = ROUTES[route](local_host, project.id, victim.url("/ok.jpg"))
    assert response.status_code == 200, response.text
    if route in ("quicktest/url", "classify/url"):
        assert response.json()["predictions"][0]["tagName"] == "red"
    else:
        assert response.json()["images"][0]["status"] == "OK"
    assert victim.hits == ["/ok.jpg"]


@pytest.mark.parametrize("route", list(ROUTES))
def test_errors_do_not_tell_a_closed_port_from_a_404_or_a_private_host(
    local_host: str, project: Project, published: Iteration, victim: Victim,
    app_setting: Callable[[str, str | None], None], route: str,
) -> None:
    app_setting(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "127.0.0.0/8")
    closed = f"http://127.0.0.1:{free_port()}/ok.jpg"
    answers = {
        "closed port": refusal(route, ROUTES[route](local_host, project.id, closed)),
        "404": refusal(route, ROUTES[route](local_host, project.id, victim.url("/nothing"))),
        "private host": refusal(route, ROUTES[route](local_host, project.id,
                                                     "http://10.1.2.3/ok.jpg")),
        "unresolvable": refusal(route, ROUTES[route](local_host, project.id,
                                                     "http://no-such-host.invalid/ok.jpg")),
    }
    assert set(answers.values()) == {UNREACHABLE}, answers


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_the_whole_fetch_ends_within_the_limit(
    local_host: str, project: Project, published: Iteration, victim: Victim,
    app_setting: Callable[[str, str | None], None], route: str, path: str,
) -> None:
    limit = 2.0
    app_setting(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "127.0.0.0/8")
    app_setting(names.SETTING_URL_FETCH_TIMEOUT_SECONDS, str(limit))
    started = time.monotonic()
    response = ROUTES[route](local_host, project.id, victim.url(path), timeout=limit + 10)
    elapsed = time.monotonic() - started
    assert refusal(route, response) == UNREACHABLE
    assert victim.hits == [path]  # it did connect: the deadline, not the guard, ended it
    assert elapsed < limit + 1.0, f"{path} held {route} for {elapsed:.1f} s (limit {limit} s)"
