"""Drop-to-label latency through the local stack (Azurite -> bridge -> host -> ingest function).

Baseline, in the same run: the same ingest done by a direct library call (no event path), so the
ratio shows how much of the latency is the event path (bridge polling, HTTP, host) rather than the
work itself. Last line: one JSON object (ARCHITECTURE.md, "Benchmarks").
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from visionpipe import names  # noqa: E402
from visionpipe.local.azurite import free_port, start_azurite  # noqa: E402

N = 40


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    azurite = start_azurite(Path(tempfile.mkdtemp()), free_port(), free_port(), free_port(),
                            in_memory=True)
    try:
        os.environ[names.STORAGE_CONNECTION] = azurite.connection_string
        from function_app import app
        from tests.drops import typed, upload
        from visionpipe.local.bridge import EventGridBridge
        from visionpipe.local.host import start_host
        from visionpipe.local.samples import make_image
        from visionpipe.pipeline.ingest import ingest_training_blob
        from visionpipe.settings import get_settings
        from visionpipe.storage import get_storage
        from visionpipe.stores.label_store import LabelStore

        storage = get_storage()
        storage.ensure_resources()
        store = LabelStore(storage)
        images = [make_image(("circle", "stripes")[i % 2], seed=i, size=(640, 480))
                  for i in range(2 * N)]

        direct = []
        for i in range(N):
            event = typed(upload(storage, names.TRAINING_IMAGES, f"direct/t/{i}.jpg", images[i]),
                          names.TRAINING_IMAGES)
            t = time.perf_counter()
            ingest_training_blob(event, storage, get_settings())
            direct.append((time.perf_counter() - t) * 1000)

        host = start_host(app, port=free_port())
        bridge = EventGridBridge(storage, host.url, Path(tempfile.mkdtemp()) / "state.json").start()
        piped = []
        project = None
        for i in range(N):
            data = images[N + i]
            t = time.perf_counter()
            upload(storage, names.TRAINING_IMAGES, f"piped/t/{i}.jpg", data)
            sha = __import__("hashlib").sha256(data).hexdigest()
            while True:
                project = project or store.find_project("piped")
                if project and store.get_image(project.id, sha):
                    break
                time.sleep(0.005)
            piped.append((time.perf_counter() - t) * 1000)
        bridge.stop()
        host.stop()
    finally:
        azurite.stop()

    p50, p95 = statistics.median(piped), percentile(piped, 0.95)
    base = statistics.median(direct)
    print(f"drop-to-label over {N} uploads (bridge poll interval {bridge.poll_interval * 1000:.0f}"
          f" ms): p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    print(f"direct library ingest (validate + record): p50 {base:.1f} ms")
    print(json.dumps({"name": "drop_to_label_p50", "value": round(p50, 1), "unit": "ms",
                      "baseline": "direct library ingest", "baseline_value": round(base, 1),
                      "ratio": round(base / p50, 3)}))


if __name__ == "__main__":
    main()
