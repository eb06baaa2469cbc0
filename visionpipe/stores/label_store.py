"""Projects, tags and labelled images, kept in Table storage (docs/ARCHITECTURE.md, "Storage
layout").

The drop folder and the HTTP API both write here; the training job reads its dataset from here.
Writes are idempotent and safe under concurrency: Event Grid delivers at least once, and several
Function instances may handle events for the same project at the same time.

Layout:
- ``projects``: PartitionKey ``project``, RowKey = project id; plus one name row per project
  (same partition, RowKey ``name-{key of the name}``, column ``id``).
- ``tags``: PartitionKey = project id, RowKey = tag id; plus one name row per tag (same partition,
  RowKey ``name-{key}``). A tag's ``type`` is ``Regular`` or ``Negative`` (Custom Vision's
  "none of the other tags"); the project's one Negative tag also holds the row
  ``name-negative`` (column ``id``), written and removed in the same transaction as the tag, so
  two concurrent requests can never make two Negative tags (the reserved key is no 40-digit
  name key, and everything that skips name rows skips it).
- ``images``: PartitionKey = project id, RowKey = sha256 of the bytes. An object detection
  image's regions (at most ``training_rules.MAX_REGIONS_PER_IMAGE``) are JSON in the same row,
  split over the columns ``regions``, ``regions1``, ... (a Table string property holds at most
  64 KiB, 32K characters; 300 regions take about 55K), so they change under the row's ETag with
  its tags: one read-modify-write, no second table to keep in step.

A name row lives in its object's partition so that the object and its name are written, moved and
deleted in one entity-group transaction: there is never a name without its object or an object
without its name, so no claim ever has to be guessed dead and taken over (several Function
instances creating the same name at once: exactly one transaction succeeds).

Deleting a tag or a project races with uploads. Both sides write first and read after: a delete
removes the tag (project) row, then sweeps the images; an image write records, then checks that
its tags (project) still exist and undoes what refers to a vanished one. Whatever the
interleaving, one of the two sees the other, so no image keeps a tag (or a project) that is gone:
the delete wins, and an upload that raced with it ends up without that tag.

An image carrying the Negative tag carries no other tag (:class:`NegativeTagConflict`): every
image write that would leave an image with two or more tags reads the ``name-negative`` row and
refuses inside the image's ETag-guarded read-modify-write, so two concurrent taggings of one
image cannot both pass. Turning a Regular tag that images share with other tags into the
Negative tag is refused too; a tagging racing with that type change is caught by the training
job, which checks the rule again on the snapshot it trains (training_job/dataset.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableErrorCode, TableTransactionError, UpdateMode

from visionpipe import names, tag_types
from visionpipe.domains import GENERAL_DOMAIN_ID, OBJECT_DETECTION, domain_type
from visionpipe.rejections import Reason, Rejected
from visionpipe.storage import Storage

if TYPE_CHECKING:
    from visionpipe.validation import ValidImage

MULTICLASS = "Multiclass"
MULTILABEL = "Multilabel"
CLASSIFICATION_TYPES = (MULTICLASS, MULTILABEL)
# Custom Vision's "General" classification domain, the default for new projects.

_PROJECT_PK = "project"
_NAME_PREFIX = "name-"  # RowKey prefix of a name row (ids are GUIDs, never start with it)
_MAX_RETRIES = 20
# Transaction failures that mean "someone else changed these rows first": read again.
_LOST_RACE = frozenset({
    TableErrorCode.ENTITY_ALREADY_EXISTS, TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED,
    TableErrorCode.CONDITION_NOT_MET, TableErrorCode.ENTITY_NOT_FOUND,
    TableErrorCode.RESOURCE_NOT_FOUND,
})


REGULAR_TAG = tag_types.REGULAR
NEGATIVE_TAG = tag_types.NEGATIVE
TAG_TYPES = tag_types.STORED  # Custom Vision's GeneralProduct is refused by the API
_NEGATIVE_KEY = "name-negative"  # the row naming the project's one Negative tag


class NameTaken(ValueError):
    """A project or tag name (case-insensitive) that is already in use."""


class NegativeTagExists(ValueError):
    """The project has a Negative tag already (Custom Vision allows one per project)."""


class NegativeTagShared(ValueError):
    """The tag cannot become Negative: some of its images carry other tags too."""


class NegativeTagConflict(Rejected):
    """An image would carry the Negative tag and another tag (Custom Vision's
    ``ErrorNegativeAndRegularTagOnSameImage``). A ``conflicting_tag`` rejection, so every path
    that refuses a second tag on a multiclass image refuses this one the same way."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.CONFLICTING_TAG, message)


