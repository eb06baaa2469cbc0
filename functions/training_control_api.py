"""visionpipe's training control route (``Training-Key``), beside the Custom Vision API:

``POST /visionpipe/v1/projects/{projectId}/iterations/{iterationId}/cancel``
    stop a queued or running training; the iteration ends Canceled with a reason

Logic in :mod:`visionpipe.api.training_control`; imported inside the handler (cold start).
"""

import azure.functions as func

bp = func.Blueprint()

CANCEL_ROUTE = "visionpipe/v1/projects/{projectId}/iterations/{iterationId}/cancel"


@bp.function_name("visionpipe_cancel_training")
@bp.route(route=CANCEL_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def cancel_training(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import visionpipe_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.training_control import cancel

    return visionpipe_call(req, lambda: cancel(IterationApi.for_request(req),
                                               req.route_params["projectId"],
                                               req.route_params["iterationId"]))
