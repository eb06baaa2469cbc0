"""Custom Vision's publish / unpublish route (ARCHITECTURE.md, "HTTP API"), ``Training-Key``:

``POST   /customvision/{version}/training/projects/{projectId}/iterations/{iterationId}/publish
          ?publishName=...&predictionId=...[&overwrite=true]`` -> 200 ``true``
``DELETE /customvision/{version}/training/projects/{projectId}/iterations/{iterationId}/publish``
          -> 204
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from visionpipe.api.errors import ApiError
    from visionpipe.pipeline.publishing import PublishError

bp = func.Blueprint()

PUBLISH_ROUTE = ("customvision/{apiVersion}/training/projects/{projectId}/iterations/"
                 "{iterationId}/publish")


def _error(e: PublishError) -> ApiError:
    from visionpipe.api import errors as api_errors
    from visionpipe.pipeline import publishing

    if isinstance(e, publishing.ProjectNotFound):
        return api_errors.project_not_found()
    if isinstance(e, publishing.IterationNotFound):
        return api_errors.iteration_not_found()
    if isinstance(e, publishing.IterationNotTrained):
        return api_errors.iteration_not_trained(e.status)
    if isinstance(e, publishing.InvalidPublishName):
        return api_errors.invalid_publish_name(str(e))
    if isinstance(e, publishing.IterationNotPublished):
        return api_errors.iteration_not_published()
    raise e


@bp.function_name("publish_iteration")
@bp.route(route=PUBLISH_ROUTE, methods=["POST", "DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
def publish_iteration(req: func.HttpRequest) -> func.HttpResponse:
    # Imported on first use, to keep the app's cold start light.
    from visionpipe.api.adapter import flag, training_call
    from visionpipe.api.context import RequestContext
    from visionpipe.pipeline import publishing

    project_id, iteration_id = req.route_params["projectId"], req.route_params["iterationId"]

    def action() -> bool | None:
        ctx = RequestContext.for_request(req)
        registry = ctx.registry
        try:
            if req.method.upper() == "DELETE":
                publishing.unpublish(registry, project_id, iteration_id)
                return None  # 204
            publishing.publish(
                registry, ctx.label_store, project_id, iteration_id,
                req.params.get("publishName"), req.params.get("predictionId") or "",
                overwrite=flag(req.params.get("overwrite"), False),
            )
        except publishing.PublishError as e:
            raise _error(e) from e
        return True

    return training_call(req, action)
