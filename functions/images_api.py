"""Custom Vision Training API routes for images (ARCHITECTURE.md, "HTTP API"), ``Training-Key``.
Under
``/customvision/{v}/training/projects/{projectId}/``:

``GET    images?taggingStatus=&tagIds=&orderBy=&take=&skip=``  api_images (v3.4 get_images)
``POST   images?tagIds=``  (multipart/form-data or a raw body)  api_images (create from data)
``DELETE images?imageIds=&allImages=``                          api_images -> 204
``GET    images/count?taggingStatus=&tagIds=``                  api_images_count
``POST   images/files``  (ImageFileCreateBatch)                 api_images_files
``POST   images/urls``   (ImageUrlCreateBatch)                  api_images_urls
``POST   images/predictions`` (ImageIdCreateBatch)              api_images_predictions
``GET    images/id?imageIds=``                                  api_images_by_id
``GET    images/tagged?tagIds=&orderBy=&take=&skip=``           api_images_tagged
``GET    images/untagged?orderBy=&take=&skip=``                 api_images_untagged
``GET    images/tagged/count?tagIds=``                          api_images_tagged_count
``GET    images/untagged/count``                                api_images_untagged_count
``POST   images/tags`` (ImageTagCreateBatch)                    api_image_tags
``DELETE images/tags?imageIds=&tagIds=``                        api_image_tags -> 204
``GET    images/{imageId}/original``  (the bytes; the Image's URIs point here)
                                                                api_image_original

Uploads answer 200 when every image is OK and 207 otherwise. Thin: the work is in
:mod:`visionpipe.api.images`, imported on first call (cold start).
"""

from collections.abc import Callable
from typing import Any

import azure.functions as func

bp = func.Blueprint()

_IMAGES = "customvision/{apiVersion}/training/projects/{projectId}/images"
_ANON = func.AuthLevel.ANONYMOUS


def _serve(req: func.HttpRequest, work: Callable[[Any, str], object],
           status: int = 200) -> func.HttpResponse:
    """Build the image context for this request and run ``work(ctx, project_id)``."""
    from visionpipe.api.adapter import training_call
    from visionpipe.api.context import RequestContext

    def run() -> object:
        return work(RequestContext.for_request(req), req.route_params["projectId"])

    return training_call(req, run, status=status)


_BY_PARAM = "taggingStatus"  # tagged or not as the taggingStatus parameter says


def _tagged(req: func.HttpRequest, tagged: bool | None | str) -> bool | None:
    from visionpipe.api.images import tagging_status

    return tagging_status(req.params.get(_BY_PARAM)) if tagged == _BY_PARAM else tagged  # type: ignore[return-value]


def _list(req: func.HttpRequest, tagged: bool | None | str) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import id_list, int_param

    p = req.params
    return _serve(req, lambda ctx, pid: api_images.list_images(
        ctx, pid, _tagged(req, tagged), id_list(p.get("tagIds")), p.get("orderBy"),
        int_param(p, "take", 50, 0, api_images.MAX_TAKE), int_param(p, "skip", 0)))


def _count(req: func.HttpRequest, tagged: bool | None | str) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import id_list

    return _serve(req, lambda ctx, pid: api_images.count_images(
        ctx, pid, _tagged(req, tagged), id_list(req.params.get("tagIds"))))


