"""Custom Vision Training API routes for domains and projects (ARCHITECTURE.md, "HTTP API"),
``Training-Key``:

``GET    /customvision/{v}/training/domains``                  api_domains
``GET    /customvision/{v}/training/domains/{domainId}``       api_domain
``GET    /customvision/{v}/training/projects``                 api_projects (list)
``POST   /customvision/{v}/training/projects?name=...``        api_projects (create)
``GET    /customvision/{v}/training/projects/{projectId}``     api_project
``PATCH  /customvision/{v}/training/projects/{projectId}``     api_project (Project body)
``DELETE /customvision/{v}/training/projects/{projectId}``     api_project -> 204

Thin: the work is in :mod:`visionpipe.api.projects`, imported on first call (cold start).
"""

import azure.functions as func

bp = func.Blueprint()

_BASE = "customvision/{apiVersion}/training"


@bp.function_name("api_domains")
@bp.route(route=f"{_BASE}/domains", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def api_domains(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import projects as api
    from visionpipe.api.adapter import training_call

    return training_call(req, api.list_domains)


@bp.function_name("api_domain")
@bp.route(route=f"{_BASE}/domains/{{domainId}}", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
def api_domain(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import projects as api
    from visionpipe.api.adapter import training_call

    return training_call(req, lambda: api.get_domain(req.route_params["domainId"]))


@bp.function_name("api_projects")
@bp.route(route=f"{_BASE}/projects", methods=["GET", "POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def api_projects(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import projects as api
    from visionpipe.api.adapter import id_list, training_call
    from visionpipe.api.context import RequestContext

    def work() -> object:
        ctx = RequestContext.for_request(req)
        if req.method.upper() == "GET":
            return api.list_projects(ctx)
        p = req.params
        return api.create_project(
            ctx, p.get("name"), p.get("description"), p.get("domainId"),
            p.get("classificationType"), id_list(p.get("targetExportPlatforms")),
        )

    return training_call(req, work)


@bp.function_name("api_project")
@bp.route(route=f"{_BASE}/projects/{{projectId}}", methods=["GET", "PATCH", "DELETE"],
          auth_level=func.AuthLevel.ANONYMOUS)
def api_project(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import projects as api
    from visionpipe.api.adapter import json_body, training_call
    from visionpipe.api.context import RequestContext

    project_id = req.route_params["projectId"]
    method = req.method.upper()

    def work() -> object:
        ctx = RequestContext.for_request(req)
        if method == "GET":
            return api.get_project(ctx, project_id)
        if method == "PATCH":
            return api.update_project(ctx, project_id, json_body(req))
        return api.delete_project(ctx, project_id)

    return training_call(req, work, status=204 if method == "DELETE" else 200)
