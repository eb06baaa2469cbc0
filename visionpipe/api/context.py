"""The one request-scoped context every HTTP route works with.

A trigger builds a :class:`RequestContext` once per request (:meth:`RequestContext.for_request`,
after the adapter has checked the key) and hands it to the api module it calls: the storage
account, the label store, the registry, the image limits from the settings and the builder of
public image URIs. It is the only place in the HTTP layer that opens storage or constructs a
store, so every route sees the same clients and the same lookups, and the lookups
(:meth:`RequestContext.project`, :meth:`RequestContext.iteration`, ...) raise the same Custom
Vision errors wherever they are used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from visionpipe.api import errors as api_errors
from visionpipe.api.projects import require_project, require_tag
from visionpipe.settings import ImageLimits
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project, Tag
from visionpipe.stores.registry import Iteration, IterationStatus, Publications, Registry

if TYPE_CHECKING:
    import azure.functions as func


def app_storage() -> Storage:
    """The app's storage account, for the triggers that need nothing else (health, the drop
    folder's blob events): the HTTP layer opens storage only here."""
    from visionpipe.storage import get_storage

    return get_storage()


def _no_uri(_project_id: str, _image_id: str) -> str | None:
    return None


@dataclass(frozen=True)
class RequestContext:
    """What one request needs (cheap to build: storage clients are shared per process)."""

    storage: Storage
    label_store: LabelStore
    registry: Registry
    limits: ImageLimits
    image_uri: Callable[[str, str], str | None] = field(default=_no_uri)

    @classmethod
    def create(cls, storage: Storage | None = None,
               image_uri: Callable[[str, str], str | None] = _no_uri) -> RequestContext:
        """A context over ``storage`` (default: the app's account) without a request."""
        from visionpipe.settings import get_settings

        storage = storage or app_storage()
        return cls(storage, LabelStore(storage), Registry(storage),
                   get_settings().training_limits, image_uri)

    @classmethod
    def for_request(cls, req: func.HttpRequest) -> RequestContext:
        """The context of ``req``: image URIs point at this host's public base URL and the
        request's API version (the training API's ``/images/{id}/original`` route)."""
        from visionpipe.api.export_links import public_base_url

        version = req.route_params.get("apiVersion", "")

        def image_uri(project_id: str, image_id: str) -> str:
            return (f"{public_base_url(req.url)}/customvision/{version}/training/projects/"
                    f"{project_id}/images/{image_id}/original")

        return cls.create(image_uri=image_uri)

    # --- lookups that answer Custom Vision's errors ---------------------------------------------
    def project(self, project_id: str) -> Project:
        return require_project(self.label_store, project_id)

    def iteration(self, project_id: str, iteration_id: str) -> Iteration:
        self.project(project_id)
        iteration = self.registry.get_iteration(project_id, iteration_id)
        if iteration is None:
            raise api_errors.iteration_not_found()
        return iteration

    def trained_iteration(self, project_id: str, iteration_id: str) -> Iteration:
        """The iteration, which must be Completed (only then does it have a model to export,
        evaluate or predict with): 404 as :meth:`iteration`, else Custom Vision's
        ``BadRequestIterationNotTrained`` with the status it has."""
        iteration = self.iteration(project_id, iteration_id)
        if iteration.status != IterationStatus.COMPLETED:
            raise api_errors.iteration_not_trained(str(iteration.status))
        return iteration

    def publications(self, project_id: str) -> Publications:
        return self.registry.current_publications(project_id)

    def tag(self, project_id: str, tag_id: str) -> Tag:
        return require_tag(self.label_store, project_id, tag_id)


@dataclass(frozen=True)
class ContextView:
    """Base of the api classes that are thin views over one request's context (IterationApi,
    ExportApi): the stores and the lookups come from :attr:`ctx`, so a view adds only its
    routes, never a second way to open storage or to look an iteration up."""

    ctx: RequestContext

    @classmethod
    def for_request(cls, req: func.HttpRequest) -> Self:
        return cls(RequestContext.for_request(req))

    @property
    def storage(self) -> Storage:
        return self.ctx.storage

    @property
    def registry(self) -> Registry:
        return self.ctx.registry

    @property
    def label_store(self) -> LabelStore:
        return self.ctx.label_store

    def project(self, project_id: str) -> Project:
        return self.ctx.project(project_id)

    def iteration(self, project_id: str, iteration_id: str) -> Iteration:
        return self.ctx.iteration(project_id, iteration_id)

    def trained(self, project_id: str, iteration_id: str) -> Iteration:
        return self.ctx.trained_iteration(project_id, iteration_id)

    def publications(self, project_id: str) -> Publications:
        return self.ctx.publications(project_id)
