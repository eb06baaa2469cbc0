"""The training drop folder: ``training-images/{project}/{tag}/{name}`` becomes a label record.

A blob that fails any rule is moved to quarantine with its reason; nothing is lost and nothing is
silently skipped. Every step is idempotent, because Event Grid delivers at least once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from visionpipe import names
from visionpipe.events import BlobCreated
from visionpipe.label_store import AddStatus, ImageFacts, LabelStore
from visionpipe.quarantine import is_safe_blob_path, quarantine_blob
from visionpipe.rejections import Reason, Rejected, Rejection
from visionpipe.settings import Settings
from visionpipe.storage import Storage
from visionpipe.validation import validate_image

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 256
# Blob metadata (key, value) the HTTP API puts on images it stores in the drop container.
API_UPLOAD_MARKER = ("visionpipe_source", "api")


class Outcome(StrEnum):
    LABELLED = "labelled"  # a new image
    TAG_ADDED = "tag_added"  # known bytes, one more tag (multilabel)
    DUPLICATE = "duplicate"  # known bytes and tag
    QUARANTINED = "quarantined"
    GONE = "gone"  # the blob no longer exists: an earlier delivery handled it


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
    if not value.strip():
        raise Rejected(Reason.BAD_PATH, f"{path!r}: the {kind} folder name is empty")
    if value != value.strip():
        raise Rejected(Reason.BAD_PATH, f"{path!r}: the {kind} name {value!r} has outer spaces")
    if len(value) > MAX_NAME_LENGTH:
        raise Rejected(Reason.BAD_PATH, f"{path!r}: the {kind} name is over {MAX_NAME_LENGTH} "
                                        "characters")


def parse_training_path(path: str) -> TrainingDropPath:
    """``{project}/{tag}/{name}``, refusing traversal, control characters and empty parts."""
    if not is_safe_blob_path(path):
        raise Rejected(
            Reason.BAD_PATH,
            f"{path!r} is not a safe blob name (empty part, '.', '..', backslash or a control "
            "character)",
        )
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


def ingest_training_blob(blob: BlobCreated, storage: Storage, settings: Settings) -> IngestResult:
    """Validate one dropped training image and record its label, or quarantine it."""
    container, path = blob.container, blob.path
    context = {"eventId": blob.event_id}

    def reject(rejection: Rejection, data: bytes | None, etag: str | None) -> IngestResult:
        moved = quarantine_blob(storage, container, path, rejection, etag=etag, data=data,
                                context=context)
        return IngestResult(Outcome.QUARANTINED if moved else Outcome.GONE, container, path,
                            rejection=rejection)

    try:
        drop = parse_training_path(path)
    except Rejected as e:
        return reject(e.rejection, None, None)

    client = storage.container(container).get_blob_client(path)
    limits = settings.training_limits
    try:
        props = client.get_blob_properties()
        if (props.metadata or {}).get(API_UPLOAD_MARKER[0]) == API_UPLOAD_MARKER[1]:
            # Written by the HTTP API, which recorded the label before writing the blob.
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

    store = LabelStore(storage)
    project = store.find_project(drop.project)
    if project is None:
        if not settings.auto_create_projects:
            return reject(
                Rejection(Reason.UNKNOWN_PROJECT, f"no project named {drop.project!r}, and "
                          f"{names.SETTING_AUTO_CREATE_PROJECTS} is off"),
                data, props.etag,
            )
        project = store.create_project(drop.project)
        log.info("created project %r (%s) on first sight", project.name, project.id)
    tag = store.get_or_create_tag(project.id, drop.tag)
    facts = ImageFacts(checked.sha256, checked.width, checked.height, checked.format,
                       checked.size_bytes)
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
