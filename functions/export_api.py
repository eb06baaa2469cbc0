"""Custom Vision's export routes (ARCHITECTURE.md, "HTTP API"); the logic is in
:mod:`visionpipe.api.export`:

``POST /customvision/{v}/training/projects/{projectId}/iterations/{iterationId}/export
?platform=&flavor=`` and ``GET`` of the same path (``Training-Key``) -> Export(s): plain ONNX is
Done at once, every other platform/flavor is Exporting until the training job's export worker
turns it Done or Failed.
``GET .../export/download?[platform=&flavor=&]expires=&sig=`` -> model.onnx, or the export zip.
Authenticated by the signed, short-lived query string in ``downloadUri``
(:mod:`visionpipe.api.export_links`), because SDK users fetch that URI with a plain GET; a
``Training-Key`` header works too.
"""

import azure.functions as func

bp = func.Blueprint()

EXPORT_ROUTE = ("customvision/{apiVersion}/training/projects/{projectId}/iterations/"
                "{iterationId}/export")


def _linker(req: func.HttpRequest):  # noqa: ANN202 - visionpipe.api.export.Linker
    from visionpipe.api.export_links import download_url, public_base_url
    from visionpipe.settings import get_settings

    base, key = public_base_url(req.url), get_settings().training_key or ""
    return lambda platform, flavor: download_url(
        base, req.route_params["apiVersion"], req.route_params["projectId"],
        req.route_params["iterationId"], key, platform=platform, flavor=flavor)


@bp.function_name("export_iteration")
@bp.route(route=EXPORT_ROUTE, methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def export_iteration(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import training_call
    from visionpipe.api.export import ExportApi

    project_id, iteration_id = req.route_params["projectId"], req.route_params["iterationId"]
    if req.method.upper() == "GET":
        return training_call(req, lambda: ExportApi.for_request(req).exports(
            project_id, iteration_id, _linker(req)))
    return training_call(req, lambda: ExportApi.for_request(req).export(
        project_id, iteration_id, req.params.get("platform"), req.params.get("flavor"),
        _linker(req)))


@bp.function_name("download_export")
@bp.route(route=EXPORT_ROUTE + "/download", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def download_export(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import errors as api_errors
    from visionpipe.api.adapter import training_call
    from visionpipe.api.auth import check_training_key
    from visionpipe.api.export import ExportApi
    from visionpipe.api.export_links import verify
    from visionpipe.settings import get_settings

    project_id, iteration_id = req.route_params["projectId"], req.route_params["iterationId"]
    platform, flavor = req.params.get("platform") or "", req.params.get("flavor") or ""

    def act() -> func.HttpResponse:
        signed = verify(get_settings().training_key, project_id, iteration_id,
                        req.params.get("expires"), req.params.get("sig"),
                        artifact=f"{platform}|{flavor}" if platform else "")
        if not signed and check_training_key(req.headers) is not None:
            raise api_errors.access_denied()
        data, filename = ExportApi.for_request(req).download(project_id, iteration_id,
                                                             platform, flavor)
        return func.HttpResponse(data, mimetype="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{filename}"'})

    return training_call(req, act, check_key=False)
