"""``GET /health``: 200 when the app can reach its storage account, 503 otherwise.

The answer comes within ``HEALTH_TIMEOUT_SECONDS`` (3 s by default) whatever storage does: a
load balancer or a person asking "is it up?" during an outage gets a prompt 503, not a hang.
"""

import json
import logging

import azure.functions as func

from visionpipe import names

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name(names.HEALTH_FUNCTION)
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.context import app_storage

    try:
        app_storage().ping()
    except Exception as e:  # any failure to reach storage in time means "not healthy"
        log.warning("health check failed: %s: %s", type(e).__name__, e)
        body = {"status": "unhealthy", "storage": "unreachable"}
        return func.HttpResponse(json.dumps(body), status_code=503, mimetype="application/json")
    return func.HttpResponse(json.dumps({"status": "ok"}), mimetype="application/json")
