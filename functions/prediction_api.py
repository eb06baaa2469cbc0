"""Custom Vision's prediction routes (v3.0 and v3.1), ``Prediction-Key``:

``POST /customvision/{v}/prediction/{projectId}/classify/iterations/{publishedName}/image``
and ``.../image/nostore`` (multipart/form-data or application/octet-stream), and
``.../url`` and ``.../url/nostore`` (body ``{"url": "..."}``, fetched by the one guarded URL
fetcher). The storing routes keep the prediction and its picture; ``/nostore`` keeps nothing.
The same four under ``.../detect/iterations/{publishedName}/`` answer an object detection
iteration's boxes (classify on a detector, or detect on a classifier: 400).
"""


import azure.functions as func

bp = func.Blueprint()
MAX_APPLICATION = 256  # the ?application= label stored with each prediction
MAX_URL_LENGTH = 4096  # as images/urls and quicktest/url

CLASSIFY_BASE = ("customvision/{apiVersion}/prediction/{projectId}/classify/iterations/"
                 "{publishedName}")
CLASSIFY_ROUTE = CLASSIFY_BASE + "/image"
CLASSIFY_URL_ROUTE = CLASSIFY_BASE + "/url"
DETECT_BASE = ("customvision/{apiVersion}/prediction/{projectId}/detect/iterations/"
               "{publishedName}")
DETECT_ROUTE = DETECT_BASE + "/image"
DETECT_URL_ROUTE = DETECT_BASE + "/url"


def classify(req: func.HttpRequest, *, store: bool, detect: bool = False) -> func.HttpResponse:
    # Imported on first use: ONNX Runtime and the storage SDK would weigh on every cold start.
    from visionpipe.api.adapter import prediction_call, query
    from visionpipe.api.context import RequestContext
    from visionpipe.api.prediction import predict_request

    def act() -> dict[str, object]:
        result = predict_request(
            RequestContext.for_request(req), req.route_params["projectId"],
            req.route_params["publishedName"], detect=detect, store=store,
            body=req.get_body(), content_type=req.headers.get("Content-Type"),
            application=query(req).string("application", max_length=MAX_APPLICATION) or "")
        return result.to_dict()

    return prediction_call(req, act)


def classify_by_url(req: func.HttpRequest, *, store: bool,
                    detect: bool = False) -> func.HttpResponse:
    from visionpipe.api.adapter import json_body, prediction_call, query
    from visionpipe.api.context import RequestContext
    from visionpipe.api.prediction import predict_request

    def act() -> dict[str, object]:
        url = json_body(req, required=True).string("url", required=True,
                                                   max_length=MAX_URL_LENGTH)
        result = predict_request(
            RequestContext.for_request(req), req.route_params["projectId"],
            req.route_params["publishedName"], detect=detect, store=store, url=url or "",
            application=query(req).string("application", max_length=MAX_APPLICATION) or "")
        return result.to_dict()

    return prediction_call(req, act)


@bp.function_name("classify_image")
@bp.route(route=CLASSIFY_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def classify_image(req: func.HttpRequest) -> func.HttpResponse:
    return classify(req, store=True)


@bp.function_name("classify_image_nostore")
@bp.route(route=CLASSIFY_ROUTE + "/nostore", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def classify_image_nostore(req: func.HttpRequest) -> func.HttpResponse:
    return classify(req, store=False)


@bp.function_name("classify_image_url")
@bp.route(route=CLASSIFY_URL_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def classify_image_url(req: func.HttpRequest) -> func.HttpResponse:
    return classify_by_url(req, store=True)


@bp.function_name("classify_image_url_nostore")
@bp.route(route=CLASSIFY_URL_ROUTE + "/nostore", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def classify_image_url_nostore(req: func.HttpRequest) -> func.HttpResponse:
    return classify_by_url(req, store=False)


@bp.function_name("detect_image")
@bp.route(route=DETECT_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def detect_image(req: func.HttpRequest) -> func.HttpResponse:
    return classify(req, store=True, detect=True)


@bp.function_name("detect_image_nostore")
@bp.route(route=DETECT_ROUTE + "/nostore", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def detect_image_nostore(req: func.HttpRequest) -> func.HttpResponse:
    return classify(req, store=False, detect=True)


@bp.function_name("detect_image_url")
@bp.route(route=DETECT_URL_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def detect_image_url(req: func.HttpRequest) -> func.HttpResponse:
    return classify_by_url(req, store=True, detect=True)


@bp.function_name("detect_image_url_nostore")
@bp.route(route=DETECT_URL_ROUTE + "/nostore", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def detect_image_url_nostore(req: func.HttpRequest) -> func.HttpResponse:
    return classify_by_url(req, store=False, detect=True)
