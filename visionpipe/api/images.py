"""Training API: images -- uploads in batches with per-image status, queries, tags, deletes.

Uploads land in the same store as the drop folder (docs/ARCHITECTURE.md,
"Storage layout (one storage account)"): the bytes in ``training-images`` at
``{project name}/{first tag name or _untagged}/{image id}.{ext}`` and a record in the ``images``
table whose ``blobPaths`` the training job reads. The blob is written before the
record (:func:`_store_image`), so a crash in between leaves bytes without a record, never a
record without bytes: the ingest function, when Event Grid reports the blob, records it from the
blob's metadata (``visionpipe_source=api``, ``visionpipe_tags``), and a re-upload completes it
too; when the record exists, ingest finds the image already labelled and changes nothing.

Per-image statuses are Custom Vision's ``ImageCreateStatus``; a batch answers 200 when every image
is OK or OKDuplicate and 207 otherwise, as the service does.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from visionpipe import names
from visionpipe.api import errors as api_errors
from visionpipe.api import models as api_models
from visionpipe.api.adapter import WithStatus
from visionpipe.api.context import RequestContext
from visionpipe.api.errors import ApiError
from visionpipe.api.models import REASON_STATUS, ImageCreateResult, ImageStatus
from visionpipe.api.regions import BadRegion, Box, require_detection, upload_regions
from visionpipe.api.values import Values, is_id
from visionpipe.blob_names import is_safe_blob_name
from visionpipe.pipeline.ingest import API_TAGS_METADATA, API_UPLOAD_MARKER, UNTAGGED_FOLDER
from visionpipe.rejections import Reason, Rejected, Rejection
from visionpipe.stores.label_store import (
    AddStatus,
    ImageFacts,
    ImageRecord,
    ImageRegion,
    MetadataLimitExceeded,
    NegativeTagConflict,
    Project,
    Tag,
    image_id,
)
from visionpipe.validation import CONTENT_TYPES

log = logging.getLogger(__name__)

MAX_BATCH = 64  # images per upload batch (the service's limit)
MAX_TAGS_PER_IMAGE = 20  # the SDK's max_items for tagIds
MAX_IDS = 256  # ids per get-by-ids / delete call (the SDK's max_items)
MAX_TAKE = 256
MAX_TAG_ENTRIES = 256
# Image metadata, the service's limits (Training v3.4-preview, update_image_metadata): 64 images
# per call, 10 key/value pairs per image, keys up to 128 characters, values up to 256.
MAX_METADATA_IMAGES = 64
MAX_METADATA_PAIRS = 10
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 256
UPLOAD_WORKERS = 4
SOURCE_METADATA = dict([API_UPLOAD_MARKER])
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif"}


def image_batch_error(count: int) -> ApiError:
    return api_errors.bad_request(
        "BadRequestImageBatch",
        f"The batch has {count} images; a batch holds 1 to {MAX_BATCH}",
    )


def image_not_found() -> ApiError:
    return ApiError(404, "NotFoundImage", "Invalid image")


@dataclass(frozen=True)
class Upload:
    """One image of a batch: its bytes, or why they could not be had."""

    data: bytes | None
    tag_ids: tuple[str, ...] = ()
    source_url: str | None = None
    error: ImageStatus | None = None
    detail: str = ""
    metadata: tuple[tuple[str, str], ...] = ()  # the batch's metadata, set on a new image
    regions: tuple[tuple[str, Box], ...] = ()  # (tag id, box): a detection image's regions


def blob_path(project: Project, tag: Tag | None, image_id: str, fmt: str) -> str:
    folder = tag.name if tag is not None else UNTAGGED_FOLDER
    return f"{project.name}/{folder}/{image_id}.{_EXTENSIONS.get(fmt, 'img')}"


def _image_dict(ctx: RequestContext, record: ImageRecord, tags: dict[str, Tag]) -> dict[str, Any]:
    return api_models.image_to_dict(record, tags, ctx.image_uri(record.project_id, record.id))


def _tag_ids(*lists: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip().lower() for ids in lists for t in ids or () if t))


# --- uploads ------------------------------------------------------------------------------------
def create_images(ctx: RequestContext, project_id: str, uploads: Sequence[Upload]) -> WithStatus:
    """Validate and record a batch; ``(ImageCreateSummary, 200 | 207)``."""
    project = ctx.project(project_id)
    if not 0 < len(uploads) <= MAX_BATCH:
        raise image_batch_error(len(uploads))
    if any(u.regions for u in uploads):
        require_detection(project)
    tags = {t.id: t for t in ctx.label_store.list_tags(project_id)}
    # A few at a time: validation releases the GIL in Pillow, storage calls wait on the network.
    with ThreadPoolExecutor(max_workers=min(UPLOAD_WORKERS, len(uploads))) as pool:
        results = list(pool.map(lambda u: _create_one(ctx, project, tags, u), uploads))
    return api_models.summary(results)


def _create_one(ctx: RequestContext, project: Project, tags: dict[str, Tag],
                upload: Upload) -> ImageCreateResult:
    def fail(status: ImageStatus, detail: str) -> ImageCreateResult:
        return ImageCreateResult(status, source_url=upload.source_url, reason=detail)

    if upload.error is not None or upload.data is None:
        return fail(upload.error or ImageStatus.ERROR_SOURCE, upload.detail)
    tag_ids = _tag_ids(upload.tag_ids)
    if len(tag_ids) > MAX_TAGS_PER_IMAGE:
        return fail(ImageStatus.ERROR_TAG_LIMIT_EXCEED, f"over {MAX_TAGS_PER_IMAGE} tags")
    unknown = [t for t in (*tag_ids, *(t for t, _ in upload.regions)) if t not in tags]
    if unknown:
        return fail(ImageStatus.ERROR_INVALID_TAG, f"unknown tag ids {sorted(set(unknown))}")
    regions = tuple(ImageRegion(str(uuid.uuid4()), t, *box)
                    for t, box in dict.fromkeys(upload.regions))

    from visionpipe.validation import validate_image

    checked = validate_image(upload.data, ctx.limits)
    if isinstance(checked, Rejection):
        return fail(REASON_STATUS.get(checked.reason, ImageStatus.ERROR_UNKNOWN),
                    f"{checked.reason}: {checked.message}")
    facts = ImageFacts.of(checked)
    folder_tags = tag_ids or tuple(r.tag_id for r in regions)
    path = blob_path(project, tags[folder_tags[0]] if folder_tags else None,
                     image_id(checked.sha256), checked.format)
    if not is_safe_blob_name(path):
        return fail(ImageStatus.ERROR_UNKNOWN, "the project or tag name cannot name a folder")
    try:
        status, record = _store_image(ctx, project, tag_ids, facts, path, upload.data,
                                      upload.metadata, regions)
    except NegativeTagConflict as e:
        return fail(ImageStatus.ERROR_NEGATIVE_AND_REGULAR_TAG, e.rejection.message)
    except Rejected as e:
        return fail(REASON_STATUS.get(e.rejection.reason, ImageStatus.ERROR_UNKNOWN),
                    f"{e.rejection.reason}: {e.rejection.message}")
    except Exception as e:  # noqa: BLE001 - one image's storage failure must not fail the batch
        log.warning("storing %s failed: %s", path, e)  # the details for the operator only
        return fail(ImageStatus.ERROR_STORAGE, "the image could not be stored")
    return ImageCreateResult(status, _image_dict(ctx, record, tags), upload.source_url)


def _blob_metadata(tag_ids: Sequence[str]) -> dict[str, str]:
    """What ingest needs to rebuild the record from the blob alone (see :mod:`.ingest`)."""
    return {**SOURCE_METADATA, **({API_TAGS_METADATA: ",".join(tag_ids)} if tag_ids else {})}


def _write_if_absent(ctx: RequestContext, path: str, data: bytes, fmt: str,
                     tag_ids: Sequence[str]) -> str | None:
    """Write the blob unless one is there already; the new blob's ETag, or None."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import ContentSettings

    client = ctx.storage.container(names.TRAINING_IMAGES).get_blob_client(path)
    try:
        written = client.upload_blob(
            data, overwrite=False, metadata=_blob_metadata(tag_ids),
            content_settings=ContentSettings(content_type=CONTENT_TYPES[fmt]),
        )
    except ResourceExistsError:
        return None
    return str(written["etag"])


