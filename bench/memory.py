"""Benchmark: the local host's peak memory under 8 concurrent worst-case prediction images.

Run from the repo root: ``.venv/bin/python bench/memory.py``. Starts its own Azurite (in memory,
free ports) and the local Functions host as a separate process, publishes a tiny model
(tests/model_factory.py), then fires rounds of 8 concurrent requests at the classify route:

- ``png-8000``: 8000 x 8000 PNGs of flat colour (about 200 KB each; 244 MB each to decode);
- ``png-4096``: 4096 x 4096 PNGs, RGB and palette-with-transparency: the largest PNGs the
  prediction pixel budget accepts, and the costliest conversion to RGB;
- ``jpeg``: 8000 x 8000 JPEGs, baseline (decoded at 1/8 scale) and progressive (libjpeg keeps
  every coefficient: 187 MB even at 1/8 scale), plus accepted 4096 x 4096 progressive ones.

The host's resident memory is sampled every 20 ms (psutil when installed, else /proc), and its
high-water mark (VmHWM) is read after each round; where the kernel allows, the mark is reset
between rounds (``/proc/PID/clear_refs``), so each round's peak is its own. The old behaviour's
peak is not measurable from this tree (run this script in a checkout of the old code for that),
so the baseline is the memory budget the issue sets: 600 MB for the whole host. The last line
is the JSON record of docs/ARCHITECTURE.md section 9 (ratio > 1: under the budget).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from visionpipe import names  # noqa: E402
from visionpipe.local.azurite import free_port, start_azurite, wait_for_port  # noqa: E402
from visionpipe.pipeline.publishing import publish  # noqa: E402
from visionpipe.settings import reset_settings  # noqa: E402
from visionpipe.storage import get_storage  # noqa: E402
from visionpipe.stores.label_store import LabelStore  # noqa: E402
from visionpipe.stores.registry import Registry  # noqa: E402

PREDICTION_KEY = "bench-prediction-key"
PUBLISH_NAME = "bench"
CONCURRENT = 8
BUDGET_MB = 600.0
SAMPLE_SECONDS = 0.02


# --- images --------------------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def worst_case_rounds() -> dict[str, list[bytes]]:
    """Eight images per round; colours differ so the bytes (and sha256) differ."""
    colours = [(200 - 10 * i, 30 + 5 * i, 40 + 15 * i) for i in range(CONCURRENT)]
    png_8000 = [_encode(Image.new("RGB", (8000, 8000), c), "PNG") for c in colours]
    png_4096 = []
    for i, c in enumerate(colours):
        if i % 2:
            palette = Image.new("P", (4096, 4096), i)
            png_4096.append(_encode(palette, "PNG", transparency=i))
        else:
            png_4096.append(_encode(Image.new("RGB", (4096, 4096), c), "PNG"))
    jpeg = []
    for i, c in enumerate(colours):
        side = 4096 if i % 4 == 3 else 8000
        jpeg.append(_encode(Image.new("RGB", (side, side), c), "JPEG", quality=90,
                            progressive=bool(i % 2)))
    return {"png-8000": png_8000, "png-4096": png_4096, "jpeg": jpeg}


# --- memory of another process -------------------------------------------------------------------
def _status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return _status_mb(pid, "VmRSS")
    return float(psutil.Process(pid).memory_info().rss) / (1024 * 1024)


def reset_peak(pid: int) -> bool:
    """Make VmHWM restart from the current RSS (Linux >= 4.0, own processes)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler:
    """Samples a process's RSS in a thread; ``peak`` is the highest sample."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the host ------------------------------------------------------------------------------------
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


def post(port: int, route: str, body: bytes) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", route, body=body, headers={
            "Prediction-Key": PREDICTION_KEY, "Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        payload = response.read().decode(errors="replace")
        if response.status == 200:
            return 200, ""
        try:
            return response.status, str(json.loads(payload).get("message", ""))[-60:]
        except ValueError:
            return response.status, payload[-60:]
    finally:
        conn.close()


def fire(port: int, route: str, images: list[bytes]) -> tuple[list[tuple[int, str]], float]:
    results: list[tuple[int, str]] = [(0, "")] * len(images)
    barrier = threading.Barrier(len(images))

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = post(port, route, images[i])
        except OSError as e:
            results[i] = (-1, type(e).__name__)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def main() -> None:
    from tests.model_factory import color_image, register_color_iteration

    rounds = worst_case_rounds()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vp-memory-")))
        ports = (free_port(), free_port(), free_port())
        azurite = start_azurite(tmp / "azurite", *ports, in_memory=True)
        stack.callback(azurite.stop)
        env = dict(os.environ)
        env.update({
            names.STORAGE_CONNECTION: azurite.connection_string,
            "AzureWebJobsStorage": azurite.connection_string,
            names.SETTING_TRAINING_KEY: "bench-training-key",
            names.SETTING_PREDICTION_KEY: PREDICTION_KEY,
            names.SETTING_TRAINING_EVENTS_QUEUE: names.TRAINING_EVENTS,
            names.SETTING_TRAINING_REQUESTS_QUEUE: names.TRAINING_REQUESTS,
            "PYTHONPATH": str(ROOT),
        })
        os.environ.update(env)
        reset_settings()
        storage = get_storage()
        storage.ensure_resources()
        registry, labels = Registry(storage), LabelStore(storage)
        project = labels.create_project("memory-bench")
        iteration = register_color_iteration(registry, labels, project)
        publish(registry, labels, project.id, iteration.id, PUBLISH_NAME)

        port = free_port()
        host = spawn(["-m", "visionpipe.local.host", "--port", str(port), "--settings",
                      str(tmp / "none.json")], env, tmp / "host.log")
        stack.callback(stop, host)
        wait_for_port(port, timeout=60)
        route = (f"/customvision/v3.1/prediction/{project.id}/classify/iterations/"
                 f"{PUBLISH_NAME}/image/nostore")
        warm, _ = post(port, route, color_image("red"))  # loads the model
        if warm != 200:
            raise SystemExit(f"warm-up prediction failed with {warm}; see {tmp / 'host.log'}")
        time.sleep(0.5)
        idle = rss_mb(host.pid)
        print(f"host idle after warm-up: {idle:.0f} MB RSS (budget {BUDGET_MB:.0f} MB); "
              f"{CONCURRENT} concurrent requests per round")
        print(f"{'round':<10}{'statuses':<34}{'wall':>8}{'peak RSS':>11}{'RSS after':>11}")
        peak_all = idle
        resettable = reset_peak(host.pid)
        for label, images in rounds.items():
            resettable = reset_peak(host.pid) and resettable
            with Sampler(host.pid) as sampler:
                results, wall = fire(port, route, images)
            hwm = _status_mb(host.pid, "VmHWM") if resettable else sampler.peak
            peak = max(hwm, sampler.peak)
            peak_all = max(peak_all, peak)
            statuses = ",".join(str(s) for s, _ in results)
            print(f"{label:<10}{statuses:<34}{wall:>7.1f}s{peak:>9.0f}MB"
                  f"{rss_mb(host.pid):>9.0f}MB")
            reasons = sorted({m for s, m in results if s != 200 and m})
            for reason in reasons:
                print(f"{'':<10}refused: ...{reason}")
        if not resettable:
            print("(VmHWM could not be reset between rounds: peaks are sampled every "
                  f"{SAMPLE_SECONDS * 1000:.0f} ms)")
        hwm_total = _status_mb(host.pid, "VmHWM")
        if not resettable:
            peak_all = max(peak_all, hwm_total)

    record = {
        "name": "host_peak_rss_8_concurrent_worst_case_images",
        "value": round(peak_all, 1),
        "unit": "MB",
        "baseline": f"memory budget {BUDGET_MB:.0f} MB (idle host: {idle:.0f} MB)",
        "baseline_value": BUDGET_MB,
        "ratio": round(BUDGET_MB / peak_all, 3),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
