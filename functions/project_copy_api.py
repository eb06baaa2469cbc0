"""Custom Vision Training API routes for copying a project (ARCHITECTURE.md, "HTTP API"),
``Training-Key``:

``GET  /customvision/{v}/training/projects/{projectId}/export``       api_project_export
``POST /customvision/{v}/training/projects/import?token=&name=``      api_project_import

and, for another deployment importing one of this deployment's exports (no key: the token is
the credential):

``GET  /visionpipe/v1/project-copies/{part}?token=``                  api_project_copy_part

Thin: the work is in :mod:`visionpipe.api.project_copy`, imported on first call (cold start).
``projects/import`` is a literal segment, so it wins over ``projects/{projectId}`` in the host's
routing whatever the registration order.
"""

import azure.functions as func

bp = func.Blueprint()

_BASE = "customvision/{apiVersion}/training/projects"


@bp.function_name("api_project_export")
@bp.route(route=f"{_BASE}/{{projectId}}/export", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def api_project_export(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import project_copy as api
    from visionpipe.api.adapter import training_call
    from visionpipe.api.context import RequestContext
    from visionpipe.api.export_links import public_base_url

    return training_call(req, lambda: api.export_project(
        RequestContext.for_request(req), req.route_params["projectId"],
        source_url=public_base_url(req.url)))


@bp.function_name("api_project_import")
@bp.route(route=f"{_BASE}/import", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def api_project_import(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import project_copy as api
    from visionpipe.api.adapter import training_call
    from visionpipe.api.context import RequestContext

    return training_call(req, lambda: api.import_project(
        RequestContext.for_request(req), req.params.get("token"), req.params.get("name")))


@bp.function_name("api_project_copy_part")
@bp.route(route="visionpipe/v1/project-copies/{part}", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def api_project_copy_part(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import project_copy as api
    from visionpipe.api.adapter import call
    from visionpipe.api.context import RequestContext

    return call(req, lambda: api.snapshot_part(RequestContext.for_request(req),
                                               req.params.get("token"),
                                               req.route_params["part"]),
                key=None, versions=None)
