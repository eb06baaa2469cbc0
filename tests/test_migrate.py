"""``visionpipe migrate``: one visionpipe project moved into another through the official Custom
Vision SDK (visionpipe speaks the same API), over real HTTP against the local host.

The only stand-in is at the external service's boundary: a small forwarding proxy in front of the
local host that answers ``429 Retry-After`` once, as a throttled S0 resource does, or dresses the
source up as an object detection project (a domain of type ObjectDetection, regions on images),
which visionpipe cannot hold yet.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli_runner import invoke
from tests.conftest import TEST_TRAINING_KEY
from tests.model_factory import color_image, register_color_iteration
from visionpipe.client.client import VisionpipeClient
from visionpipe.local.azurite import free_port
from visionpipe.stores.label_store import LabelStore
from visionpipe.stores.registry import Registry

TAGS = {"red": "ripe ones", "green": "unripe", "blue": ""}
PER_TAG = [{"id": "x", "name": n, "precision": 0.9, "recall": 0.8, "averagePrecision": 0.85}
           for n in ("red", "green", "blue")]
METRICS = {"overall": {"precision": 0.9, "recall": 0.8, "averagePrecision": 0.85},
           "perTag": PER_TAG}


pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture
def source(client: VisionpipeClient, project_name: str, label_store: LabelStore,
           registry: Registry) -> dict[str, Any]:
    """A multilabel project: tags with descriptions, single- and double-tagged images, untagged
    ones, and a trained iteration with metrics."""
    project = client.create_project(project_name, multilabel=True, description="fruit sorter")
    tag = {n: client.create_tag(project["id"], n, d or None)["id"] for n, d in TAGS.items()}
    files = [(f"r{i}.jpg", color_image("red", seed=i), [tag["red"]]) for i in range(3)]
    files += [(f"g{i}.jpg", color_image("green", seed=i), [tag["green"]]) for i in range(2)]
    files += [("rg.jpg", color_image("blue", seed=7), [tag["red"], tag["green"]])]
    files += [(f"u{i}.png", color_image("blue", seed=20 + i, fmt="PNG"), []) for i in range(2)]
    results = client.upload_files(project["id"], files)
    assert [r["status"] for r in results] == ["OK"] * len(files)
    client.update_image_metadata(project["id"], [results[0]["image"]["id"]],
                                 {"camera": "line-2", "batch": "17"})
    stored = label_store.get_project(project["id"])
    assert stored is not None
    register_color_iteration(registry, label_store, stored, metrics=METRICS)
    return project


def contents(client: VisionpipeClient, project_id: str) -> dict[str, list[str]]:
    """sha256 of each image's bytes -> its sorted tag names (read back over HTTP)."""
    out: dict[str, list[str]] = {}
    for image in client.list_images(project_id):
        digest = hashlib.sha256(client.image_bytes(project_id, image["id"])).hexdigest()
        out[digest] = sorted(t["tagName"] for t in image.get("tags") or [])
    return out


def metadata(client: VisionpipeClient, project_id: str) -> dict[str, dict[str, str]]:
    """image id (the content hash, the same in both projects) -> its metadata, where set."""
    return {i["id"]: i["metadata"] for i in client.list_images(project_id) if i.get("metadata")}


def test_migrate_moves_everything_once(client: VisionpipeClient, source: dict[str, Any],
                                       local_host: str, tmp_path: Path) -> None:
    target = source["name"] + "-moved"
    report = tmp_path / "report.json"
    args = ("migrate", "--from-endpoint", local_host, "--from-training-key", TEST_TRAINING_KEY,
            "--project", source["name"], "--to-project", target)
    out = invoke(*args, "--report", str(report))
    assert "migration" in out and "iteration(s) recorded" in out

    moved = client.project(target)
    assert moved["description"] == "fruit sorter"
    assert moved["settings"]["classificationType"] == "Multilabel"
    assert moved["settings"]["domainId"] == source["settings"]["domainId"]
    tags = {t["name"]: t for t in client.list_tags(moved["id"])}
    assert {n: t["description"] for n, t in tags.items()} == TAGS
    expected = contents(client, source["id"])
    assert len(expected) == 8
    assert contents(client, moved["id"]) == expected  # bytes by hash, and every tag
    assert metadata(client, moved["id"]) == metadata(client, source["id"]) != {}

    first = json.loads(report.read_text())
    (p,) = first["projects"]
    assert p["counts"]["moved"] == 8 and p["counts"]["skipped"] == 0
    assert p["destination"]["id"] == moved["id"]
    (iteration,) = p["iterations"]
    assert iteration["status"] == "Completed"
    performance = iteration["performance"]
    assert performance["precision"] == pytest.approx(0.9)
    assert {t["name"] for t in performance["perTagPerformance"]} == {"red", "green", "blue"}

    # Again with the report: nothing downloaded again, nothing duplicated.
    invoke(*args, "--report", str(report))
    again = json.loads(report.read_text())["projects"][0]
    assert again["counts"]["resumed"] == 8 and again["counts"]["moved"] == 0
    # Again without it: every image is recognised by its hash.
    invoke(*args)
    assert contents(client, moved["id"]) == expected
    assert len(client.list_tags(moved["id"])) == 3
    assert len([p for p in client.list_projects() if p["name"] == target]) == 1


