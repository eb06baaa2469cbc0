"""Custom Vision's quick test routes (ARCHITECTURE.md, "HTTP API"), ``Training-Key``:

``POST /customvision/{v}/training/projects/{projectId}/quicktest/image?iterationId=&store=``
(multipart/form-data ``imageData`` or application/octet-stream) and ``.../quicktest/url`` (body
``{"url": "..."}``) -> ImagePrediction. Any Completed iteration, published or not; without
``iterationId`` the project's default one. Stored in the prediction store unless ``store=false``
(the service's default is to store).
"""

import azure.functions as func

bp = func.Blueprint()

QUICKTEST_ROUTE = "customvision/{apiVersion}/training/projects/{projectId}/quicktest"


@bp.function_name("quick_test_image")
@bp.route(route=QUICKTEST_ROUTE + "/image", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def quick_test_image(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import errors as api_errors
    from visionpipe.api.adapter import query, training_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.multipart import BadBody, image_from_body
    from visionpipe.api.quicktest import quick_test

    def act() -> object:
        params = query(req)
        try:
            data = image_from_body(req.get_body(), req.headers.get("Content-Type"))
        except BadBody as e:
            raise api_errors.bad_request("BadRequestImageStream", str(e)) from e
        return quick_test(IterationApi.for_request(req), req.route_params["projectId"], data,
                          iteration_id=params.id("iterationId"),
                          store=params.flag("store", True))

    return training_call(req, act)


@bp.function_name("quick_test_url")
@bp.route(route=QUICKTEST_ROUTE + "/url", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def quick_test_url(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import json_body, query, training_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.quicktest import quick_test_url as quick_test

    def act() -> object:
        params = query(req)
        url = json_body(req, required=True).string("url", required=True, max_length=4096)
        return quick_test(IterationApi.for_request(req), req.route_params["projectId"], url or "",
                          iteration_id=params.id("iterationId"),
                          store=params.flag("store", True))

    return training_call(req, act)
