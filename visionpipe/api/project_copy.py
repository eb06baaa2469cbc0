"""Training API: the service's own project copy, ``export_project`` and ``import_project``.

``GET projects/{id}/export`` snapshots the project (:mod:`visionpipe.stores.project_copy`: a
manifest of its settings, tags, images with regions and metadata, and the image bytes copied
inside the storage account) and answers a ``ProjectExport`` whose ``token`` names that snapshot.
``POST projects/import?token=&name=`` creates a new project from it: tags (name, description,
type), every image (bytes copied server-side, the same image ids, since ids come from the bytes),
tags on images, regions (new region ids) and metadata. Iterations are not copied: a trained
model belongs to the project that trained it, and the copy trains its own (``iterationCount`` is
0).

The token is ``vp1.{payload}.{signature}`` (base64url): the payload is JSON naming the source
project, the export, the SHA-256 of its manifest, the deployment (the storage account's URL,
hashed), where that deployment answers (its public base URL) and an expiry
(``PROJECT_COPY_TOKEN_TTL_SECONDS``, a day by default); the signature is HMAC-SHA256 over
``vp1.{payload}`` with a key derived from ``PROJECT_COPY_SIGNING_KEY`` (or, when unset, from the
training key: rotating it revokes every token). A forged, altered, over-long or expired token is
a 400 ``BadRequestInvalidImportToken`` (the service's code); a token whose project (and so its
snapshot) was deleted is a 404 ``NotFoundProject``. Like the service's, a token grants the
import to whoever holds it, until it expires.

Across deployments: a deployment configured with the same ``PROJECT_COPY_SIGNING_KEY`` accepts
another's token and fetches the snapshot from the address the token names
(``GET /visionpipe/v1/project-copies/{manifest|sha256}?token=``, :func:`snapshot_part`, where the
token is the credential) through the guarded URL fetcher (a private address needs
``URL_FETCH_ALLOWED_NETWORKS``); the manifest must have the token's digest and every image the
SHA-256 the manifest gives it, so the exporting side can serve nothing but what was exported.
There the bytes cross accounts through the app; within one deployment they never leave storage.

Names are unique in visionpipe (drop folders address projects by name, see
:mod:`visionpipe.api.projects`), so an explicit ``name`` that is taken is a 400
``BadRequestProjectNameNotUnique``; without ``name`` the copy is named after the source, with
`` (copy)``, `` (copy 2)``... when that is taken. An import is idempotent: a retry (or a racing
second call) with the same token and name finishes and answers the same project (a claim per
export and name, :func:`visionpipe.stores.project_copy.take_claim`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from visionpipe import names
from visionpipe.api import errors as api_errors
from visionpipe.api import models as api_models
from visionpipe.api.adapter import RawBody
from visionpipe.api.context import RequestContext
from visionpipe.api.errors import ApiError
from visionpipe.api.images import SOURCE_METADATA, blob_path
from visionpipe.api.projects import _check_name
from visionpipe.blob_names import is_safe_blob_name
from visionpipe.pipeline.ingest import API_TAGS_METADATA
from visionpipe.rejections import Rejected
from visionpipe.settings import get_settings
from visionpipe.stores import project_copy as copies
from visionpipe.stores.label_store import (
    CLASSIFICATION_TYPES,
    REGULAR_TAG,
    TAG_TYPES,
    ImageFacts,
    ImageRegion,
    NameTaken,
    Project,
    Tag,
    image_id,
    name_key,
)
from visionpipe.validation import CONTENT_TYPES

log = logging.getLogger(__name__)

TOKEN_PREFIX = "vp1"
#: Longest token accepted (a real one is about 400 characters): anything longer is refused
#: before it is decoded.
MAX_TOKEN_LENGTH = 2048
_KEY_PURPOSE = b"visionpipe project copy token v1"
_DEFAULT_CLAIM = "_default"
#: A claim without a project after this long belongs to an import that died: taken over.
CLAIM_STALE_SECONDS = 120.0
#: How long an import waits for a racing import of the same token and name to create the
#: project before answering 409.
CLAIM_WAIT_SECONDS = 15.0
IMPORT_WORKERS = 8
_MS_PER_IMAGE = 80  # estimatedImportTimeInMS: ~78 ms per image measured (Azurite, 2 busy cores)
_MAX_COPY_NAMES = 100
#: Where a deployment serves its snapshots to others (functions/project_copy_api.py).
PART_ROUTE_PREFIX = "visionpipe/v1/project-copies"
MANIFEST_PART = "manifest"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Puts one image's bytes at a path: (sha256, path, blob metadata, content type).
CopyBytes = Callable[[str, str, dict[str, str], str | None], None]


# --- errors -------------------------------------------------------------------------------------
def invalid_token(why: str) -> ApiError:
    return api_errors.bad_request("BadRequestInvalidImportToken", f"Invalid import token: {why}")


def source_gone() -> ApiError:
    return ApiError(404, "NotFoundProject",
                    "Invalid project: the exported project no longer exists")


def import_in_progress() -> ApiError:
    return ApiError(409, "Conflict", "An import with this token and name is in progress; "
                                     "retry in a few seconds")


# --- the token ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenClaims:
    project_id: str
    export_id: str
    digest: str
    deployment: str
    expires: int
    #: Where the exporting deployment answers (its public base URL), so that a deployment
    #: sharing the signing key can fetch the snapshot from it; "" when unknown.
    source_url: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key() -> bytes:
    """The token key: derived (HMAC with a fixed purpose) from ``PROJECT_COPY_SIGNING_KEY``, or
    from the training key when that is unset, so a token's signature is good for nothing else
    (an export link is signed with the training key itself)."""
    settings = get_settings()
    base = settings.project_copy_signing_key or settings.training_key
    if not base:
        raise api_errors.bad_request(
            "BadRequestOperationNotSupported",
            f"Project copy needs {names.SETTING_PROJECT_COPY_SIGNING_KEY} or "
            f"{names.SETTING_TRAINING_KEY} to sign its tokens")
    return hmac.new(base.encode("utf-8", "surrogateescape"), _KEY_PURPOSE,
                    hashlib.sha256).digest()


def deployment_id(ctx: RequestContext) -> str:
    """This deployment, as a token names it: a hash of the storage account's URL (the snapshot
    lives there, so a token is good only where its snapshot is)."""
    return hashlib.sha256(ctx.storage.blobs.url.rstrip("/").encode()).hexdigest()[:24]


def make_token(claims: TokenClaims, key: bytes) -> str:
    body: dict[str, Any] = {"p": claims.project_id, "s": claims.export_id, "d": claims.digest,
                            "i": claims.deployment, "e": claims.expires}
    if claims.source_url:
        body["u"] = claims.source_url
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signed = f"{TOKEN_PREFIX}.{payload}"
    return f"{signed}.{_b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())}"


def read_token(token: str | None, key: bytes, deployment: str,
               now: float | None = None, *, remote: bool = False) -> TokenClaims:
    """The claims of a token signed with ``key`` that has not expired, or
    :func:`invalid_token`. The signature is checked before anything in the payload is read.
    The token must name this deployment, or (``remote``) name the URL of the one that issued
    it."""
    if not token:
        raise invalid_token("the token is missing")
    if len(token) > MAX_TOKEN_LENGTH:
        raise invalid_token(f"the token is over {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise invalid_token("not a token this service issued")
    try:
        signature = _unb64(parts[2])
    except (binascii.Error, ValueError) as e:
        raise invalid_token("the signature is not base64url") from e
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise invalid_token("the signature does not match")
    try:
        body = json.loads(_unb64(parts[1]))
        claims = TokenClaims(str(body["p"]), str(body["s"]), str(body["d"]), str(body["i"]),
                             int(body["e"]), str(body.get("u") or ""))
    except (binascii.Error, ValueError, KeyError, TypeError) as e:  # signed by us: never
        raise invalid_token("the payload cannot be read") from e
    if claims.deployment != deployment and not (remote and claims.source_url):
        raise invalid_token("it was issued by another deployment")
    if claims.expires < (time.time() if now is None else now):
        raise invalid_token("the token has expired; export the project again")
    return claims


# --- export -------------------------------------------------------------------------------------
def export_project(ctx: RequestContext, project_id: str, *, source_url: str = "",
                   now: float | None = None) -> dict[str, Any]:
    """``ProjectExport``: counts of what the snapshot holds and the token that names it;
    ``source_url``: where this deployment answers (the token names it, see
    :func:`snapshot_part`)."""
    project = ctx.project(project_id)
    key = signing_key()
    ttl = get_settings().project_copy_token_ttl_seconds
    moment = time.time() if now is None else now
    expires = int(moment + ttl)
    copies.prune(ctx.storage, project.id, ttl, moment)  # what expired exports left behind
    snapshot = copies.write_snapshot(ctx.storage, ctx.label_store, project, expires)
    token = make_token(TokenClaims(project.id, snapshot.export_id, snapshot.digest,
                                   deployment_id(ctx), expires, source_url.rstrip("/")), key)
    images, tags, regions = snapshot.counts
    return {"iterationCount": 0, "imageCount": images, "tagCount": tags,
            "regionCount": regions, "estimatedImportTimeInMS": 500 + images * _MS_PER_IMAGE,
            "token": token}


# --- import -------------------------------------------------------------------------------------
def import_project(ctx: RequestContext, token: str | None,
                   name: str | None = None) -> dict[str, Any]:
    """A new project from an export's snapshot (see the module docstring); the ``Project``."""
    claims = read_token(token, signing_key(), deployment_id(ctx), remote=True)
    if name is not None and name != "":
        _check_name(name, "BadRequestProjectName", "project")
    else:
        name = None
    local = claims.deployment == deployment_id(ctx)
    snapshot = _local_snapshot(ctx, claims) if local else _remote_snapshot(claims, str(token))
    project = _claimed_project(ctx, claims, snapshot, name)
    copy_bytes = _LocalBytes(ctx, claims.project_id) if local else _RemoteBytes(
        ctx, claims, str(token))
    _fill(ctx, project, snapshot, copy_bytes)
    return api_models.project_to_dict(ctx.label_store.get_project(project.id) or project)


