"""Rejected input is kept, never deleted: moved to ``quarantine`` with a machine-readable reason.

Layout (DESIGN §2): ``quarantine/{source-container}/{original path}`` plus ``....reason.json``.
The source blob is removed from the drop folder only after the copy is confirmed, and only if it
is still the version that was judged (ETag condition): a re-upload under the same name is left
for its own event. Repeating a quarantine is harmless (at-least-once delivery).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContentSettings

from visionpipe import names
from visionpipe.rejections import Rejection
from visionpipe.storage import Storage

log = logging.getLogger(__name__)

REASON_SUFFIX = ".reason.json"


def is_safe_blob_path(path: str) -> bool:
    """A path that can be written elsewhere verbatim: no traversal, controls or odd separators."""
    if not path or path.startswith("/") or "\\" in path or len(path) > 1024:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def quarantine_path(container: str, path: str) -> str:
    """Where a rejected blob goes; unsafe names are stored under a digest (the original name is
    kept in the reason file)."""
    if is_safe_blob_path(path):
        return f"{container}/{path}"
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{container}/_unsafe-names/{digest}"


@dataclass(frozen=True)
class Quarantined:
    path: str  # inside the quarantine container
    reason_path: str
    source_deleted: bool


def quarantine_blob(
    storage: Storage,
    container: str,
    path: str,
    rejection: Rejection,
    *,
    etag: str | None = None,
    data: bytes | None = None,
    context: dict[str, Any] | None = None,
) -> Quarantined | None:
    """Move ``container/path`` into quarantine with its reason. None if the source is gone
    (an earlier delivery of the same event already moved it).

    ``data``: the bytes already read (saves a second download); otherwise the blob is streamed.
    """
    source = storage.container(container).get_blob_client(path)
    target_path = quarantine_path(container, path)
    quarantine = storage.container(names.QUARANTINE)
    try:
        props = source.get_blob_properties()
        if etag and props.etag.strip('"') != etag.strip('"'):
            log.warning("not quarantining %s/%s: it changed since it was judged", container, path)
            return None
        if data is None or len(data) != props.size:
            downloader = source.download_blob(etag=props.etag,
                                              match_condition=MatchConditions.IfNotModified)
            data_or_chunks: Any = downloader.chunks()
        else:
            data_or_chunks = data
    except ResourceNotFoundError:
        log.info("%s/%s is gone already (handled by an earlier delivery)", container, path)
        return None
    except ResourceModifiedError:
        log.warning("not quarantining %s/%s: it changed while being copied", container, path)
        return None

    quarantine.upload_blob(
        target_path,
        data_or_chunks,
        length=props.size,
        overwrite=True,
        content_settings=ContentSettings(content_type=props.content_settings.content_type),
    )
    copied = quarantine.get_blob_client(target_path).get_blob_properties()
    if copied.size != props.size:
        raise OSError(f"quarantine copy of {container}/{path} has {copied.size} bytes, "
                      f"expected {props.size}; source kept")
    reason = {
        **rejection.to_dict(),
        "source": {"container": container, "path": path, "etag": props.etag,
                   "size": props.size},
        "quarantinedAt": datetime.now(UTC).isoformat(),
        **(context or {}),
    }
    reason_path = target_path + REASON_SUFFIX
    quarantine.upload_blob(
        reason_path,
        json.dumps(reason, indent=2),
        overwrite=True,
        content_settings=ContentSettings(content_type="application/json"),
    )
    deleted = True
    try:
        source.delete_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified)
    except ResourceNotFoundError:
        pass
    except ResourceModifiedError:
        deleted = False  # re-uploaded meanwhile: that version gets its own event
    log.warning("quarantined %s/%s as %s: %s", container, path, rejection.reason, rejection.message)
    return Quarantined(target_path, reason_path, deleted)


def read_reason(storage: Storage, reason_path: str) -> dict[str, Any]:
    blob = storage.container(names.QUARANTINE).download_blob(reason_path)
    return dict(json.loads(blob.readall()))


def list_quarantined(storage: Storage, prefix: str = "") -> list[dict[str, Any]]:
    """Every reason file under ``prefix`` (e.g. ``training-images/myproject/``), oldest first."""
    quarantine = storage.container(names.QUARANTINE)
    reasons = [
        read_reason(storage, b.name)
        for b in quarantine.list_blobs(name_starts_with=prefix)
        if b.name.endswith(REASON_SUFFIX)
    ]
    return sorted(reasons, key=lambda r: r.get("quarantinedAt", ""))