def test_dry_run_writes_nothing(client: VisionpipeClient, source: dict[str, Any],
                                local_host: str, tmp_path: Path) -> None:
    target = source["name"] + "-dry"
    report = tmp_path / "dry.json"
    out = invoke("migrate", "--from-endpoint", local_host, "--from-training-key",
                 TEST_TRAINING_KEY, "--project", source["id"], "--to-project", target,
                 "--dry-run", "--report", str(report))
    assert "dry run" in out
    assert client.find_project(target) is None
    assert json.loads(report.read_text())["projects"][0]["counts"]["wouldMove"] == 8


def test_bad_key_and_bad_endpoint_fail_at_once_with_one_line(local_host: str) -> None:
    out = invoke("migrate", "--from-endpoint", local_host, "--from-training-key", "wrong",
                 "--all", code=1)
    assert out.strip().count("\n") == 0 and "refused the training key" in out
    started = time.monotonic()
    out = invoke("migrate", "--from-endpoint", f"http://127.0.0.1:{free_port()}",
                 "--from-training-key", "k", "--all", code=1)
    assert time.monotonic() - started < 10
    assert out.strip().count("\n") == 0 and "cannot reach" in out
    out = invoke("migrate", "--from-endpoint", local_host, "--from-training-key",
                 TEST_TRAINING_KEY, "--project", "no-such-project-anywhere", code=1)
    assert "has no project" in out


# --- the external service's boundary: a forwarding proxy ------------------------------------------
Rewrite = Callable[[str, str, bytes], tuple[int, dict[str, str], bytes] | None]