def _discard(ctx: RequestContext, path: str, etag: str) -> None:
    """Remove a blob this request wrote and no record names (only that very version)."""
    from contextlib import suppress

    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    with suppress(ResourceModifiedError, ResourceNotFoundError):
        ctx.storage.container(names.TRAINING_IMAGES).delete_blob(
            path, etag=etag, match_condition=MatchConditions.IfNotModified)


def _store_image(ctx: RequestContext, project: Project, tag_ids: tuple[str, ...], facts: ImageFacts,
                 path: str, data: bytes, metadata: tuple[tuple[str, str], ...] = (),
                 regions: tuple[ImageRegion, ...] = ()) -> tuple[ImageStatus, ImageRecord]:
    """Blob first (when absent), then the record; ``OK`` or ``OKDuplicate`` and the record.

    A crash between the two leaves a marked blob that ingest records, or that this function
    completes when the image is uploaded again. An existing record whose blobs are all missing
    (left by a crash of the old record-first order) gets its bytes back.
    """
    if not project.multilabel and len(tag_ids) > 1:  # refused before anything is written
        raise Rejected(Reason.CONFLICTING_TAG,
                       f"multiclass project {project.name!r}: one image carries one tag")
    etag = _write_if_absent(ctx, path, data, facts.format, tag_ids)
    try:
        added = ctx.label_store.create_image(project, tag_ids, facts, path, metadata, regions)
    except Rejected:
        if etag is not None:
            _discard(ctx, path, etag)
        raise
    if added.status == AddStatus.CREATED:
        return ImageStatus.OK, added.image
    record = added.image
    if path in record.blob_paths:
        # Recorded already with this very blob: by ingest (which saw the blob first) or by an
        # upload that stopped after its record. This request wrote the bytes: it is the upload.
        return (ImageStatus.OK if etag is not None else ImageStatus.OK_DUPLICATE), record
    if etag is not None:  # known bytes under another path: ours is not needed
        _discard(ctx, path, etag)
    _restore_blob(ctx, record, data)
    return ImageStatus.OK_DUPLICATE, record


