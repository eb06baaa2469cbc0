"""Helpers for tests that drop blobs: upload, build the event Event Grid would send, wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import azure.functions as func

from visionpipe.local.bridge import blob_created_event
from visionpipe.pipeline.events import BlobCreated, parse_blob_created
from visionpipe.storage import Storage

T = TypeVar("T")


def upload(storage: Storage, container: str, path: str, data: bytes) -> dict[str, object]:
    """Upload a blob and return the BlobCreated event (Event Grid schema) for it."""
    client = storage.container(container).get_blob_client(path)
    client.upload_blob(data, overwrite=True)
    props = client.get_blob_properties()
    return blob_created_event(storage, container, path, props.etag, props.size,
                              props.content_settings.content_type)


def typed(event: dict[str, object], container: str) -> BlobCreated:
    return parse_blob_created(
        event_id=str(event["id"]), event_type=str(event["eventType"]),
        subject=str(event["subject"]), data=event["data"],  # type: ignore[arg-type]
        container=container,
    )


def grid_event(raw: dict[str, object], **override: object) -> func.EventGridEvent:
    """The binding object the Functions host would hand an Event Grid trigger for ``raw``."""
    raw = {**raw, **override}
    return func.EventGridEvent(
        id=str(raw["id"]), data=raw["data"],  # type: ignore[arg-type]
        topic=str(raw["topic"]), subject=str(raw["subject"]),
        event_type=str(raw["eventType"]), event_time=None, data_version="",
    )


def wait_for(probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
