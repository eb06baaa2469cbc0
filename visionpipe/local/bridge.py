"""The local Event Grid bridge: Azurite emits no events, so this watches the drop containers and
POSTs ``Microsoft.Storage.BlobCreated`` events (Event Grid schema) to the Functions webhook
``/runtime/webhooks/EventGrid?functionName=<name>`` — the same endpoint the real host exposes, so
it works in front of ``func start`` as well as the local host.

Delivery is at least once, like Event Grid: what has been delivered (blob name + ETag) is written
to a state file, so a restarted bridge neither resends old uploads nor loses ones made while it
was down; a failed delivery is retried with backoff until the webhook accepts it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from visionpipe import names
from visionpipe.local.poll_loop import PollLoop
from visionpipe.storage import Storage

log = logging.getLogger("visionpipe.local.bridge")

_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4b7a-9c59-2a0f4e3b1d77")
LOCAL_TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
    "Microsoft.Storage/storageAccounts/devstoreaccount1"
)


def blob_created_event(storage: Storage, container: str, name: str, etag: str, size: int,
                       content_type: str | None) -> dict[str, Any]:
    """The event Event Grid would send for this blob (schema of the storage system topic)."""
    key = f"{container}/{name}@{etag}"
    url = f"{storage.container(container).url}/{quote(name)}"
    return {
        # Same blob version -> same id, like an Event Grid redelivery.
        "id": str(uuid.uuid5(_NAMESPACE, key)),
        "topic": LOCAL_TOPIC,
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": names.BLOB_CREATED,
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "api": "PutBlob",
            "clientRequestId": str(uuid.uuid4()),
            "requestId": str(uuid.uuid4()),
            "eTag": etag,
            "contentType": content_type or "application/octet-stream",
            "contentLength": size,
            "blobType": "BlockBlob",
            "url": url,
            "sequencer": f"{time.time_ns():032x}",
            "storageDiagnostics": {"batchId": str(uuid.uuid4())},
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


@dataclass
class _Pending:
    attempts: int = 0
    next_try: float = 0.0


@dataclass
class EventGridBridge(PollLoop):
    """Watches the drop containers and delivers ``BlobCreated`` events (module docstring)."""

    thread_name = "eventgrid-bridge"

    storage: Storage
    endpoint: str  # e.g. http://127.0.0.1:7071
    state_file: Path
    subscriptions: dict[str, str] = field(default_factory=lambda: dict(names.EVENT_SUBSCRIPTIONS))
    poll_interval: float = 0.2
    workers: int = 8
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        self._delivered: dict[str, dict[str, str]] = self._load_state()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(120.0, connect=2.0))
        self._pool = ThreadPoolExecutor(max_workers=self.workers)
        self._thread: threading.Thread | None = None

    # --- state ----------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, dict[str, str]]:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("state file %s is unreadable: every blob will be sent again",
                        self.state_file)
            return {}
        return {c: dict(blobs) for c, blobs in raw.get("delivered", {}).items()}

    def _save_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"delivered": self._delivered}))
        os.replace(tmp, self.state_file)

    # --- one pass -------------------------------------------------------------------------------
    def poll_once(self) -> int:
        """List the drop containers, deliver what is new; return how many were delivered."""
        jobs = []
        now = time.monotonic()
        for container, function in self.subscriptions.items():
            listed = {
                b.name: b for b in self.storage.container(container).list_blobs()
            }
            with self._lock:
                seen = self._delivered.setdefault(container, {})
                for gone in set(seen) - set(listed):  # deleted blobs: forget them
                    del seen[gone]
            for name, blob in listed.items():
                if seen.get(name) == blob.etag:
                    continue
                pending = self._pending.get((container, name))
                if pending and pending.next_try > now:
                    continue
                event = blob_created_event(self.storage, container, name, blob.etag, blob.size,
                                           blob.content_settings.content_type)
                jobs.append(self._pool.submit(self._deliver, container, function, name,
                                              blob.etag, event))
        delivered = sum(1 for job in jobs if job.result())
        with self._lock:
            self._save_state()
        return delivered

    def _deliver(self, container: str, function: str, name: str, etag: str,
                 event: dict[str, Any]) -> bool:
        url = f"{self.endpoint}/runtime/webhooks/EventGrid?functionName={function}"
        try:
            response = self._client.post(url, json=[event],
                                         headers={"aeg-event-type": "Notification"})
            ok = response.is_success
            detail = f"HTTP {response.status_code}"
        except httpx.HTTPError as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        key = (container, name)
        if ok:
            with self._lock:
                self._delivered.setdefault(container, {})[name] = etag
                self._pending.pop(key, None)
            log.info("delivered %s/%s to %s", container, name, function)
            return True
        pending = self._pending.setdefault(key, _Pending())
        pending.attempts += 1
        backoff = min(self.max_backoff, 0.5 * 2 ** (pending.attempts - 1))
        pending.next_try = time.monotonic() + backoff
        log.warning("delivery of %s/%s to %s failed (%s); retry %d in %.1f s", container, name,
                    function, detail, pending.attempts, backoff)
        return False

    def _stopped(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


def main(argv: list[str] | None = None) -> None:
    from visionpipe.local.host import REPO, apply_settings, load_local_settings
    from visionpipe.storage import get_storage

    parser = argparse.ArgumentParser(description="Azurite -> Event Grid webhook bridge.")
    parser.add_argument("--endpoint", default="http://127.0.0.1:7071")
    parser.add_argument("--state", type=Path, default=REPO / ".local" / "bridge-state.json")
    parser.add_argument("--settings", type=Path, default=REPO / "local.settings.json")
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    apply_settings(load_local_settings(args.settings))
    bridge = EventGridBridge(get_storage(), args.endpoint, args.state, poll_interval=args.interval)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: bridge.request_stop())
    log.info("watching %s -> %s", ", ".join(bridge.subscriptions), args.endpoint)
    with suppress(KeyboardInterrupt):
        bridge.run()
    bridge.stop()


if __name__ == "__main__":
    main()
