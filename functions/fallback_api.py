"""The catch-all for ``/customvision/...`` requests no other route took: 404 / 405 in Custom
Vision's error shape, so the SDK raises ``CustomVisionErrorException`` (an empty 404 from the host
makes SDK 3.1.1 raise ``TypeError``).

``customvision/{*rest}`` has the lowest precedence of all routes in ASP.NET routing (a catch-all
loses to any literal or parameter segment), so it only answers what nothing else matches; it is
registered last in ``function_app.py`` all the same. ``/portal`` and ``/visionpipe`` are outside
it.
"""

import azure.functions as func

bp = func.Blueprint()

FALLBACK_ROUTE = "customvision/{*rest}"


@bp.function_name("customvision_unrouted")
@bp.route(route=FALLBACK_ROUTE, auth_level=func.AuthLevel.ANONYMOUS)  # every method
def customvision_unrouted(req: func.HttpRequest) -> func.HttpResponse:
    from urllib.parse import urlsplit

    from visionpipe.api.errors import to_http_response
    from visionpipe.api.routing import allowed_methods, app_routes, unrouted

    allowed = allowed_methods(urlsplit(req.url).path, app_routes())
    response = to_http_response(unrouted(req.method, allowed))
    if response.status_code == 405:
        response.headers["Allow"] = ", ".join(sorted(allowed))
    return response
