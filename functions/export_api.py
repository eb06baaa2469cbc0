"""Custom Vision's export routes (DESIGN §6):

``POST /customvision/{v}/training/projects/{projectId}/iterations/{iterationId}/export
?platform=ONNX&flavor=`` and ``GET`` of the same path (``Training-Key``) -> Export(s), status Done
at once: an iteration is an ONNX model already.
``GET .../export/download?expires=&sig=`` -> model.onnx. Authenticated by the signed,
short-lived query string in ``downloadUri`` (:mod:`visionpipe.export_links`), because SDK users
fetch that URI with a plain GET; a ``Training-Key`` header works too.
"""

import azure.functions as func

bp = func.Blueprint()

EXPORT_ROUTE = ("customvision/{apiVersion}/training/projects/{projectId}/iterations/"
                "{iterationId}/export")


def _link(req: func.HttpRequest) -> str:
    from visionpipe.export_links import download_url, public_base_url
    from visionpipe.settings import get_settings

    return download_url(public_base_url(req.url), req.route_params["apiVersion"],
                        req.route_params["projectId"], req.route_params["iterationId"],
                        get_settings().training_key or "")


@bp.function_name("export_iteration")
@bp.route(route=EXPORT_ROUTE, methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def export_iteration(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api_adapter import training_call
    from visionpipe.api_iterations import IterationApi

    project_id, iteration_id = req.route_params["projectId"], req.route_params["iterationId"]
    if req.method.upper() == "GET":
        return training_call(req, lambda: IterationApi.create().exports(
            project_id, iteration_id, _link(req)))
    return training_call(req, lambda: IterationApi.create().export(
        project_id, iteration_id, req.params.get("platform"), req.params.get("flavor"),
        _link(req)))


@bp.function_name("download_export")
@bp.route(route=EXPORT_ROUTE + "/download", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def download_export(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe import api_errors
    from visionpipe.api_adapter import training_call
    from visionpipe.api_iterations import IterationApi
    from visionpipe.auth import check_training_key
    from visionpipe.export_links import verify
    from visionpipe.settings import get_settings

    project_id, iteration_id = req.route_params["projectId"], req.route_params["iterationId"]

    def act() -> func.HttpResponse:
        signed = verify(get_settings().training_key, project_id, iteration_id,
                        req.params.get("expires"), req.params.get("sig"))
        if not signed and check_training_key(req.headers) is not None:
            raise api_errors.access_denied()
        data = IterationApi.create().model_bytes(project_id, iteration_id)
        return func.HttpResponse(data, mimetype="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{iteration_id}.onnx"'})

    return training_call(req, act, check_key=False)
