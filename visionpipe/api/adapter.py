"""The one way every HTTP trigger answers: key, API version, call, map.

Each trigger module stays a few lines: it names its route and hands a callable to
:func:`training_call` (training API), :func:`prediction_call` (prediction API) or
:func:`visionpipe_call` (visionpipe's own routes); all three are :func:`call` with that API's key
and versions. Library functions raise :class:`~visionpipe.api.errors.ApiError` with Custom
Vision's codes; anything else is logged and answered as a 500 in the same error shape
(:func:`guarded`), so an SDK client always gets a ``CustomVisionErrorException`` it can read,
never an HTML page or an empty body.

A result is answered by its type, in one place (:func:`answer`): None -> 204, a ready
``func.HttpResponse`` as it is, :class:`RawBody` as bytes, :class:`WithStatus` as JSON with that
status (uploads: 200 or 207), anything else as JSON.

Kept free of heavy imports (storage, numpy, onnxruntime): trigger modules import it lazily anyway,
but it is also cheap to import at module level.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import azure.functions as func

    from visionpipe.api.errors import ApiError
    from visionpipe.api.values import Query, Values

log = logging.getLogger(__name__)

#: The training API versions served (the SDK 3.1.1 speaks v3.4-preview; v3.3 is the last stable).
TRAINING_API_VERSIONS = ("v3.0", "v3.1", "v3.2", "v3.3", "v3.4-preview")


#: The prediction API versions served (v3.0 and v3.1 share their routes).
PREDICTION_API_VERSIONS = ("v3.0", "v3.1")


class Key(StrEnum):
    """Which key a route wants (Custom Vision's two headers)."""

    TRAINING = "training"
    PREDICTION = "prediction"


class RawBody:
    """Bytes to answer with as they are (an image), not as JSON."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data = data
        self.content_type = content_type


@dataclass(frozen=True)
class WithStatus:
    """A JSON body with a status of its own (a batch upload answers 200 or 207)."""

    body: Any
    status: int


def json_response(value: Any, status: int = 200) -> func.HttpResponse:
    import azure.functions as func

    return func.HttpResponse(json.dumps(value), status_code=status, mimetype="application/json")


def call(
    req: func.HttpRequest,
    action: Callable[[], Any],
    *,
    key: Key | None,
    versions: tuple[str, ...] | None,
    status: int = 200,
) -> func.HttpResponse:
    """Check ``key`` (None: the route checks its own credentials, e.g. a signed link) and the
    ``{apiVersion}`` route parameter against ``versions`` (None: the route has none), run
    ``action``, and :func:`answer` its result; every failure as :func:`guarded` answers it."""
    from visionpipe.api import errors as api_errors

    def work() -> Any:
        denied = None
        if key is not None:
            from visionpipe.api import auth

            check = auth.check_training_key if key is Key.TRAINING else auth.check_prediction_key
            denied = check(req.headers)
        authorized(req, denied)
        if versions is not None and req.route_params.get("apiVersion") not in versions:
            raise api_errors.not_found()
        return action()

    return guarded(req, work, lambda result: answer(result, status))


def training_call(req: func.HttpRequest, action: Callable[[], Any], *, status: int = 200,
                  check_key: bool = True) -> func.HttpResponse:
    """A training API route: ``Training-Key`` (unless ``check_key`` is off) and its versions."""
    return call(req, action, key=Key.TRAINING if check_key else None,
                versions=TRAINING_API_VERSIONS, status=status)


def prediction_call(req: func.HttpRequest, action: Callable[[], Any]) -> func.HttpResponse:
    """A prediction API route: ``Prediction-Key`` and the prediction versions."""
    return call(req, action, key=Key.PREDICTION, versions=PREDICTION_API_VERSIONS)


def visionpipe_call(req: func.HttpRequest, action: Callable[[], Any]) -> func.HttpResponse:
    """A ``/visionpipe/v1`` route: ``Training-Key``, no API version in the route."""
    return call(req, action, key=Key.TRAINING, versions=None)


def answer(result: Any, status: int = 200) -> func.HttpResponse:
    """The response for an action's result (see the module docstring for the types)."""
    import azure.functions as func

    if result is None or status == 204:
        return func.HttpResponse(status_code=204)
    if isinstance(result, func.HttpResponse):
        return result
    if isinstance(result, RawBody):
        return func.HttpResponse(result.data, status_code=status, mimetype=result.content_type)
    if isinstance(result, WithStatus):
        return json_response(result.body, result.status)
    return json_response(result, status)


def guarded(req: func.HttpRequest, action: Callable[[], Any],
            answer: Callable[[Any], func.HttpResponse] | None = None) -> func.HttpResponse:
    """Run ``action`` and ``answer`` its result so that no route ever answers a bare 5xx: an
    :class:`~visionpipe.api.errors.ApiError` is its error body, anything else a 500
    ``InternalServerError`` without details (the trace goes to the log). Every adapter
    (training, prediction, visionpipe's own routes) runs all of its work here, key checks
    included; over-long query values are refused once the key is known to be right
    (:func:`authorized`).
    """
    from visionpipe.api import errors as api_errors
    from visionpipe.api.errors import ApiError

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
    from visionpipe.api.values import check_query

    if denied is not None:
        raise denied
    check_query(req.params)


def json_body(req: func.HttpRequest, *, required: bool = False) -> Values:
    """The request's JSON object body, with typed accessors ({} when empty and not required)."""
    from visionpipe.api.values import parse_json_object

    return parse_json_object(req.get_body(), required=required)


def query(req: func.HttpRequest) -> Query:
    """The request's query parameters, with typed accessors."""
    from visionpipe.api.values import Query

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
    from visionpipe.api.values import Query

    return Query(params).integer(name, default, low, 2**31 - 1 if high is None else high)
