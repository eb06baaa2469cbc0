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

    from visionpipe.api_errors import ApiError
    from visionpipe.api_values import Query, Values

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
    from visionpipe import api_errors

    def work() -> Any:
        if check_key:
            from visionpipe.auth import check_training_key

            authorized(req, check_training_key(req.headers))
        else:
            authorized(req, None)
        if req.route_params.get("apiVersion") not in TRAINING_API_VERSIONS:
            raise api_errors.not_found()
        return action()

    return guarded(req, work, lambda result: _answer(result, status))


def _answer(result: Any, status: int) -> func.HttpResponse:
    import azure.functions as func

    if result is None or status == 204:
        return func.HttpResponse(status_code=204)
    if isinstance(result, func.HttpResponse):
        return result
    if isinstance(result, RawBody):
        return func.HttpResponse(result.data, status_code=status, mimetype=result.content_type)
    return json_response(result, status)


def guarded(req: func.HttpRequest, action: Callable[[], Any],
            answer: Callable[[Any], func.HttpResponse] | None = None) -> func.HttpResponse:
    """Run ``action`` and ``answer`` its result so that no route ever answers a bare 5xx: an
    :class:`~visionpipe.api_errors.ApiError` is its error body, anything else a 500
    ``InternalServerError`` without details (the trace goes to the log). Every adapter
    (training, prediction, visionpipe's own routes) runs all of its work here, key checks
    included; over-long query values are refused once the key is known to be right
    (:func:`authorized`).
    """
    from visionpipe import api_errors
    from visionpipe.api_errors import ApiError

    try:
        result = action()
        return answer(result) if answer is not None else result
    except ApiError as e:
        return api_errors.to_http_response(e)
    except Exception as e:  # Custom Vision's shape for the client, the trace for the log
        from visionpipe.storage import is_unavailable

        if is_unavailable(e):  # a storage outage: the client should retry, it is not our bug
            log.warning("%s %s: storage unavailable: %s", req.method,
                        req.url.split("?", 1)[0], type(e).__name__)
            return api_errors.to_http_response(api_errors.service_unavailable())
        log.exception("%s %s failed", req.method, req.url.split("?", 1)[0])
        return api_errors.to_http_response(api_errors.internal_error())


def authorized(req: func.HttpRequest, denied: ApiError | None) -> None:
    """Raise the key check's refusal, if any, then refuse over-long query values (400): what
    every adapter does before a route reads its parameters."""
    from visionpipe.api_values import check_query

    if denied is not None:
        raise denied
    check_query(req.params)


def json_body(req: func.HttpRequest, *, required: bool = False) -> Values:
    """The request's JSON object body, with typed accessors ({} when empty and not required)."""
    from visionpipe.api_values import parse_json_object

    return parse_json_object(req.get_body(), required=required)


def query(req: func.HttpRequest) -> Query:
    """The request's query parameters, with typed accessors."""
    from visionpipe.api_values import Query

    return Query(req.params)


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
    from visionpipe.api_values import Query

    return Query(params).integer(name, default, low, 2**31 - 1 if high is None else high)
