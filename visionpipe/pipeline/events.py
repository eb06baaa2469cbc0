"""Event Grid ``Microsoft.Storage.BlobCreated`` events, turned into typed values.

Event Grid delivers at least once, and its filters are configuration that can drift, so the
library re-checks what the subscription is meant to guarantee and refuses anything else loudly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from visionpipe import names


class EventRefused(ValueError):
    """An event this pipeline does not handle; the message says why."""


@dataclass(frozen=True)
class BlobCreated:
    event_id: str
    container: str
    path: str  # blob name inside the container, URL-decoded
    api: str
    etag: str
    content_length: int | None
    url: str


_SUBJECT_PREFIX = "/blobServices/default/containers/"


def parse_blob_created(
    *, event_id: str, event_type: str, subject: str, data: dict[str, Any], container: str
) -> BlobCreated:
    """Validate an Event Grid event for ``container`` and return it typed.

    Raises :class:`EventRefused` for another event type, another container, or a ``data.api`` that
    does not mean "a whole blob was written" (e.g. PutBlock, or a directory rename).
    """
    if event_type != names.BLOB_CREATED:
        raise EventRefused(f"event {event_id}: unknown event type {event_type!r}")
    if not subject.startswith(_SUBJECT_PREFIX) or "/blobs/" not in subject:
        raise EventRefused(f"event {event_id}: subject {subject!r} is not a blob")
    event_container, _, path = subject[len(_SUBJECT_PREFIX):].partition("/blobs/")
    if event_container != container:
        raise EventRefused(
            f"event {event_id}: blob is in container {event_container!r}, not {container!r}"
        )
    api = str(data.get("api", ""))
    if api not in names.BLOB_CREATED_APIS:
        raise EventRefused(f"event {event_id}: data.api {api!r} is not one of "
                           f"{', '.join(names.BLOB_CREATED_APIS)}")
    url = str(data.get("url", ""))
    if url:
        # The subject keeps the name as written; the URL is percent-encoded. Prefer the URL's
        # decoded path when present so names with spaces or '#' survive.
        url_path = unquote(urlsplit(url).path)
        marker = f"/{container}/"
        if marker in url_path:
            path = url_path.split(marker, 1)[1]
    length = data.get("contentLength")
    return BlobCreated(
        event_id=event_id,
        container=container,
        path=path,
        api=api,
        etag=str(data.get("eTag", "")),
        content_length=int(length) if isinstance(length, int | str) and str(length).isdigit()
        else None,
        url=url,
    )


def from_grid_event(event: Any, container: str) -> BlobCreated:
    """:func:`parse_blob_created` for a ``func.EventGridEvent`` (duck-typed, so the library does
    not depend on azure.functions)."""
    return parse_blob_created(
        event_id=event.id,
        event_type=event.event_type,
        subject=event.subject,
        data=event.get_json() or {},
        container=container,
    )
