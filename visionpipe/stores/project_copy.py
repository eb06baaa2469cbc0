"""The storage side of a project copy (``export_project`` / ``import_project``): snapshots,
image bytes copied inside the account, and import claims.

Everything lives under the source project, in the ``datasets`` container
(``{projectId}/project-copies/``), so deleting the project deletes its copies too (see
:mod:`visionpipe.stores.project_delete`, which removes ``datasets/{projectId}/``) and a token for
a deleted project finds nothing:

- ``exports/{exportId}.json``: the manifest written at export time -- the project's settings, its
  tags, every image with its tags, regions and metadata. The token carries the manifest's SHA-256,
  so a manifest changed afterwards is refused, and a later change to the project changes nothing
  that an import reads.
- ``images/{sha256}``: the bytes of every image at export time, copied server-side (Copy Blob
  within the account: no byte passes through the app), by content hash, so two exports of one
  project share them and an image deleted from the project after the export still imports.
- ``imports/{exportId}/{key}.json``: one claim per (export, target name): the project an import
  created, so a retried or racing import with the same token and name finishes that project
  instead of creating a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
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
from visionpipe.storage import Storage
from visionpipe.stores.label_store import ImageRecord, LabelStore, Project, Tag
from visionpipe.timestamps import iso

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
COPY_WORKERS = 8
#: How long a server-side copy may stay ``pending`` before it counts as failed (same-account
#: copies of images of a few MB finish at once in practice).
COPY_TIMEOUT_SECONDS = 60.0
_EXPIRES = "expires"  # a manifest blob's metadata: when its tokens expire (Unix seconds)


def _folder(project_id: str) -> str:
    return f"{project_id}/{names.PROJECT_COPY_FOLDER}"


def manifest_path(project_id: str, export_id: str) -> str:
    return f"{_folder(project_id)}/exports/{export_id}.json"


def bytes_path(project_id: str, sha256: str) -> str:
    return f"{_folder(project_id)}/images/{sha256}"


def claim_path(project_id: str, export_id: str, key: str) -> str:
    return f"{_folder(project_id)}/imports/{export_id}/{key}.json"


@dataclass(frozen=True)
class Snapshot:
    """A written export: its id, the manifest's SHA-256 and the manifest itself."""

    export_id: str
    digest: str
    manifest: dict[str, Any]
    raw: bytes = b""  # the manifest as stored (what the digest is of)

    @property
    def counts(self) -> tuple[int, int, int]:
        """(images, tags, regions) in the snapshot."""
        images = self.manifest["images"]
        return (len(images), len(self.manifest["tags"]),
                sum(len(i["regions"]) for i in images))


def copy_blob(storage: Storage, source_container: str, source_path: str, target_container: str,
              target_path: str, *, metadata: dict[str, str] | None = None,
              content_type: str | None = None) -> int | None:
    """Copy a blob inside the account (Copy Blob: the service moves the bytes); the copy's
    size, or None when the source does not exist. Waits for a pending copy to finish."""
    source = storage.container(source_container).get_blob_client(source_path)
    target = storage.container(target_container).get_blob_client(target_path)
    try:
        started = target.start_copy_from_url(source.url, metadata=metadata)
    except ResourceNotFoundError:
        return None
    deadline = time.monotonic() + COPY_TIMEOUT_SECONDS
    status = started.get("copy_status")
    while True:
        props = target.get_blob_properties()
        status = props.copy.status if props.copy else status
        if status in (None, "success"):
            break
        if status != "pending" or time.monotonic() > deadline:
            if status == "pending":
                with suppress(ResourceNotFoundError, ResourceModifiedError):
                    target.abort_copy(props.copy.id)
            raise OSError(f"copy of {source_container}/{source_path} ended {status}")
        time.sleep(0.2)
    if content_type and props.content_settings.content_type != content_type:
        target.set_http_headers(ContentSettings(content_type=content_type))
    return int(props.size)