def name_key(name: str) -> str:
    """Table-safe, case-insensitive key for a display name (RowKeys forbid / \\ # ? controls)."""
    return hashlib.sha256(name.strip().casefold().encode()).hexdigest()[:40]


def _name_row_key(name: str) -> str:
    return _NAME_PREFIX + name_key(name)


def _is_name_row(row_key: str) -> bool:
    return row_key.startswith(_NAME_PREFIX)


def _name_row(partition: str, name: str, owner_id: str) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": _name_row_key(name), "id": owner_id,
            "name": name.strip()}


def _if_unchanged(entity: Any) -> dict[str, Any]:
    """Transaction options: apply only if the row is still the version that was read."""
    return {"etag": entity.metadata["etag"], "match_condition": MatchConditions.IfNotModified}


def _lost_race(e: TableTransactionError) -> bool:
    return e.error_code in _LOST_RACE


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
    def domain_type(self) -> str:
        """``Classification`` or ``ObjectDetection``, as the project's domain says."""
        return domain_type(self.domain_id)

    @property
    def detection(self) -> bool:
        return self.domain_type == OBJECT_DETECTION

    @property
    def multilabel(self) -> bool:
        """Whether an image may carry several tags: a multilabel project, or a detection project
        (an image holds boxes of any number of tags)."""
        return self.classification_type == MULTILABEL or self.detection

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
    type: str = REGULAR_TAG  # REGULAR_TAG or NEGATIVE_TAG

    @property
    def negative(self) -> bool:
        return self.type == NEGATIVE_TAG

    @classmethod
    def from_entity(cls, e: dict[str, Any]) -> Tag:
        return cls(
            id=e["RowKey"],
            project_id=e["PartitionKey"],
            name=e["name"],
            description=e.get("description", ""),
            created=e["created"],
            type=e.get("type") or REGULAR_TAG,
        )


class MetadataLimitExceeded(Exception):
    """An image's metadata would hold more key/value pairs than allowed."""


#: Columns an image's regions JSON is split over, each at most this many characters.
_REGION_COLUMNS = ("regions", "regions1", "regions2", "regions3")
_REGION_CHUNK = 30_000


@dataclass(frozen=True)
class ImageRegion:
    """One box on a training image: a tag and its edges as fractions of the image."""

    region_id: str
    tag_id: str
    left: float
    top: float
    width: float
    height: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.width, self.height)

    def to_row(self) -> list[Any]:
        return [self.region_id, self.tag_id, self.left, self.top, self.width, self.height]

    @classmethod
    def from_row(cls, row: list[Any]) -> ImageRegion:
        region_id, tag_id, left, top, width, height = row
        return cls(str(region_id), str(tag_id), float(left), float(top), float(width),
                   float(height))


def _regions_from(e: dict[str, Any]) -> tuple[ImageRegion, ...]:
    text = "".join(str(e.get(c) or "") for c in _REGION_COLUMNS)
    return tuple(ImageRegion.from_row(r) for r in json.loads(text)) if text else ()


