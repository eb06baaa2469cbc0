"""The export worker: consumes ``export-requests`` and turns export rows Done or Failed.

``python -m training_job.export_worker --once`` is one Container Apps Job execution (the second
job on the training image, scaled by the ``export-requests`` queue); ``--watch`` is the local
worker that ``make up`` starts beside the training worker.

The queue contract is the training requests' (training_job.queue_worker, the loop both jobs
share): the message stays invisible while the conversion runs (a renewed lease), is deleted only
once the row says Done or Failed, and a message that can never be processed (not JSON,
ill-typed, ids that are not GUIDs, an unknown platform or flavor, no export row to work on) is
parked as exactly one copy in ``export-requests-poison`` on its first delivery; one that every
attempt died on goes there after ``max_dequeue_count`` deliveries and its row turns Failed. A
redelivered message whose row is already Done or Failed is dropped (idempotent): the row, not the
message, is the state.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from azure.storage.blob import ContentSettings

from training_job.queue_worker import MAX_REASON, Lease, LeaseLost, QueueWorker, is_transient
from visionpipe import names
from visionpipe.manifest import MODEL_FILE
from visionpipe.messages import BadMessage, ExportRequest
from visionpipe.storage import Storage
from visionpipe.stores.exports import DONE, EXPORTING, FAILED, ExportStore, archive_path
from visionpipe.stores.registry import NotFound, Registry

log = logging.getLogger(__name__)


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


class ExportWorker(QueueWorker["Outcome"]):
    """Consumes ``export-requests``; ``run_once`` is one execution of the export job."""

    kind = "export request"
    name = "export worker"

    def __init__(self, storage: Storage, options: ExportWorkerOptions | None = None) -> None:
        self.options: ExportWorkerOptions = options or ExportWorkerOptions()
        super().__init__(storage, self.options)
        self.registry = Registry(storage)
        self.rows = ExportStore(storage)

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
            self.delete(message.id, message.pop_receipt)
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
                status, reason, record = FAILED, f"{type(e).__name__}: {e}"[:MAX_REASON], {}
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
            return FAILED, str(e)[:MAX_REASON], {}, None
        if not result.passed:
            return FAILED, result.reason, result.manifest, None
        return DONE, "", result.manifest, result.archive

    def _poison(self, message: Any, code: str, reason: str) -> Outcome:
        """Park the message as exactly one copy in ``export-requests-poison``
        (QueueWorker.park); DUPLICATE when another delivery holds it now."""
        return Outcome.POISONED if self.park(message, code, reason) else Outcome.DUPLICATE


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
    worker.install_signal_handlers()
    worker.watch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
