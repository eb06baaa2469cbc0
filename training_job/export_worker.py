"""The export worker: consumes ``export-requests`` and turns export rows Done or Failed.

``python -m training_job.export_worker --once`` is one Container Apps Job execution (the second
job on the training image, scaled by the ``export-requests`` queue); ``--watch`` is the local
worker that ``make up`` starts beside the training worker.

The queue contract is the training requests' (training_job.worker): the message stays invisible
while the conversion runs (a renewed lease), is deleted only once the row says Done or Failed, and
a message that can never be processed (not JSON, ill-typed, ids that are not GUIDs, an unknown
platform or flavor, no export row to work on) is parked as exactly one copy in
``export-requests-poison`` on its first delivery; one that every attempt died on goes there after
``max_dequeue_count`` deliveries and its row turns Failed. A redelivered message whose row is
already Done or Failed is dropped (idempotent): the row, not the message, is the state.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings

from training_job.worker import PARKED_SUFFIX, Lease, LeaseLost, is_transient, stale_receipt
from visionpipe import names
from visionpipe.manifest import MODEL_FILE
from visionpipe.messages import BadMessage, ExportRequest, decode_body
from visionpipe.storage import Storage
from visionpipe.stores.exports import DONE, EXPORTING, FAILED, ExportStore, archive_path
from visionpipe.stores.registry import NotFound, Registry

log = logging.getLogger(__name__)
_MAX_REASON = 2000


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"
    DUPLICATE = "duplicate"  # the row is already Done/Failed (or a stale duplicate delivery)
    POISONED = "poisoned"
    RETRY = "retry"
    LEASE_LOST = "lease_lost"


@dataclass
class ExportWorkerOptions:
    queue: str = names.EXPORT_REQUESTS
    visibility_timeout: int = 300
    max_dequeue_count: int = 5
    retry_delay: int = 10
    poll_interval: float = 1.0


class ExportWorker:
    def __init__(self, storage: Storage, options: ExportWorkerOptions | None = None) -> None:
        self.storage = storage
        self.options = options or ExportWorkerOptions()
        self.requests = storage.queues.get_queue_client(self.options.queue)
        self.poison = storage.queues.get_queue_client(self.options.queue + names.POISON_SUFFIX)
        self.registry = Registry(storage)
        self.rows = ExportStore(storage)
        self.stop = threading.Event()

    def run_once(self) -> Outcome | None:
        message = self.requests.receive_message(visibility_timeout=self.options.visibility_timeout)
        if message is None:
            return None
        outcome = self.handle(message)
        log.info("export message %s: %s", message.id, outcome)
        return outcome

    def watch(self) -> None:
        log.info("watching queue %s", self.options.queue)
        while not self.stop.is_set():
            try:
                outcome = self.run_once()
            except Exception as e:  # noqa: BLE001 - the worker outlives one bad attempt
                log.error("export worker: %s: %s", type(e).__name__, e)
                outcome = None
            if outcome is None:
                self.stop.wait(self.options.poll_interval)

    # --- one message ---------------------------------------------------------------------------
    def handle(self, message: Any) -> Outcome:
        count, limit = int(message.dequeue_count or 1), self.options.max_dequeue_count
        try:
            request = ExportRequest.from_queue(message.content)
        except BadMessage as e:
            return self._poison(message, "bad_request", f"bad export request: {e}")
        row = self.rows.get(request.project_id, request.iteration_id, request.platform,
                            request.flavor)
        if row is None:
            return self._poison(message, "unknown_export",
                                "no export was requested for this iteration/platform/flavor")
        if row.status != EXPORTING:
            self._delete(message.id, message.pop_receipt)
            return Outcome.DUPLICATE
        if count > limit:
            outcome = self._poison(message, "too_many_attempts",
                                   f"dequeued {count} times (max {limit})")
            if outcome == Outcome.POISONED:
                self.rows.finish(row, FAILED, f"gave up after {count - 1} attempts that died "
                                 "without finishing")
            return outcome
        with Lease(self.requests, message, self.options.visibility_timeout) as lease:
            try:
                status, reason, record, archive = self._convert(request)
                lease.check()
                if archive is not None:
                    self.storage.container(names.MODELS).upload_blob(
                        archive_path(request.project_id, request.iteration_id,
                                     request.platform, request.flavor),
                        archive, overwrite=True,
                        content_settings=ContentSettings(content_type="application/zip"))
                lease.check()
            except LeaseLost as e:
                log.error("export %s: %s", row, e)
                return Outcome.LEASE_LOST
            except Exception as e:  # noqa: BLE001 - sorted below
                if is_transient(e) and count < limit:
                    lease.release(self.options.retry_delay)
                    return Outcome.RETRY
                log.exception("export %s/%s failed", request.platform, request.flavor)
                status, reason, record = FAILED, f"{type(e).__name__}: {e}"[:_MAX_REASON], {}
            self.rows.finish(row, status, reason, record)
            lease.delete()
            return Outcome.DONE if status == DONE else Outcome.FAILED

    def _convert(self, request: ExportRequest) -> tuple[str, str, dict[str, Any], bytes | None]:
        from training_job.exporters import ConversionError, export

        try:
            source = self.registry.download_artifact(request.project_id, request.iteration_id,
                                                     MODEL_FILE)
            manifest = self.registry.read_manifest(request.project_id, request.iteration_id)
        except NotFound:
            return FAILED, "the iteration has no model.onnx any more", {}, None
        try:
            result = export(source, manifest, request.platform, request.flavor)
        except ConversionError as e:
            return FAILED, str(e)[:_MAX_REASON], {}, None
        if not result.passed:
            return FAILED, result.reason, result.manifest, None
        return DONE, "", result.manifest, result.archive

    # --- the poison path (as training_job.worker) ----------------------------------------------
    def _poison(self, message: Any, code: str, reason: str) -> Outcome:
        try:
            updated = self.requests.update_message(
                message.id, pop_receipt=message.pop_receipt,
                visibility_timeout=self.options.visibility_timeout)
        except HttpResponseError as e:
            if not stale_receipt(e):
                raise
            return Outcome.DUPLICATE
        record = self.storage.container(names.QUARANTINE).get_blob_client(
            f"{self.options.queue}/{message.id}{PARKED_SUFFIX}")
        if not record.exists():
            try:
                self.poison.send_message(message.content)
            except ResourceNotFoundError:
                with suppress(ResourceExistsError):
                    self.poison.create_queue()
                self.poison.send_message(message.content)
            with suppress(Exception):
                record.upload_blob(json.dumps({
                    "reason": code, "message": reason[:_MAX_REASON], "messageId": message.id,
                    "dequeueCount": int(message.dequeue_count or 1),
                    "queue": self.options.queue + names.POISON_SUFFIX,
                    "parkedAt": datetime.now(UTC).isoformat()}), overwrite=True)
        log.error("moved export request %s to the poison queue: %s; body: %.200r", message.id,
                  reason, decode_body(message.content))
        self._delete(message.id, updated.pop_receipt)
        return Outcome.POISONED

    def _delete(self, message_id: str, receipt: str) -> None:
        try:
            self.requests.delete_message(message_id, pop_receipt=receipt)
        except HttpResponseError as e:
            if not stale_receipt(e):
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_job.export_worker",
                                     description="Convert queued exports (export-requests).")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one message, then exit (the job)")
    mode.add_argument("--watch", action="store_true", help="poll until SIGTERM (local)")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from visionpipe.storage import get_storage

    worker = ExportWorker(get_storage(), ExportWorkerOptions(poll_interval=args.poll_interval))
    if not args.watch:
        worker.run_once()
        return 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop.set())
    worker.watch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
