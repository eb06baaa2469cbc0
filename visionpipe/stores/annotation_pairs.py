"""Pending (image, annotation) pairs of the detection drop folder, so either half may come first.

In a detection project's drop folder an image (``a.jpg``) and the file holding its boxes
(``a.xml``, ``a.txt``, or a COCO ``*.json`` naming ``a.jpg``) are separate blobs with separate
Event Grid events, delivered in any order and at least once. Each handler writes its half into one
row per image stem, then reads the row back: whoever completes the pair sees both halves and
applies the boxes. The row is changed only by ETag-conditional writes (insert-if-absent, then
replace-if-unchanged), so two halves written at the same moment are serialised and the second
writer always sees the first; applying boxes twice is harmless (the label store keeps one region
per tag and box). Nothing is deleted when a pair completes: a redelivered event finds the same
row and changes nothing.

Layout (docs/ARCHITECTURE.md, "Storage layout (one storage account)"): table
``annotationpairs``, PartitionKey the project id, RowKey the SHA-256 of the image's path
without its extension (``{folder}/{stem}``): blob names may hold characters a RowKey refuses,
and a hash is always a safe, fixed-length key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode
from azure.storage.blob import ContentSettings

from visionpipe import names
from visionpipe.blob_names import is_safe_blob_name
from visionpipe.rejections import Rejection
from visionpipe.storage import Storage
from visionpipe.stores.quarantine import REASON_SUFFIX, digest_path

log = logging.getLogger(__name__)

_MAX_RETRIES = 20
#: Longest mirrored reason-record name (a blob name holds at most 1,024 characters).
MAX_MIRRORED_NAME = 1000
#: Annotation files one image may be named by (a VOC, a YOLO file and a few COCO files is a lot).
MAX_SOURCES = 16


def stem_key(path: str) -> str:
    """``{folder}/{stem}`` of an image or per-image annotation path: what pairs them."""
    folder, name = posixpath.split(path)
    stem = posixpath.splitext(name)[0]
    return f"{folder}/{stem}" if folder else stem


def stem_row_key(stem: str) -> str:
    """The safe RowKey of the pair of the image stem ``stem``."""
    return hashlib.sha256(stem.encode("utf-8", "surrogatepass")).hexdigest()


def row_key(path: str) -> str:
    """The safe RowKey of the pair ``path`` belongs to."""
    return stem_row_key(stem_key(path))


@dataclass(frozen=True)
class PairedImage:
    """The image half: its blob and its record's key, with its true size (pixel boxes need it)."""

    path: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Pair:
    """One image stem of one project: the image (once it has arrived) and the annotation files
    that name it (once they have arrived)."""

    project_id: str
    stem: str
    folder: str
    image: PairedImage | None = None
    sources: tuple[str, ...] = ()  # annotation blob paths, in arrival order

    @property
    def complete(self) -> bool:
        return self.image is not None and bool(self.sources)

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": self.project_id,
            "RowKey": stem_row_key(self.stem),
            "stem": self.stem,
            "folder": self.folder,
            "sources": json.dumps(list(self.sources)),
        }
        if self.image is not None:
            entity.update(imagePath=self.image.path, imageSha256=self.image.sha256,
                          imageWidth=self.image.width, imageHeight=self.image.height)
        return entity

    @classmethod
    def from_entity(cls, e: dict[str, Any]) -> Pair:
        image = None
        if e.get("imageSha256"):
            image = PairedImage(str(e["imagePath"]), str(e["imageSha256"]),
                                int(e["imageWidth"]), int(e["imageHeight"]))
        return cls(str(e["PartitionKey"]), str(e["stem"]), str(e.get("folder", "")), image,
                   tuple(json.loads(e.get("sources") or "[]")))


