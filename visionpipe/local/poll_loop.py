"""The loop of a local stand-in process that follows storage: the Event Grid bridge (new blobs)
and the webhook deliverer (new lifecycle events). Both poll, because Azurite pushes nothing.

A failed poll (Azurite restarting, a table not there yet) is logged and the loop goes on: these
processes must outlive the storage emulator's restarts, as Event Grid outlives a storage blip.
"""

from __future__ import annotations

import logging
import threading
from typing import Self

log = logging.getLogger(__name__)


class PollLoop:
    """``poll_once`` every ``poll_interval`` seconds on a daemon thread until stopped.

    Subclasses set ``poll_interval``, ``thread_name`` and ``what`` (for the log), create
    ``_stop`` (a :class:`threading.Event`) and ``_thread = None`` when they are built, and may
    override :meth:`_starting` and :meth:`_stopped` for what they own (threads, clients)."""

    poll_interval: float
    thread_name = "poll-loop"
    what = "poll"
    join_timeout = 30.0
    _stop: threading.Event
    _thread: threading.Thread | None

    def poll_once(self) -> object:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as e:  # noqa: BLE001 - Azurite restarting etc.: keep following
                log.warning("%s failed: %s", self.what, e)
            self._stop.wait(self.poll_interval)

    def start(self) -> Self:
        self._starting()
        self._thread = threading.Thread(target=self.run, daemon=True, name=self.thread_name)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout)
        self._stopped()

    def _starting(self) -> None:
        """Before the loop's thread starts."""

    def _stopped(self) -> None:
        """After the loop's thread ended (or the join timed out): release what it used."""