def _checked(snapshot: copies.Snapshot | None, claims: TokenClaims) -> copies.Snapshot:
    if snapshot is None:
        raise source_gone()
    if not hmac.compare_digest(snapshot.digest, claims.digest):
        raise invalid_token("the exported snapshot was changed after the export")
    return snapshot


def _local_snapshot(ctx: RequestContext, claims: TokenClaims) -> copies.Snapshot:
    """The snapshot of an export of this deployment, as its token pins it."""
    if ctx.label_store.get_project(claims.project_id) is None:
        raise source_gone()
    try:
        snapshot = copies.read_snapshot(ctx.storage, claims.project_id, claims.export_id)
    except ValueError as e:
        raise invalid_token("the exported snapshot was changed after the export") from e
    return _checked(snapshot, claims)


def _part_url(claims: TokenClaims, token: str, part: str) -> str:
    return (f"{claims.source_url}/{PART_ROUTE_PREFIX}/{part}?"
            f"{urlencode({'token': token})}")


def _fetch_part(claims: TokenClaims, token: str, part: str, max_bytes: int) -> bytes:
    """One part of a snapshot from the deployment that exported it, through the guarded
    fetcher (a token names its source, but that is still an outbound request)."""
    from visionpipe.api.url_fetch import FetchError, fetch

    try:
        return fetch(_part_url(claims, token, part), max_bytes)
    except FetchError as e:
        raise invalid_token("the deployment that issued it could not be reached, or refused "
                            "the token (its project may have been deleted)") from e