@bp.function_name("api_images")
@bp.route(route=_IMAGES, methods=["GET", "POST", "DELETE"], auth_level=_ANON)
def api_images(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import images
    from visionpipe.api.adapter import flag, id_list

    method = req.method.upper()
    if method == "GET":
        return _list(req, _BY_PARAM)
    if method == "DELETE":
        return _serve(req, lambda ctx, pid: images.delete_images(
            ctx, pid, id_list(req.params.get("imageIds")),
            flag(req.params.get("allImages"), False)), 204)

    def create(ctx: Any, pid: str) -> object:
        uploads = images.uploads_from_body(req.get_body(), req.headers.get("Content-Type"),
                                           id_list(req.params.get("tagIds")))
        return images.create_images(ctx, pid, uploads)

    return _serve(req, create)


@bp.function_name("api_images_count")
@bp.route(route=f"{_IMAGES}/count", methods=["GET"], auth_level=_ANON)
def api_images_count(req: func.HttpRequest) -> func.HttpResponse:
    return _count(req, _BY_PARAM)


@bp.function_name("api_images_files")
@bp.route(route=f"{_IMAGES}/files", methods=["POST"], auth_level=_ANON)
def api_images_files(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import json_body

    return _serve(req, lambda ctx, pid: api_images.create_images(
        ctx, pid, api_images.uploads_from_files(json_body(req))))


@bp.function_name("api_images_urls")
@bp.route(route=f"{_IMAGES}/urls", methods=["POST"], auth_level=_ANON)
def api_images_urls(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import json_body

    def work(ctx: Any, pid: str) -> object:
        ctx.project(pid)  # before fetching anything
        uploads = api_images.uploads_from_urls(json_body(req), ctx.limits.max_bytes)
        return api_images.create_images(ctx, pid, uploads)

    return _serve(req, work)


@bp.function_name("api_images_predictions")
@bp.route(route=f"{_IMAGES}/predictions", methods=["POST"], auth_level=_ANON)
def api_images_predictions(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import json_body

    def work(ctx: Any, pid: str) -> object:
        ctx.project(pid)
        uploads = api_images.uploads_from_predictions(ctx, pid, json_body(req))
        return api_images.create_images(ctx, pid, uploads)

    return _serve(req, work)


@bp.function_name("api_images_by_id")
@bp.route(route=f"{_IMAGES}/id", methods=["GET"], auth_level=_ANON)
def api_images_by_id(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import id_list

    return _serve(req, lambda ctx, pid: api_images.get_images_by_ids(
        ctx, pid, id_list(req.params.get("imageIds"))))


@bp.function_name("api_images_tagged")
@bp.route(route=f"{_IMAGES}/tagged", methods=["GET"], auth_level=_ANON)
def api_images_tagged(req: func.HttpRequest) -> func.HttpResponse:
    return _list(req, True)


@bp.function_name("api_images_untagged")
@bp.route(route=f"{_IMAGES}/untagged", methods=["GET"], auth_level=_ANON)
def api_images_untagged(req: func.HttpRequest) -> func.HttpResponse:
    return _list(req, False)


@bp.function_name("api_images_tagged_count")
@bp.route(route=f"{_IMAGES}/tagged/count", methods=["GET"], auth_level=_ANON)
def api_images_tagged_count(req: func.HttpRequest) -> func.HttpResponse:
    return _count(req, True)


@bp.function_name("api_images_untagged_count")
@bp.route(route=f"{_IMAGES}/untagged/count", methods=["GET"], auth_level=_ANON)
def api_images_untagged_count(req: func.HttpRequest) -> func.HttpResponse:
    return _count(req, False)


@bp.function_name("api_image_tags")
@bp.route(route=f"{_IMAGES}/tags", methods=["POST", "DELETE"], auth_level=_ANON)
def api_image_tags(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import id_list, json_body

    if req.method.upper() == "DELETE":
        return _serve(req, lambda ctx, pid: api_images.delete_image_tags(
            ctx, pid, id_list(req.params.get("imageIds")), id_list(req.params.get("tagIds"))),
            204)
    return _serve(req, lambda ctx, pid: api_images.create_image_tags(ctx, pid, json_body(req)))


@bp.function_name("api_image_original")
@bp.route(route=f"{_IMAGES}/{{imageId}}/original", methods=["GET"], auth_level=_ANON)
def api_image_original(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api import images as api_images
    from visionpipe.api.adapter import RawBody

    def work(ctx: Any, pid: str) -> object:
        data, content_type = api_images.original_image(ctx, pid, req.route_params["imageId"])
        return RawBody(data, content_type)

    return _serve(req, work)