def _image_entry(record: ImageRecord) -> dict[str, Any]:
    return {
        "sha256": record.sha256,
        "tagIds": list(record.tag_ids),
        "width": record.width,
        "height": record.height,
        "format": record.format,
        "sizeBytes": record.size_bytes,
        "created": iso(record.created),
        "metadata": dict(record.metadata),
        "regions": [r.to_row() for r in record.regions],
    }


def _tag_entry(tag: Tag) -> dict[str, Any]:
    return {"id": tag.id, "name": tag.name, "description": tag.description, "type": tag.type}


def _snapshot_bytes(storage: Storage, project_id: str, record: ImageRecord) -> bool:
    """Copy one image's bytes into the snapshot (from the first of its blobs that exists, of
    the size recorded); False when none does (the image is left out)."""
    for path in record.blob_paths:
        try:
            size = copy_blob(storage, names.TRAINING_IMAGES, path, names.DATASETS,
                             bytes_path(project_id, record.sha256))
        except OSError as e:
            log.warning("snapshot of image %s from %s failed: %s", record.id, path, e)
            continue
        if size == record.size_bytes:
            return True
        if size is not None:  # the blob at that path is not these bytes any more
            log.warning("image %s: %s holds %s bytes, not %s", record.id, path, size,
                        record.size_bytes)
    with suppress(ResourceNotFoundError):
        storage.container(names.DATASETS).delete_blob(bytes_path(project_id, record.sha256))
    return False


def write_snapshot(storage: Storage, store: LabelStore, project: Project,
                   expires: float) -> Snapshot:
    """Copy the project's images into its snapshot folder and write the manifest of this
    export, good until ``expires`` (Unix seconds); images whose bytes are gone are left out,
    with a warning."""
    tags = store.list_tags(project.id)
    records = list(store.iter_images(project.id))
    with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
        kept = list(pool.map(lambda r: _snapshot_bytes(storage, project.id, r), records))
    images = [r for r, ok in zip(records, kept, strict=True) if ok]
    if len(images) < len(records):
        log.warning("export of %s: %d image(s) without bytes left out", project.id,
                    len(records) - len(images))
    manifest = {
        "version": MANIFEST_VERSION,
        "exportedAt": iso(datetime.now(UTC)),
        "project": {"id": project.id, "name": project.name, "description": project.description,
                    "classificationType": project.classification_type,
                    "domainId": project.domain_id},
        "tags": [_tag_entry(t) for t in tags],
        "images": [_image_entry(r) for r in sorted(images, key=lambda r: r.sha256)],
    }
    data = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    export_id = str(uuid.uuid4())
    storage.container(names.DATASETS).upload_blob(
        manifest_path(project.id, export_id), data, overwrite=False,
        metadata={_EXPIRES: str(int(expires))},
        content_settings=ContentSettings(content_type="application/json"))
    return Snapshot(export_id, hashlib.sha256(data).hexdigest(), manifest, data)


def prune(storage: Storage, project_id: str, ttl_seconds: float,
          now: float | None = None) -> int:
    """Delete what expired exports of a project left: their manifests and claims, and image
    bytes no export copied within ``ttl_seconds`` (each export copies every image it names
    again, so bytes that old belong to no export whose token is still good, unless the TTL was
    lowered since). How many blobs went."""
    now = time.time() if now is None else now
    container = storage.container(names.DATASETS)
    gone = 0
    exports = f"{_folder(project_id)}/exports/"
    for blob in list(container.list_blobs(name_starts_with=exports, include=["metadata"])):
        try:
            expires = float((blob.metadata or {}).get(_EXPIRES, "inf"))
        except ValueError:
            expires = 0.0
        if expires >= now:
            continue
        export_id = blob.name[len(exports):].removesuffix(".json")
        claims = f"{_folder(project_id)}/imports/{export_id}/"
        for name in [blob.name, *(c.name for c in container.list_blobs(name_starts_with=claims))]:
            with suppress(ResourceNotFoundError):
                container.delete_blob(name)
                gone += 1
    for blob in list(container.list_blobs(name_starts_with=f"{_folder(project_id)}/images/")):
        if blob.last_modified.timestamp() < now - ttl_seconds:
            with suppress(ResourceNotFoundError):
                container.delete_blob(blob.name)
                gone += 1
    return gone


