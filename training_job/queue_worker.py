"""The queue contract every job on the training image keeps: receive, lease, handle, then delete.

Container Apps Jobs have no Functions runtime, so a job does what the runtime would for a queue
trigger, and both jobs on the image (training_job.worker for ``training-requests``,
training_job.export_worker for ``export-requests``) do it the same way, here:

- a received message stays invisible while it is worked on (:class:`Lease`, a heartbeat that
  renews the visibility timeout every third of it), and is deleted with its pop receipt only once
  the state it changes (the iteration row, the export row) says how it ended;
- a message that can never be processed is parked as *exactly one copy* in ``{queue}-poison``
  (:meth:`QueueWorker.park`): a record beside it in ``quarantine/{queue}/`` keeps a redelivery
  from copying it twice, and only the delivery that holds the message (a fresh pop receipt) parks
  it; a job decides *when* (a bad message at once, a spent one after ``max_dequeue_count``);
- ``--once`` is one job execution (:meth:`QueueWorker.run_once`), ``--watch`` the local worker
  (:meth:`QueueWorker.watch`), and SIGTERM/SIGINT set :attr:`QueueWorker.stop`
  (:meth:`QueueWorker.install_signal_handlers`): a job that can stop mid-work hands its message
  back (visible again at once) instead of letting it wait out the lease.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Generic, Protocol, TypeVar

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from visionpipe import names
from visionpipe.messages import decode_body
from visionpipe.storage import Storage

log = logging.getLogger(__name__)

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
#: Longest failure reason or poison message kept (characters).
MAX_REASON = 2000
#: Beside each poisoned request, in the quarantine container: why, and that its copy was made.
PARKED_SUFFIX = ".reason.json"


class LeaseLost(Exception):
    """This worker no longer owns the request message."""


def is_transient(exc: BaseException) -> bool:
    """Network trouble or a throttled/unavailable service: worth another attempt, not a Failed."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    return isinstance(exc, HttpResponseError) and exc.status_code in _TRANSIENT_STATUS


def stale_receipt(exc: HttpResponseError) -> bool:
    """The message is gone, or another delivery holds it now (our pop receipt is outdated)."""
    return exc.status_code == 404 or getattr(exc, "error_code", None) == "PopReceiptMismatch"


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


class QueueOptions(Protocol):
    """What the loop reads of a job's options (WorkerOptions, ExportWorkerOptions)."""

    queue: str
    visibility_timeout: int  # seconds a received message stays hidden (renewed by a Lease)
    max_dequeue_count: int  # deliveries before a spent message is parked
    poll_interval: float  # --watch: seconds between polls of an empty queue


OutcomeT = TypeVar("OutcomeT")


