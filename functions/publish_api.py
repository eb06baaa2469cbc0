"""Custom Vision's publish / unpublish route (DESIGN §6), ``Training-Key``:

``POST   /customvision/{version}/training/projects/{projectId}/iterations/{iterationId}/publish
          ?publishName=...&predictionId=...[&overwrite=true]`` -> 200 ``true``
``DELETE /customvision/{version}/training/projects/{projectId}/iterations/{iterationId}/publish``
          -> 204
"""

import json
import logging

import azure.functions as func

from visionpipe import api_errors, publishing
from visionpipe.api_errors import ApiError
from visionpipe.auth import check_training_key
from visionpipe.label_store import LabelStore
from visionpipe.registry import Registry
from visionpipe.storage import get_storage

bp = func.Blueprint()
log = logging.getLogger(__name__)

TRAINING_API_VERSIONS = ("v3.0", "v3.1", "v3.2", "v3.3", "v3.4-preview")
PUBLISH_ROUTE = ("customvision/{apiVersion}/training/projects/{projectId}/iterations/"
                 "{iterationId}/publish")


def _error(e: publishing.PublishError) -> ApiError:
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
    denied = check_training_key(req.headers)
    if denied is not None:
        return api_errors.to_http_response(denied)
    if req.route_params.get("apiVersion") not in TRAINING_API_VERSIONS:
        return api_errors.to_http_response(api_errors.not_found())
    project_id, iteration_id = req.route_params["projectId"], req.route_params["iterationId"]
    storage = get_storage()
    registry = Registry(storage)
    try:
        if req.method.upper() == "DELETE":
            publishing.unpublish(registry, project_id, iteration_id)
            return func.HttpResponse(status_code=204)
        publishing.publish(
            registry, LabelStore(storage), project_id, iteration_id,
            req.params.get("publishName"), req.params.get("predictionId") or "",
            overwrite=(req.params.get("overwrite") or "").lower() == "true",
        )
    except publishing.PublishError as e:
        return api_errors.to_http_response(_error(e))
    return func.HttpResponse(json.dumps(True), mimetype="application/json")
