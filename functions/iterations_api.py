"""Custom Vision's iteration routes (ARCHITECTURE.md, "HTTP API"), ``Training-Key``:

``GET    /customvision/{v}/training/projects/{projectId}/iterations``
``GET|PATCH|DELETE .../iterations/{iterationId}``
``GET    .../iterations/{iterationId}/performance?threshold=&overlapThreshold=``
``GET    .../iterations/{iterationId}/performance/images[/count]?tagIds=&orderBy=&take=&skip=``

Logic in :mod:`visionpipe.api.iterations`; heavy modules are imported inside the handlers so the
Function app's cold import stays small.
"""

import azure.functions as func

bp = func.Blueprint()

ITERATIONS_ROUTE = "customvision/{apiVersion}/training/projects/{projectId}/iterations"
ITERATION_ROUTE = ITERATIONS_ROUTE + "/{iterationId}"
PERFORMANCE_ROUTE = ITERATION_ROUTE + "/performance"


def _ids(req: func.HttpRequest) -> tuple[str, str]:
    return req.route_params["projectId"], req.route_params["iterationId"]


@bp.function_name("list_iterations")
@bp.route(route=ITERATIONS_ROUTE, methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def list_iterations(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import training_call
    from visionpipe.api.iterations import IterationApi

    return training_call(req, lambda: IterationApi.for_request(req).list(
        req.route_params["projectId"]))


@bp.function_name("manage_iteration")
@bp.route(route=ITERATION_ROUTE, methods=["GET", "PATCH", "DELETE"],
          auth_level=func.AuthLevel.ANONYMOUS)
def iteration(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import json_body, training_call
    from visionpipe.api.iterations import IterationApi

    def act() -> object:
        api, (project_id, iteration_id) = IterationApi.for_request(req), _ids(req)
        method = req.method.upper()
        if method == "DELETE":
            return api.delete(project_id, iteration_id)
        if method == "PATCH":
            return api.update(project_id, iteration_id, json_body(req, required=True))
        return api.get(project_id, iteration_id)

    return training_call(req, act)


def _threshold(req: func.HttpRequest) -> float:
    from visionpipe.api.adapter import query

    return query(req).number("threshold", 0.5, 0.0, 1.0)


@bp.function_name("iteration_performance")
@bp.route(route=PERFORMANCE_ROUTE, methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def iteration_performance(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import query, training_call
    from visionpipe.api.iterations import IterationApi

    # overlapThreshold only means something for object detection (a classifier ignores it)
    return training_call(req, lambda: IterationApi.for_request(req).performance(
        *_ids(req), threshold=_threshold(req),
        overlap_threshold=query(req).number("overlapThreshold", 0.5, 0.0, 1.0)))


def _int(req: func.HttpRequest, name: str, default: int) -> int:
    from visionpipe.api.adapter import query

    return query(req).integer(name, default)


@bp.function_name("image_performances")
@bp.route(route=PERFORMANCE_ROUTE + "/images", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def image_performances(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import id_list, training_call
    from visionpipe.api.iterations import IterationApi

    return training_call(req, lambda: IterationApi.for_request(req).image_performances(
        *_ids(req), id_list(req.params.get("tagIds")), req.params.get("orderBy"),
        _int(req, "take", 50), _int(req, "skip", 0)))


@bp.function_name("image_performance_count")
@bp.route(route=PERFORMANCE_ROUTE + "/images/count", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def image_performance_count(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import id_list, training_call
    from visionpipe.api.iterations import IterationApi

    return training_call(req, lambda: IterationApi.for_request(req).image_performance_count(
        *_ids(req), id_list(req.params.get("tagIds"))))
