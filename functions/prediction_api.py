"""Custom Vision's prediction routes for image bodies (DESIGN §6):

``POST /customvision/{v3.0|v3.1}/prediction/{projectId}/classify/iterations/{publishedName}/image``
and ``.../image/nostore``; multipart/form-data or application/octet-stream; ``Prediction-Key``.
"""

import json

import azure.functions as func

from visionpipe import api_errors
from visionpipe.auth import check_prediction_key

bp = func.Blueprint()
MAX_APPLICATION = 256  # the ?application= label stored with each prediction

CLASSIFY_ROUTE = ("customvision/{apiVersion}/prediction/{projectId}/classify/iterations/"
                  "{publishedName}/image")


def classify(req: func.HttpRequest, *, store: bool) -> func.HttpResponse:
    # Imported on first use: ONNX Runtime and the storage SDK would weigh on every cold start.
    from visionpipe.api_adapter import authorized, guarded, query
    from visionpipe.predict import PREDICTION_API_VERSIONS, classify_request

    def act() -> func.HttpResponse:
        authorized(req, check_prediction_key(req.headers))
        if req.route_params.get("apiVersion") not in PREDICTION_API_VERSIONS:
            raise api_errors.not_found()
        result = classify_request(
            req.route_params["projectId"], req.route_params["publishedName"], req.get_body(),
            req.headers.get("Content-Type"), store=store,
            application=query(req).string("application", max_length=MAX_APPLICATION) or "")
        return func.HttpResponse(json.dumps(result.to_dict()), mimetype="application/json")

    # Errors (and anything unexpected, as a detail-free 500) as every adapter answers them.
    return guarded(req, act)


@bp.function_name("classify_image")
@bp.route(route=CLASSIFY_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def classify_image(req: func.HttpRequest) -> func.HttpResponse:
    return classify(req, store=True)


@bp.function_name("classify_image_nostore")
@bp.route(route=CLASSIFY_ROUTE + "/nostore", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def classify_image_nostore(req: func.HttpRequest) -> func.HttpResponse:
    return classify(req, store=False)
