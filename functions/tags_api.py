"""Custom Vision Training API routes for tags (ARCHITECTURE.md, "HTTP API"), ``Training-Key``:

``GET    /customvision/{v}/training/projects/{projectId}/tags[?iterationId=]``   api_tags (list)
``POST   /customvision/{v}/training/projects/{projectId}/tags?name=&description=&type=``
                                                                           api_tags (create)
``GET    /customvision/{v}/training/projects/{projectId}/tags/{tagId}``    api_tag
``PATCH  /customvision/{v}/training/projects/{projectId}/tags/{tagId}``    api_tag (Tag body)
``DELETE /customvision/{v}/training/projects/{projectId}/tags/{tagId}``    api_tag -> 204

Thin: the work is in :mod:`visionpipe.api.tags`, imported on first call (cold start).
"""

import azure.functions as func

bp = func.Blueprint()

_PROJECT = "customvision/{apiVersion}/training/projects/{projectId}"


@bp.function_name("api_tags")
@bp.route(route=f"{_PROJECT}/tags", methods=["GET", "POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
def api_tags(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import tags as api
    from visionpipe.api.adapter import training_call
    from visionpipe.api.context import RequestContext

    project_id = req.route_params["projectId"]

    def work() -> object:
        ctx = RequestContext.for_request(req)
        if req.method.upper() == "GET":
            return api.list_tags(ctx, project_id)
        p = req.params
        return api.create_tag(ctx, project_id, p.get("name"), p.get("description"),
                              p.get("type"))

    return training_call(req, work)


@bp.function_name("api_tag")
@bp.route(route=f"{_PROJECT}/tags/{{tagId}}", methods=["GET", "PATCH", "DELETE"],
          auth_level=func.AuthLevel.ANONYMOUS)
def api_tag(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import tags as api
    from visionpipe.api.adapter import json_body, training_call
    from visionpipe.api.context import RequestContext

    project_id, tag_id = req.route_params["projectId"], req.route_params["tagId"]
    method = req.method.upper()

    def work() -> object:
        ctx = RequestContext.for_request(req)
        if method == "GET":
            return api.get_tag(ctx, project_id, tag_id)
        if method == "PATCH":
            return api.update_tag(ctx, project_id, tag_id, json_body(req))
        return api.delete_tag(ctx, project_id, tag_id)

    return training_call(req, work, status=204 if method == "DELETE" else 200)
