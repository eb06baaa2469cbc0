"""visionpipe's lifecycle as CloudEvents: to an Event Grid custom topic in Azure, a table locally.

Custom Vision only e-mails; the ``training-events`` queue is internal (the auto-publish gate
consumes it, nothing else in Azure can subscribe to it). These events are the public face: a
Logic App, a Function or any webhook subscribes to the topic and reacts to

``Visionpipe.ImageQuarantined``    a dropped or uploaded file was refused and moved to quarantine
``Visionpipe.IterationCompleted``  training finished and the model is registered
``Visionpipe.IterationFailed``     training failed (``data.failureReason`` says why)
``Visionpipe.IterationPublished``  an iteration serves under a publish name
``Visionpipe.ExportCompleted``     an export can be downloaded

Each is a CloudEvents 1.0 event with ``source`` ``/visionpipe`` (plus the project when known),
``subject`` naming the resource (``projects/{id}/iterations/{id}``, ``{container}/{path}``) and a
deterministic ``id`` per fact, so a subscriber can drop the duplicates that at-least-once delivery
(of the queue behind these calls, and of Event Grid itself) brings.

With ``EVENT_GRID_TOPIC_ENDPOINT`` set, :func:`publish` sends through ``azure-eventgrid``'s
publisher client with the app's managed identity (role ``EventGrid Data Sender``, see
infra/modules/eventgrid-topic.bicep). Without it (the local stack, the tests), the event is a row
of the ``lifecycleevents`` table that ``visionpipe events --follow`` and the tests read.

Publishing never fails the operation that caused the event: the quarantine, the training record
or the publication has happened already, and an event lost to an outage is logged as a warning.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from visionpipe import names
from visionpipe.rejections import Rejection
from visionpipe.settings import get_settings
from visionpipe.storage import Storage, get_storage
from visionpipe.stores.quarantine import Quarantined

log = logging.getLogger(__name__)

PREFIX = "Visionpipe."
IMAGE_QUARANTINED = PREFIX + "ImageQuarantined"
ITERATION_COMPLETED = PREFIX + "IterationCompleted"
ITERATION_FAILED = PREFIX + "IterationFailed"
ITERATION_PUBLISHED = PREFIX + "IterationPublished"
EXPORT_COMPLETED = PREFIX + "ExportCompleted"
EVENT_TYPES = (IMAGE_QUARANTINED, ITERATION_COMPLETED, ITERATION_FAILED, ITERATION_PUBLISHED,
               EXPORT_COMPLETED)
SOURCE = "/visionpipe"
_ID_NAMESPACE = uuid.UUID("6f1d8a52-3c1e-4f7e-9b59-2a7cf0f4f3a1")
PARTITION = "events"


@dataclass(frozen=True)
class LifecycleEvent:
    """One CloudEvent; ``key`` makes the ``id`` (the same fact, the same id)."""

    type: str
    subject: str
    data: Mapping[str, Any]
    key: str
    project_id: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def id(self) -> str:
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.type}|{self.subject}|{self.key}"))

    @property
    def source(self) -> str:
        return f"{SOURCE}/projects/{self.project_id}" if self.project_id else SOURCE

    def to_dict(self) -> dict[str, Any]:
        """The CloudEvents 1.0 JSON form (what a webhook subscriber receives)."""
        return {"specversion": "1.0", "id": self.id, "type": self.type, "source": self.source,
                "subject": self.subject, "time": self.time.isoformat().replace("+00:00", "Z"),
                "datacontenttype": "application/json", "data": dict(self.data)}


# --- the five events ----------------------------------------------------------------------------
def _iteration_subject(project_id: str, iteration_id: str) -> str:
    return f"projects/{project_id}/iterations/{iteration_id}"


def image_quarantined(container: str, path: str, reason: str, message: str,
                      quarantine_path: str, etag: str | None = None) -> LifecycleEvent:
    return LifecycleEvent(IMAGE_QUARANTINED, f"{container}/{path}",
                          {"container": container, "path": path, "reason": reason,
                           "message": message, "quarantinePath": quarantine_path},
                          key=etag or quarantine_path)


def iteration_completed(project_id: str, iteration_id: str, name: str,
                        overall: Mapping[str, Any] | None) -> LifecycleEvent:
    return LifecycleEvent(ITERATION_COMPLETED, _iteration_subject(project_id, iteration_id),
                          {"projectId": project_id, "iterationId": iteration_id,
                           "iterationName": name, "status": "Completed",
                           "metrics": {_camel(k): v for k, v in (overall or {}).items()}},
                          key="completed", project_id=project_id)


def _camel(name: str) -> str:
    """``average_precision`` -> ``averagePrecision``: the JSON casing of the REST API."""
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def iteration_failed(project_id: str, iteration_id: str, name: str,
                     reason: str) -> LifecycleEvent:
    return LifecycleEvent(ITERATION_FAILED, _iteration_subject(project_id, iteration_id),
                          {"projectId": project_id, "iterationId": iteration_id,
                           "iterationName": name, "status": "Failed", "failureReason": reason},
                          key="failed", project_id=project_id)


def iteration_published(project_id: str, iteration_id: str, publish_name: str
                        ) -> LifecycleEvent:
    return LifecycleEvent(ITERATION_PUBLISHED, _iteration_subject(project_id, iteration_id),
                          {"projectId": project_id, "iterationId": iteration_id,
                           "publishName": publish_name}, key=publish_name, project_id=project_id)


def export_completed(project_id: str, iteration_id: str, platform: str,
                     flavor: str | None = None) -> LifecycleEvent:
    """No download link in the event: links are signed and short-lived, and events are kept
    longer than that; the subscriber asks ``GET .../export`` for a fresh one."""
    return LifecycleEvent(EXPORT_COMPLETED, _iteration_subject(project_id, iteration_id),
                          {"projectId": project_id, "iterationId": iteration_id,
                           "platform": platform, "flavor": flavor},
                          key=f"{platform}|{flavor or ''}", project_id=project_id)


def quarantined(storage: Storage, container: str, path: str, rejection: Rejection,
                moved: Quarantined | None, etag: str | None = None) -> None:
    """Publish ``ImageQuarantined`` for what :func:`quarantine_blob` just did (None: nothing
    was moved, an earlier delivery did it and published then)."""
    if moved is not None:
        publish(image_quarantined(container, path, str(rejection.reason), rejection.message,
                                  moved.path or moved.reason_path, etag), storage)


# --- publishing ---------------------------------------------------------------------------------
_publishers: dict[str, Any] = {}
_lock = threading.Lock()


def _publisher(endpoint: str) -> Any:
    """One ``EventGridPublisherClient`` per topic, with the app's managed identity."""
    with _lock:
        client = _publishers.get(endpoint)
        if client is None:
            from azure.eventgrid import EventGridPublisherClient
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(
                managed_identity_client_id=get_settings().storage.client_id)
            client = _publishers[endpoint] = EventGridPublisherClient(endpoint, credential)
        return client


