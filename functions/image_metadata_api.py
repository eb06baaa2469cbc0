"""Custom Vision's image metadata route (Training v3.4-preview), ``Training-Key``:

``POST /customvision/{v}/training/projects/{projectId}/images/metadata?imageIds=a,b`` with a body
of key/value pairs -> ImageMetadataUpdateSummary (200, or 207 when an image failed). Metadata is
returned on images and accepted at upload (the batches' ``metadata``).
"""

import azure.functions as func

bp = func.Blueprint()

METADATA_ROUTE = "customvision/{apiVersion}/training/projects/{projectId}/images/metadata"


@bp.function_name("api_images_metadata")
@bp.route(route=METADATA_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def api_images_metadata(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import id_list, json_body, training_call
    from visionpipe.api.context import RequestContext

    def act() -> object:
        return api_images.update_image_metadata(
            RequestContext.for_request(req), req.route_params["projectId"],
            id_list(req.params.get("imageIds")),
            json_body(req, required=True))

    return training_call(req, act)
