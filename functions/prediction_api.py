"""Custom Vision's prediction routes for image bodies (DESIGN §6):

``POST /customvision/{v3.0|v3.1}/prediction/{projectId}/classify/iterations/{publishedName}/image``
and ``.../image/nostore``; multipart/form-data or application/octet-stream; ``Prediction-Key``.
"""

import json
import logging

import azure.functions as func

from visionpipe import api_errors
from visionpipe.api_errors import ApiError
from visionpipe.auth import check_prediction_key

bp = func.Blueprint()
log = logging.getLogger(__name__)

CLASSIFY_ROUTE = ("customvision/{apiVersion}/prediction/{projectId}/classify/iterations/"
                  "{publishedName}/image")


def classify(req: func.HttpRequest, *, store: bool) -> func.HttpResponse:
    # Imported on first use: ONNX Runtime and the storage SDK would weigh on every cold start.
    from visionpipe.predict import PREDICTION_API_VERSIONS, classify_request

    denied = check_prediction_key(req.headers)
    if denied is not None:
        return api_errors.to_http_response(denied)
    try:
        if req.route_params.get("apiVersion") not in PREDICTION_API_VERSIONS:
            raise api_errors.not_found()
        result = classify_request(
            req.route_params["projectId"], req.route_params["publishedName"], req.get_body(),
            req.headers.get("Content-Type"), store=store,
            application=req.params.get("application") or "")
    except ApiError as e:
        return api_errors.to_http_response(e)
    except Exception as e:  # answer in Custom Vision's shape, keep the trace in the log
        log.exception("prediction failed")
        return api_errors.to_http_response(api_errors.prediction_failed(type(e).__name__))
    return func.HttpResponse(json.dumps(result.to_dict()), mimetype="application/json")


@bp.function_name("classify_image")
@bp.route(route=CLASSIFY_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def classify_image(req: func.HttpRequest) -> func.HttpResponse:
    return classify(req, store=True)


@bp.function_name("classify_image_nostore")
@bp.route(route=CLASSIFY_ROUTE + "/nostore", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def classify_image_nostore(req: func.HttpRequest) -> func.HttpResponse:
    return classify(req, store=False)
