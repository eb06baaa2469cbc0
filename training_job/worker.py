"""The queue side of the training job: receive, lease, process, register, then delete.

Container Apps Jobs have no Functions runtime, so the job does what the runtime would: it keeps
the request invisible while it works (renewing the visibility timeout), deletes it only after
the iteration is registered or recorded Failed, and parks a request it can never process in
``{queue}-poison``: on its first delivery when the message itself is wrong (not JSON, ill-typed
fields, ids that are not GUIDs, an unknown project: :mod:`visionpipe.messages` says which), after
``max_dequeue_count`` deliveries when every attempt died. Either way the request ends as exactly
one copy there and leaves the queue, whatever else fails on the way, because in Azure every
redelivery starts another GPU job. A worker killed mid-run simply stops renewing: the message
reappears and the same iteration id is trained again, from its last per-epoch checkpoint
(training_job.checkpoints).

Cancel: the ``cancel`` route writes the iteration Canceled (which frees the project's training
lock at once); the worker notices within :data:`CANCEL_POLL_S` of the row changing (a throttled
read between training steps and at every phase boundary), stops, removes what the attempt
uploaded, deletes the request and sends no event (Custom Vision has no Canceled notification,
and a TrainingFailed would overwrite the Canceled row). A request whose iteration was canceled
while it waited in the queue is dropped the same way when it is received.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from visionpipe import names
from visionpipe.messages import (
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    BadMessage,
    TrainingEvent,
    TrainingRequest,
    decode_body,
)
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import IterationStatus, Registry

log = logging.getLogger(__name__)

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
#: At most this long between two reads of the iteration row for a cancel (seconds).
CANCEL_POLL_S = 2.0
_MAX_REASON = 2000
#: Beside each poisoned request, in the quarantine container: why, and that its copy was made.
PARKED_SUFFIX = ".reason.json"


class Outcome(StrEnum):
    COMPLETED = "completed"  # registered, event sent, message deleted
    FAILED = "failed"  # recorded Failed, event sent, message deleted
    DUPLICATE = "duplicate"  # already finished (event re-sent, message deleted), or a stale
    # duplicate delivery of a request another delivery holds now (left to that one)
    POISONED = "poisoned"  # one copy in {queue}-poison, deleted here (bad, or tried too often)
    RETRY = "retry"  # a transient error: left for another attempt
    RELEASED = "released"  # asked to stop: the message is visible again at once
    LEASE_LOST = "lease_lost"  # another execution owns the request now: nothing registered
    CANCELED = "canceled"  # the iteration was canceled: stopped, cleaned up, message deleted


class LeaseLost(Exception):
    """This worker no longer owns the request message."""


class Canceled(Exception):
    """The iteration was canceled (its row says Canceled): stop, register nothing."""


class CancelWatch:
    """Whether the iteration has been canceled: a read of its row at most every ``interval``
    seconds, so it can be asked between every two training steps."""

    def __init__(self, registry: Registry, project_id: str, iteration_id: str,
                 interval: float = CANCEL_POLL_S) -> None:
        self._registry = registry
        self._key = (project_id, iteration_id)
        self._interval = interval
        self._next = 0.0
        self.canceled = False

    def __call__(self) -> bool:
        if self.canceled:
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        try:
            iteration = self._registry.get_iteration(*self._key)
        except Exception as e:  # noqa: BLE001 - a failed read is not a cancel; ask again later
            log.warning("could not read the iteration row for a cancel: %s", e)
            return False
        self.canceled = iteration is None or iteration.status == IterationStatus.CANCELED
        return self.canceled

    def check(self) -> None:
        """Raise :class:`Canceled` when canceled (asked without waiting for the throttle)."""
        self._next = 0.0
        if self():
            raise Canceled("the iteration was canceled")


def is_transient(exc: BaseException) -> bool:
    """Network trouble or a throttled/unavailable service: worth another attempt, not a Failed."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    return isinstance(exc, HttpResponseError) and exc.status_code in _TRANSIENT_STATUS


def stale_receipt(exc: HttpResponseError) -> bool:
    """The message is gone, or another delivery holds it now (our pop receipt is outdated)."""
    return exc.status_code == 404 or getattr(exc, "error_code", None) == "PopReceiptMismatch"


@dataclass
class WorkerOptions:
    queue: str = names.TRAINING_REQUESTS
    events_queue: str = names.TRAINING_EVENTS
    visibility_timeout: int = 300  # seconds; renewed every third of it while training
    max_dequeue_count: int = 5  # the Functions host default for queue triggers
    retry_delay: int = 10  # seconds before a transiently failed request is visible again
    poll_interval: float = 1.0  # --watch


