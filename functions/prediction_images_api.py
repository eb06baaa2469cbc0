"""The pictures of stored predictions, ``Training-Key`` (what a stored prediction's
``originalImageUri`` and ``thumbnailUri`` point at):

``GET /customvision/{v}/training/projects/{projectId}/predictions/{predictionId}/original``
``GET .../predictions/{predictionId}/thumbnail``
"""

import azure.functions as func

bp = func.Blueprint()

PICTURE_ROUTE = ("customvision/{apiVersion}/training/projects/{projectId}/predictions/"
                 "{predictionId}")


def _picture(req: func.HttpRequest, kind: str) -> func.HttpResponse:
    from visionpipe.api.adapter import RawBody, training_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.prediction_store import prediction_picture

    def act() -> RawBody:
        data, content_type = prediction_picture(
            IterationApi.for_request(req), req.route_params["projectId"],
            req.route_params["predictionId"], kind)
        return RawBody(data, content_type)

    return training_call(req, act)


@bp.function_name("prediction_picture_original")
@bp.route(route=PICTURE_ROUTE + "/original", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def prediction_picture_original(req: func.HttpRequest) -> func.HttpResponse:
    return _picture(req, "original")


@bp.function_name("prediction_picture_thumbnail")
@bp.route(route=PICTURE_ROUTE + "/thumbnail", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def prediction_picture_thumbnail(req: func.HttpRequest) -> func.HttpResponse:
    return _picture(req, "thumbnail")