def read_snapshot(storage: Storage, project_id: str, export_id: str) -> Snapshot | None:
    """The export's manifest, or None when it is gone (the project was deleted). Its digest is
    of the bytes as stored: the caller compares it with the token's."""
    try:
        data = storage.container(names.DATASETS).download_blob(
            manifest_path(project_id, export_id)).readall()
    except ResourceNotFoundError:
        return None
    return parse_snapshot(export_id, data)


def parse_snapshot(export_id: str, data: bytes) -> Snapshot:
    """A manifest's bytes as a :class:`Snapshot` (``ValueError`` when they are not one)."""
    manifest = json.loads(data)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("images"), list) or \
            not isinstance(manifest.get("tags"), list) or \
            not isinstance(manifest.get("project"), dict):
        raise ValueError("not a project copy manifest")
    return Snapshot(export_id, hashlib.sha256(data).hexdigest(), manifest, data)


def read_bytes(storage: Storage, project_id: str, sha256: str) -> bytes | None:
    """One image's bytes from a project's snapshot, or None when they are gone."""
    try:
        return storage.container(names.DATASETS).download_blob(
            bytes_path(project_id, sha256)).readall()
    except ResourceNotFoundError:
        return None


# --- import claims ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """Who imports (export, name): the project id once created (None while being created),
    the claim's age in seconds and its ETag (a take-over replaces only this very version)."""

    project_id: str | None
    age_seconds: float
    etag: str


def _claim_blob(storage: Storage, source_id: str, export_id: str, key: str) -> Any:
    return storage.container(names.DATASETS).get_blob_client(
        claim_path(source_id, export_id, key))


def take_claim(storage: Storage, source_id: str, export_id: str, key: str,
               replacing: str | None = None) -> str | None:
    """Claim (export, key) for this caller: the claim's ETag, or None when someone else holds
    it. ``replacing``: take over the claim of that ETag (a crashed or deleted import)."""
    body = json.dumps({"projectId": None, "claimedAt": time.time()})
    blob = _claim_blob(storage, source_id, export_id, key)
    condition = ({"etag": replacing, "match_condition": MatchConditions.IfNotModified}
                 if replacing else {"match_condition": MatchConditions.IfMissing})
    try:
        written = blob.upload_blob(body, overwrite=True, **condition)
    except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
        return None
    return str(written["etag"])


def settle_claim(storage: Storage, source_id: str, export_id: str, key: str, etag: str,
                 project_id: str) -> None:
    """Record the project a held claim created."""
    _claim_blob(storage, source_id, export_id, key).upload_blob(
        json.dumps({"projectId": project_id, "claimedAt": time.time()}), overwrite=True,
        etag=etag, match_condition=MatchConditions.IfNotModified)


def release_claim(storage: Storage, source_id: str, export_id: str, key: str, etag: str) -> None:
    with suppress(ResourceNotFoundError, ResourceModifiedError):
        _claim_blob(storage, source_id, export_id, key).delete_blob(
            etag=etag, match_condition=MatchConditions.IfNotModified)


def read_claim(storage: Storage, source_id: str, export_id: str, key: str) -> Claim | None:
    try:
        downloaded = _claim_blob(storage, source_id, export_id, key).download_blob()
        body = json.loads(downloaded.readall())
    except ResourceNotFoundError:
        return None
    project_id = body.get("projectId")
    age = time.time() - float(body.get("claimedAt") or 0)
    return Claim(project_id if isinstance(project_id, str) else None, age,
                 str(downloaded.properties.etag))
