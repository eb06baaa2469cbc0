"""Tags of the training API: create, list, get, rename, delete, with image counts.

Tag names are unique per project, case-insensitively, because the drop folder addresses tags by
name (docs/ARCHITECTURE.md, "Additions made while building (2026-11)").
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from visionpipe.api import errors as api_errors
from visionpipe.api import models as api_models
from visionpipe.api.context import RequestContext
from visionpipe.api.projects import (
    _check_description,
    _check_name,
    tag_not_found,
)
from visionpipe.api.values import Values
from visionpipe.stores.label_store import (
    LabelStore,
    NameTaken,
)


# --- tags ---------------------------------------------------------------------------------------
def image_counts(store: LabelStore, project_id: str) -> Counter[str]:
    """Images per tag id (one pass over the project's images)."""
    counts: Counter[str] = Counter()
    for record in store.iter_images(project_id):
        counts.update(record.tag_ids)
    return counts


def create_tag(ctx: RequestContext, project_id: str, name: str | None,
               description: str | None = None, tag_type: str | None = None) -> dict[str, Any]:
    ctx.project(project_id)
    store = ctx.label_store
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


def get_tag(ctx: RequestContext, project_id: str, tag_id: str) -> dict[str, Any]:
    ctx.project(project_id)
    store = ctx.label_store
    tag = ctx.tag(project_id, tag_id)
    return api_models.tag_to_dict(tag, image_counts(store, project_id)[tag.id])


def list_tags(ctx: RequestContext, project_id: str) -> list[dict[str, Any]]:
    ctx.project(project_id)
    store = ctx.label_store
    counts = image_counts(store, project_id)
    return [api_models.tag_to_dict(t, counts[t.id]) for t in store.list_tags(project_id)]


def update_tag(ctx: RequestContext, project_id: str, tag_id: str,
               body: Values) -> dict[str, Any]:
    name = body.string("name", max_length=None)
    description = body.string("description", max_length=None)
    tag_type = body.string("type")
    ctx.project(project_id)
    store = ctx.label_store
    ctx.tag(project_id, tag_id)
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


def delete_tag(ctx: RequestContext, project_id: str, tag_id: str) -> None:
    ctx.project(project_id)
    store = ctx.label_store
    if store.delete_tag(project_id, tag_id) is None:
        raise tag_not_found()