class QueueWorker(Generic[OutcomeT]):
    """One queue consumer: a subclass says what one message means (:meth:`handle`) and when it is
    poison; receiving, parking, deleting and the loop are the same for every job."""

    #: How log lines name one message ("training request", "export request") and the worker.
    kind = "request"
    name = "queue worker"

    def __init__(self, storage: Storage, options: QueueOptions) -> None:
        self.storage = storage
        self.options = options
        # raw text clients: base64 is decoded by the message parsers, leniently (decode_body)
        self.requests = storage.queues.get_queue_client(options.queue)
        self.poison = storage.queues.get_queue_client(options.queue + names.POISON_SUFFIX)
        self.stop = threading.Event()

    # --- the loop ------------------------------------------------------------------------------
    def handle(self, message: Any) -> OutcomeT:
        raise NotImplementedError

    def run_once(self) -> OutcomeT | None:
        """Receive one message and handle it; None when the queue is empty."""
        message = self.requests.receive_message(visibility_timeout=self.options.visibility_timeout)
        if message is None:
            return None
        outcome = self.handle(message)
        log.info("%s %s: %s", self.kind, message.id, outcome)
        return outcome

    def watch(self) -> None:
        """The local worker: poll until asked to stop; survive anything but a stop (backing off
        while storage keeps failing)."""
        log.info("watching queue %s (poll every %.1fs)", self.options.queue,
                 self.options.poll_interval)
        pause = self.options.poll_interval
        while not self.stop.is_set():
            try:
                outcome = self.run_once()
                pause = self.options.poll_interval
            except Exception as e:  # noqa: BLE001 - the worker outlives one bad attempt
                log.error("%s: %s: %s", self.name, type(e).__name__, e,
                          exc_info=not is_transient(e))
                outcome, pause = None, min(30.0, max(pause * 2, 1.0))
            if outcome is None:
                self.stop.wait(pause)
        log.info("%s stopped", self.name)

    def install_signal_handlers(self) -> dict[int, Any]:
        """First SIGTERM/SIGINT: set :attr:`stop` (the job stops after the current step and hands
        its message back); a second SIGINT interrupts at once. Returns the handlers it replaced
        (none off the main thread, where signals cannot be handled)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            log.warning("%s: stopping (the %s in progress goes back to the queue)",
                        signal.Signals(signum).name, self.kind)
            self.stop.set()

        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for signum in previous:
            signal.signal(signum, on_signal)
        return previous

    # --- the poison path -----------------------------------------------------------------------
    def park(self, message: Any, code: str, reason: str,
             before_delete: Callable[[], None] | None = None) -> bool:
        """Park the message, unchanged, as exactly one copy in ``{queue}-poison`` and delete it
        here; False (nothing done) when this delivery's pop receipt is stale.

        Only the delivery that holds the message parks it (a late duplicate delivery leaves it to
        the holder); a copy that an earlier delivery made before dying is not made again (its
        record in ``quarantine/{queue}/``). ``before_delete`` (say, failing the iteration) runs
        after the copy and before the delete: whatever it raises is logged, and the message
        leaves the queue anyway.
        """
        receipt = self._claim(message)
        if receipt is None:
            return False
        poison_name = self.options.queue + names.POISON_SUFFIX
        record = self.storage.container(names.QUARANTINE).get_blob_client(
            f"{self.options.queue}/{message.id}{PARKED_SUFFIX}")
        if record.exists():
            log.warning("%s %s: an earlier delivery already copied it to %s", self.kind,
                        message.id, poison_name)
        else:
            self._send_to_poison(message.content)
            try:
                record.upload_blob(json.dumps({
                    "reason": code, "message": reason[:MAX_REASON], "messageId": message.id,
                    "dequeueCount": int(message.dequeue_count or 1), "queue": poison_name,
                    "parkedAt": datetime.now(UTC).isoformat(),
                }), overwrite=True)
            except Exception as e:  # noqa: BLE001 - the copy is made; the record only dedupes
                log.warning("%s %s: could not record its copy: %s", self.kind, message.id, e)
        log.error("moved %s %s to %s: %s; body: %.200r", self.kind, message.id, poison_name,
                  reason, decode_body(message.content))
        if before_delete is not None:
            try:
                before_delete()
            except Exception as e:  # noqa: BLE001 - the message must leave the queue regardless
                log.error("%s %s: %s: %s", self.kind, message.id, type(e).__name__, e)
        self.delete(message.id, receipt)
        return True

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
            log.warning("%s %s: another delivery holds it now (or it is gone); leaving it to "
                        "that one", self.kind, message.id)
            return None
        return str(updated.pop_receipt)

    def _send_to_poison(self, content: Any) -> None:
        try:
            self.poison.send_message(content)
        except ResourceNotFoundError:
            with suppress(ResourceExistsError):
                self.poison.create_queue()
            self.poison.send_message(content)

    def delete(self, message_id: str, receipt: str) -> None:
        """Delete a message this delivery holds; a stale receipt (gone, or held by another
        delivery) is not an error."""
        try:
            self.requests.delete_message(message_id, pop_receipt=receipt)
        except HttpResponseError as e:
            if not stale_receipt(e):
                raise
            log.warning("%s %s was already gone (or held by another delivery) when deleting it",
                        self.kind, message_id)