def _region_columns(regions: tuple[ImageRegion, ...]) -> dict[str, str]:
    """The regions JSON split over the region columns (an empty list: no column at all)."""
    if not regions:
        return {}
    text = json.dumps([r.to_row() for r in regions], separators=(",", ":"))
    chunks = [text[i:i + _REGION_CHUNK] for i in range(0, len(text), _REGION_CHUNK)]
    if len(chunks) > len(_REGION_COLUMNS):
        raise ValueError(f"{len(regions)} regions do not fit in one image row")
    return dict(zip(_REGION_COLUMNS, chunks, strict=False))


class RegionOutcome(StrEnum):
    """What :meth:`LabelStore.add_image_regions` did with one requested region."""

    CREATED = "created"
    DUPLICATED = "duplicated"  # the image already has this tag with this very box
    EXCEEDED = "exceeded"  # the image holds the most regions allowed


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
    # Custom Vision's image metadata: key/value pairs, in the order they were first set.
    metadata: tuple[tuple[str, str], ...] = ()
    regions: tuple[ImageRegion, ...] = ()  # object detection boxes, in the order they were added

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
            metadata=tuple(json.loads(e.get("metadata") or "{}").items()),
            regions=_regions_from(e),
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
        "domainType": project.domain_type,
        "description": project.description,
        "created": project.created,
    }


def _tag_entity(tag: Tag) -> dict[str, Any]:
    return {
        "PartitionKey": tag.project_id,
        "RowKey": tag.id,
        "name": tag.name,
        "description": tag.description,
        "created": tag.created,
        "type": tag.type,
    }


