"""Training API: projects, domains and tags (Custom Vision v3.3 / v3.4-preview semantics).

Each function takes typed values, does the work through the label store, and returns the JSON
body the service returns, or raises :class:`~visionpipe.api.errors.ApiError` with the service's
error code. HTTP triggers in ``functions/`` only adapt requests to these calls.

Names: the service allows two projects (or two tags of one project) with the same name; visionpipe
does not, because drop folders address projects and tags by name (ARCHITECTURE.md, "Storage
layout"). A taken name is a
400 ``BadRequestProjectNameNotUnique`` / ``BadRequestTagNameNotUnique``, codes the service has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionpipe import domains
from visionpipe.api import errors as api_errors
from visionpipe.api import models as api_models
from visionpipe.api.errors import ApiError
from visionpipe.api.values import Values
from visionpipe.blob_names import folder_name_problem
from visionpipe.stores.label_store import (
    CLASSIFICATION_TYPES,
    LabelStore,
    NameTaken,
    Project,
    Tag,
)

if TYPE_CHECKING:
    from visionpipe.api.context import RequestContext  # it imports this module

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
    """A name that also works as a drop-folder path segment (one rule with the drop folder)."""
    problem = folder_name_problem(name)
    if problem is not None or name is None:
        raise api_errors.bad_request(code, f"The {kind} name {problem or 'is empty'}")
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
        return domains.GENERAL_DOMAIN_ID
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
    return [d.to_dict() for d in domains.ALL_DOMAINS]


def get_domain(domain_id: str) -> dict[str, Any]:
    domain = domains.get_domain(domain_id)
    if domain is None:
        raise domain_not_found()
    return domain.to_dict()


# --- projects -----------------------------------------------------------------------------------
def create_project(
    ctx: RequestContext, name: str | None, description: str | None = None,
    domain_id: str | None = None, classification_type: str | None = None,
    target_export_platforms: list[str] | None = None,
) -> dict[str, Any]:
    checked = _check_name(name, "BadRequestProjectName", "project")
    unknown = [p for p in target_export_platforms or [] if p.upper() != "ONNX"]
    if unknown:
        raise api_errors.bad_request("BadRequestProjectUnsupportedExportPlatform",
                                     f"visionpipe exports ONNX only, not {', '.join(unknown)}")
    try:
        project = ctx.label_store.create_project_unique(
            checked, _classification(classification_type), _domain(domain_id),
            _check_description(description, "BadRequestProjectDescription"),
        )
    except NameTaken as e:
        raise api_errors.bad_request("BadRequestProjectNameNotUnique", str(e)) from e
    return api_models.project_to_dict(project)


def get_project(ctx: RequestContext, project_id: str) -> dict[str, Any]:
    return api_models.project_to_dict(ctx.project(project_id))


def list_projects(ctx: RequestContext) -> list[dict[str, Any]]:
    return [api_models.project_to_dict(p) for p in ctx.label_store.list_projects()]


def update_project(ctx: RequestContext, project_id: str, body: Values) -> dict[str, Any]:
    """PATCH with a ``Project`` body: name, description, settings.domainId/classificationType.

    Multilabel -> Multiclass is refused while an image carries more than one tag, since a
    multiclass image has exactly one (the label store's invariant).
    """
    name = body.string("name", max_length=None)
    description = body.string("description", max_length=None)
    settings = body.object("settings")
    classification_type = settings.string("classificationType")
    domain = settings.string("domainId")
    store = ctx.label_store
    project = ctx.project(project_id)
    if name is not None:
        _check_name(name, "BadRequestProjectName", "project")
    classification = _classification(classification_type) if classification_type else None
    domain_id = _domain(domain) if domain else None
    if domain_id is not None and domains.domain_type(domain_id) != project.domain_type:
        # Boxes mean nothing to a classifier and a detector needs them: as the service does,
        # a project keeps its type (another domain of the same type is fine).
        raise api_errors.bad_request(
            "BadRequestProjectUnsupportedDomainTypeChange",
            f"The project is of type {project.domain_type}; its domain cannot change to a "
            f"domain of type {domains.domain_type(domain_id)}")
    if classification == "Multiclass" and project.multilabel and not project.detection and any(
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


def delete_project(ctx: RequestContext, project_id: str) -> None:
    """Delete a project with everything it owns (visionpipe.stores.project_delete).

    Refused while an iteration is published, as the service does: prediction clients may still
    be using it; and while a training is in progress (``BadRequestTrainingAlreadyInProgress``,
    the service's closest code): the job would write into a deleted project.
    """
    from visionpipe.stores import project_delete
    from visionpipe.stores.registry import TrainingInProgress

    project = ctx.project(project_id)
    if ctx.publications(project_id).by_name:
        raise project_has_published_iteration()
    try:
        project_delete.delete_project(ctx.storage, ctx.label_store, ctx.registry, project)
    except TrainingInProgress as e:
        raise api_errors.bad_request(
            "BadRequestTrainingAlreadyInProgress",
            "Cannot delete a project while a training is in progress") from e
