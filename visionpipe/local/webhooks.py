"""Local webhook subscriptions for the lifecycle events: what an Event Grid subscription with a
webhook endpoint does in Azure, for the local stack.

In Azure the lifecycle CloudEvents go to an Event Grid custom topic and a subscription delivers
them to a webhook; locally they land in the ``lifecycleevents`` table
(:mod:`visionpipe.pipeline.lifecycle_events`). This process follows that table and delivers each
new event to every URL of ``LOCAL_EVENT_WEBHOOKS`` (``local.settings.json``, comma-separated),
the way Event Grid delivers to a CloudEvents v1.0 webhook, so a receiver written against Azure
works locally unchanged:

- **Validation handshake** first (CloudEvents webhook validation, as Event Grid does when a
  subscription is created): ``OPTIONS`` with ``WebHook-Request-Origin: eventgrid.azure.net``; the
  receiver must answer 200 with ``WebHook-Allowed-Origin`` set to that origin (or ``*``). Until it
  does, nothing is delivered to it (events wait) and the handshake is retried with backoff.
- **Delivery**: one event per ``POST``, ``Content-Type: application/cloudevents+json;
  charset=utf-8`` (structured mode), with Event Grid's ``aeg-delivery-count`` (0 on the first
  try), ``aeg-subscription-name``, ``aeg-event-type: Notification`` and ``WebHook-Request-Origin``.
  Any 2xx is success (Event Grid waits 30 s for it).
- **Retries with exponential backoff**: ``LOCAL_WEBHOOK_RETRY_SECONDS`` (10 s) before the first
  retry, doubling each time (at most an hour), up to ``LOCAL_WEBHOOK_MAX_ATTEMPTS`` (30) tries;
  400, 403 and 413 are not retried (Event Grid dead-letters those at once). An event that is given
  up is logged (no dead-letter container locally).

As with a new Event Grid subscription, only events published after the process starts are
delivered; its read position is kept in a state file, so a restart resumes where it stopped
(retries still pending at a restart are lost: at-least-once holds per process lifetime).
``visionpipe.local.stack`` starts it when ``LOCAL_EVENT_WEBHOOKS`` is set.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import logging
import queue
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from visionpipe.local.poll_loop import PollLoop
from visionpipe.pipeline import lifecycle_events
from visionpipe.storage import Storage

log = logging.getLogger("visionpipe.local.webhooks")

EVENTGRID_ORIGIN = "eventgrid.azure.net"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
#: Statuses Event Grid does not retry (it dead-letters them at once).
NOT_RETRIED = frozenset({400, 403, 413})
DELIVERY_TIMEOUT_SECONDS = 30.0  # how long Event Grid waits for a webhook's answer
MAX_BACKOFF_SECONDS = 3600.0
#: Events are re-read this far behind the last one seen (a row is keyed by the time its event was
#: made, and may be written a moment later): ids already seen are skipped.
OVERLAP_SECONDS = 10.0
SUBSCRIPTION_PREFIX = "local-webhook-"
READ_BATCH = 500


def _key_at(seconds: float) -> str:
    """The row key prefix of a moment (``lifecycle_events`` keys rows by microseconds)."""
    return f"{max(0, int(seconds * 1_000_000)):020d}"


def _seconds_of(key: str) -> float:
    try:
        return int(key.split("-", 1)[0]) / 1_000_000
    except ValueError:
        return 0.0


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DROPPED = "dropped"


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    event: dict[str, Any] = field(compare=False)
    attempt: int = field(default=0, compare=False)  # tries made so far


class Subscriber:
    """One webhook: its handshake, its deliveries and its retries, on a thread of its own (a
    slow or failing receiver delays no other)."""

    def __init__(self, url: str, name: str, *, retry_seconds: float, max_attempts: int,
                 client: httpx.Client) -> None:
        self.url = url
        self.name = name
        self.retry_seconds = retry_seconds
        self.max_attempts = max_attempts
        self._client = client
        self._incoming: queue.Queue[dict[str, Any]] = queue.Queue()
        self._pending: list[_Pending] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.validated = False
        self._handshakes = 0  # failed handshakes so far
        self._next_handshake = 0.0
        self.delivered: list[str] = []  # event ids, in delivery order
        self.dropped: list[tuple[str, str]] = []  # (event id, why)

    def backoff(self, attempt: int) -> float:
        """Seconds before try ``attempt + 1`` after ``attempt`` failed tries."""
        return min(MAX_BACKOFF_SECONDS, self.retry_seconds * 2 ** max(0, attempt - 1))

    # --- the handshake ----------------------------------------------------------------------
    def handshake(self) -> bool:
        """The CloudEvents webhook validation Event Grid makes: OPTIONS, then a 200 naming us in
        ``WebHook-Allowed-Origin`` (or ``*``)."""
        try:
            response = self._client.request("OPTIONS", self.url, headers={
                "WebHook-Request-Origin": EVENTGRID_ORIGIN, "WebHook-Request-Rate": "120"})
        except httpx.HTTPError as e:
            log.warning("%s: validation handshake failed: %s", self.url, type(e).__name__)
            return False
        allowed = {o.strip().lower()
                   for o in response.headers.get("WebHook-Allowed-Origin", "").split(",")}
        if response.status_code == 200 and (EVENTGRID_ORIGIN in allowed or "*" in allowed):
            log.info("%s: validated (WebHook-Allowed-Origin)", self.url)
            return True
        log.warning("%s: validation handshake refused (%d, WebHook-Allowed-Origin %r)",
                    self.url, response.status_code, response.headers.get("WebHook-Allowed-Origin"))
        return False

    # --- deliveries -------------------------------------------------------------------------
    def deliver(self, event: dict[str, Any], attempt: int) -> Outcome:
        """One try at one event."""
        try:
            response = self._client.post(self.url, content=json.dumps(event).encode(), headers={
                "Content-Type": CLOUDEVENTS_CONTENT_TYPE,
                "aeg-delivery-count": str(attempt),
                "aeg-subscription-name": self.name.upper(),
                "aeg-event-type": "Notification",
                "aeg-metadata-version": "1",
                "aeg-data-version": "",
                "WebHook-Request-Origin": EVENTGRID_ORIGIN,
            })
        except httpx.HTTPError as e:
            log.warning("%s: event %s not delivered: %s", self.url, event.get("id"),
                        type(e).__name__)
            return Outcome.RETRY
        if 200 <= response.status_code < 300:
            return Outcome.DELIVERED
        if response.status_code in NOT_RETRIED:
            return Outcome.DROPPED
        log.warning("%s: event %s answered %d", self.url, event.get("id"), response.status_code)
        return Outcome.RETRY

    def offer(self, event: dict[str, Any]) -> None:
        self._incoming.put(event)

    def _take_incoming(self) -> None:
        while True:
            try:
                event = self._incoming.get_nowait()
            except queue.Empty:
                return
            heapq.heappush(self._pending, _Pending(time.monotonic(), next(self._seq), event))

    def step(self) -> float:
        """Handshake or deliver what is due; seconds until something may be due next."""
        self._take_incoming()
        if not self.validated:
            if time.monotonic() < self._next_handshake:
                return self._next_handshake - time.monotonic()
            self.validated = self.handshake()
            if not self.validated:
                self._handshakes += 1
                self._next_handshake = time.monotonic() + self.backoff(self._handshakes)
                return self.backoff(self._handshakes)
        while self._pending and self._pending[0].due <= time.monotonic():
            item = heapq.heappop(self._pending)
            outcome = self.deliver(item.event, item.attempt)
            event_id = str(item.event.get("id"))
            if outcome is Outcome.DELIVERED:
                self.delivered.append(event_id)
                continue
            item.attempt += 1
            if outcome is Outcome.DROPPED or item.attempt >= self.max_attempts:
                why = "refused" if outcome is Outcome.DROPPED else f"{item.attempt} tries"
                self.dropped.append((event_id, why))
                log.error("%s: event %s (%s) given up: %s", self.url, event_id,
                          item.event.get("type"), why)
                continue
            item.due = time.monotonic() + self.backoff(item.attempt)
            heapq.heappush(self._pending, item)
        if self._pending:
            return max(0.0, min(1.0, self._pending[0].due - time.monotonic()))
        return 1.0

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step()
            except Exception as e:  # noqa: BLE001 - keep delivering whatever one step did
                log.warning("%s: delivery step failed: %s", self.url, e)
                wait = 1.0
            if self._incoming.empty():
                self._stop.wait(min(wait, 0.1))

    def start(self) -> Subscriber:
        self._thread = threading.Thread(target=self.run, daemon=True,
                                        name=f"webhook-{self.name}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=DELIVERY_TIMEOUT_SECONDS + 5)


class WebhookDelivery(PollLoop):
    """Follows the local lifecycle events and hands each new one to every subscriber."""

    thread_name = "webhook-delivery"
    what = "reading lifecycle events"

    def __init__(self, storage: Storage, urls: tuple[str, ...] | list[str], *,
                 retry_seconds: float = 10.0, max_attempts: int = 30,
                 state: Path | None = None, poll_interval: float = 0.5) -> None:
        if not urls:
            raise ValueError("no webhook URLs")
        for url in urls:
            if not url.lower().startswith(("http://", "https://")):
                raise ValueError(f"not an http(s) URL: {url!r}")
        self.storage = storage
        self.poll_interval = poll_interval
        self.state = state
        self._client = httpx.Client(timeout=DELIVERY_TIMEOUT_SECONDS, follow_redirects=False)
        self.subscribers = [
            Subscriber(url, f"{SUBSCRIPTION_PREFIX}{i}", retry_seconds=retry_seconds,
                       max_attempts=max_attempts, client=self._client)
            for i, url in enumerate(urls)]
        self._cursor = self._load_cursor()
        self._subscribed = self._cursor  # events up to here came before this subscription
        self._seen: dict[str, float] = {}  # event id -> its time (pruned past the overlap)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load_cursor(self) -> str:
        """Where to read from: the state file's position, else now (a new subscription)."""
        if self.state is not None and self.state.exists():
            with suppress(ValueError, KeyError, TypeError):
                return str(json.loads(self.state.read_text())["after"])
        return _key_at(time.time())

    def _save_cursor(self) -> None:
        if self.state is not None:
            self.state.parent.mkdir(parents=True, exist_ok=True)
            self.state.write_text(json.dumps({"after": self._cursor}))

    def poll_once(self) -> int:
        """Hand new events to the subscribers; how many were new. Reads from a little before
        the last event seen (a row may be written a moment after the time that keys it) and
        skips the ids seen already, and whatever was published before the subscription."""
        after = _key_at(_seconds_of(self._cursor) - OVERLAP_SECONDS)
        new = 0
        while True:
            batch = lifecycle_events.read_local(self.storage, after, limit=READ_BATCH)
            for key, event in batch:
                event_id = str(event.get("id"))
                if event_id in self._seen:
                    continue
                self._seen[event_id] = _seconds_of(key)
                if key <= self._subscribed:
                    continue
                for subscriber in self.subscribers:
                    subscriber.offer(event)
                new += 1
                self._cursor = max(self._cursor, key)
            if len(batch) < READ_BATCH:
                break
            after = batch[-1][0]
        horizon = _seconds_of(self._cursor) - 2 * OVERLAP_SECONDS
        self._seen = {i: t for i, t in self._seen.items() if t >= horizon}
        if new:
            self._save_cursor()
        return new

    def _starting(self) -> None:
        for subscriber in self.subscribers:
            subscriber.start()

    def _stopped(self) -> None:
        for subscriber in self.subscribers:
            subscriber.stop()
        self._client.close()


