"""Benchmark: the local stack end to end — drop-to-result latency and HTTP prediction throughput.

Run from the repo root: ``.venv/bin/python bench/e2e.py``. Starts its own Azurite (in memory, free
ports), the local Functions host and the Event Grid bridge as separate processes (as ``make up``
does), registers and publishes a MobileNetV3-Small iteration, then measures on loopback only:

1. drop latency: one photo-like JPEG at a time into ``predict-images/{project}/``, time from the
   upload starting to ``predictions/{project}/...json`` existing (p50/p95; goal p50 <= 500 ms,
   p95 <= 1 s). The bridge polls every 0.2 s, as in ``make up``;
2. closed-loop throughput: N keep-alive clients posting to ``/image/nostore`` as fast as answers
   come (goal >= 200 req/s on 2 cores);
3. open-loop latency at a fixed 100 req/s (sends on schedule whatever the answers do, latency
   counted from the scheduled time, so a stall cannot hide; goal p99 <= 50 ms).

Throughput and latency are measured for 1024x768 JPEGs (the size bench/predict.py uses) and for
small 384x288 camera frames. The load generator is a bounded Python client in this process; the
host is another process on the same two cores. The last line is the JSON record of ARCHITECTURE.md,
"Benchmarks"
(baseline: the issue's goal for drop p50, ratio > 1 means better than the goal).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import httpx  # noqa: E402

from visionpipe import names  # noqa: E402
from visionpipe.local.azurite import free_port, start_azurite, wait_for_port  # noqa: E402
from visionpipe.local.samples import make_photo  # noqa: E402
from visionpipe.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, TagOutput  # noqa: E402
from visionpipe.pipeline.publishing import publish  # noqa: E402
from visionpipe.preprocessing import PreprocessingSpec  # noqa: E402
from visionpipe.settings import reset_settings  # noqa: E402
from visionpipe.storage import get_storage  # noqa: E402
from visionpipe.stores.label_store import LabelStore  # noqa: E402
from visionpipe.stores.registry import IterationStatus, Registry  # noqa: E402

PREDICTION_KEY = "bench-prediction-key"
TRAINING_KEY = "bench-training-key"
PUBLISH_NAME = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def register_model(storage_registry: Registry, labels: LabelStore, tmp: Path) -> tuple[str, str]:
    from predict import TAGS, export_model

    project = labels.create_project("bench")
    tags = [labels.get_or_create_tag(project.id, f"tag{i}") for i in range(TAGS)]
    onnx_path = tmp / "model.onnx"
    export_model(onnx_path)
    model = onnx_path.read_bytes()
    iteration = storage_registry.create_iteration(project.id)
    manifest = Manifest(
        project_id=project.id, iteration_id=iteration.id, classification_type="Multiclass",
        tags=tuple(TagOutput(t.id, t.name) for t in tags), preprocessing=PreprocessingSpec(),
        backbone="mobilenet_v3_small", pretrained=False, onnx_opset=17,
        model_sha256=hashlib.sha256(model).hexdigest(),
    )
    storage_registry.upload_artifact(project.id, iteration.id, MODEL_FILE, model,
                                     "application/octet-stream")
    storage_registry.upload_artifact(project.id, iteration.id, MANIFEST_FILE,
                                     manifest.to_json().encode(), "application/json")
    storage_registry.update_iteration(project.id, iteration.id, status=IterationStatus.COMPLETED)
    publish(storage_registry, labels, project.id, iteration.id, PUBLISH_NAME)
    return project.id, project.name


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- drop latency --------------------------------------------------------------------------------
def drop_latencies(project_name: str, images: list[bytes]) -> list[float]:
    storage = get_storage()
    drops = storage.container(names.PREDICT_IMAGES)
    results = storage.container(names.PREDICTIONS)
    out = []
    for i, data in enumerate(images):
        path = f"{project_name}/drop-{i:04d}.jpg"
        started = time.perf_counter()
        drops.upload_blob(path, data, overwrite=True)
        result = results.get_blob_client(path + ".json")
        deadline = started + 30
        while not result.exists():
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no result for {path} after 30 s")
            time.sleep(0.005)
        out.append((time.perf_counter() - started) * 1000)
        body = json.loads(result.download_blob().readall())
        if "error" in body:
            raise RuntimeError(f"drop {path} failed: {body['error']}")
    return out


# --- HTTP load -----------------------------------------------------------------------------------
def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> int:
    conn.request("POST", path, body=body, headers={
        "Prediction-Key": PREDICTION_KEY, "Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    response.read()
    return response.status


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_loop(port: int, path: str, body: bytes, clients: int,
                seconds: float) -> tuple[float, list[float], int]:
    """``clients`` keep-alive connections, each sending its next request when answered."""
    latencies: list[float] = []
    errors = [0]
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            status = _post(conn, path, body)
            mine.append((time.perf_counter() - started) * 1000)
            if status != 200:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, errors[0]


def open_loop(port: int, path: str, body: bytes, rate: float,
              seconds: float) -> tuple[list[float], int]:
    """Requests sent on a fixed schedule; latency from the scheduled send time."""
    total = int(rate * seconds)
    start = time.perf_counter() + 0.1
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    next_index = [0]
    workers = 32

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= total:
                break
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status = _post(conn, path, body)
            done = (time.perf_counter() - due) * 1000
            with lock:
                latencies.append(done)
                if status != 200:
                    errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drops", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--bridge-interval", type=float, default=0.2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        ports = (free_port(), free_port(), free_port())
        azurite = start_azurite(tmp / "azurite", *ports, in_memory=True)
        stack.callback(azurite.stop)
        env = dict(os.environ)
        env.update({
            names.STORAGE_CONNECTION: azurite.connection_string,
            "AzureWebJobsStorage": azurite.connection_string,
            names.SETTING_TRAINING_KEY: TRAINING_KEY,
            names.SETTING_PREDICTION_KEY: PREDICTION_KEY,
            names.SETTING_TRAINING_EVENTS_QUEUE: names.TRAINING_EVENTS,
            names.SETTING_TRAINING_REQUESTS_QUEUE: names.TRAINING_REQUESTS,
            "PYTHONPATH": str(ROOT),
        })
        os.environ.update(env)
        reset_settings()
        storage = get_storage()
        storage.ensure_resources()
        project_id, project_name = register_model(Registry(storage), LabelStore(storage), tmp)

        port = free_port()
        no_settings = str(tmp / "none.json")
        host = spawn(["-m", "visionpipe.local.host", "--port", str(port), "--settings",
                      no_settings], env, tmp / "host.log")
        stack.callback(stop, host)
        wait_for_port(port, timeout=60)
        bridge = spawn(["-m", "visionpipe.local.bridge", "--endpoint", f"http://127.0.0.1:{port}",
                        "--state", str(tmp / "bridge.json"), "--settings", no_settings,
                        "--interval", str(args.bridge_interval)], env, tmp / "bridge.log")
        stack.callback(stop, bridge)
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).raise_for_status()

        big = [make_photo((1024, 768), seed=i) for i in range(8)]
        small = make_photo((384, 288), seed=1)
        route = (f"/customvision/v3.1/prediction/{project_id}/classify/iterations/"
                 f"{PUBLISH_NAME}/image/nostore")
        # Warm up: the first request loads the model; the first drop warms the drop path.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        assert _post(conn, route, big[0]) == 200
        conn.close()
        drop_latencies(project_name, [big[0]])

        drops = drop_latencies(project_name, [big[i % len(big)] for i in range(args.drops)])
        drop_p50, drop_p95 = pct(drops, 50), pct(drops, 95)
        print(f"drop -> result, {len(drops)} x 1024x768 JPEG: p50 {drop_p50:.0f} ms, "
              f"p95 {drop_p95:.0f} ms, max {max(drops):.0f} ms "
              f"(bridge polls every {args.bridge_interval:.1f} s)")

        figures: dict[str, float] = {}
        for label, body in (("1024x768", big[1]), ("384x288", small)):
            host_cpu, own_cpu = cpu_seconds(host.pid), cpu_seconds(os.getpid())
            rps, lat, errors = closed_loop(port, route, body, args.clients, args.seconds)
            host_cpu = cpu_seconds(host.pid) - host_cpu
            own_cpu = cpu_seconds(os.getpid()) - own_cpu
            figures[f"http_{label}_rps"] = rps
            figures[f"http_{label}_closed_p50_ms"] = statistics.median(lat)
            figures[f"http_{label}_host_cpu_ms_per_request"] = host_cpu * 1000 / len(lat)
            print(f"HTTP {label}: {rps:.0f} req/s with {args.clients} clients, p50 "
                  f"{statistics.median(lat):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
                  f"{errors} errors; CPU per request: host {host_cpu * 1000 / len(lat):.1f} ms, "
                  f"load generator {own_cpu * 1000 / len(lat):.1f} ms; load average "
                  f"{os.getloadavg()[0]:.1f}")
            fixed, errors = open_loop(port, route, body, args.rate, args.seconds)
            figures[f"http_{label}_at_{args.rate:.0f}_p50_ms"] = statistics.median(fixed)
            figures[f"http_{label}_at_{args.rate:.0f}_p99_ms"] = pct(fixed, 99)
            print(f"HTTP {label} at {args.rate:.0f} req/s: p50 {statistics.median(fixed):.1f} "
                  f"ms, p99 {pct(fixed, 99):.1f} ms, {errors} errors")

    goal = 500.0
    print(json.dumps({
        "name": "e2e_drop_to_result_p50",
        "value": round(drop_p50, 1),
        "unit": "ms",
        "baseline": "goal: drop-to-result p50 500 ms",
        "baseline_value": goal,
        "ratio": round(goal / drop_p50, 2),
        "drop_p95_ms": round(drop_p95, 1),
        **{k: round(v, 1) for k, v in figures.items()},
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