def _send_to_topic(endpoint: str, event: LifecycleEvent) -> None:
    from azure.core.messaging import CloudEvent

    _publisher(endpoint).send([CloudEvent(
        source=event.source, type=event.type, data=dict(event.data), subject=event.subject,
        id=event.id, time=event.time, datacontenttype="application/json")])


def _row_key(event: LifecycleEvent) -> str:
    """Time-ordered (a reader resumes after the last key it saw), unique per fact and moment."""
    return f"{int(event.time.timestamp() * 1_000_000):020d}-{event.id}"


def _write_local(storage: Storage, event: LifecycleEvent) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    row = {"PartitionKey": PARTITION, "RowKey": _row_key(event),
           "event": json.dumps(event.to_dict())}
    table = storage.table(names.LIFECYCLE_EVENTS_TABLE)
    try:
        table.upsert_entity(row)
    except ResourceNotFoundError:  # the first event: the table is made on first use
        storage.tables.create_table_if_not_exists(names.LIFECYCLE_EVENTS_TABLE)
        table.upsert_entity(row)


def publish(event: LifecycleEvent, storage: Storage | None = None) -> bool:
    """Send ``event`` to the topic, or record it locally; False (and a warning) when it failed."""
    try:
        endpoint = get_settings().event_grid_topic_endpoint
        if endpoint:
            _send_to_topic(endpoint, event)
        else:
            _write_local(storage or get_storage(), event)
    except Exception as e:  # noqa: BLE001 - an event must never undo what it reports
        log.warning("lifecycle event %s for %s not published: %s", event.type, event.subject,
                    type(e).__name__)
        return False
    return True


# --- reading the local store --------------------------------------------------------------------
def read_local(storage: Storage, after: str = "", limit: int = 1000
               ) -> list[tuple[str, dict[str, Any]]]:
    """(row key, CloudEvent dict) of the local events after ``after``, oldest first."""
    from azure.core.exceptions import ResourceNotFoundError

    query = "PartitionKey eq @p and RowKey gt @after"
    rows = storage.table(names.LIFECYCLE_EVENTS_TABLE).query_entities(
        query, parameters={"p": PARTITION, "after": after}, results_per_page=limit)
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        for row in rows:
            try:
                out.append((str(row["RowKey"]), json.loads(row["event"])))
            except (KeyError, ValueError):
                continue
            if len(out) >= limit:
                break
    except ResourceNotFoundError:  # no event was ever published here
        return []
    return out


def follow(storage: Storage, after: str = "", interval: float = 1.0,
           stop: threading.Event | None = None) -> Any:
    """Yield local events as they arrive (``visionpipe events --follow``)."""
    while stop is None or not stop.is_set():
        batch = read_local(storage, after)
        for key, event in batch:
            after = key
            yield event
        if not batch:
            time.sleep(interval)
