"""A training-requests queue of a test module's own, and a real training worker on it (the SDK
quickstart tests): ``python -m training_job --watch`` on the queue the train route enqueues to."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from visionpipe import names
from visionpipe.settings import reset_settings
from visionpipe.storage import Storage

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def own_request_queue(storage: Storage, prefix: str) -> Iterator[str]:
    """A training-requests queue of the test module's own behind ``TRAINING_REQUESTS_QUEUE``:
    Azurite is shared by the modules of a run, and a request one module queues must not reach a
    worker another runs. Settings are read once per process, so they are re-read on the way in
    and out, as a restart would."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    storage.queues.create_queue(name)
    saved = os.environ.get(names.SETTING_TRAINING_REQUESTS_QUEUE)
    os.environ[names.SETTING_TRAINING_REQUESTS_QUEUE] = name
    reset_settings()
    try:
        yield name
    finally:
        if saved is None:
            os.environ.pop(names.SETTING_TRAINING_REQUESTS_QUEUE, None)
        else:
            os.environ[names.SETTING_TRAINING_REQUESTS_QUEUE] = saved
        reset_settings()
        storage.queues.delete_queue(name)


@contextmanager
def watching_worker(storage: Storage, workdir: Path, prefix: str,
                    *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """The worker, with ``options`` (model and training settings) after the common ones; its
    output goes to ``workdir/worker.log`` (:func:`worker_log`)."""
    with own_request_queue(storage, prefix) as queue:
        storage.queues.create_queue(queue + names.POISON_SUFFIX)
        log = (workdir / "worker.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "training_job", "--watch", "--queue", queue,
             "--events-queue", names.TRAINING_EVENTS, "--poll-interval", "0.5",
             "--cache-dir", str(workdir / "images"), "--weights-dir", str(workdir / "no-weights"),
             "--visibility-timeout", "120", "--device", "cpu", "--workers", "0", *options],
            cwd=REPO, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
            storage.queues.delete_queue(queue + names.POISON_SUFFIX)


def worker_log(process: subprocess.Popen[bytes]) -> str:
    """The last 4,000 characters the worker wrote (for a failing assertion's message)."""
    cache = Path(process.args[process.args.index("--cache-dir") + 1])  # type: ignore[union-attr]
    path = cache.parent / "worker.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""
