"""Rejected input is kept, never deleted: moved to ``quarantine`` with a machine-readable reason.

Layout (docs/ARCHITECTURE.md, "Storage layout"):

``quarantine/{source-container}/{original path}`` + ``{original path}.reason.json``
    a rejected drop whose name can be mirrored.
``quarantine/{source-container}/_unsafe-names/{project hint}/{sha256 of the name}[.reason.json]``
    a name that cannot be mirrored. Two kinds:

    * an *unsafe* name (:mod:`visionpipe.blob_names`: traversal, controls, encodings, ...) is
      never used to address a blob: only the reason record is written, holding the escaped
      name, and the blob in the drop folder is left untouched;
    * a safe name that would collide with the quarantine's own entries (it ends in
      ``.reason.json``: always refused, or its first folder is ``_unsafe-names``) is moved like
      any other rejected drop, but under the digest, so no drop can write or overwrite a
      reason record or a digest entry.

    The project hint is the first 16 hex digits of the case-insensitive key of the name's first
    segment (:func:`visionpipe.stores.label_store.name_key`), so a project's listing finds its
    hashed records without reading any other project's.

The source blob is removed from the drop folder only after the copy is confirmed, and only if it
is still the version that was judged (ETag condition): a re-upload under the same name is left
for its own event. Repeating a quarantine is harmless (at-least-once delivery); an unsafe name's
record is written once (the first delivery wins).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContentSettings

from visionpipe import names
from visionpipe.blob_names import escape_name, is_safe_blob_name, name_digest, unsafe_reason
from visionpipe.rejections import Reason, Rejection
from visionpipe.storage import Storage
from visionpipe.stores.label_store import name_key

log = logging.getLogger(__name__)

REASON_SUFFIX = ".reason.json"
#: The folder (inside ``quarantine/{container}/``) of entries stored under a digest.
UNSAFE_FOLDER = "_unsafe-names"
#: The reason code shown for a record that cannot be read (not JSON, not a record, too big).
UNREADABLE = "unreadable"
#: Reason records are small (the escaped name is capped at 2 KiB); anything larger is not ours.
MAX_RECORD_BYTES = 64 * 1024

#: One name for the check, wherever it is imported from (project names use it too).
is_safe_blob_path = is_safe_blob_name


def is_reserved_name(path: str) -> bool:
    """A drop name that could pass for a quarantine record (any case of ``.reason.json``).

    Such a drop is refused (``bad_path``) by both drop folders, and its bytes are kept under
    their digest, so they can never be read as a record.
    """
    return path.casefold().endswith(REASON_SUFFIX)


def _mirrorable(path: str) -> bool:
    """Whether ``quarantine/{container}/{path}`` is a safe place that cannot collide with a
    record or a digest entry (a drop into a folder named ``_unsafe-names`` is accepted as any
    other, but if it is rejected its copy goes under its digest)."""
    first = path.split("/", 1)[0]
    return (is_safe_blob_name(path) and not is_reserved_name(path)
            and first.strip().casefold() != UNSAFE_FOLDER)


def project_hint(name: str) -> str:
    """The digest folder of a (possibly hostile) name: its first segment's case-free key."""
    return name_key(name.split("/", 1)[0])[:16]


def digest_path(container: str, path: str) -> str:
    """Where an unmirrorable name's entry lives (add :data:`REASON_SUFFIX` for the record)."""
    return f"{container}/{UNSAFE_FOLDER}/{project_hint(path)}/{name_digest(path)}"


def quarantine_path(container: str, path: str) -> str:
    """Where a rejected blob goes: mirrored when that is safe, else under the name's digest."""
    if _mirrorable(path):
        return f"{container}/{path}"
    return digest_path(container, path)


@dataclass(frozen=True)
class Quarantined:
    path: str | None  # inside the quarantine container; None: the bytes were not (cannot be) moved
    reason_path: str
    source_deleted: bool


def _now() -> str:
    return datetime.now(UTC).isoformat()