def _restore_blob(ctx: RequestContext, record: ImageRecord, data: bytes) -> None:
    """Write ``data`` at the record's first path when none of its blobs exists."""
    container = ctx.storage.container(names.TRAINING_IMAGES)
    if any(container.get_blob_client(p).exists() for p in record.blob_paths):
        return
    path = next((p for p in record.blob_paths if is_safe_blob_name(p)), None)
    if path is not None:
        log.warning("image %s had a record but no blob: writing %s again", record.id, path)
        _write_if_absent(ctx, path, data, record.format, record.tag_ids)


def uploads_from_body(body: bytes, content_type: str | None,
                      tag_ids: Sequence[str]) -> list[Upload]:
    """``images`` (create from data): every part of a multipart body, or a raw body."""
    from visionpipe.api.multipart import BadBody, header_params, parse_multipart

    media = header_params(content_type or "")[0]
    if media == "multipart/form-data":
        try:
            parts = parse_multipart(body, content_type or "")
        except BadBody as e:
            raise api_errors.bad_request("BadRequestImageStream", str(e)) from e
        return [Upload(p.data, tuple(tag_ids)) for p in parts]
    if not body:
        raise api_errors.image_stream_missing()
    return [Upload(body, tuple(tag_ids))]


def _entries(batch: Values) -> list[Values]:
    raw = batch.get("images")
    if isinstance(raw, list) and not 0 < len(raw) <= MAX_BATCH:
        raise image_batch_error(len(raw))
    try:
        images = batch.objects("images", max_items=MAX_BATCH)
    except ApiError:
        images = None
    if images is None:
        raise api_errors.bad_request("BadRequestImageBatch", "images must be a list of objects")
    return images


def _batch_tags(batch: Values) -> list[str]:
    return batch.strings("tagIds", max_items=MAX_TAGS_PER_IMAGE, max_length=64)


def _entry_tags(entry: Values) -> list[str] | None:
    """An entry's own tag ids, or None when they are of the wrong type (that entry fails)."""
    try:
        return entry.strings("tagIds", max_items=MAX_TAGS_PER_IMAGE, max_length=64)
    except ApiError:
        return None


