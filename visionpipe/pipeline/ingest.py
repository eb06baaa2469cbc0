"""The training drop folder: ``training-images/{project}/{tag}/{name}`` becomes a label record.

A blob that fails any rule is moved to quarantine with its reason; nothing is lost and nothing is
silently skipped. Every step is idempotent, because Event Grid delivers at least once.

The name in the event is judged first (:mod:`visionpipe.blob_names`), before any storage call: an
unsafe name is answered with a reason record alone and its blob is never addressed.

In an object detection project the layout is ``{project}/[{folders}/]{file}``: images are recorded
untagged and annotation files (Pascal VOC, YOLO, COCO) give them boxes and tags, whichever
arrives first (:mod:`visionpipe.pipeline.detection_ingest`). An annotation file anywhere else is
quarantined unread.

Blobs written by the HTTP API carry ``visionpipe_source=api`` (and ``visionpipe_tags``, the tag
ids). The API writes the blob before the record, so a marked blob without a record is an upload
that stopped half way: ingest repairs it by recording the image with the tags of its metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from visionpipe import names
from visionpipe.annotations import AnnotationBlob, classify_blob
from visionpipe.blob_names import folder_name_problem, unsafe_reason
from visionpipe.pipeline import lifecycle_events
from visionpipe.pipeline.detection_ingest import DetectionDrop, too_big
from visionpipe.pipeline.detection_ingest import max_bytes as max_annotation_bytes
from visionpipe.pipeline.events import BlobCreated
from visionpipe.rejections import Reason, Rejected, Rejection
from visionpipe.settings import Settings
from visionpipe.storage import Storage
from visionpipe.stores.label_store import AddStatus, ImageFacts, LabelStore, Project
from visionpipe.stores.quarantine import (
    REASON_SUFFIX,
    is_reserved_name,
    quarantine_blob,
    record_unsafe_name,
)
from visionpipe.validation import validate_image

log = logging.getLogger(__name__)

# Blob metadata (key, value) the HTTP API puts on images it stores in the drop container.
API_UPLOAD_MARKER = ("visionpipe_source", "api")
#: Blob metadata of an API upload: its tag ids, comma-separated (absent: untagged).
API_TAGS_METADATA = "visionpipe_tags"
#: The folder of an API upload without tags (``{project}/_untagged/{image id}.{ext}``).
UNTAGGED_FOLDER = "_untagged"


class Outcome(StrEnum):
    LABELLED = "labelled"  # a new image
    TAG_ADDED = "tag_added"  # known bytes, one more tag (multilabel)
    DUPLICATE = "duplicate"  # known bytes and tag
    REPAIRED = "repaired"  # an API upload whose record was missing: recorded from the blob
    QUARANTINED = "quarantined"
    GONE = "gone"  # the blob no longer exists: an earlier delivery handled it
    # detection projects' annotation files (visionpipe.pipeline.detection_ingest)
    ANNOTATED = "annotated"  # its boxes were applied to at least one image already here
    PENDING = "pending"  # checked and kept: its images (or YOLO class names) have not arrived


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    container: str
    path: str
    project_id: str | None = None
    image_sha256: str | None = None
    rejection: Rejection | None = None


@dataclass(frozen=True)
class TrainingDropPath:
    project: str
    tag: str
    name: str


def _check_name(kind: str, value: str, path: str) -> None:
    problem = folder_name_problem(value)
    if problem is not None:
        raise Rejected(Reason.BAD_PATH, f"{path!r}: the {kind} folder name {problem}")


def _check_drop_name(path: str) -> None:
    """Refuse unsafe names and the names the quarantine reserves (both drop layouts)."""
    problem = unsafe_reason(path)
    if problem is not None:
        raise Rejected(Reason.BAD_PATH, f"not a safe blob name: {problem}")
    if is_reserved_name(path):
        raise Rejected(
            Reason.BAD_PATH,
            f"{path!r}: names ending in {REASON_SUFFIX!r} are reserved for quarantine records",
        )


def parse_training_path(path: str) -> TrainingDropPath:
    """``{project}/{tag}/{name}``, refusing unsafe names and names the quarantine reserves."""
    _check_drop_name(path)
    parts = path.split("/")
    if len(parts) != 3:
        raise Rejected(
            Reason.BAD_PATH,
            f"{path!r} must be {{project}}/{{tag}}/{{file}}: one folder for the project and one "
            f"for the tag (found {len(parts) - 1} folder level(s))",
        )
    project, tag, name = parts
    _check_name("project", project, path)
    _check_name("tag", tag, path)
    return TrainingDropPath(project, tag, name)


def parse_detection_path(path: str) -> TrainingDropPath:
    """``{project}/[{folders}/]{file}`` of an object detection project (docs/ARCHITECTURE.md,
    "Storage layout (one storage account)"): folders only group files, tags come from the
    annotations. ``tag`` holds the folder path below the project ("" for none)."""
    _check_drop_name(path)
    parts = path.split("/")
    if len(parts) < 2:
        raise Rejected(Reason.BAD_PATH, f"{path!r} must be {{project}}/[{{folders}}/]{{file}}")
    _check_name("project", parts[0], path)
    return TrainingDropPath(parts[0], "/".join(parts[1:-1]), parts[-1])


def _project_of(store: LabelStore, path: str) -> Project | None:
    """The project a (safe) drop path names by its first segment, if it exists."""
    first = path.split("/", 1)[0]
    return store.find_project(first) if folder_name_problem(first) is None else None


def ingest_training_blob(blob: BlobCreated, storage: Storage, settings: Settings) -> IngestResult:
    """Validate one dropped training image and record its label, or quarantine it."""
    container, path = blob.container, blob.path
    context = {"eventId": blob.event_id}
    problem = unsafe_reason(path)
    if problem is not None:  # judged before any storage call is made with the name
        record_unsafe_name(storage, container, path, context=context)
        return IngestResult(Outcome.QUARANTINED, container, path,
                            rejection=Rejection(Reason.BAD_PATH, problem))

    def reject(rejection: Rejection, data: bytes | None, etag: str | None) -> IngestResult:
        moved = quarantine_blob(storage, container, path, rejection, etag=etag, data=data,
                                context=context)
        lifecycle_events.quarantined(storage, container, path, rejection, moved, etag)
        return IngestResult(Outcome.QUARANTINED if moved else Outcome.GONE, container, path,
                            rejection=rejection)

    store = LabelStore(storage)
    project = _project_of(store, path)
    detection = project is not None and project.detection
    try:
        drop = parse_detection_path(path) if detection else parse_training_path(path)
    except Rejected as e:
        return reject(e.rejection, None, None)
    annotation = classify_blob(path)
    if annotation is not None:
        if project is None or not project.detection:
            return reject(Rejection(
                Reason.UNKNOWN_PROJECT if project is None else Reason.UNSUPPORTED_FORMAT,
                f"{path!r} is an annotation file ({annotation.kind}); box files are read only in "
                "an existing object detection project (create it with an object detection "
                "domain first, then drop images and their box files)"), None, None)
        return _ingest_annotation(storage, project, annotation, blob, reject)

    client = storage.container(container).get_blob_client(path)
    limits = settings.training_limits
    try:
        props = client.get_blob_properties()
        metadata = dict(props.metadata or {})
        from_api = metadata.get(API_UPLOAD_MARKER[0]) == API_UPLOAD_MARKER[1]
        if from_api and _api_image_recorded(store, drop):
            # The API wrote the blob and then its record: nothing to do (no download).
            return IngestResult(Outcome.DUPLICATE, container, path)
        if props.size > limits.max_bytes:  # never download more than the limit allows
            return reject(
                Rejection(Reason.TOO_LARGE, f"file is {props.size:,} bytes; training images "
                                            f"may be at most {limits.max_bytes:,} bytes"),
                None, props.etag,
            )
        data = client.download_blob(
            etag=props.etag, match_condition=MatchConditions.IfNotModified
        ).readall()
    except ResourceNotFoundError:
        log.info("%s/%s is gone: an earlier delivery handled it", container, path)
        return IngestResult(Outcome.GONE, container, path)
    except ResourceModifiedError as e:
        # Overwritten between two reads: the new version has an event of its own; retrying
        # this delivery is the simplest way to judge the current bytes.
        raise RuntimeError(f"{container}/{path} changed while being read; retry") from e

    checked = validate_image(data, limits)
    if isinstance(checked, Rejection):
        return reject(checked, data, props.etag)
    facts = ImageFacts.of(checked)

    if project is None and from_api:
        # An API upload names an existing project; it was deleted since: keep the bytes.
        return reject(Rejection(Reason.UNKNOWN_PROJECT,
                                f"no project named {drop.project!r} (it was deleted after "
                                "this image was uploaded through the API)"),
                      data, props.etag)
    if project is None:
        if not settings.auto_create_projects:
            return reject(
                Rejection(Reason.UNKNOWN_PROJECT, f"no project named {drop.project!r}, and "
                          f"{names.SETTING_AUTO_CREATE_PROJECTS} is off"),
                data, props.etag,
            )
        project = store.create_project(drop.project)
        log.info("created project %r (%s) on first sight", project.name, project.id)
    if from_api:
        return _repair_api_upload(store, project, drop, metadata, facts, path,
                                  lambda r: reject(r, data, props.etag))
    if project.detection:
        return _ingest_detection_image(storage, project, blob, facts,
                                       lambda r: reject(r, data, props.etag))
    tag = store.get_or_create_tag(project.id, drop.tag)
    try:
        added = store.add_image(project, tag, facts, path)
    except Rejected as e:
        return reject(e.rejection, data, props.etag)
    outcome = {
        AddStatus.CREATED: Outcome.LABELLED,
        AddStatus.TAG_ADDED: Outcome.TAG_ADDED,
        AddStatus.DUPLICATE: Outcome.DUPLICATE,
    }[added.status]
    log.info("%s/%s: %s (project %s, tag %r, image %s)", container, path, outcome,
             project.id, tag.name, checked.sha256[:12])
    return IngestResult(outcome, container, path, project.id, checked.sha256)


def _api_image_recorded(store: LabelStore, drop: TrainingDropPath) -> bool:
    """Whether the API upload at ``drop`` (``{project}/{folder}/{image id}.{ext}``) has its
    record; two table reads, no download."""
    project = store.find_project(drop.project)
    if project is None:
        return False
    image_id_ = drop.name.rsplit(".", 1)[0]
    return store.find_image(project.id, image_id_) is not None


def api_tag_ids(store: LabelStore, project: Project, folder: str,
                metadata: dict[str, str]) -> tuple[str, ...]:
    """The tags of an API-written blob: its ``visionpipe_tags`` metadata (tags deleted since are
    dropped), else its folder (``_untagged``, or the first tag's name, for blobs without it)."""
    listed = metadata.get(API_TAGS_METADATA)
    if listed is not None:
        ids = (t.strip().lower() for t in listed.split(",") if t.strip())
        return tuple(t for t in dict.fromkeys(ids) if store.get_tag(project.id, t) is not None)
    if folder == UNTAGGED_FOLDER:
        return ()
    tag = store.find_tag(project.id, folder)
    return (tag.id,) if tag is not None else ()


def _repair_api_upload(store: LabelStore, project: Project, drop: TrainingDropPath,
                       metadata: dict[str, str], facts: ImageFacts, path: str,
                       reject: Callable[[Rejection], IngestResult]) -> IngestResult:
    """Record an API upload whose record was never written (the upload stopped after the blob).

    Racing the API's own record write is harmless: both create the same record, once.
    """
    tag_ids = api_tag_ids(store, project, drop.tag, metadata)
    try:
        added = store.create_image(project, tag_ids, facts, path)
    except Rejected as e:
        return reject(e.rejection)
    outcome = Outcome.REPAIRED if added.status == AddStatus.CREATED else Outcome.DUPLICATE
    log.warning("%s/%s: API upload without a record -> %s (project %s, %d tag(s), image %s)",
                names.TRAINING_IMAGES, path, outcome, project.id, len(tag_ids),
                facts.sha256[:12])
    return IngestResult(outcome, names.TRAINING_IMAGES, path, project.id, facts.sha256)


# --- object detection projects (visionpipe.pipeline.detection_ingest) -------------------------
def _ingest_detection_image(storage: Storage, project: Project, blob: BlobCreated,
                            facts: ImageFacts, reject: Callable[[Rejection], IngestResult]
                            ) -> IngestResult:
    """A detection project's image: recorded untagged, then given the boxes waiting for it."""
    drop = DetectionDrop(storage, LabelStore(storage), project, blob.container, blob.event_id)
    try:
        status, applied = drop.image_arrived(blob.path, facts)
    except Rejected as e:
        return reject(e.rejection)
    outcome = Outcome.LABELLED if status == AddStatus.CREATED else Outcome.DUPLICATE
    log.info("%s/%s: %s (detection project %s, %d annotation file(s) applied, image %s)",
             blob.container, blob.path, outcome, project.id, applied, facts.sha256[:12])
    return IngestResult(outcome, blob.container, blob.path, project.id, facts.sha256)


def _ingest_annotation(storage: Storage, project: Project, annotation: AnnotationBlob,
                       blob: BlobCreated,
                       reject: Callable[[Rejection, bytes | None, str | None], IngestResult]
                       ) -> IngestResult:
    """A detection project's annotation file: checked (refused as a whole: quarantined), kept in
    place, and applied to every image it names that is already here."""
    container, path = blob.container, blob.path
    client = storage.container(container).get_blob_client(path)
    try:
        props = client.get_blob_properties()
        if props.size > max_annotation_bytes(annotation.kind):  # refused unread
            return reject(too_big(annotation.kind, props.size), None, props.etag)
        data = client.download_blob(
            etag=props.etag, match_condition=MatchConditions.IfNotModified
        ).readall()
    except ResourceNotFoundError:
        return IngestResult(Outcome.GONE, container, path, project.id)
    except ResourceModifiedError as e:
        raise RuntimeError(f"{container}/{path} changed while being read; retry") from e
    drop = DetectionDrop(storage, LabelStore(storage), project, container, blob.event_id)
    try:
        applied = drop.annotation_arrived(annotation, data, str(props.etag))
    except Rejected as e:
        return reject(e.rejection, data, props.etag)
    outcome = Outcome.ANNOTATED if applied else Outcome.PENDING
    log.info("%s/%s: %s file, %s (applied to %d image(s))", container, path, annotation.kind,
             outcome, applied)
    return IngestResult(outcome, container, path, project.id)
