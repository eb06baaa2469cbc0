"""A real training worker for the SDK quickstart tests: ``python -m training_job --watch`` on a
queue of the test module's own, which the train route enqueues to (the app setting is switched
for the module and restored after, as a restart would read it)."""

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
def watching_worker(storage: Storage, workdir: Path, prefix: str,
                    *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """The worker, with ``options`` (model and training settings) after the common ones; its
    output goes to ``workdir/worker.log`` (:func:`worker_log`)."""
    queue = f"{prefix}-{uuid.uuid4().hex[:8]}"
    storage.queues.create_queue(queue)
    storage.queues.create_queue(queue + names.POISON_SUFFIX)
    saved = os.environ.get(names.SETTING_TRAINING_REQUESTS_QUEUE)
    os.environ[names.SETTING_TRAINING_REQUESTS_QUEUE] = queue  # where the train route enqueues
    reset_settings()  # settings are read once per process, like a restart
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
        if saved is None:
            os.environ.pop(names.SETTING_TRAINING_REQUESTS_QUEUE, None)
        else:
            os.environ[names.SETTING_TRAINING_REQUESTS_QUEUE] = saved
        reset_settings()
        for name in (queue, queue + names.POISON_SUFFIX):
            storage.queues.delete_queue(name)


def worker_log(process: subprocess.Popen[bytes]) -> str:
    """The last 4,000 characters the worker wrote (for a failing assertion's message)."""
    cache = Path(process.args[process.args.index("--cache-dir") + 1])  # type: ignore[union-attr]
    path = cache.parent / "worker.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""
