"""Projects, tags and labelled images, kept in Table storage (DESIGN §2).

The drop folder and the HTTP API both write here; the training job reads its dataset from here.
Writes are idempotent and safe under concurrency: Event Grid delivers at least once, and several
Function instances may handle events for the same project at the same time.

Layout:
- ``projects``: PartitionKey ``project``, RowKey = project id; plus name-index rows
  (PartitionKey ``name``, RowKey = key of the name) that make "create on first sight" race-free.
- ``tags``: PartitionKey = project id, RowKey = tag id; name index under ``names-{project id}``.
- ``images``: PartitionKey = project id, RowKey = sha256 of the bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from visionpipe import names
from visionpipe.rejections import Reason, Rejected
from visionpipe.storage import Storage

MULTICLASS = "Multiclass"
MULTILABEL = "Multilabel"
CLASSIFICATION_TYPES = (MULTICLASS, MULTILABEL)
# Custom Vision's "General" classification domain, the default for new projects.
GENERAL_DOMAIN_ID = "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31"

_PROJECT_PK = "project"
_NAME_PK = "name"
_MAX_RETRIES = 20


class NameTaken(ValueError):
    """A project or tag name (case-insensitive) that is already in use."""


def name_key(name: str) -> str:
    """Table-safe, case-insensitive key for a display name (RowKeys forbid / \\ # ? controls)."""
    return hashlib.sha256(name.strip().casefold().encode()).hexdigest()[:40]


def image_id(sha256: str) -> str:
    """The image's GUID (Custom Vision ids are GUIDs), derived from its content hash."""
    return str(uuid.UUID(sha256[:32]))


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    classification_type: str = MULTICLASS
    domain_id: str = GENERAL_DOMAIN_ID
    description: str = ""
    created: datetime = field(default_factory=_now)
    last_modified: datetime | None = None

    @property
    def multilabel(self) -> bool:
        return self.classification_type == MULTILABEL

    @classmethod
    def from_entity(cls, e: dict[str, Any]) -> Project:
        return cls(
            id=e["RowKey"],
            name=e["name"],
            classification_type=e.get("classificationType", MULTICLASS),
            domain_id=e.get("domainId", GENERAL_DOMAIN_ID),
            description=e.get("description", ""),
            created=e["created"],
            last_modified=e.get("lastModified"),
        )


@dataclass(frozen=True)
class Tag:
    id: str
    project_id: str
    name: str
    description: str = ""
    created: datetime = field(default_factory=_now)

    @classmethod
    def from_entity(cls, e: dict[str, Any]) -> Tag:
        return cls(
            id=e["RowKey"],
            project_id=e["PartitionKey"],
            name=e["name"],
            description=e.get("description", ""),
            created=e["created"],
        )


@dataclass(frozen=True)
class ImageRecord:
    project_id: str
    sha256: str
    tag_ids: tuple[str, ...]
    blob_paths: tuple[str, ...]  # paths inside the training-images container
    width: int
    height: int
    format: str
    size_bytes: int
    created: datetime

    @property
    def id(self) -> str:
        return image_id(self.sha256)

    @classmethod
    def from_entity(cls, e: dict[str, Any]) -> ImageRecord:
        return cls(
            project_id=e["PartitionKey"],
            sha256=e["RowKey"],
            tag_ids=tuple(json.loads(e.get("tagIds", "[]"))),
            blob_paths=tuple(json.loads(e.get("blobPaths", "[]"))),
            width=int(e["width"]),
            height=int(e["height"]),
            format=e["format"],
            size_bytes=int(e["sizeBytes"]),
            created=e["created"],
        )


def _new_project(name: str, classification_type: str, domain_id: str,
                 description: str) -> Project:
    if classification_type not in CLASSIFICATION_TYPES:
        raise ValueError(f"classification type must be one of {CLASSIFICATION_TYPES}")
    return Project(str(uuid.uuid4()), name.strip(), classification_type, domain_id, description)


def _project_entity(project: Project) -> dict[str, Any]:
    return {
        "PartitionKey": _PROJECT_PK,
        "RowKey": project.id,
        "name": project.name,
        "classificationType": project.classification_type,
        "domainId": project.domain_id,
        "description": project.description,
        "created": project.created,
    }


class AddStatus(StrEnum):
    CREATED = "created"  # a new image
    TAG_ADDED = "tag_added"  # known bytes, one more tag (multilabel)
    DUPLICATE = "duplicate"  # known bytes and tag: nothing changed but perhaps a new path


@dataclass(frozen=True)
class AddResult:
    image: ImageRecord
    status: AddStatus


@dataclass(frozen=True)
class ImageFacts:
    """What the store needs to know about validated bytes (see visionpipe.validation)."""

    sha256: str
    width: int
    height: int
    format: str
    size_bytes: int


class LabelStore:
    def __init__(self, storage: Storage) -> None:
        self._projects: TableClient = storage.table(names.PROJECTS_TABLE)
        self._tags: TableClient = storage.table(names.TAGS_TABLE)
        self._images: TableClient = storage.table(names.IMAGES_TABLE)

    # --- projects ---------------------------------------------------------------------------
    def create_project(
        self,
        name: str,
        classification_type: str = MULTICLASS,
        domain_id: str = GENERAL_DOMAIN_ID,
        description: str = "",
    ) -> Project:
        """Create a project; a project of the same name (case-insensitive) is returned as is."""
        project = _new_project(name, classification_type, domain_id, description)
        project_id = self._claim(self._projects, _NAME_PK, name, project.id)
        if project_id != project.id:
            existing = self.get_project(project_id)
            if existing is not None:
                return existing
            project = dataclasses.replace(project, id=project_id)
        try:
            self._projects.create_entity(_project_entity(project))
        except ResourceExistsError:
            return self.get_project(project.id) or project
        return project

    def get_project(self, project_id: str) -> Project | None:
        try:
            return Project.from_entity(self._projects.get_entity(_PROJECT_PK, project_id))
        except ResourceNotFoundError:
            return None

    def find_project(self, name: str) -> Project | None:
        try:
            row = self._projects.get_entity(_NAME_PK, name_key(name))
        except ResourceNotFoundError:
            return None
        return self.get_project(row["id"])

    def list_projects(self) -> list[Project]:
        rows = self._projects.query_entities(f"PartitionKey eq '{_PROJECT_PK}'")
        return sorted((Project.from_entity(r) for r in rows), key=lambda p: p.created)

    # --- tags -------------------------------------------------------------------------------
    def get_or_create_tag(self, project_id: str, name: str, description: str = "") -> Tag:
        tag = Tag(str(uuid.uuid4()), project_id, name.strip(), description)
        tag_id = self._claim(self._tags, f"names-{project_id}", name, tag.id)
        if tag_id != tag.id:
            existing = self.get_tag(project_id, tag_id)
            if existing is not None:
                return existing
            tag = Tag(tag_id, project_id, name.strip(), description)
        try:
            self._tags.create_entity(
                {
                    "PartitionKey": project_id,
                    "RowKey": tag.id,
                    "name": tag.name,
                    "description": tag.description,
                    "created": tag.created,
                }
            )
        except ResourceExistsError:
            return self.get_tag(project_id, tag.id) or tag
        return tag

    def get_tag(self, project_id: str, tag_id: str) -> Tag | None:
        try:
            return Tag.from_entity(self._tags.get_entity(project_id, tag_id))
        except ResourceNotFoundError:
            return None

    def find_tag(self, project_id: str, name: str) -> Tag | None:
        try:
            row = self._tags.get_entity(f"names-{project_id}", name_key(name))
        except ResourceNotFoundError:
            return None
        return self.get_tag(project_id, row["id"])

    def list_tags(self, project_id: str) -> list[Tag]:
        rows = self._tags.query_entities("PartitionKey eq @pk", parameters={"pk": project_id})
        return sorted((Tag.from_entity(r) for r in rows), key=lambda t: t.created)

    # --- images -----------------------------------------------------------------------------
    def add_image(
        self, project: Project, tag: Tag, facts: ImageFacts, blob_path: str
    ) -> AddResult:
        """Record that these bytes carry this tag. Safe to repeat; safe under concurrency.

        The same bytes under a second tag are one image with two tags in a multilabel project, and
        a ``conflicting_tag`` rejection in a multiclass one.
        """
        for _ in range(_MAX_RETRIES):
            try:
                entity = self._images.get_entity(project.id, facts.sha256)
            except ResourceNotFoundError:
                record = ImageRecord(
                    project.id, facts.sha256, (tag.id,), (blob_path,), facts.width, facts.height,
                    facts.format, facts.size_bytes, _now(),
                )
                try:
                    self._images.create_entity(self._image_entity(record))
                except ResourceExistsError:
                    continue  # someone else created it: merge into theirs
                return AddResult(record, AddStatus.CREATED)

            current = ImageRecord.from_entity(entity)
            if blob_path in current.blob_paths:
                # This very blob was recorded already: a redelivered event, or an API upload
                # (which records before it writes). Its tags are the record's, not the folder's.
                return AddResult(current, AddStatus.DUPLICATE)
            if tag.id in current.tag_ids:
                status = AddStatus.DUPLICATE
                tag_ids = current.tag_ids
            elif project.multilabel:
                status = AddStatus.TAG_ADDED
                tag_ids = (*current.tag_ids, tag.id)
            else:
                raise Rejected(
                    Reason.CONFLICTING_TAG,
                    f"the same image is already labelled {self._tag_names(project.id, current)} "
                    f"in multiclass project {project.name!r}; one image can carry only one tag",
                )
            paths = current.blob_paths if blob_path in current.blob_paths else (
                *current.blob_paths, blob_path)
            if tag_ids == current.tag_ids and paths == current.blob_paths:
                return AddResult(current, status)
            updated = ImageRecord(
                current.project_id, current.sha256, tag_ids, paths, current.width, current.height,
                current.format, current.size_bytes, current.created,
            )
            try:
                self._images.update_entity(
                    self._image_entity(updated),
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # changed under us: read again and merge
            return AddResult(updated, status)
        raise RuntimeError(f"could not record image {facts.sha256}: too much contention")

    def get_image(self, project_id: str, sha256: str) -> ImageRecord | None:
        try:
            return ImageRecord.from_entity(self._images.get_entity(project_id, sha256))
        except ResourceNotFoundError:
            return None

    def iter_images(self, project_id: str) -> Iterator[ImageRecord]:
        rows = self._images.query_entities("PartitionKey eq @pk", parameters={"pk": project_id})
        for row in rows:
            yield ImageRecord.from_entity(row)

    def find_image(self, project_id: str, image_id_: str) -> ImageRecord | None:
        """The image with this GUID: a RowKey range scan, since the GUID is the hash's prefix."""
        try:
            prefix = uuid.UUID(image_id_).hex
        except ValueError:
            return None
        rows = self._images.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": project_id, "lo": prefix, "hi": prefix + "g"},
        )
        return next((ImageRecord.from_entity(r) for r in rows), None)

    def list_images(self, project_id: str, tag_ids: set[str] | None = None) -> list[ImageRecord]:
        """Images of a project; with ``tag_ids``, only those carrying at least one of them."""
        images = self.iter_images(project_id)
        if tag_ids is not None:
            images = (i for i in images if tag_ids.intersection(i.tag_ids))
        return sorted(images, key=lambda i: (i.created, i.sha256))

    def create_image(
        self, project: Project, tag_ids: tuple[str, ...], facts: ImageFacts, blob_path: str
    ) -> AddResult:
        """Record new bytes with any number of tags (none: untagged), as the API uploads them.

        Known bytes are a ``DUPLICATE`` (Custom Vision's ``OKDuplicate``) and are left as they
        are: tags are changed with :meth:`add_image_tags` and :meth:`remove_image_tags`.
        """
        if not project.multilabel and len(tag_ids) > 1:
            raise Rejected(Reason.CONFLICTING_TAG,
                           f"multiclass project {project.name!r}: one image carries one tag")
        record = ImageRecord(project.id, facts.sha256, tuple(dict.fromkeys(tag_ids)),
                             (blob_path,), facts.width, facts.height, facts.format,
                             facts.size_bytes, _now())
        try:
            self._images.create_entity(self._image_entity(record))
        except ResourceExistsError:
            existing = self.get_image(project.id, facts.sha256)
            return AddResult(existing or record, AddStatus.DUPLICATE)
        return AddResult(record, AddStatus.CREATED)

    def add_image_tag(self, project: Project, sha256: str, tag_id: str) -> AddStatus | None:
        """Add one tag to a known image: ``TAG_ADDED``, ``DUPLICATE`` (already there), or None
        when the image is gone. Raises ``Rejected(conflicting_tag)`` in a multiclass project
        whose image already carries another tag."""

        def change(r: ImageRecord) -> ImageRecord | None:
            if tag_id in r.tag_ids:
                return None
            if not project.multilabel and r.tag_ids:
                raise Rejected(Reason.CONFLICTING_TAG,
                               f"multiclass project {project.name!r}: one image carries one tag")
            return replace(r, tag_ids=(*r.tag_ids, tag_id))

        result = self._change_image(project.id, sha256, change)
        if result is None:
            return None
        return AddStatus.TAG_ADDED if result[1] else AddStatus.DUPLICATE

    def remove_image_tags(self, project_id: str, sha256: str, tag_ids: set[str]) -> bool:
        """Take tags off an image; True when something changed."""

        def change(r: ImageRecord) -> ImageRecord | None:
            kept = tuple(t for t in r.tag_ids if t not in tag_ids)
            return None if kept == r.tag_ids else replace(r, tag_ids=kept)

        result = self._change_image(project_id, sha256, change)
        return bool(result and result[1])

    def delete_image(self, project_id: str, sha256: str) -> ImageRecord | None:
        """Delete an image's record (not its blobs: the caller owns those); the deleted record."""
        record = self.get_image(project_id, sha256)
        if record is not None:
            with suppress(ResourceNotFoundError):
                self._images.delete_entity(project_id, sha256)
        return record

    # --- renames and deletes (the API) ------------------------------------------------------
    def create_project_unique(
        self,
        name: str,
        classification_type: str = MULTICLASS,
        domain_id: str = GENERAL_DOMAIN_ID,
        description: str = "",
    ) -> Project:
        """Create a project, refusing a name that is taken (:class:`NameTaken`).

        :meth:`create_project` returns the existing project instead: right for a drop folder,
        where the name is the project; wrong for the API, which would silently merge projects.
        """
        project = _new_project(name, classification_type, domain_id, description)
        self._claim_unique(self._projects, _NAME_PK, name, project.id,
                           lambda owner: self.get_project(owner) is not None)
        self._projects.create_entity(_project_entity(project))
        return project

    def update_project(
        self, project_id: str, name: str | None = None, description: str | None = None,
        classification_type: str | None = None, domain_id: str | None = None,
    ) -> Project | None:
        """Change a project's fields; a new name moves the name index (:class:`NameTaken`)."""
        current = self.get_project(project_id)
        if current is None:
            return None
        if classification_type is not None and classification_type not in CLASSIFICATION_TYPES:
            raise ValueError(f"classification type must be one of {CLASSIFICATION_TYPES}")
        new_name = name.strip() if name is not None else current.name
        if name_key(new_name) != name_key(current.name):
            self._rename(self._projects, _NAME_PK, current.name, new_name, project_id,
                         lambda owner: self.get_project(owner) is not None)
        self._projects.update_entity(
            {
                "PartitionKey": _PROJECT_PK,
                "RowKey": project_id,
                "name": new_name,
                "description": current.description if description is None else description,
                "classificationType": classification_type or current.classification_type,
                "domainId": domain_id or current.domain_id,
                "lastModified": _now(),
            },
            mode=UpdateMode.MERGE,
        )
        return self.get_project(project_id)

    def delete_project(self, project_id: str) -> Project | None:
        """Delete a project's rows: images, tags, name indexes, the project (blobs: caller)."""
        project = self.get_project(project_id)
        if project is None:
            return None
        for record in list(self.iter_images(project_id)):
            self.delete_image(project_id, record.sha256)
        for tag in self.list_tags(project_id):
            self.delete_tag(project_id, tag.id)
        self._release(self._projects, _NAME_PK, project.name, project_id)
        with suppress(ResourceNotFoundError):
            self._projects.delete_entity(_PROJECT_PK, project_id)
        return project

    def create_tag(self, project_id: str, name: str, description: str = "") -> Tag:
        """Create a tag, refusing a name the project already uses (:class:`NameTaken`)."""
        tag = Tag(str(uuid.uuid4()), project_id, name.strip(), description)
        self._claim_unique(self._tags, f"names-{project_id}", name, tag.id,
                           lambda owner: self.get_tag(project_id, owner) is not None)
        self._tags.create_entity({
            "PartitionKey": project_id,
            "RowKey": tag.id,
            "name": tag.name,
            "description": tag.description,
            "created": tag.created,
        })
        return tag

    def update_tag(
        self, project_id: str, tag_id: str, name: str | None = None,
        description: str | None = None,
    ) -> Tag | None:
        current = self.get_tag(project_id, tag_id)
        if current is None:
            return None
        new_name = name.strip() if name is not None else current.name
        if name_key(new_name) != name_key(current.name):
            self._rename(self._tags, f"names-{project_id}", current.name, new_name, tag_id,
                         lambda owner: self.get_tag(project_id, owner) is not None)
        self._tags.update_entity(
            {
                "PartitionKey": project_id,
                "RowKey": tag_id,
                "name": new_name,
                "description": current.description if description is None else description,
            },
            mode=UpdateMode.MERGE,
        )
        return self.get_tag(project_id, tag_id)

    def delete_tag(self, project_id: str, tag_id: str) -> Tag | None:
        """Delete a tag and take it off every image that carries it."""
        tag = self.get_tag(project_id, tag_id)
        if tag is None:
            return None
        for record in self.iter_images(project_id):
            if tag_id in record.tag_ids:
                self.remove_image_tags(project_id, record.sha256, {tag_id})
        self._release(self._tags, f"names-{project_id}", tag.name, tag_id)
        with suppress(ResourceNotFoundError):
            self._tags.delete_entity(project_id, tag_id)
        return tag

    # --- helpers ----------------------------------------------------------------------------
    def _change_image(
        self, project_id: str, sha256: str,
        change: Callable[[ImageRecord], ImageRecord | None],
    ) -> tuple[ImageRecord, bool] | None:
        """Read-modify-write one image under its ETag; ``change`` returns None for "no change".

        Returns (record, changed), or None when the image does not exist.
        """
        for _ in range(_MAX_RETRIES):
            try:
                entity = self._images.get_entity(project_id, sha256)
            except ResourceNotFoundError:
                return None
            current = ImageRecord.from_entity(entity)
            updated = change(current)
            if updated is None:
                return current, False
            try:
                self._images.update_entity(
                    self._image_entity(updated), mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified,
                )
            except ResourceNotFoundError:
                return None
            except ResourceModifiedError:
                continue
            return updated, True
        raise RuntimeError(f"could not change image {sha256}: too much contention")

    def _claim_unique(self, table: TableClient, partition: str, name: str, new_id: str,
                      exists: Callable[[str], bool]) -> None:
        """Bind a name to ``new_id`` or raise :class:`NameTaken`. A binding whose object does
        not exist (a create or delete that died half-way) is taken over, under its ETag."""
        owner = self._claim(table, partition, name, new_id)
        if owner == new_id:
            return
        if exists(owner):
            raise NameTaken(f"the name {name.strip()!r} is taken")
        row = table.get_entity(partition, name_key(name))
        try:
            table.update_entity(
                {"PartitionKey": partition, "RowKey": row["RowKey"], "id": new_id,
                 "name": name.strip()},
                mode=UpdateMode.REPLACE, etag=row.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError) as e:
            raise NameTaken(f"the name {name.strip()!r} is being taken") from e

    def _rename(self, table: TableClient, partition: str, old: str, new: str,
                owner_id: str, exists: Callable[[str], bool]) -> None:
        self._claim_unique(table, partition, new, owner_id, exists)
        self._release(table, partition, old, owner_id)

    @staticmethod
    def _release(table: TableClient, partition: str, name: str, owner_id: str) -> None:
        """Drop a name-index row, only if it still points at ``owner_id``."""
        try:
            row = table.get_entity(partition, name_key(name))
        except ResourceNotFoundError:
            return
        if row.get("id") == owner_id:
            with suppress(ResourceNotFoundError, ResourceModifiedError):
                table.delete_entity(row, etag=row.metadata["etag"],
                                    match_condition=MatchConditions.IfNotModified)

    @staticmethod
    def _image_entity(r: ImageRecord) -> dict[str, Any]:
        return {
            "PartitionKey": r.project_id,
            "RowKey": r.sha256,
            "imageId": r.id,
            "tagIds": json.dumps(list(r.tag_ids)),
            "blobPaths": json.dumps(list(r.blob_paths)),
            "width": r.width,
            "height": r.height,
            "format": r.format,
            "sizeBytes": r.size_bytes,
            "created": r.created,
        }

    def _tag_names(self, project_id: str, record: ImageRecord) -> str:
        found = (self.get_tag(project_id, t) for t in record.tag_ids)
        return ", ".join(repr(t.name) for t in found if t is not None) or "another tag"

    @staticmethod
    def _claim(table: TableClient, partition: str, name: str, new_id: str) -> str:
        """Bind a display name to an id exactly once; return whichever id won."""
        key = name_key(name)
        try:
            table.create_entity(
                {"PartitionKey": partition, "RowKey": key, "id": new_id, "name": name.strip()}
            )
            return new_id
        except ResourceExistsError:
            return str(table.get_entity(partition, key)["id"])
