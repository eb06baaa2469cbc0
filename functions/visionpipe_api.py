"""visionpipe's own routes beside the Custom Vision API (``Training-Key``), for the CLI:

``GET /visionpipe/v1/projects/{projectId}/quarantine``
    what the drop folders rejected and why (Custom Vision has no quarantine to ask about)
``GET /visionpipe/v1/projects/{projectId}/iterations/{iterationId}/progress``
    the training job's live progress (epoch, loss, phase), which Custom Vision's Iteration lacks
``GET /visionpipe/v1/projects/{projectId}/iterations/{iterationId}/artifacts/{name}``
    the evaluation plots and metrics of a trained iteration (allowlisted names only)

Thin: library modules are imported inside the handlers (cold start).
"""

from collections.abc import Callable

import azure.functions as func

bp = func.Blueprint()

PROJECT_ROUTE = "visionpipe/v1/projects/{projectId}"
ITERATION_ROUTE = PROJECT_ROUTE + "/iterations/{iterationId}"
#: the artifacts a client may fetch: never model.onnx through here (that is export's job)
ARTIFACTS = {
    "pr_curve.png": "image/png",
    "confusion_matrix.png": "image/png",
    "metrics.json": "application/json",
}


def _call(req: func.HttpRequest, action: Callable[[], object]) -> func.HttpResponse:
    from visionpipe.api.adapter import visionpipe_call

    return visionpipe_call(req, action)


@bp.function_name("visionpipe_quarantine")
@bp.route(route=PROJECT_ROUTE + "/quarantine", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def quarantine(req: func.HttpRequest) -> func.HttpResponse:
    def act() -> object:
        from visionpipe import names
        from visionpipe.api.context import RequestContext
        from visionpipe.stores.quarantine import list_project_quarantine

        ctx = RequestContext.for_request(req)
        project = ctx.project(req.route_params["projectId"])
        return [
            {"container": container, **reason}
            for container in names.DROP_CONTAINERS
            for reason in list_project_quarantine(ctx.storage, container, project.name)
        ]

    return _call(req, act)


@bp.function_name("visionpipe_iteration_progress")
@bp.route(route=ITERATION_ROUTE + "/progress", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def iteration_progress(req: func.HttpRequest) -> func.HttpResponse:
    def act() -> object:
        from visionpipe.api import errors as api_errors
        from visionpipe.api.context import RequestContext

        iteration = RequestContext.for_request(req).registry.get_iteration(
            req.route_params["projectId"], req.route_params["iterationId"])
        if iteration is None:
            raise api_errors.iteration_not_found()
        return {"id": iteration.id, "status": str(iteration.status),
                "progress": iteration.progress, "failureReason": iteration.failure_reason or None}

    return _call(req, act)


@bp.function_name("visionpipe_iteration_artifact")
@bp.route(route=ITERATION_ROUTE + "/artifacts/{name}", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def iteration_artifact(req: func.HttpRequest) -> func.HttpResponse:
    def act() -> object:
        from visionpipe.api import errors as api_errors
        from visionpipe.api.context import RequestContext
        from visionpipe.stores.registry import NotFound

        name = req.route_params["name"]
        if name not in ARTIFACTS:
            raise api_errors.not_found(f"no artifact {name!r}; one of {sorted(ARTIFACTS)}")
        try:
            data = RequestContext.for_request(req).registry.download_artifact(
                req.route_params["projectId"], req.route_params["iterationId"], name)
        except NotFound as e:
            raise api_errors.not_found(f"the iteration has no {name}") from e
        return func.HttpResponse(data, mimetype=ARTIFACTS[name])

    return _call(req, act)
