"""The one way the training-side HTTP triggers answer: key, API version, call, map.

Each trigger module stays a few lines: it names its route and hands a callable to
:func:`training_call`. Library functions raise :class:`~visionpipe.api_errors.ApiError` with
Custom Vision's codes; anything else is logged and answered as a 500 in the same error shape, so an
SDK client always gets a ``CustomVisionErrorException`` it can read, never an HTML page.

Kept free of heavy imports (storage, numpy, onnxruntime): trigger modules import it lazily anyway,
but it is also cheap to import at module level.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import azure.functions as func

log = logging.getLogger(__name__)

#: The training API versions served (the SDK 3.1.1 speaks v3.4-preview; v3.3 is the last stable).
TRAINING_API_VERSIONS = ("v3.0", "v3.1", "v3.2", "v3.3", "v3.4-preview")


def json_response(value: Any, status: int = 200) -> func.HttpResponse:
    import azure.functions as func

    return func.HttpResponse(json.dumps(value), status_code=status, mimetype="application/json")


def training_call(
    req: func.HttpRequest,
    action: Callable[[], Any],
    *,
    status: int = 200,
    check_key: bool = True,
) -> func.HttpResponse:
    """Check ``Training-Key`` and ``{apiVersion}``, run ``action``, answer its result as JSON.

    ``action`` returning None answers 204 (Custom Vision's DELETEs); a ready
    ``func.HttpResponse`` is passed through (downloads).
    """
    import azure.functions as func

    from visionpipe import api_errors
    from visionpipe.api_errors import ApiError

    if check_key:
        from visionpipe.auth import check_training_key

        denied = check_training_key(req.headers)
        if denied is not None:
            return api_errors.to_http_response(denied)
    if req.route_params.get("apiVersion") not in TRAINING_API_VERSIONS:
        return api_errors.to_http_response(api_errors.not_found())
    try:
        result = action()
    except ApiError as e:
        return api_errors.to_http_response(e)
    except Exception as e:  # Custom Vision's shape for the client, the trace for the log
        log.exception("%s %s failed", req.method, req.url)
        return api_errors.to_http_response(ApiError(500, "Error", type(e).__name__))
    if result is None:
        return func.HttpResponse(status_code=204)
    if isinstance(result, func.HttpResponse):
        return result
    return json_response(result, status)


def json_body(req: func.HttpRequest, *, required: bool = False) -> dict[str, Any]:
    """The request's JSON object body ({} when empty and not required)."""
    from visionpipe import api_errors

    raw = req.get_body()
    if not raw or not raw.strip():
        if required:
            raise api_errors.bad_request("BadRequest", "a JSON body is required")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise api_errors.bad_request("BadRequest", f"the body is not JSON: {e}") from e
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise api_errors.bad_request("BadRequest", "the body must be a JSON object")
    return body


def flag(value: str | None, default: bool) -> bool:
    """A boolean query parameter as the SDK writes it (``true``/``false``)."""
    if value is None or value == "":
        return default
    return value.strip().lower() in {"true", "1", "yes"}


def id_list(value: str | None) -> list[str]:
    """``ids=a,b,c`` (the SDK joins list query parameters with commas)."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]
