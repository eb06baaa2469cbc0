"""Custom Vision Training API routes for object detection regions (ARCHITECTURE.md, "HTTP API"),
``Training-Key``, under ``/customvision/{v}/training/projects/{projectId}/``:

``POST   images/regions`` (ImageRegionCreateBatch)   api_image_regions -> 200 | 207
``DELETE images/regions?regionIds=``                 api_image_regions -> 204
``POST   images/{imageId}/regionproposals``          api_region_proposals (ImageRegionProposal)
``POST   tagsandregions/suggestions?iterationId=&imageIds=``
                                                     api_suggest_tags_and_regions

Thin: the work is in :mod:`visionpipe.api.regions`, imported on first call (cold start).
"""

import azure.functions as func

bp = func.Blueprint()

_REGIONS = "customvision/{apiVersion}/training/projects/{projectId}/images/regions"


@bp.function_name("api_image_regions")
@bp.route(route=_REGIONS, methods=["POST", "DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
def api_image_regions(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import regions
    from visionpipe.api.adapter import id_list, json_body, training_call
    from visionpipe.api.context import RequestContext

    project_id = req.route_params["projectId"]
    if req.method.upper() == "DELETE":
        return training_call(req, lambda: regions.delete_image_regions(
            RequestContext.for_request(req), project_id, id_list(req.params.get("regionIds"))),
            status=204)
    return training_call(req, lambda: regions.create_image_regions(
        RequestContext.for_request(req), project_id, json_body(req)))


@bp.function_name("api_region_proposals")
@bp.route(route="customvision/{apiVersion}/training/projects/{projectId}/images/{imageId}/"
                "regionproposals", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def api_region_proposals(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import regions
    from visionpipe.api.adapter import training_call
    from visionpipe.api.context import RequestContext

    def work() -> object:
        return regions.region_proposals(RequestContext.for_request(req),
                                        req.route_params["projectId"],
                                        req.route_params["imageId"])

    return training_call(req, work)


@bp.function_name("api_suggest_tags_and_regions")
@bp.route(route="customvision/{apiVersion}/training/projects/{projectId}/tagsandregions/"
                "suggestions", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def api_suggest_tags_and_regions(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import regions
    from visionpipe.api.adapter import id_list, training_call
    from visionpipe.api.context import RequestContext

    def work() -> object:
        return regions.suggest_tags_and_regions(
            RequestContext.for_request(req), req.route_params["projectId"],
            req.params.get("iterationId"), id_list(req.params.get("imageIds")))

    return training_call(req, work)