def _bad_entry(tags: Sequence[str], url: str | None = None) -> Upload:
    return Upload(None, tuple(tags), url, ImageStatus.ERROR_INVALID_TAG,
                  "tagIds must be a list of tag ids")


def _entry_regions(entry: Values) -> tuple[tuple[str, Box], ...] | Upload:
    """An entry's ``regions`` (checked as ``POST images/regions`` checks them), or the failed
    upload that says why (over 300: ``ErrorRegionLimitExceed``)."""
    try:
        return upload_regions(entry)
    except BadRegion as e:
        status = (ImageStatus.ERROR_REGION_LIMIT_EXCEED if e.reason == Reason.TOO_MANY_REGIONS
                  else ImageStatus.ERROR_UNKNOWN)
        raw = entry.get("url")
        return Upload(None, (), raw if isinstance(raw, str) else None, status,
                      f"{e.reason}: {e}")


def with_metadata(uploads: list[Upload], batch: Values) -> list[Upload]:
    """The batch's ``metadata`` (v3.4-preview: one set for every image of the batch) on each
    upload; a bad one refuses the whole batch with the code update_image_metadata uses."""
    metadata = tuple(check_metadata(batch.get("metadata")).items())
    return [replace(u, metadata=metadata) for u in uploads] if metadata else uploads


Regions = tuple[tuple[str, Box], ...]


def _each_entry(batch: Values, load: Callable[[Values, tuple[str, ...], Regions], Upload],
                parallel: bool = False) -> list[Upload]:
    """One upload per entry of an ``images`` batch, whatever the source: the batch's and the
    entry's tag ids and the entry's regions are checked here, the same way for files, URLs and
    stored predictions; ``load`` only gets the entry's bytes (or the upload that says why not).
    A bad entry fails only itself. ``parallel``: entries are loaded at once (URL fetches)."""
    entries = _entries(batch)
    shared = _batch_tags(batch)

    def one(entry: Values) -> Upload:
        own = _entry_tags(entry)
        if own is None:
            raw = entry.get("url")
            return _bad_entry(shared, raw if isinstance(raw, str) else None)
        regions = _entry_regions(entry)
        if isinstance(regions, Upload):
            return regions
        return load(entry, _tag_ids(shared, own), regions)

    if not parallel:
        return [one(entry) for entry in entries]
    with ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:
        return list(pool.map(one, entries))


def uploads_from_files(batch: Values) -> list[Upload]:
    """``ImageFileCreateBatch``: ``contents`` is base64 (msrest serialises bytearray so)."""

    def decode(entry: Values, tags: tuple[str, ...], regions: Regions) -> Upload:
        contents = entry.get("contents")
        try:
            if not isinstance(contents, str):
                raise TypeError("contents must be a base64 string")
            data = base64.b64decode(contents, validate=True)
        except (binascii.Error, ValueError, TypeError):
            return Upload(None, tags, error=ImageStatus.ERROR_IMAGE_FORMAT,
                          detail="contents is not base64")
        return Upload(data, tags, regions=regions)

    return with_metadata(_each_entry(batch, decode), batch)


def uploads_from_urls(batch: Values, max_bytes: int) -> list[Upload]:
    """``ImageUrlCreateBatch``: fetched in parallel by :mod:`visionpipe.api.url_fetch` (the one
    fetcher: SSRF refusals, size and time limits). A bad entry -- a malformed URL, a URL that is
    not a string, tag ids of the wrong type -- fails only itself."""
    from visionpipe.api.url_fetch import FetchError, fetch

    check_metadata(batch.get("metadata"))  # before anything is fetched

    def download(entry: Values, tags: tuple[str, ...], regions: Regions) -> Upload:
        raw = entry.get("url")
        url = raw if isinstance(raw, str) else None
        try:
            return Upload(fetch(raw, max_bytes), tags, url, regions=regions)
        except FetchError as e:
            return Upload(None, tags, url, ImageStatus.ERROR_SOURCE, str(e))

    return with_metadata(_each_entry(batch, download, parallel=True), batch)