def _remote_snapshot(claims: TokenClaims, token: str) -> copies.Snapshot:
    """The snapshot of an export of another deployment that shares the signing key."""
    data = _fetch_part(claims, token, MANIFEST_PART, MAX_MANIFEST_BYTES)
    try:
        snapshot = copies.parse_snapshot(claims.export_id, data)
    except ValueError as e:
        raise invalid_token("the exported snapshot cannot be read") from e
    return _checked(snapshot, claims)


# --- serving a snapshot to another deployment --------------------------------------------------
def snapshot_part(ctx: RequestContext, token: str | None, part: str) -> RawBody:
    """``GET /visionpipe/v1/project-copies/{part}?token=``: the manifest (``part`` =
    ``manifest``) or one image's bytes (its SHA-256) of the export the token names, to a
    deployment importing it. The token is the credential (it grants the import to whoever holds
    it, as the service's does); it must be this deployment's, unexpired, and its snapshot
    unchanged; only images the manifest lists are served."""
    claims = read_token(token, signing_key(), deployment_id(ctx))
    snapshot = _served.get((claims.export_id, claims.digest))
    if snapshot is None or ctx.label_store.get_project(claims.project_id) is None:
        snapshot = _local_snapshot(ctx, claims)
        with _served_lock:
            while len(_served) >= _SERVED_CACHE:
                _served.pop(next(iter(_served)))
            _served[(claims.export_id, claims.digest)] = snapshot
    if part == MANIFEST_PART:
        return RawBody(snapshot.raw, "application/json")
    entry = next((i for i in snapshot.manifest["images"] if i.get("sha256") == part), None)
    if entry is None or not _SHA256.fullmatch(part):
        raise api_errors.not_found()
    data = copies.read_bytes(ctx.storage, claims.project_id, part)
    if data is None:
        raise source_gone()
    return RawBody(data, CONTENT_TYPES.get(str(entry.get("format")),
                                           "application/octet-stream"))


