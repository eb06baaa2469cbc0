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
(training_job.checkpoints). The receive/lease/poison/delete loop itself is the one every job on
the image shares (training_job.queue_worker); this module says what a training request means.

Cancel: the ``cancel`` route writes the iteration Canceled (which frees the project's training
lock at once); the worker notices within :data:`CANCEL_POLL_S` of the row changing (a throttled
read between training steps and at every phase boundary), stops, removes what the attempt
uploaded, deletes the request and sends no event (Custom Vision has no Canceled notification,
and a TrainingFailed would overwrite the Canceled row). A request whose iteration was canceled
while it waited in the queue is dropped the same way when it is received.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from training_job.queue_worker import (
    MAX_REASON,
    Lease,
    LeaseLost,
    QueueWorker,
    is_transient,
)
from training_job.queue_worker import PARKED_SUFFIX as PARKED_SUFFIX  # re-exported
from visionpipe import names
from visionpipe.messages import (
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    BadMessage,
    TrainingEvent,
    TrainingRequest,
)
from visionpipe.messages import decode_body as decode_body  # re-exported: tests, older callers
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import IterationStatus, Registry

log = logging.getLogger(__name__)

#: At most this long between two reads of the iteration row for a cancel (seconds).
CANCEL_POLL_S = 2.0


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


@dataclass
class WorkerOptions:
    queue: str = names.TRAINING_REQUESTS
    events_queue: str = names.TRAINING_EVENTS
    visibility_timeout: int = 300  # seconds; renewed every third of it while training
    max_dequeue_count: int = 5  # the Functions host default for queue triggers
    retry_delay: int = 10  # seconds before a transiently failed request is visible again
    poll_interval: float = 1.0  # --watch


class Worker(QueueWorker["Outcome"]):
    """Consumes ``training-requests``; ``run_once`` is one Container Apps Job execution."""

    kind = "training request"
    name = "training worker"

    def __init__(self, storage: Storage, job_options: Any, options: WorkerOptions) -> None:
        super().__init__(storage, options)
        self.options: WorkerOptions = options
        self.job_options = job_options
        self.events = storage.queue(options.events_queue)
        self.registry = Registry(storage)
        self.label_store = LabelStore(storage)

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
            self.delete(message.id, message.pop_receipt)
            return Outcome.CANCELED
        if iteration.status != IterationStatus.TRAINING:
            log.info("iteration %s is already %s: re-sending its event, dropping the duplicate",
                     iteration.id, iteration.status)
            self._event(project.id, iteration.id, iteration.status == IterationStatus.COMPLETED)
            self.delete(message.id, message.pop_receipt)
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
        return text[:MAX_REASON]

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
        """Park the message as exactly one copy in ``{queue}-poison`` (QueueWorker.park) and fail
        its iteration if it has one still Training; DUPLICATE when another delivery holds it."""

        def fail_iteration() -> None:
            if project is None or not iteration_id:
                return
            try:
                iteration = self.registry.get_iteration(project.id, iteration_id)
                if iteration is not None and iteration.status == IterationStatus.TRAINING:
                    self._fail(project.id, iteration.id, f"gave up on the request: {reason}")
            except Exception as e:  # noqa: BLE001 - the message must leave the queue regardless
                log.error("training request %s: could not record iteration %s as Failed: %s: %s",
                          message.id, iteration_id, type(e).__name__, e)

        parked = self.park(message, code, reason, before_delete=fail_iteration)
        return Outcome.POISONED if parked else Outcome.DUPLICATE