def uploads_from_predictions(ctx: RequestContext, project_id: str,
                             batch: Values) -> list[Upload]:
    """``ImageIdCreateBatch``: ids of stored predictions whose image was kept in storage."""
    from azure.core.exceptions import ResourceNotFoundError

    from visionpipe.stores.prediction_store import PredictionStore

    predictions = PredictionStore(ctx.storage)

    def copy(entry: Values, tags: tuple[str, ...], regions: Regions) -> Upload:
        prediction_id = entry.get("id")
        stored = (predictions.get(project_id, prediction_id)
                  if isinstance(prediction_id, str) and is_id(prediction_id) else None)
        if stored is None or "/" not in stored.blob_path:
            return Upload(None, tags, error=ImageStatus.ERROR_SOURCE,
                          detail="no stored prediction with a kept image")
        container, _, path = stored.blob_path.partition("/")
        try:
            data = ctx.storage.container(container).download_blob(path).readall()
        except ResourceNotFoundError:
            return Upload(None, tags, error=ImageStatus.ERROR_SOURCE,
                          detail="the predicted image is gone")
        return Upload(data, tags, regions=regions)

    return with_metadata(_each_entry(batch, copy), batch)


# --- queries ------------------------------------------------------------------------------------
def _select(ctx: RequestContext, project_id: str, tagged: bool | None,
            tag_ids: Sequence[str] = ()) -> list[ImageRecord]:
    ctx.project(project_id)
    wanted = set(_tag_ids(tag_ids))
    out = []
    for record in ctx.label_store.iter_images(project_id):
        if tagged is True and not record.tag_ids:
            continue
        if tagged is False and record.tag_ids:
            continue
        if wanted and not wanted.intersection(record.tag_ids):
            continue
        out.append(record)
    return out


def list_images(ctx: RequestContext, project_id: str, tagged: bool | None,
                tag_ids: Sequence[str] = (), order_by: str | None = None, take: int = 50,
                skip: int = 0) -> list[dict[str, Any]]:
    """Tagged / untagged / all images, newest first unless ``orderBy=Oldest``."""
    if len(tag_ids) > MAX_TAGS_PER_IMAGE:
        raise api_errors.bad_request("BadRequest", f"at most {MAX_TAGS_PER_IMAGE} tag ids")
    records = _select(ctx, project_id, tagged, tag_ids)
    oldest = (order_by or "Newest").lower() == "oldest"
    records.sort(key=lambda r: (r.created, r.sha256), reverse=not oldest)
    tags = {t.id: t for t in ctx.label_store.list_tags(project_id)}
    return [_image_dict(ctx, r, tags) for r in records[skip:skip + take]]


def count_images(ctx: RequestContext, project_id: str, tagged: bool | None,
                 tag_ids: Sequence[str] = ()) -> int:
    return len(_select(ctx, project_id, tagged, tag_ids))


def tagging_status(value: str | None) -> bool | None:
    """``taggingStatus`` of get_images / get_image_count: All | Tagged | Untagged."""
    v = (value or "All").lower()
    if v not in ("all", "tagged", "untagged"):
        raise api_errors.bad_request("BadRequest", f"Unknown taggingStatus {value!r}")
    return None if v == "all" else v == "tagged"


def get_images_by_ids(ctx: RequestContext, project_id: str, image_ids: Sequence[str]
                      ) -> list[dict[str, Any]]:
    ctx.project(project_id)
    if len(image_ids) > MAX_IDS:
        raise api_errors.bad_request("BadRequestExceededBatchSize", f"at most {MAX_IDS} ids")
    tags = {t.id: t for t in ctx.label_store.list_tags(project_id)}
    found = (ctx.label_store.find_image(project_id, i) for i in dict.fromkeys(image_ids))
    return [_image_dict(ctx, r, tags) for r in found if r is not None]


def original_image(ctx: RequestContext, project_id: str, image_id: str) -> tuple[bytes, str]:
    """The stored bytes of an image and their content type (the ``originalImageUri``)."""
    from azure.core.exceptions import ResourceNotFoundError

    ctx.project(project_id)
    record = ctx.label_store.find_image(project_id, image_id)
    if record is None:
        raise image_not_found()
    container = ctx.storage.container(names.TRAINING_IMAGES)
    for path in record.blob_paths:
        try:
            return container.download_blob(path).readall(), CONTENT_TYPES.get(
                record.format, "application/octet-stream")
        except ResourceNotFoundError:
            continue
    raise image_not_found()


