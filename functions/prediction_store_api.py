"""Custom Vision's prediction-store routes (ARCHITECTURE.md, "HTTP API"), ``Training-Key``:

``POST   /customvision/{v}/training/projects/{projectId}/predictions/query`` (PredictionQueryToken)
``DELETE .../projects/{projectId}/predictions?ids=a,b``
``POST   .../projects/{projectId}/images/suggested[/count]?iterationId=``
(SuggestedTagAndRegionQueryToken): stored predictions, the most uncertain first.
"""

from typing import Any

import azure.functions as func

bp = func.Blueprint()

PROJECT_ROUTE = "customvision/{apiVersion}/training/projects/{projectId}"


def _links(req: func.HttpRequest, image_links: Any) -> Any:
    """The stored pictures' links for this request (its base URL and API version)."""
    return image_links(req.url, req.route_params.get("apiVersion", ""))


@bp.function_name("query_predictions")
@bp.route(route=PROJECT_ROUTE + "/predictions/query", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def query_predictions(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import json_body, training_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.prediction_store import image_links
    from visionpipe.api.prediction_store import query_predictions as query

    return training_call(req, lambda: query(
        IterationApi.for_request(req), req.route_params["projectId"], json_body(req),
        _links(req, image_links)))


@bp.function_name("delete_predictions")
@bp.route(route=PROJECT_ROUTE + "/predictions", methods=["DELETE"],
          auth_level=func.AuthLevel.ANONYMOUS)
def delete_predictions(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import query, training_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.prediction_store import delete_predictions as delete
    from visionpipe.api.values import is_id

    # Unknown ids are ignored, and something that is not an id is unknown (never a table key).
    return training_call(req, lambda: delete(
        IterationApi.for_request(req), req.route_params["projectId"],
        [i for i in query(req).ids("ids") if is_id(i)]))


@bp.function_name("suggested_images")
@bp.route(route=PROJECT_ROUTE + "/images/suggested", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def suggested_images(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import json_body, query, training_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.prediction_store import image_links
    from visionpipe.api.prediction_store import suggested_images as suggested

    return training_call(req, lambda: suggested(
        IterationApi.for_request(req), req.route_params["projectId"], query(req).id("iterationId"),
        json_body(req), _links(req, image_links)))


@bp.function_name("suggested_image_count")
@bp.route(route=PROJECT_ROUTE + "/images/suggested/count", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def suggested_image_count(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import json_body, query, training_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.prediction_store import suggested_image_count as count

    return training_call(req, lambda: count(
        IterationApi.for_request(req), req.route_params["projectId"], query(req).id("iterationId"),
        json_body(req)))