class Lease:
    """Keeps a received message invisible while it is being processed (a heartbeat thread)."""

    def __init__(self, queue: Any, message: Any, visibility_timeout: int) -> None:
        self._queue = queue
        self.message_id: str = message.id
        self._receipt: str = message.pop_receipt
        self._timeout = visibility_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def renew(self, visibility_timeout: int | None = None, heartbeat: bool = False) -> None:
        with self._lock:
            if heartbeat and self._stop.is_set():
                return  # deleted or released meanwhile: nothing left to renew
            timeout = self._timeout if visibility_timeout is None else visibility_timeout
            updated = self._queue.update_message(
                self.message_id, pop_receipt=self._receipt, visibility_timeout=timeout
            )
            self._receipt = updated.pop_receipt

    def _run(self) -> None:
        interval = max(0.5, self._timeout / 3)
        while not self._stop.wait(interval):
            try:
                self.renew(heartbeat=True)
            except Exception as e:  # noqa: BLE001 - classified below
                if is_transient(e):
                    log.warning("lease: renewal failed, will retry: %s", e)
                    continue
                self.lost = f"the request message can no longer be renewed: {e}"
                log.error("lease lost: %s", self.lost)
                return

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(self.lost)

    def delete(self) -> None:
        self._stop.set()
        with self._lock:
            try:
                self._queue.delete_message(self.message_id, pop_receipt=self._receipt)
            except ResourceNotFoundError:
                log.warning("message %s was already gone when deleting it", self.message_id)

    def release(self, delay: int = 0) -> None:
        """Make the message visible again after ``delay`` seconds (default: now)."""
        self._stop.set()
        try:
            self.renew(visibility_timeout=delay)
        except Exception as e:  # noqa: BLE001 - it reappears after its timeout anyway
            log.warning("could not release message %s: %s", self.message_id, e)