def main(argv: list[str] | None = None) -> None:
    from visionpipe.local.host import REPO, apply_settings, load_local_settings
    from visionpipe.settings import get_settings
    from visionpipe.storage import get_storage

    parser = argparse.ArgumentParser(
        description="Deliver the local lifecycle events to the LOCAL_EVENT_WEBHOOKS webhooks.")
    parser.add_argument("--state", type=Path, default=REPO / ".local" / "webhooks-state.json")
    parser.add_argument("--settings", type=Path, default=REPO / "local.settings.json")
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    apply_settings(load_local_settings(args.settings))
    settings = get_settings()
    if not settings.local_event_webhooks:
        raise SystemExit("LOCAL_EVENT_WEBHOOKS is not set: no webhook to deliver to")
    delivery = WebhookDelivery(get_storage(), settings.local_event_webhooks,
                               retry_seconds=settings.local_webhook_retry_seconds,
                               max_attempts=settings.local_webhook_max_attempts,
                               state=args.state, poll_interval=args.interval)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: delivery.request_stop())
    log.info("delivering lifecycle events to %s", ", ".join(settings.local_event_webhooks))
    for subscriber in delivery.subscribers:
        subscriber.start()
    with suppress(KeyboardInterrupt):
        delivery.run()
    delivery.stop()


if __name__ == "__main__":
    main()