# --- image tags and deletes ---------------------------------------------------------------------
def create_image_tags(ctx: RequestContext, project_id: str, batch: Values) -> dict[str, Any]:
    """``ImageTagCreateBatch`` -> ``ImageTagCreateSummary`` (created / duplicated / exceeded).

    "Exceeded" holds what would break a limit: a second tag on a multiclass image, or more than
    ``MAX_TAGS_PER_IMAGE`` tags.
    """
    project = ctx.project(project_id)
    raw = batch.get("tags")
    if isinstance(raw, list) and len(raw) > MAX_TAG_ENTRIES:
        raise api_errors.bad_request("BadRequestExceededBatchSize",
                                     f"at most {MAX_TAG_ENTRIES} entries")
    entries = batch.objects("tags", max_items=MAX_TAG_ENTRIES)
    if entries is None:
        raise api_errors.bad_request("BadRequestImageTags", "tags must be a list of objects")
    tags = {t.id for t in ctx.label_store.list_tags(project_id)}
    pairs = [((e.string("imageId", max_length=64) or "").lower(),
              (e.string("tagId", max_length=64) or "").lower()) for e in entries]
    records: dict[str, ImageRecord] = {}
    for image_id_, tag_id in pairs:
        if tag_id not in tags:
            raise api_errors.bad_request("BadRequestImageTags", f"Unknown tag {tag_id}")
        if image_id_ not in records:
            record = ctx.label_store.find_image(project_id, image_id_)
            if record is None:
                raise api_errors.bad_request("BadRequestImageTags", f"Unknown image {image_id_}")
            records[image_id_] = record
    _check_negative_pairs(ctx, project_id, pairs, records)
    created, duplicated, exceeded = [], [], []
    for image_id_, tag_id in dict.fromkeys(pairs):
        record = records[image_id_]
        current = ctx.label_store.get_image(project_id, record.sha256)
        if current is not None and tag_id not in current.tag_ids and (
                len(current.tag_ids) >= MAX_TAGS_PER_IMAGE):
            exceeded.append((image_id_, tag_id))
            continue
        try:
            status = ctx.label_store.add_image_tag(project, record.sha256, tag_id)
        except NegativeTagConflict as e:  # Custom Vision refuses the request, not the pair
            raise api_errors.bad_request("BadRequestNegativeAndRegularTagOnSameImage",
                                         e.rejection.message) from e
        except Rejected as e:
            if e.rejection.reason != Reason.CONFLICTING_TAG:
                raise
            exceeded.append((image_id_, tag_id))
            continue
        if status is None:
            raise api_errors.bad_request("BadRequestImageTags", f"Unknown image {image_id_}")
        (created if status == AddStatus.TAG_ADDED else duplicated).append((image_id_, tag_id))
    return {
        "created": api_models.tag_entries(created),
        "duplicated": api_models.tag_entries(duplicated),
        "exceeded": api_models.tag_entries(exceeded),
    }


def _check_negative_pairs(ctx: RequestContext, project_id: str, pairs: list[tuple[str, str]],
                          records: dict[str, ImageRecord]) -> None:
    """400 ``BadRequestNegativeAndRegularTagOnSameImage`` before anything is written when the
    batch would leave an image with the Negative tag and another (the store checks again under
    each image's ETag, for requests racing with this one)."""
    negative = ctx.label_store.negative_tag_id(project_id)
    if negative is None:
        return
    after = {i: set(r.tag_ids) for i, r in records.items()}
    for image_id_, tag_id in pairs:
        after[image_id_].add(tag_id)
    mixed = sorted(i for i, tags in after.items() if negative in tags and len(tags) > 1)
    if mixed:
        raise api_errors.bad_request(
            "BadRequestNegativeAndRegularTagOnSameImage",
            f"an image tagged Negative carries no other tag: {', '.join(mixed[:10])}")