class AnnotationPairs:
    """The ``annotationpairs`` table."""

    def __init__(self, storage: Storage) -> None:
        self._table: TableClient = storage.table(names.ANNOTATION_PAIRS_TABLE)

    def get(self, project_id: str, path: str) -> Pair | None:
        try:
            return Pair.from_entity(self._table.get_entity(project_id, row_key(path)))
        except ResourceNotFoundError:
            return None

    def note_image(self, project_id: str, image: PairedImage) -> Pair:
        """Record the image half of ``image.path``'s pair; the pair as it now is."""
        return self._merge(project_id, image.path, lambda p: replace(p, image=image))

    def note_source(self, project_id: str, image_path: str, source_path: str) -> Pair:
        """Record that the annotation file ``source_path`` names the image ``image_path`` (a
        path of the image, any extension); the pair as it now is."""

        def add(pair: Pair) -> Pair:
            if source_path in pair.sources:
                return pair
            kept = pair.sources[-(MAX_SOURCES - 1):] if len(pair.sources) >= MAX_SOURCES \
                else pair.sources
            return replace(pair, sources=(*kept, source_path))

        return self._merge(project_id, image_path, add)

    def in_folder(self, project_id: str, folder: str) -> Iterator[Pair]:
        """The pairs of one folder of a project (a scan of the project's partition)."""
        rows = self._table.query_entities("PartitionKey eq @pk and folder eq @folder",
                                          parameters={"pk": project_id, "folder": folder})
        for row in rows:
            yield Pair.from_entity(row)

    def delete_project(self, project_id: str) -> int:
        """Forget a deleted project's pairs; how many rows went."""
        rows = list(self._table.query_entities("PartitionKey eq @pk",
                                               parameters={"pk": project_id},
                                               select=["PartitionKey", "RowKey"]))
        for row in rows:  # deleting a row already gone is not an error
            self._table.delete_entity(row["PartitionKey"], row["RowKey"])
        return len(rows)

    def _merge(self, project_id: str, path: str, change: Callable[[Pair], Pair]) -> Pair:
        """Read-modify-write of one pair under its ETag: a lost race reads again and re-applies
        ``change``, so concurrent halves are both kept."""
        key = row_key(path)
        stem = stem_key(path)
        for _ in range(_MAX_RETRIES):
            try:
                entity = self._table.get_entity(project_id, key)
            except ResourceNotFoundError:
                fresh = change(Pair(project_id, stem, posixpath.dirname(path)))
                try:
                    self._table.create_entity(fresh.to_entity())
                except ResourceExistsError:
                    continue  # the other half got there first: merge into it
                return fresh
            current = Pair.from_entity(entity)
            updated = change(current)
            if updated == current:
                return current
            try:
                self._table.update_entity(updated.to_entity(), mode=UpdateMode.REPLACE,
                                          etag=entity.metadata["etag"],
                                          match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
            return updated
        raise RuntimeError(f"could not record the annotation pair of {stem!r}: too much "
                           "contention")


def image_rejection_path(container: str, source_path: str, file_name: str) -> str:
    """Where the reason record of one image refused inside a many-image annotation file goes:
    ``quarantine/{container}/{source path}.images/{file name}.reason.json`` (the file itself is
    not moved: its other images are good), or under a digest when that name is not safe."""
    mirrored = f"{container}/{source_path}.images/{file_name}"
    if is_safe_blob_name(mirrored) and len(mirrored) <= MAX_MIRRORED_NAME:
        return mirrored + REASON_SUFFIX
    return digest_path(container, f"{source_path}.images/{file_name}") + REASON_SUFFIX


def record_image_rejection(storage: Storage, container: str, source_path: str, file_name: str,
                           rejection: Rejection, *, etag: str | None = None,
                           context: dict[str, Any] | None = None) -> str:
    """Write the reason record of one image a COCO file's boxes were refused for, in the
    quarantine's reason-record shape (``reason``, ``message``, ``source``, ``quarantinedAt``);
    ``source.image`` names the image inside the file. Repeating it rewrites the same record."""
    reason_path = image_rejection_path(container, source_path, file_name)
    record = {
        **rejection.to_dict(),
        "source": {"container": container, "path": source_path, "image": file_name,
                   "etag": etag},
        "quarantinedAt": datetime.now(UTC).isoformat(),
        **(context or {}),
    }
    storage.container(names.QUARANTINE).upload_blob(
        reason_path, json.dumps(record, indent=2), overwrite=True,
        content_settings=ContentSettings(content_type="application/json"))
    log.warning("%s/%s: the boxes of %r were refused (%s): %s", container, source_path,
                file_name, rejection.reason, rejection.message)
    return reason_path