#: Snapshots being served to importing deployments, by (export id, digest): an import asks for
#: every image, and the manifest of a large project is megabytes. A snapshot never changes
#: under its digest, so the cache is never stale; the project's existence is checked anyway.
_served: dict[tuple[str, str], copies.Snapshot] = {}
_served_lock = threading.Lock()
_SERVED_CACHE = 4


class _LocalBytes:
    """Image bytes from this account's snapshot: a server-side copy."""

    def __init__(self, ctx: RequestContext, source_id: str) -> None:
        self.ctx, self.source_id = ctx, source_id

    def __call__(self, sha256: str, path: str, metadata: dict[str, str],
                 content_type: str | None) -> None:
        size = copies.copy_blob(self.ctx.storage, names.DATASETS,
                                copies.bytes_path(self.source_id, sha256), names.TRAINING_IMAGES,
                                path, metadata=metadata, content_type=content_type)
        if size is None:
            raise source_gone()


class _RemoteBytes:
    """Image bytes from the exporting deployment, checked against their SHA-256 (the manifest
    the token pins names it), then written here."""

    def __init__(self, ctx: RequestContext, claims: TokenClaims, token: str) -> None:
        self.ctx, self.claims, self.token = ctx, claims, token

    def __call__(self, sha256: str, path: str, metadata: dict[str, str],
                 content_type: str | None) -> None:
        from azure.storage.blob import ContentSettings

        data = _fetch_part(self.claims, self.token, sha256, self.ctx.limits.max_bytes)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise invalid_token("an image from the exporting deployment is not the exported one")
        self.ctx.storage.container(names.TRAINING_IMAGES).upload_blob(
            path, data, overwrite=True, metadata=metadata,
            content_settings=ContentSettings(content_type=content_type))


def _claimed_project(ctx: RequestContext, claims: TokenClaims, snapshot: copies.Snapshot,
                     name: str | None) -> Project:
    """The project this (export, name) imports into: created here under a fresh claim, or the
    one a retried or racing import with the same token and name created."""
    storage, source = ctx.storage, claims.project_id
    key = name_key(name) if name is not None else _DEFAULT_CLAIM
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    replacing: str | None = None
    while True:
        etag = copies.take_claim(storage, source, claims.export_id, key, replacing)
        if etag is not None:
            try:
                project = _create_target(ctx, snapshot, name)
            except BaseException:
                copies.release_claim(storage, source, claims.export_id, key, etag)
                raise
            copies.settle_claim(storage, source, claims.export_id, key, etag, project.id)
            return project
        claim = copies.read_claim(storage, source, claims.export_id, key)
        if claim is None:  # released meanwhile (that import failed): try again
            replacing = None
            continue
        if claim.project_id is not None:
            existing = ctx.label_store.get_project(claim.project_id)
            if existing is not None:
                return existing
            replacing = claim.etag  # imported, then deleted: import again
            continue
        if claim.age_seconds > CLAIM_STALE_SECONDS:
            replacing = claim.etag  # the import that claimed it died before creating
            continue
        if time.monotonic() > deadline:
            raise import_in_progress()
        replacing = None
        time.sleep(0.1)


def _create_target(ctx: RequestContext, snapshot: copies.Snapshot, name: str | None) -> Project:
    source = snapshot.manifest["project"]
    classification = source.get("classificationType")
    if classification not in CLASSIFICATION_TYPES:
        classification = CLASSIFICATION_TYPES[0]
    args = (classification, str(source.get("domainId")), str(source.get("description") or ""))
    if name is not None:
        try:
            return ctx.label_store.create_project_unique(name, *args)
        except NameTaken as e:
            raise api_errors.bad_request("BadRequestProjectNameNotUnique", str(e)) from e
    base = str(source.get("name"))
    _check_name(base, "BadRequestProjectName", "project")
    for n in range(_MAX_COPY_NAMES):
        candidate = base if n == 0 else f"{base} (copy)" if n == 1 else f"{base} (copy {n})"
        if len(candidate) > 256:  # the longest project name
            candidate = f"{base[:240]} (copy {n})"
        try:
            return ctx.label_store.create_project_unique(candidate, *args)
        except NameTaken:
            continue
    raise api_errors.bad_request("BadRequestProjectNameNotUnique",
                                 f"no free name for a copy of {base!r}; pass name=")


