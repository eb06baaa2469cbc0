"""Custom Vision's artifact route (Training v3.4-preview), ``Training-Key``:

``GET /customvision/{v}/training/projects/{projectId}/artifacts?path={iterationId}/{file}``
-> the artifact's bytes (model, manifest, metrics, plots); see :mod:`visionpipe.api.artifacts`.
"""

import azure.functions as func

bp = func.Blueprint()

ARTIFACTS_ROUTE = "customvision/{apiVersion}/training/projects/{projectId}/artifacts"


@bp.function_name("get_artifact")
@bp.route(route=ARTIFACTS_ROUTE, methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_artifact(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import query, training_call
    from visionpipe.api.artifacts import MAX_PATH_LENGTH
    from visionpipe.api.artifacts import get_artifact as artifact
    from visionpipe.api.iterations import IterationApi

    return training_call(req, lambda: artifact(
        IterationApi.for_request(req), req.route_params["projectId"],
        query(req).string("path", max_length=MAX_PATH_LENGTH)))
