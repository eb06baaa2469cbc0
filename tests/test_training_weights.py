"""Pretrained weights on a laptop: ``scripts/fetch_weights.py`` (run by ``make setup``) fetches
the backbone's weights once into the cache the job reads, says so in one line when offline, and
the worker records which weights it started from.

The "network" is a loopback HTTP server serving a weights file the test makes (a
MobileNetV3-Small state dict), so both paths run on a machine without internet.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tests.test_training import REPO, make_queues, request_body, run_job, seed_project
from visionpipe.local.azurite import free_port
from visionpipe.storage import Storage
from visionpipe.stores.registry import IterationStatus, Registry

SCRIPT = REPO / "scripts" / "fetch_weights.py"
BACKBONE = "mobilenet_v3_small"


class Files:
    """What the loopback server serves, and how many requests it answered."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.requests = 0


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Files]]:
    files = Files()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            files.requests += 1
            body = files.bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", files
    httpd.shutdown()


def weights_bytes() -> bytes:
    import torchvision

    torch.manual_seed(1)
    buf = io.BytesIO()
    torch.save(torchvision.models.get_model(BACKBONE, weights=None).state_dict(), buf)
    return buf.getvalue()


def fetch(out_dir: Path, url: str, timeout: float = 5.0) -> tuple[str, float]:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--backbone", BACKBONE, "--dir", str(out_dir),
         "--url", url, "--timeout", str(timeout)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]  # setup always goes on
    return done.stdout, time.monotonic() - t0


def test_fetches_once_into_the_cache(server: tuple[str, Files], tmp_path: Path) -> None:
    base, files = server
    files.bodies["/w.pth"] = weights_bytes()
    before = files.requests
    out, _ = fetch(tmp_path, base + "/w.pth")
    assert out.count("\n") == 1 and "fetched into" in out
    target = tmp_path / f"{BACKBONE}.pth"
    assert target.read_bytes() == files.bodies["/w.pth"]
    assert (tmp_path / f"{BACKBONE}.json").is_file()
    assert files.requests == before + 1
    out, _ = fetch(tmp_path, base + "/w.pth")  # once: the second setup downloads nothing
    assert "already in" in out and files.requests == before + 1


def test_offline_says_so_in_one_line_and_goes_on(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/w.pth"  # nothing listens there
    out, seconds = fetch(tmp_path, closed, timeout=5)
    assert out.count("\n") == 1 and out.startswith("offline:")
    assert "random init" in out
    assert not any(tmp_path.iterdir())  # nothing half-written
    assert seconds < 30  # python + torch imports; the network part is bounded by --timeout


def test_unusable_download_is_refused(server: tuple[str, Files], tmp_path: Path) -> None:
    base, files = server
    files.bodies["/junk.pth"] = b"<html>captive portal</html>"
    out, _ = fetch(tmp_path, base + "/junk.pth")
    assert out.count("\n") == 1 and "not usable" in out
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_worker_uses_fetched_weights_and_says_so(
    server: tuple[str, Files], storage: Storage, tmp_path: Path
) -> None:
    base, files = server
    files.bodies["/w.pth"] = weights_bytes()
    weights_dir = tmp_path / "weights"
    fetch(weights_dir, base + "/w.pth")
    project = seed_project(storage, f"weights-{uuid.uuid4().hex[:8]}",
                           kinds=("circle", "square"), per_kind=5)
    queues = make_queues(storage)
    iteration_id = str(uuid.uuid4())
    queues.send(storage, request_body(project.id, iteration_id))
    # job_argv points --weights-dir at an empty folder; the later option wins
    assert run_job(queues, tmp_path / "cache", "--epochs", "1",
                   "--weights-dir", str(weights_dir)) == 0
    registry = Registry(storage)
    it = registry.get_iteration(project.id, iteration_id)
    assert it is not None and it.status == IterationStatus.COMPLETED, it
    assert it.progress["weights"] == f"pretrained ({BACKBONE}.pth)"  # what `status` shows
    manifest = registry.read_manifest(project.id, iteration_id)
    assert manifest.pretrained is True