class Proxy:
    """Forwards every request to ``upstream``, keeping the ``Host`` header (so the image URIs
    point back through the proxy); ``rewrite(method, path, body)`` may answer instead."""

    def __init__(self, upstream: str, rewrite: Rewrite) -> None:
        self.seen: list[tuple[float, str, str, int]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                canned = rewrite(self.command, self.path, body)
                if canned is None:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("content-length", "connection")}
                    r = httpx.request(self.command, upstream + self.path, headers=headers,
                                      content=body, timeout=60)
                    canned = (r.status_code, {"Content-Type": r.headers.get(
                        "content-type", "application/octet-stream")}, r.content)
                status, headers, data = canned
                proxy.seen.append((time.monotonic(), self.command, self.path, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_429_with_retry_after_is_honoured(client: VisionpipeClient, source: dict[str, Any],
                                          local_host: str, tmp_path: Path) -> None:
    throttled: list[bool] = []

    def once_429(method: str, path: str, _body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        if method == "GET" and "/images/tagged?" in path and not throttled:
            throttled.append(True)
            body = json.dumps({"error": {"code": "429", "message": "Rate limit is exceeded"}})
            return 429, {"Retry-After": "1", "Content-Type": "application/json"}, body.encode()
        return None

    proxy = Proxy(local_host, once_429)
    try:
        report = tmp_path / "r.json"
        invoke("migrate", "--from-endpoint", proxy.url, "--from-training-key",
               TEST_TRAINING_KEY, "--project", source["name"], "--to-project",
               source["name"] + "-429", "--report", str(report))
    finally:
        proxy.close()
    tagged = [(t, status) for t, method, path, status in proxy.seen if "/images/tagged?" in path]
    assert [s for _, s in tagged[:2]] == [429, 200]
    assert tagged[1][0] - tagged[0][0] >= 1.0  # waited as long as Retry-After said
    result = json.loads(report.read_text())
    assert result["retries"] >= 1 and result["projects"][0]["counts"]["moved"] == 8
    assert contents(client, client.project(source["name"] + "-429")["id"]) == \
        contents(client, source["id"])


def test_detection_source_and_negative_tag_are_carried_and_reported(
        client: VisionpipeClient, source: dict[str, Any], local_host: str,
        tmp_path: Path) -> None:
    box = {"left": 0.1, "top": 0.2, "width": 0.3, "height": 0.4}

    def as_detection(method: str, path: str, _body: bytes
                     ) -> tuple[int, dict[str, str], bytes] | None:
        json_type = {"Content-Type": "application/json"}
        if method == "GET" and "/domains/" in path:
            domain = {"id": path.rsplit("/", 1)[-1], "name": "General [A1]",
                      "type": "ObjectDetection", "exportable": True, "enabled": True}
            return 200, json_type, json.dumps(domain).encode()
        if method == "GET" and path.split("?")[0].endswith("/tags"):
            tags = httpx.get(local_host + path, headers={"Training-Key": TEST_TRAINING_KEY},
                             timeout=60).json()
            for tag in tags:
                tag["type"] = "Negative" if tag["name"] == "blue" else tag["type"]
            return 200, json_type, json.dumps(tags).encode()
        if method == "GET" and "/images/tagged?" in path:
            images = httpx.get(local_host + path, headers={"Training-Key": TEST_TRAINING_KEY},
                               timeout=60).json()
            for image in images:
                image["regions"] = [{"regionId": f"r-{t['tagId']}", "tagId": t["tagId"],
                                     "tagName": t["tagName"], **box} for t in image["tags"]]
            # the image URIs through the proxy, as a forwarded request's would be
            return 200, json_type, json.dumps(images).replace(local_host, proxy.url).encode()
        return None

    proxy = Proxy(local_host, as_detection)
    target = source["name"] + "-od"
    try:
        report = tmp_path / "od.json"
        out = invoke("migrate", "--from-endpoint", proxy.url, "--from-training-key",
                     TEST_TRAINING_KEY, "--project", source["name"], "--to-project", target,
                     "--report", str(report))
    finally:
        proxy.close()
    assert "object detection project" in out
    assert "tag 'blue' is Negative: carried as a Regular tag" in out
    moved = client.project(target)
    assert moved["settings"]["classificationType"] == "Multilabel"
    assert contents(client, moved["id"]) == contents(client, source["id"])
    (p,) = json.loads(report.read_text())["projects"]
    assert p["source"]["domainType"] == "ObjectDetection"
    (blue,) = [t for t in p["tags"] if t["name"] == "blue"]
    assert (blue["type"], blue["carriedAs"]) == ("Negative", "Regular")
    assert p["counts"]["regions"] == 6  # the tagged images, each with its boxes kept
    boxes = [r for image in p["regions"] for r in image["regions"]]
    assert len(boxes) == 7 and all({k: r[k] for k in box} == box for r in boxes)


def test_a_run_that_fails_halfway_writes_what_moved_and_the_rerun_continues(
        client: VisionpipeClient, source: dict[str, Any], local_host: str,
        tmp_path: Path) -> None:
    def untagged_broken(method: str, path: str, _body: bytes
                        ) -> tuple[int, dict[str, str], bytes] | None:
        if method == "GET" and "/images/untagged?" in path:
            body = json.dumps({"code": "BadRequest", "message": "broken"})
            return 400, {"Content-Type": "application/json"}, body.encode()
        return None

    proxy = Proxy(local_host, untagged_broken)
    target = source["name"] + "-halfway"
    report = tmp_path / "halfway.json"
    args = ("--from-training-key", TEST_TRAINING_KEY, "--project", source["name"],
            "--to-project", target, "--report", str(report))
    try:
        out = invoke("migrate", "--from-endpoint", proxy.url, *args, code=1)
    finally:
        proxy.close()
    assert "listing untagged images: 400 BadRequest broken" in out
    halfway = json.loads(report.read_text())
    assert halfway["failure"] and halfway["projects"][0]["counts"]["moved"] == 6  # the tagged

    invoke("migrate", "--from-endpoint", local_host, *args)
    done = json.loads(report.read_text())["projects"][0]["counts"]
    assert (done["resumed"], done["moved"]) == (6, 2)
    assert contents(client, client.project(target)["id"]) == contents(client, source["id"])