def record_unsafe_name(
    storage: Storage, container: str, name: str, *, context: dict[str, Any] | None = None
) -> Quarantined:
    """Write the ``bad_path`` record of an unsafe ``name`` without ever addressing its blob.

    The record holds the escaped name and its digest; a redelivery finds it written and changes
    nothing (first delivery wins), so one hostile event is one record however often it comes.
    """
    problem = unsafe_reason(name) or "the name is reserved"
    reason_path = digest_path(container, name) + REASON_SUFFIX
    record = {
        **Rejection(Reason.BAD_PATH, f"{problem}; the blob was not read, moved or deleted")
        .to_dict(),
        "source": {"container": container, "path": escape_name(name), "escaped": True,
                   "nameSha256": name_digest(name)},
        "quarantinedAt": _now(),
        **(context or {}),
    }
    try:
        storage.container(names.QUARANTINE).upload_blob(
            reason_path,
            json.dumps(record, indent=2),
            overwrite=False,
            content_settings=ContentSettings(content_type="application/json"),
        )
        log.warning("refused unsafe blob name in %s (%s): %s; recorded as %s", container,
                    escape_name(name)[:200], problem, reason_path)
    except ResourceExistsError:
        log.info("unsafe name %s in %s was recorded by an earlier delivery", reason_path,
                 container)
    return Quarantined(None, reason_path, False)


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

    An unsafe ``path`` is not moved: only its record is written (:func:`record_unsafe_name`),
    whatever ``rejection`` says. ``data``: the bytes already read (saves a second download);
    otherwise the blob is streamed.
    """
    if not is_safe_blob_name(path):
        return record_unsafe_name(storage, container, path, context=context)
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
        "quarantinedAt": _now(),
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
    """One reason record; raises ``ValueError`` when it is not one (not JSON, not an object
    with a ``reason``), ``ResourceNotFoundError`` when it is gone."""
    blob = storage.container(names.QUARANTINE).download_blob(reason_path)
    record = json.loads(blob.readall())
    if not isinstance(record, dict) or not isinstance(record.get("reason"), str):
        raise ValueError("not a reason record")
    return record


def _unreadable(reason_path: str) -> dict[str, Any]:
    return {"reason": UNREADABLE, "message": "this quarantine record could not be read",
            "record": reason_path}


def _read_listed(storage: Storage, reason_path: str, size: int | None) -> dict[str, Any] | None:
    """A listed record, :func:`_unreadable` when it cannot be read, None when it is gone."""
    if size is not None and size > MAX_RECORD_BYTES:
        return _unreadable(reason_path)
    try:
        return read_reason(storage, reason_path)
    except ResourceNotFoundError:
        return None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("quarantine record %s is unreadable", reason_path)
        return _unreadable(reason_path)


def _sorted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: str(r.get("quarantinedAt", "")))


def list_quarantined(storage: Storage, prefix: str = "") -> list[dict[str, Any]]:
    """Every reason record under ``prefix`` (e.g. ``training-images/myproject/``), oldest
    first; a record that cannot be read is listed as :data:`UNREADABLE`, never raised."""
    quarantine = storage.container(names.QUARANTINE)
    found = (
        _read_listed(storage, b.name, b.size)
        for b in quarantine.list_blobs(name_starts_with=prefix)
        if b.name.endswith(REASON_SUFFIX)
    )
    return _sorted([r for r in found if r is not None])


def list_project_quarantine(storage: Storage, container: str,
                            project_name: str) -> list[dict[str, Any]]:
    """What ``container`` refused for a project, oldest first.

    Project names are unique case-insensitively, so drops into ``MyProj/`` and ``myproj/`` are
    both the project's: the container's first-level folders are listed (one call, names only)
    and every spelling of the name is read, plus the project's digest folder.
    """
    quarantine = storage.container(names.QUARANTINE)
    wanted = project_name.strip().casefold()
    top = f"{container}/"
    prefixes = [
        item.name
        for item in quarantine.walk_blobs(name_starts_with=top, delimiter="/")
        if item.name.endswith("/")
        and item.name[len(top):-1] != UNSAFE_FOLDER
        and item.name[len(top):-1].strip().casefold() == wanted
    ]
    prefixes.append(f"{top}{UNSAFE_FOLDER}/{project_hint(project_name)}/")
    records: list[dict[str, Any]] = []
    for prefix in prefixes:
        records.extend(list_quarantined(storage, prefix))
    return _sorted(records)