def delete_image_tags(ctx: RequestContext, project_id: str, image_ids: Sequence[str],
                      tag_ids: Sequence[str]) -> None:
    ctx.project(project_id)
    if not image_ids or not tag_ids:
        raise api_errors.bad_request("BadRequest", "imageIds and tagIds are required")
    if len(image_ids) > MAX_BATCH or len(tag_ids) > MAX_TAGS_PER_IMAGE:
        raise api_errors.bad_request("BadRequestExceededBatchSize",
                                     f"at most {MAX_BATCH} images and "
                                     f"{MAX_TAGS_PER_IMAGE} tags")
    remove = set(_tag_ids(tag_ids))
    for image_id_ in image_ids:
        record = ctx.label_store.find_image(project_id, image_id_)
        if record is not None:
            ctx.label_store.remove_image_tags(project_id, record.sha256, remove)


def delete_images(ctx: RequestContext, project_id: str, image_ids: Sequence[str],
                  all_images: bool = False) -> None:
    """Delete records and their blobs; unknown ids are ignored, as the service does."""
    from contextlib import suppress

    from azure.core.exceptions import ResourceNotFoundError

    ctx.project(project_id)
    if len(image_ids) > MAX_IDS:
        raise api_errors.bad_request("BadRequestExceededBatchSize", f"at most {MAX_IDS} ids")
    if all_images:
        records = list(ctx.label_store.iter_images(project_id))
    else:
        if not image_ids:
            raise api_errors.bad_request("BadRequest", "imageIds or allImages=true is required")
        found = (ctx.label_store.find_image(project_id, i) for i in dict.fromkeys(image_ids))
        records = [r for r in found if r is not None]
    container = ctx.storage.container(names.TRAINING_IMAGES)
    for record in records:
        ctx.label_store.delete_image(project_id, record.sha256)
        for path in record.blob_paths:
            with suppress(ResourceNotFoundError):
                container.delete_blob(path)


# --- metadata -----------------------------------------------------------------------------------
def check_metadata(raw: object) -> dict[str, str]:
    """Key/value pairs within the service's limits ({} for none): 400
    ``BadRequestImageMetadataKey`` / ``BadRequestImageMetadataValue`` otherwise."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise api_errors.bad_request("BadRequestImageMetadataKey",
                                     "metadata must be an object of string keys and values")
    if len(raw) > MAX_METADATA_PAIRS:
        raise api_errors.bad_request("BadRequestImageMetadataKey",
                                     f"at most {MAX_METADATA_PAIRS} metadata pairs per image")
    for key, value in raw.items():
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_METADATA_KEY:
            raise api_errors.bad_request(
                "BadRequestImageMetadataKey",
                f"a metadata key is 1 to {MAX_METADATA_KEY} characters")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise api_errors.bad_request(
                "BadRequestImageMetadataValue",
                f"a metadata value is a string of at most {MAX_METADATA_VALUE} characters")
    return dict(raw)


def update_image_metadata(ctx: RequestContext, project_id: str, image_ids: Sequence[str],
                          body: Values) -> WithStatus:
    """``POST images/metadata?imageIds=``: set the body's pairs on each image (other keys stay);
    ``ImageMetadataUpdateSummary``, 200 when every image is OK, else 207 with per-image
    ``ErrorImageNotFound`` / ``ErrorLimitExceed`` (more than 10 pairs)."""
    ctx.project(project_id)
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        raise api_errors.bad_request("BadRequestImageBatch", "imageIds is required")
    if len(ids) > MAX_METADATA_IMAGES:
        raise api_errors.bad_request("BadRequestExceededBatchSize",
                                     f"at most {MAX_METADATA_IMAGES} images per call")
    updates = check_metadata(dict(body))
    if not updates:
        raise api_errors.bad_request("BadRequestImageMetadataKey", "no metadata to set")
    entries = []
    for image in ids:
        record = ctx.label_store.find_image(project_id, image)
        status, metadata = "ErrorImageNotFound", None
        if record is not None:
            try:
                updated = ctx.label_store.update_image_metadata(project_id, record.sha256, updates,
                                                          MAX_METADATA_PAIRS)
            except MetadataLimitExceeded:
                status, metadata = "ErrorLimitExceed", dict(record.metadata)
            else:
                if updated is not None:
                    status, metadata = "OK", dict(updated.metadata)
        entries.append({"imageId": image, "status": status, "metadata": metadata})
    ok = all(e["status"] == "OK" for e in entries)
    return WithStatus({"isBatchSuccessful": ok, "images": entries}, 200 if ok else 207)
