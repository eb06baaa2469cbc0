"""Tags of the training API: create, list, get, rename, delete, with image counts.

Tag names are unique per project, case-insensitively, because the drop folder addresses tags by
name (docs/ARCHITECTURE.md, "Additions made while building (2026-11)").

Tag types follow Custom Vision: ``Regular`` and ``Negative`` (at most one per project,
``BadRequestMultipleNegativeTag``; its images carry no other tag,
``BadRequestNegativeAndRegularTagOnSameImage``). ``GeneralProduct`` belongs to retail product
domains visionpipe does not offer: refused with ``BadRequestTagType``, like an unknown type.
docs/training.md, "The Negative tag", says what training makes of it.
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
    TAG_TYPES,
    LabelStore,
    NameTaken,
    NegativeTagExists,
    NegativeTagShared,
)

MULTIPLE_NEGATIVE = "BadRequestMultipleNegativeTag"
NEGATIVE_AND_REGULAR = "BadRequestNegativeAndRegularTagOnSameImage"


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
    kind = _check_type(tag_type) or api_models.REGULAR_TAG
    try:
        tag = store.create_tag(project_id, checked,
                               _check_description(description, "BadRequestTagDescription"),
                               type=kind)
    except NameTaken as e:
        raise api_errors.bad_request("BadRequestTagNameNotUnique", str(e)) from e
    except NegativeTagExists as e:
        raise api_errors.bad_request(MULTIPLE_NEGATIVE, str(e)) from e
    return api_models.tag_to_dict(tag, 0)


def _check_type(tag_type: str | None) -> str | None:
    """A tag type the store keeps (None or "" for "not given"), else 400 ``BadRequestTagType``.

    Custom Vision spells types case-insensitively in query strings (.NET enum parsing); the
    stored and answered spelling is the canonical one."""
    if tag_type is None or tag_type == "":
        return None
    canonical = {t.casefold(): t for t in api_models.TAG_TYPES}.get(str(tag_type).casefold())
    if canonical in TAG_TYPES:
        return canonical
    if canonical is not None:
        raise api_errors.bad_request(
            "BadRequestTagType", f"{canonical} tags belong to retail product domains visionpipe "
                                 f"does not offer; use {' or '.join(TAG_TYPES)}")
    raise api_errors.bad_request(
        "BadRequestTagType", f"Unknown tag type {str(tag_type)[:64]!r}; use "
                             f"{' or '.join(TAG_TYPES)}")


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
    kind = _check_type(tag_type)
    try:
        tag = store.update_tag(project_id, tag_id, name=name, description=description,
                               type=kind)
    except NameTaken as e:
        raise api_errors.bad_request("BadRequestTagNameNotUnique", str(e)) from e
    except NegativeTagExists as e:
        raise api_errors.bad_request(MULTIPLE_NEGATIVE, str(e)) from e
    except NegativeTagShared as e:
        raise api_errors.bad_request(NEGATIVE_AND_REGULAR, str(e)) from e
    if tag is None:
        raise tag_not_found()
    return api_models.tag_to_dict(tag, image_counts(store, project_id)[tag.id])


def delete_tag(ctx: RequestContext, project_id: str, tag_id: str) -> None:
    ctx.project(project_id)
    store = ctx.label_store
    if store.delete_tag(project_id, tag_id) is None:
        raise tag_not_found()
