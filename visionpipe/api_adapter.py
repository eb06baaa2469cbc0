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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import azure.functions as func

log = logging.getLogger(__name__)

#: The training API versions served (the SDK 3.1.1 speaks v3.4-preview; v3.3 is the last stable).
TRAINING_API_VERSIONS = ("v3.0", "v3.1", "v3.2", "v3.3", "v3.4-preview")


class RawBody:
    """Bytes to answer with as they are (an image), not as JSON."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data = data
        self.content_type = content_type


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

    ``action`` returning None, or ``status=204``, answers 204 with no body (Custom Vision's
    DELETEs); a ready ``func.HttpResponse`` is passed through (downloads); a :class:`RawBody` is
    answered as its bytes and content type with ``status``. An
    :class:`~visionpipe.api_errors.ApiError` becomes its error body, anything else a 500 in the
    same shape.
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
    if result is None or status == 204:
        return func.HttpResponse(status_code=204)
    if isinstance(result, func.HttpResponse):
        return result
    if isinstance(result, RawBody):
        return func.HttpResponse(result.data, status_code=status, mimetype=result.content_type)
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


def int_param(params: Mapping[str, str], name: str, default: int,
              low: int = 0, high: int | None = None) -> int:
    """An integer query parameter in ``[low, high]`` (``default`` when absent), or 400."""
    from visionpipe import api_errors

    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise api_errors.bad_request("BadRequest", f"{name} must be an integer") from e
    if value < low or (high is not None and value > high):
        raise api_errors.bad_request("BadRequest", f"{name} must be in [{low}, {high}]")
    return value