def _negative_row(project_id: str, tag_id: str) -> dict[str, Any]:
    return {"PartitionKey": project_id, "RowKey": _NEGATIVE_KEY, "id": tag_id}


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

    @classmethod
    def of(cls, checked: ValidImage) -> ImageFacts:
        """The facts of an image that passed validation (ingest and the API upload alike)."""
        return cls(checked.sha256, checked.width, checked.height, checked.format,
                   checked.size_bytes)


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
        for _ in range(_MAX_RETRIES):
            existing = self.find_project(name)
            if existing is not None:
                return existing
            project = _new_project(name, classification_type, domain_id, description)
            if self._create_named(self._projects, _PROJECT_PK, name, _project_entity(project)):
                return project
        raise RuntimeError(f"could not create project {name.strip()!r}: too much contention")

    def get_project(self, project_id: str) -> Project | None:
        if _is_name_row(project_id):
            return None
        try:
            return Project.from_entity(self._projects.get_entity(_PROJECT_PK, project_id))
        except ResourceNotFoundError:
            return None

    def find_project(self, name: str) -> Project | None:
        owner = self._owner(self._projects, _PROJECT_PK, name)
        return self.get_project(owner) if owner else None

    def list_projects(self) -> list[Project]:
        rows = self._projects.query_entities(f"PartitionKey eq '{_PROJECT_PK}'")
        return sorted((Project.from_entity(r) for r in rows if not _is_name_row(r["RowKey"])),
                      key=lambda p: p.created)

    # --- tags -------------------------------------------------------------------------------
    def get_or_create_tag(self, project_id: str, name: str, description: str = "") -> Tag:
        """The project's tag of this name (case-insensitive), created on first sight."""
        for _ in range(_MAX_RETRIES):
            existing = self.find_tag(project_id, name)
            if existing is not None:
                return existing
            tag = Tag(str(uuid.uuid4()), project_id, name.strip(), description)
            if self._create_named(self._tags, project_id, name, _tag_entity(tag)):
                return tag
        raise RuntimeError(f"could not create tag {name.strip()!r}: too much contention")

    def get_tag(self, project_id: str, tag_id: str) -> Tag | None:
        if _is_name_row(tag_id):
            return None
        try:
            return Tag.from_entity(self._tags.get_entity(project_id, tag_id))
        except ResourceNotFoundError:
            return None

    def find_tag(self, project_id: str, name: str) -> Tag | None:
        owner = self._owner(self._tags, project_id, name)
        return self.get_tag(project_id, owner) if owner else None

    def list_tags(self, project_id: str) -> list[Tag]:
        rows = self._tags.query_entities("PartitionKey eq @pk", parameters={"pk": project_id})
        return sorted((Tag.from_entity(r) for r in rows if not _is_name_row(r["RowKey"])),
                      key=lambda t: t.created)

    def negative_tag_id(self, project_id: str) -> str | None:
        """The id of the project's Negative tag, or None (one point read)."""
        try:
            return str(self._tags.get_entity(project_id, _NEGATIVE_KEY)["id"]) or None
        except ResourceNotFoundError:
            return None

    def _check_negative(self, project_id: str, tag_ids: tuple[str, ...]) -> None:
        """Raise :class:`NegativeTagConflict` when ``tag_ids`` (an image's tags to be) hold the
        Negative tag and another one. Free for one tag or none: no read."""
        if len(tag_ids) < 2:
            return
        negative = self.negative_tag_id(project_id)
        if negative is not None and negative in tag_ids:
            tag = self.get_tag(project_id, negative)
            raise NegativeTagConflict(
                f"an image tagged {tag.name if tag else 'Negative'!r} (the Negative tag: none of "
                "the other tags) cannot carry another tag")

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
                return AddResult(self._settle(record, (tag.id,)), AddStatus.CREATED)

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
                self._check_negative(project.id, tag_ids)
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
            updated = replace(current, tag_ids=tag_ids, blob_paths=paths)
            try:
                self._images.update_entity(
                    self._image_entity(updated),
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # changed under us: read again and merge
            return AddResult(self._settle(updated, (tag.id,)), status)
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
        self, project: Project, tag_ids: tuple[str, ...], facts: ImageFacts, blob_path: str,
        metadata: tuple[tuple[str, str], ...] = (),
        regions: tuple[ImageRegion, ...] = (),
    ) -> AddResult:
        """Record new bytes with any number of tags (none: untagged), as the API uploads them;
        ``regions`` (a detection project's boxes) add their tags to the image's.

        Known bytes are a ``DUPLICATE`` (Custom Vision's ``OKDuplicate``) and are left as they
        are: tags are changed with :meth:`add_image_tags` and :meth:`remove_image_tags`.
        """
        tag_ids = tuple(dict.fromkeys((*tag_ids, *(r.tag_id for r in regions))))
        if not project.multilabel and len(tag_ids) > 1:
            raise Rejected(Reason.CONFLICTING_TAG,
                           f"multiclass project {project.name!r}: one image carries one tag")
        self._check_negative(project.id, tag_ids)
        record = ImageRecord(project.id, facts.sha256, tag_ids,
                             (blob_path,), facts.width, facts.height, facts.format,
                             facts.size_bytes, _now(), metadata, regions)
        try:
            self._images.create_entity(self._image_entity(record))
        except ResourceExistsError:
            existing = self.get_image(project.id, facts.sha256)
            return AddResult(existing or record, AddStatus.DUPLICATE)
        return AddResult(self._settle(record, record.tag_ids), AddStatus.CREATED)

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
            self._check_negative(project.id, (*r.tag_ids, tag_id))
            return replace(r, tag_ids=(*r.tag_ids, tag_id))

        result = self._change_image(project.id, sha256, change)
        if result is None:
            return None
        if result[1]:
            self._settle(result[0], (tag_id,))
        return AddStatus.TAG_ADDED if result[1] else AddStatus.DUPLICATE

    def remove_image_tags(self, project_id: str, sha256: str, tag_ids: set[str]) -> bool:
        """Take tags off an image, and the regions of those tags; True when something changed."""

        def change(r: ImageRecord) -> ImageRecord | None:
            kept = tuple(t for t in r.tag_ids if t not in tag_ids)
            regions = tuple(g for g in r.regions if g.tag_id not in tag_ids)
            if kept == r.tag_ids and regions == r.regions:
                return None
            return replace(r, tag_ids=kept, regions=regions)

        result = self._change_image(project_id, sha256, change)
        return bool(result and result[1])

    def update_image_metadata(self, project_id: str, sha256: str, updates: dict[str, str],
                              max_pairs: int) -> ImageRecord | None:
        """Set ``updates`` on an image's metadata (other keys stay); the image as it now is, or
        None when it is gone. Raises :class:`MetadataLimitExceeded` (nothing written) when the
        image would carry more than ``max_pairs`` pairs."""

        def change(r: ImageRecord) -> ImageRecord | None:
            merged = {**dict(r.metadata), **updates}
            if len(merged) > max_pairs:
                raise MetadataLimitExceeded(len(merged))
            new = tuple(merged.items())
            return None if new == r.metadata else replace(r, metadata=new)

        result = self._change_image(project_id, sha256, change)
        return result[0] if result is not None else None

    def add_image_regions(
        self, project: Project, sha256: str,
        boxes: list[tuple[str, tuple[float, float, float, float]]], max_regions: int,
    ) -> list[tuple[RegionOutcome, ImageRegion | None]] | None:
        """Add (tag id, box) regions to one image in one read-modify-write under its ETag.

        Per box: ``CREATED`` with the new region, ``DUPLICATED`` with the region already there
        (same tag, same box), or ``EXCEEDED`` (the image would hold over ``max_regions``). A new
        region's tag joins the image's tags. None when the image is gone. A tag deleted
        meanwhile is taken off again, regions and all (see :meth:`_settle`)."""
        outcomes: list[tuple[RegionOutcome, ImageRegion | None]] = []

        def change(r: ImageRecord) -> ImageRecord | None:
            outcomes.clear()
            regions = list(r.regions)
            for tag_id, box in boxes:
                same = next((g for g in regions if g.tag_id == tag_id and g.box == box), None)
                if same is not None:
                    outcomes.append((RegionOutcome.DUPLICATED, same))
                elif len(regions) >= max_regions:
                    outcomes.append((RegionOutcome.EXCEEDED, None))
                else:
                    region = ImageRegion(str(uuid.uuid4()), tag_id, *box)
                    regions.append(region)
                    outcomes.append((RegionOutcome.CREATED, region))
            if len(regions) == len(r.regions):
                return None
            tags = tuple(dict.fromkeys((*r.tag_ids, *(g.tag_id for g in regions))))
            self._check_negative(project.id, tags)
            return replace(r, tag_ids=tags, regions=tuple(regions))

        result = self._change_image(project.id, sha256, change)
        if result is None:
            return None
        if result[1]:
            added = tuple({g.tag_id for o, g in outcomes if o == RegionOutcome.CREATED and g})
            self._settle(result[0], added)
        return list(outcomes)

    def delete_image_regions(self, project_id: str, sha256: str,
                             region_ids: set[str]) -> ImageRecord | None:
        """Take regions off one image; a tag whose last region went leaves the image's tags.
        The image as it now is, or None when it is gone."""

        def change(r: ImageRecord) -> ImageRecord | None:
            kept = tuple(g for g in r.regions if g.region_id not in region_ids)
            if kept == r.regions:
                return None
            gone = {g.tag_id for g in r.regions} - {g.tag_id for g in kept}
            return replace(r, regions=kept, tag_ids=tuple(t for t in r.tag_ids if t not in gone))

        result = self._change_image(project_id, sha256, change)
        return result[0] if result is not None else None

    def images_with_regions(self, project_id: str, region_ids: set[str]) -> list[ImageRecord]:
        """The project's images holding any of these regions (a scan of the project's rows:
        region ids are GUIDs that do not say which image holds them)."""
        return [r for r in self.iter_images(project_id)
                if any(g.region_id in region_ids for g in r.regions)]

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
        if not self._create_named(self._projects, _PROJECT_PK, name, _project_entity(project)):
            raise NameTaken(f"the name {name.strip()!r} is taken")
        return project

    def update_project(
        self, project_id: str, name: str | None = None, description: str | None = None,
        classification_type: str | None = None, domain_id: str | None = None,
    ) -> Project | None:
        """Change a project's fields; a new name moves the name row (:class:`NameTaken`)."""
        if classification_type is not None and classification_type not in CLASSIFICATION_TYPES:
            raise ValueError(f"classification type must be one of {CLASSIFICATION_TYPES}")

        def fields(current: dict[str, Any]) -> dict[str, Any]:
            return {
                "description": current.get("description", "") if description is None
                else description,
                "classificationType": classification_type
                or current.get("classificationType", MULTICLASS),
                "domainId": domain_id or current.get("domainId", GENERAL_DOMAIN_ID),
                "domainType": domain_type(domain_id or current.get("domainId",
                                                                   GENERAL_DOMAIN_ID)),
                "lastModified": _now(),
            }

        if not self._update_named(self._projects, _PROJECT_PK, project_id, name, fields):
            return None
        return self.get_project(project_id)

    def delete_project(self, project_id: str) -> Project | None:
        """Delete a project's rows: images, tags and their names, the project and its name
        (blobs: the caller, see :mod:`visionpipe.stores.project_delete`).

        The project row goes after the tags and images (a failed delete can be repeated while
        the project still exists), then the images are swept once more for uploads that raced
        with it (they check the project after writing, see :meth:`_settle`)."""
        project = self.get_project(project_id)
        if project is None:
            return None
        self.delete_project_images(project_id)
        self._delete_partition(self._tags, project_id)
        self._delete_named(self._projects, _PROJECT_PK, project_id)
        self.delete_project_images(project_id)
        self._delete_partition(self._tags, project_id)
        return project

    def delete_project_images(self, project_id: str) -> list[ImageRecord]:
        """Delete every image record of a project; the deleted records (their blobs: caller)."""
        deleted = []
        for record in list(self.iter_images(project_id)):
            with suppress(ResourceNotFoundError):
                self._images.delete_entity(project_id, record.sha256)
            deleted.append(record)
        return deleted

    def create_tag(self, project_id: str, name: str, description: str = "",
                   type: str = REGULAR_TAG) -> Tag:  # noqa: A002 - the SDK's parameter name
        """Create a tag, refusing a name the project already uses (:class:`NameTaken`) and a
        second Negative tag (:class:`NegativeTagExists`): the tag, its name row and, for the
        Negative tag, the ``name-negative`` row go in one transaction."""
        if type not in TAG_TYPES:
            raise ValueError(f"tag type must be one of {TAG_TYPES}")
        tag = Tag(str(uuid.uuid4()), project_id, name.strip(), description, type=type)
        extra = [("create", _negative_row(project_id, tag.id))] if tag.negative else []
        if not self._create_named(self._tags, project_id, name, _tag_entity(tag), extra):
            if tag.negative and self._owner(self._tags, project_id, name) is None:
                raise NegativeTagExists("the project has a Negative tag already")
            raise NameTaken(f"the name {name.strip()!r} is taken")
        return tag

    def update_tag(
        self, project_id: str, tag_id: str, name: str | None = None,
        description: str | None = None, type: str | None = None,  # noqa: A002 - the SDK's name
    ) -> Tag | None:
        """Rename, describe or retype a tag. Becoming Negative takes the ``name-negative`` row in
        the same transaction (:class:`NegativeTagExists` when another tag holds it) and is
        refused while an image carries this tag with another (:class:`NegativeTagShared`);
        becoming Regular gives the row back."""
        if _is_name_row(tag_id):
            return None
        if type is not None and type not in TAG_TYPES:
            raise ValueError(f"tag type must be one of {TAG_TYPES}")
        before = self.get_tag(project_id, tag_id) if type == NEGATIVE_TAG else None
        if before is not None and not before.negative:  # becoming Negative: one scan
            shared = sum(1 for r in self.iter_images(project_id)
                         if tag_id in r.tag_ids and len(r.tag_ids) > 1)
            if shared:
                raise NegativeTagShared(
                    f"{shared} image(s) carry this tag and another; a Negative tag's images "
                    "carry no other tag")

        def fields(current: dict[str, Any]) -> dict[str, Any]:
            return {"description": current.get("description", "") if description is None
                    else description,
                    "type": type or current.get("type") or REGULAR_TAG}

        def extra(current: dict[str, Any]) -> list[Any]:
            was = current.get("type") or REGULAR_TAG
            if type is None or type == was:
                return []
            marker = self._negative_marker(project_id)
            if type == NEGATIVE_TAG:
                if marker is not None and marker.get("id") != tag_id:
                    raise NegativeTagExists("the project has a Negative tag already")
                return [] if marker is not None else [
                    ("create", _negative_row(project_id, tag_id))]
            if marker is not None and marker.get("id") == tag_id:
                return [("delete", marker, _if_unchanged(marker))]
            return []

        if not self._update_named(self._tags, project_id, tag_id, name, fields, extra):
            return None
        return self.get_tag(project_id, tag_id)

    def _negative_marker(self, project_id: str) -> Any:
        try:
            return self._tags.get_entity(project_id, _NEGATIVE_KEY)
        except ResourceNotFoundError:
            return None

    def _marker_of(self, project_id: str, tag_id: str) -> list[Any]:
        """Operations that delete the ``name-negative`` row when ``tag_id`` holds it."""
        marker = self._negative_marker(project_id)
        if marker is not None and marker.get("id") == tag_id:
            return [("delete", marker, _if_unchanged(marker))]
        return []

    def delete_tag(self, project_id: str, tag_id: str) -> Tag | None:
        """Delete a tag and its name, then take it off every image that carries it.

        In this order (the row first, the sweep after) an upload that validated the tag just
        before it went either is swept here or finds the tag gone after writing (:meth:`_settle`)
        and takes it off itself."""
        if _is_name_row(tag_id):
            return None
        row = self._delete_named(self._tags, project_id, tag_id,
                                 lambda _: self._marker_of(project_id, tag_id))
        if row is None:
            return None
        for record in self.iter_images(project_id):
            if tag_id in record.tag_ids:
                self.remove_image_tags(project_id, record.sha256, {tag_id})
        return Tag.from_entity(row)

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

    def _settle(self, record: ImageRecord, added_tags: tuple[str, ...]) -> ImageRecord:
        """After writing a record: undo what refers to a project or tag deleted meanwhile.

        The deletes remove their row first and sweep the images after; this reads after writing,
        so one side always sees the other (see the module docstring). Raises
        ``Rejected(unknown_project)`` when the project is gone (the record is removed); a gone
        tag is taken off the record, which is returned as it now is."""
        if self.get_project(record.project_id) is None:
            with suppress(ResourceNotFoundError):
                self._images.delete_entity(record.project_id, record.sha256)
            raise Rejected(Reason.UNKNOWN_PROJECT, "the project was deleted")
        gone = {t for t in added_tags if self.get_tag(record.project_id, t) is None}
        if not gone:
            return record
        self.remove_image_tags(record.project_id, record.sha256, gone)
        return self.get_image(record.project_id, record.sha256) or replace(
            record, tag_ids=tuple(t for t in record.tag_ids if t not in gone))

    @staticmethod
    def _owner(table: TableClient, partition: str, name: str) -> str | None:
        """The id bound to a name, or None."""
        try:
            return str(table.get_entity(partition, _name_row_key(name))["id"])
        except ResourceNotFoundError:
            return None

    @staticmethod
    def _create_named(table: TableClient, partition: str, name: str,
                      entity: dict[str, Any], extra: Sequence[Any] = ()) -> bool:
        """Insert an object row and its name row (and ``extra`` rows) in one transaction; False
        when the name (or an extra row) is taken (then nothing is written)."""
        try:
            table.submit_transaction([
                ("create", _name_row(partition, name, entity["RowKey"])),
                ("create", entity),
                *extra,
            ])
        except TableTransactionError as e:
            if e.error_code == TableErrorCode.ENTITY_ALREADY_EXISTS:
                return False
            raise
        return True

    def _update_named(self, table: TableClient, partition: str, row_key: str,
                      name: str | None, fields: Callable[[dict[str, Any]], dict[str, Any]],
                      extra: Callable[[dict[str, Any]], list[Any]] = lambda _: [],
                      ) -> bool:
        """Merge ``fields(current row)`` into an object row; a new ``name`` moves its name row in
        the same transaction, with ``extra(current row)`` operations. False when the object
        does not exist; :class:`NameTaken`."""
        for _ in range(_MAX_RETRIES):
            try:
                current = table.get_entity(partition, row_key)
            except ResourceNotFoundError:
                return False
            new_name = name.strip() if name is not None else current["name"]
            operations: list[Any] = []
            if name_key(new_name) != name_key(current["name"]):
                owner = self._owner(table, partition, new_name)
                if owner is not None and owner != row_key:
                    raise NameTaken(f"the name {new_name!r} is taken")
                if owner is None:
                    operations.append(("create", _name_row(partition, new_name, row_key)))
                with suppress(ResourceNotFoundError):
                    old = table.get_entity(partition, _name_row_key(current["name"]))
                    if old.get("id") == row_key:
                        operations.append(("delete", old, _if_unchanged(old)))
            operations.append((
                "update",
                {"PartitionKey": partition, "RowKey": row_key, "name": new_name,
                 **fields(current)},
                {"mode": UpdateMode.MERGE, **_if_unchanged(current)},
            ))
            operations.extend(extra(current))
            try:
                table.submit_transaction(operations)
            except TableTransactionError as e:
                if _lost_race(e):
                    continue  # the name was taken, or the rows changed: look again
                raise
            return True
        raise RuntimeError(f"could not update {row_key}: too much contention")

    def _delete_named(self, table: TableClient, partition: str, row_key: str,
                      extra: Callable[[dict[str, Any]], list[Any]] = lambda _: [],
                      ) -> dict[str, Any] | None:
        """Delete an object row and its name row (and ``extra(current row)`` operations) in one
        transaction; the deleted row, or None when it did not exist."""
        for _ in range(_MAX_RETRIES):
            try:
                current = table.get_entity(partition, row_key)
            except ResourceNotFoundError:
                return None
            operations: list[Any] = [("delete", current, _if_unchanged(current))]
            with suppress(ResourceNotFoundError):
                name_row = table.get_entity(partition, _name_row_key(current["name"]))
                if name_row.get("id") == row_key:
                    operations.append(("delete", name_row, _if_unchanged(name_row)))
            operations.extend(extra(current))
            try:
                table.submit_transaction(operations)
            except TableTransactionError as e:
                if _lost_race(e):
                    continue
                raise
            return dict(current)
        raise RuntimeError(f"could not delete {row_key}: too much contention")

    @staticmethod
    def _delete_partition(table: TableClient, partition: str) -> None:
        """Delete every row of one partition (a deleted project's tags and their names)."""
        rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": partition},
                                    select=["PartitionKey", "RowKey"])
        for row in list(rows):
            with suppress(ResourceNotFoundError):
                table.delete_entity(partition, row["RowKey"])

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
            "metadata": json.dumps(dict(r.metadata)),
            **_region_columns(r.regions),
        }

    def _tag_names(self, project_id: str, record: ImageRecord) -> str:
        found = (self.get_tag(project_id, t) for t in record.tag_ids)
        return ", ".join(repr(t.name) for t in found if t is not None) or "another tag"
