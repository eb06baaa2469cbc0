"""Training API: projects, domains and tags (Custom Vision v3.3 / v3.4-preview semantics).

Each function takes typed values, does the work through the label store, and returns the JSON
body the service returns, or raises :class:`~visionpipe.api_errors.ApiError` with the service's
error code. HTTP triggers in ``functions/`` only adapt requests to these calls.

Names: the service allows two projects (or two tags of one project) with the same name; visionpipe
does not, because drop folders address projects and tags by name (DESIGN §2). A taken name is a
400 ``BadRequestProjectNameNotUnique`` / ``BadRequestTagNameNotUnique``, codes the service has.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from visionpipe import api_errors, api_models, domains
from visionpipe.api_errors import ApiError
from visionpipe.api_values import Values
from visionpipe.label_store import (
    CLASSIFICATION_TYPES,
    GENERAL_DOMAIN_ID,
    LabelStore,
    NameTaken,
    Project,
    Tag,
)
from visionpipe.quarantine import is_safe_blob_path
from visionpipe.registry import Registry
from visionpipe.storage import Storage

MAX_NAME_LENGTH = 256  # as the drop folder (visionpipe.ingest)
MAX_DESCRIPTION_LENGTH = 4096


# --- errors the service answers with (api_errors has the shared ones) -------------------------
def domain_not_found() -> ApiError:
    return ApiError(404, "NotFoundDomain", "Invalid domain")


def tag_not_found() -> ApiError:
    return ApiError(404, "NotFoundTag", "Invalid tag")


def project_has_published_iteration() -> ApiError:
    return api_errors.bad_request(
        "BadRequestIterationIsPublished",
        "Cannot delete a project with a published iteration; unpublish it first",
    )


def _check_name(name: str | None, code: str, kind: str) -> str:
    """A name that also works as a drop-folder path segment (DESIGN §2)."""
    if name is None or not name.strip():
        raise api_errors.bad_request(code, f"The {kind} name is required")
    if name != name.strip():
        raise api_errors.bad_request(code, f"The {kind} name must not start or end with spaces")
    if len(name) > MAX_NAME_LENGTH:
        raise api_errors.bad_request(code, f"The {kind} name is over {MAX_NAME_LENGTH} characters")
    if "/" in name or not is_safe_blob_path(name):
        raise api_errors.bad_request(
            code, f"The {kind} name {name!r} cannot be a folder name ('/', '\\\\', '.', '..' or a "
                  "control character)")
    return name


def _check_description(description: str | None, code: str) -> str:
    description = description or ""
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise api_errors.bad_request(code, "The description is too long")
    return description


def _classification(value: str | None) -> str:
    if value is None or value == "":
        return CLASSIFICATION_TYPES[0]
    for known in CLASSIFICATION_TYPES:
        if value.lower() == known.lower():
            return known
    raise api_errors.bad_request("BadRequestProjectUnknownClassification",
                                 f"Unknown classification type {value!r}")


def _domain(value: str | None) -> str:
    if value is None or value == "":
        return GENERAL_DOMAIN_ID
    domain = domains.get_domain(value)
    if domain is None:
        raise api_errors.bad_request("BadRequestProjectUnknownDomain",
                                     f"Unknown domain {value!r} (see GET domains)")
    return domain.id


def require_project(store: LabelStore, project_id: str) -> Project:
    project = store.get_project(project_id)
    if project is None:
        raise api_errors.project_not_found()
    return project


def require_tag(store: LabelStore, project_id: str, tag_id: str) -> Tag:
    tag = store.get_tag(project_id, tag_id)
    if tag is None:
        raise tag_not_found()
    return tag


# --- domains ------------------------------------------------------------------------------------
def list_domains() -> list[dict[str, Any]]:
    return [d.to_dict() for d in domains.DOMAINS]


def get_domain(domain_id: str) -> dict[str, Any]:
    domain = domains.get_domain(domain_id)
    if domain is None:
        raise domain_not_found()
    return domain.to_dict()


# --- projects -----------------------------------------------------------------------------------
def create_project(
    store: LabelStore, name: str | None, description: str | None = None,
    domain_id: str | None = None, classification_type: str | None = None,
    target_export_platforms: list[str] | None = None,
) -> dict[str, Any]:
    checked = _check_name(name, "BadRequestProjectName", "project")
    unknown = [p for p in target_export_platforms or [] if p.upper() != "ONNX"]
    if unknown:
        raise api_errors.bad_request("BadRequestProjectUnsupportedExportPlatform",
                                     f"visionpipe exports ONNX only, not {', '.join(unknown)}")
    try:
        project = store.create_project_unique(
            checked, _classification(classification_type), _domain(domain_id),
            _check_description(description, "BadRequestProjectDescription"),
        )
    except NameTaken as e:
        raise api_errors.bad_request("BadRequestProjectNameNotUnique", str(e)) from e
    return api_models.project_to_dict(project)


def get_project(store: LabelStore, project_id: str) -> dict[str, Any]:
    return api_models.project_to_dict(require_project(store, project_id))


def list_projects(store: LabelStore) -> list[dict[str, Any]]:
    return [api_models.project_to_dict(p) for p in store.list_projects()]


def update_project(store: LabelStore, project_id: str, body: Values) -> dict[str, Any]:
    """PATCH with a ``Project`` body: name, description, settings.domainId/classificationType.

    Multilabel -> Multiclass is refused while an image carries more than one tag, since a
    multiclass image has exactly one (the label store's invariant).
    """
    name = body.string("name", max_length=None)
    description = body.string("description", max_length=None)
    settings = body.object("settings")
    classification_type = settings.string("classificationType")
    domain = settings.string("domainId")
    project = require_project(store, project_id)
    if name is not None:
        _check_name(name, "BadRequestProjectName", "project")
    classification = _classification(classification_type) if classification_type else None
    domain_id = _domain(domain) if domain else None
    if classification == "Multiclass" and project.multilabel and any(
            len(i.tag_ids) > 1 for i in store.iter_images(project_id)):
        raise api_errors.bad_request(
            "BadRequestNotSupported",
            "Some images carry more than one tag: a Multiclass project allows one per image")
    if description is not None:
        _check_description(description, "BadRequestProjectDescription")
    try:
        updated = store.update_project(project_id, name=name, description=description,
                                       classification_type=classification, domain_id=domain_id)
    except NameTaken as e:
        raise api_errors.bad_request("BadRequestProjectNameNotUnique", str(e)) from e
    if updated is None:
        raise api_errors.project_not_found()
    return api_models.project_to_dict(updated)


def delete_project(storage: Storage, store: LabelStore, registry: Registry,
                   project_id: str) -> None:
    """Delete a project with everything it owns (visionpipe.project_delete).

    Refused while an iteration is published, as the service does: prediction clients may still
    be using it; and while a training is in progress (``BadRequestTrainingAlreadyInProgress``,
    the service's closest code): the job would write into a deleted project.
    """
    from visionpipe import project_delete
    from visionpipe.registry import TrainingInProgress

    project = require_project(store, project_id)
    pubs = registry.publications(project_id)
    if pubs is not None and pubs.by_name:
        raise project_has_published_iteration()
    try:
        project_delete.delete_project(storage, store, registry, project)
    except TrainingInProgress as e:
        raise api_errors.bad_request(
            "BadRequestTrainingAlreadyInProgress",
            "Cannot delete a project while a training is in progress") from e


# --- tags ---------------------------------------------------------------------------------------
def image_counts(store: LabelStore, project_id: str) -> Counter[str]:
    """Images per tag id (one pass over the project's images)."""
    counts: Counter[str] = Counter()
    for record in store.iter_images(project_id):
        counts.update(record.tag_ids)
    return counts


def create_tag(store: LabelStore, project_id: str, name: str | None,
               description: str | None = None, tag_type: str | None = None) -> dict[str, Any]:
    require_project(store, project_id)
    checked = _check_name(name, "BadRequestTagName", "tag")
    if tag_type not in (None, "", api_models.REGULAR_TAG):
        code = "BadRequestTagType"
        if tag_type in api_models.TAG_TYPES:
            raise api_errors.bad_request(code, f"visionpipe supports Regular tags only, not "
                                               f"{tag_type}")
        raise api_errors.bad_request(code, f"Unknown tag type {tag_type!r}")
    try:
        tag = store.create_tag(project_id, checked,
                               _check_description(description, "BadRequestTagDescription"))
    except NameTaken as e:
        raise api_errors.bad_request("BadRequestTagNameNotUnique", str(e)) from e
    return api_models.tag_to_dict(tag, 0)


def get_tag(store: LabelStore, project_id: str, tag_id: str) -> dict[str, Any]:
    require_project(store, project_id)
    tag = require_tag(store, project_id, tag_id)
    return api_models.tag_to_dict(tag, image_counts(store, project_id)[tag.id])


def list_tags(store: LabelStore, project_id: str) -> list[dict[str, Any]]:
    require_project(store, project_id)
    counts = image_counts(store, project_id)
    return [api_models.tag_to_dict(t, counts[t.id]) for t in store.list_tags(project_id)]


def update_tag(store: LabelStore, project_id: str, tag_id: str,
               body: Values) -> dict[str, Any]:
    name = body.string("name", max_length=None)
    description = body.string("description", max_length=None)
    tag_type = body.string("type")
    require_project(store, project_id)
    require_tag(store, project_id, tag_id)
    if name is not None:
        _check_name(name, "BadRequestTagName", "tag")
    if description is not None:
        _check_description(description, "BadRequestTagDescription")
    if tag_type not in (None, api_models.REGULAR_TAG):
        raise api_errors.bad_request("BadRequestTagType", "visionpipe supports Regular tags only")
    try:
        tag = store.update_tag(project_id, tag_id, name=name, description=description)
    except NameTaken as e:
        raise api_errors.bad_request("BadRequestTagNameNotUnique", str(e)) from e
    if tag is None:
        raise tag_not_found()
    return api_models.tag_to_dict(tag, image_counts(store, project_id)[tag.id])


def delete_tag(store: LabelStore, project_id: str, tag_id: str) -> None:
    require_project(store, project_id)
    if store.delete_tag(project_id, tag_id) is None:
        raise tag_not_found()