class Worker:
    """Consumes ``training-requests``; ``run_once`` is one Container Apps Job execution."""

    def __init__(self, storage: Storage, job_options: Any, options: WorkerOptions) -> None:
        self.storage = storage
        self.job_options = job_options
        self.options = options
        # raw text client: base64 is decoded here, leniently (see decode_body)
        self.requests = storage.queues.get_queue_client(options.queue)
        self.poison = storage.queues.get_queue_client(options.queue + names.POISON_SUFFIX)
        self.events = storage.queue(options.events_queue)
        self.registry = Registry(storage)
        self.label_store = LabelStore(storage)
        self.stop = threading.Event()

    # --- the loop ------------------------------------------------------------------------------
    def run_once(self) -> Outcome | None:
        """Receive one message and handle it; None when the queue is empty."""
        message = self.requests.receive_message(visibility_timeout=self.options.visibility_timeout)
        if message is None:
            return None
        outcome = self.handle(message)
        log.info("message %s: %s", message.id, outcome)
        return outcome

    def watch(self) -> None:
        """The local worker: poll until asked to stop; survive anything but a stop."""
        log.info("watching queue %s (poll every %.1fs)", self.options.queue,
                 self.options.poll_interval)
        pause = self.options.poll_interval
        while not self.stop.is_set():
            try:
                outcome = self.run_once()
                pause = self.options.poll_interval
            except Exception as e:  # noqa: BLE001 - the worker outlives one bad attempt
                log.error("training worker: %s: %s", type(e).__name__, e,
                          exc_info=not is_transient(e))
                outcome, pause = None, min(30.0, max(pause * 2, 1.0))
            if outcome is None:
                self.stop.wait(pause)
        log.info("training worker stopped")

    # --- one message ---------------------------------------------------------------------------
    def handle(self, message: Any) -> Outcome:
        count = int(message.dequeue_count or 1)
        limit = self.options.max_dequeue_count
        try:
            request = TrainingRequest.from_queue(message.content)
        except BadMessage as e:  # no retry can fix the message itself: park it now
            return self._poison(message, "bad_request", f"bad training request: {e}")
        project: Project | None = None
        try:
            project = self._project(request)
        except BadMessage as e:
            return self._poison(message, "unknown_project", str(e))
        except Exception as e:
            if count <= limit:
                raise  # storage trouble: the next delivery tries again
            log.error("training request %s: project lookup failed on a spent request: %s: %s",
                      message.id, type(e).__name__, e)
        if count > limit or project is None:
            return self._poison(message, "too_many_attempts",
                                f"dequeued {count} times (max {limit}); every earlier attempt "
                                "died without finishing", project, request.iteration_id)

        iteration = self.registry.create_iteration(
            project.id,
            iteration_id=request.iteration_id,
            training_type=request.training_type,
            reserved_budget_in_hours=request.reserved_budget_in_hours,
            selected_tags=request.selected_tags,
            classification_type=project.classification_type,
        )
        if iteration.status == IterationStatus.CANCELED:
            log.info("iteration %s was canceled before it started: dropping its request",
                     iteration.id)
            self._cleanup(project.id, iteration.id)
            self._delete(message.id, message.pop_receipt)
            return Outcome.CANCELED
        if iteration.status != IterationStatus.TRAINING:
            log.info("iteration %s is already %s: re-sending its event, dropping the duplicate",
                     iteration.id, iteration.status)
            self._event(project.id, iteration.id, iteration.status == IterationStatus.COMPLETED)
            self._delete(message.id, message.pop_receipt)
            return Outcome.DUPLICATE

        log.info("training iteration %s of project %s (%s, attempt %d)", iteration.id,
                 project.name, request.training_type, count)
        from training_job.pipeline import train_iteration  # onnx, matplotlib: once there is work

        cancel = CancelWatch(self.registry, project.id, iteration.id)

        def check() -> None:
            lease.check()
            cancel.check()

        with Lease(self.requests, message, self.options.visibility_timeout) as lease:
            try:
                train_iteration(
                    self.storage, project, iteration, request, self.job_options,
                    check_lease=check,
                    should_stop=lambda: self.stop.is_set() or lease.lost is not None or cancel(),
                )
            except Canceled:
                return self._canceled(project.id, iteration.id, lease)
            except LeaseLost as e:
                log.error("iteration %s: %s; leaving it to the execution that owns it now",
                          iteration.id, e)
                return Outcome.LEASE_LOST
            except Exception as e:  # noqa: BLE001 - sorted below
                from training_job.train import Interrupted

                if isinstance(e, Interrupted):
                    if cancel.canceled:
                        return self._canceled(project.id, iteration.id, lease)
                    if lease.lost:
                        log.error("iteration %s: %s", iteration.id, lease.lost)
                        return Outcome.LEASE_LOST
                    log.warning("iteration %s interrupted; the request goes back to the queue",
                                iteration.id)
                    lease.release(0)
                    return Outcome.RELEASED
                if is_transient(e) and count < limit:
                    log.warning("iteration %s: transient error, retrying in %ds: %s",
                                iteration.id, self.options.retry_delay, e)
                    lease.release(self.options.retry_delay)
                    return Outcome.RETRY
                reason = self._reason(e)
                log.error("iteration %s Failed: %s", iteration.id, reason,
                          exc_info=not self._expected(e))
                self._fail(project.id, iteration.id, reason)
                lease.delete()
                return Outcome.FAILED
            self._event(project.id, iteration.id, completed=True)
            lease.delete()
            return Outcome.COMPLETED

    # --- helpers -------------------------------------------------------------------------------
    def _project(self, request: TrainingRequest) -> Project:
        if request.project_id:
            project = self.label_store.get_project(request.project_id)
        else:
            assert request.project_name
            project = self.label_store.find_project(request.project_name)
        if project is None:
            raise BadMessage(f"unknown project {request.project_id or request.project_name!r}")
        return project

    @staticmethod
    def _expected(e: BaseException) -> bool:
        from training_job.dataset import DatasetError
        from training_job.export import ExportError

        return isinstance(e, DatasetError | ExportError)

    def _reason(self, e: BaseException) -> str:
        text = str(e) if self._expected(e) else f"{type(e).__name__}: {e}"
        return text[:_MAX_REASON]

    def _cleanup(self, project_id: str, iteration_id: str) -> None:
        """Drop what an attempt uploaded: artifacts under models/ and the checkpoint."""
        from training_job.checkpoints import delete_checkpoint

        models = self.storage.container(names.MODELS)
        for blob in models.list_blobs(name_starts_with=f"{project_id}/{iteration_id}/"):
            with suppress(ResourceNotFoundError):
                models.delete_blob(blob.name)
        delete_checkpoint(self.storage, project_id, iteration_id)

    def _canceled(self, project_id: str, iteration_id: str, lease: Lease) -> Outcome:
        """Stopped for a cancel: the row already says Canceled (and the lock is free)."""
        log.warning("iteration %s was canceled: training stopped, nothing registered",
                    iteration_id)
        self._cleanup(project_id, iteration_id)
        iteration = self.registry.get_iteration(project_id, iteration_id)
        if iteration is not None:
            self.registry.update_iteration(
                project_id, iteration_id,
                progress={**iteration.progress, "phase": "canceled"})
        lease.delete()
        return Outcome.CANCELED

    def _event(self, project_id: str, iteration_id: str, completed: bool) -> None:
        status = TRAINING_COMPLETED if completed else TRAINING_FAILED
        self.events.send_message(TrainingEvent(project_id, iteration_id, status).to_json().encode())

    def _fail(self, project_id: str, iteration_id: str, reason: str) -> None:
        """Record Failed, drop whatever an earlier attempt uploaded, and say so on the events
        queue: a Failed iteration never has a model that something could serve."""
        self._cleanup(project_id, iteration_id)
        self.registry.update_iteration(
            project_id, iteration_id, status=str(IterationStatus.FAILED), failureReason=reason,
            progress={"phase": "failed", "epoch": 0, "epochs": 0, "trainLoss": None,
                      "valMetric": None},
        )
        self._event(project_id, iteration_id, completed=False)

    # --- the poison path -----------------------------------------------------------------------
    def _poison(self, message: Any, code: str, reason: str, project: Project | None = None,
                iteration_id: str | None = None) -> Outcome:
        """Park the message, unchanged, as exactly one copy in ``{queue}-poison`` and delete it
        here; fail its iteration if it has one still Training.

        Only the delivery that holds the message parks it (a late duplicate delivery, whose pop
        receipt is stale, leaves it to the holder); a copy that an earlier delivery made before
        dying is not made again (its record in ``quarantine/{queue}/``). Failing the iteration is
        best effort: whatever goes wrong there is logged, and the message leaves the queue anyway.
        """
        receipt = self._claim(message)
        if receipt is None:
            return Outcome.DUPLICATE
        poison_name = self.options.queue + names.POISON_SUFFIX
        record = self.storage.container(names.QUARANTINE).get_blob_client(
            f"{self.options.queue}/{message.id}{PARKED_SUFFIX}")
        if record.exists():
            log.warning("training request %s: an earlier delivery already copied it to %s",
                        message.id, poison_name)
        else:
            self._send_to_poison(message.content)
            try:
                record.upload_blob(json.dumps({
                    "reason": code, "message": reason[:_MAX_REASON], "messageId": message.id,
                    "dequeueCount": int(message.dequeue_count or 1), "queue": poison_name,
                    "parkedAt": datetime.now(UTC).isoformat(),
                }), overwrite=True)
            except Exception as e:  # noqa: BLE001 - the copy is made; the record only dedupes
                log.warning("training request %s: could not record its copy: %s", message.id, e)
        log.error("moved training request %s to %s: %s; body: %.200r", message.id, poison_name,
                  reason, decode_body(message.content))
        if project is not None and iteration_id:
            try:
                iteration = self.registry.get_iteration(project.id, iteration_id)
                if iteration is not None and iteration.status == IterationStatus.TRAINING:
                    self._fail(project.id, iteration.id, f"gave up on the request: {reason}")
            except Exception as e:  # noqa: BLE001 - the message must leave the queue regardless
                log.error("training request %s: could not record iteration %s as Failed: %s: %s",
                          message.id, iteration_id, type(e).__name__, e)
        self._delete(message.id, receipt)
        return Outcome.POISONED

    def _claim(self, message: Any) -> str | None:
        """Hide the message for the poison path with its pop receipt; None when that receipt is
        stale (another delivery holds the message now, or it is gone)."""
        try:
            updated = self.requests.update_message(
                message.id, pop_receipt=message.pop_receipt,
                visibility_timeout=self.options.visibility_timeout)
        except HttpResponseError as e:
            if not stale_receipt(e):
                raise
            log.warning("training request %s: another delivery holds it now (or it is gone); "
                        "leaving it to that one", message.id)
            return None
        return str(updated.pop_receipt)

    def _send_to_poison(self, content: Any) -> None:
        try:
            self.poison.send_message(content)
        except ResourceNotFoundError:
            with suppress(ResourceExistsError):
                self.poison.create_queue()
            self.poison.send_message(content)

    def _delete(self, message_id: str, receipt: str) -> None:
        try:
            self.requests.delete_message(message_id, pop_receipt=receipt)
        except HttpResponseError as e:
            if not stale_receipt(e):
                raise
            log.warning("training request %s was already gone (or held by another delivery) "
                        "when deleting it", message_id)