def _create_tag(ctx: RequestContext, project_id: str, entry: dict[str, Any]) -> Tag:
    """The copy of one tag, type (Regular / Negative) and all; found by name when a retried
    import made it already."""
    store = ctx.label_store
    _check_name(entry.get("name"), "BadRequestTagName", "tag")  # the manifest, checked anyway
    existing = store.find_tag(project_id, entry["name"])
    if existing is not None:
        return existing
    tag_type = entry.get("type") if entry.get("type") in TAG_TYPES else REGULAR_TAG
    try:
        return store.create_tag(project_id, entry["name"], entry.get("description") or "",
                                type=tag_type)
    except NameTaken:
        found = store.find_tag(project_id, entry["name"])
        if found is None:
            raise
        return found


def _fill(ctx: RequestContext, project: Project, snapshot: copies.Snapshot,
          copy_bytes: CopyBytes) -> None:
    """Copy tags then images into ``project``; every step is idempotent (a retry finishes what
    an earlier call left)."""
    tag_map = {t["id"]: _create_tag(ctx, project.id, t) for t in snapshot.manifest["tags"]}
    with ThreadPoolExecutor(max_workers=IMPORT_WORKERS) as pool:
        list(pool.map(lambda e: _copy_image(ctx, project, copy_bytes, tag_map, e),
                      snapshot.manifest["images"]))


def _copy_image(ctx: RequestContext, project: Project, copy_bytes: CopyBytes,
                tag_map: dict[str, Tag], entry: dict[str, Any]) -> None:
    store = ctx.label_store
    sha256 = str(entry["sha256"])
    if not _SHA256.fullmatch(sha256):  # it names a blob and a URL: checked though signed
        raise invalid_token("the exported snapshot lists an image without a SHA-256")
    tag_ids = tuple(tag_map[t].id for t in entry["tagIds"] if t in tag_map)
    regions = tuple(ImageRegion.from_row(r) for r in entry["regions"])
    regions = tuple(ImageRegion(str(uuid.uuid4()), tag_map[r.tag_id].id, *r.box)
                    for r in regions if r.tag_id in tag_map)  # new region ids, as uploads get
    metadata = tuple((str(k), str(v)) for k, v in entry["metadata"].items())
    fmt = str(entry["format"])
    folder_tag = next((t for t in (*tag_ids, *(r.tag_id for r in regions))), None)
    tags_by_id = {t.id: t for t in tag_map.values()}
    path = blob_path(project, tags_by_id.get(folder_tag) if folder_tag else None,
                     image_id(sha256), fmt)
    if not is_safe_blob_name(path):
        raise api_errors.bad_request("BadRequestProjectName",
                                     "the project or a tag name cannot name a folder")
    existing = store.get_image(project.id, sha256)
    if existing is None or path not in existing.blob_paths:
        blob_metadata = {**SOURCE_METADATA,
                         **({API_TAGS_METADATA: ",".join(tag_ids)} if tag_ids else {})}
        copy_bytes(sha256, path, blob_metadata, CONTENT_TYPES.get(fmt))
    facts = ImageFacts(sha256, int(entry["width"]), int(entry["height"]), fmt,
                       int(entry["sizeBytes"]))
    try:
        added = store.create_image(project, tag_ids, facts, path, metadata, regions)
    except Rejected as e:
        if store.get_project(project.id) is None:
            raise api_errors.project_not_found() from e
        raise
    # The record existed (a retried import, or ingest recorded the copied blob first from its
    # metadata, which holds the tags but not the regions nor the metadata): complete it.
    record = added.image
    for tag_id in tag_ids:
        if tag_id not in record.tag_ids:
            store.add_image_tag(project, sha256, tag_id)
    missing = [(r.tag_id, r.box) for r in regions
               if not any(g.tag_id == r.tag_id and g.box == r.box for g in record.regions)]
    if missing:
        store.add_image_regions(project, sha256, missing, max_regions=len(regions))
    if metadata and dict(metadata).items() - dict(record.metadata).items():
        store.update_image_metadata(project.id, sha256, dict(metadata),
                                    max_pairs=max(len(metadata), len(record.metadata)) + 10)
