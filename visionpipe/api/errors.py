"""Custom Vision's error bodies: ``{"code": "...", "message": "..."}`` with the service's status.

Clients (the official SDK included) branch on ``code``, so the codes are the ones in the
``CustomVisionError`` enum of the published REST specs (Training v3.3/v3.4-preview, Prediction
v3.0/v3.1), and the wording follows what the service says where it is known. This module is plain
data; HTTP triggers turn an :class:`ApiError` into a response with :func:`to_http_response`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from visionpipe.rejections import Reason, Rejection

if TYPE_CHECKING:
    import azure.functions as func

# The gateway's answer to a missing or wrong key (note: the code is the status, as a string).
ACCESS_DENIED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)


@dataclass
class ApiError(Exception):
    """An error the API answers with: HTTP status, Custom Vision error code, message.

    (Not frozen: Python's own machinery assigns ``__traceback__`` on exceptions.)
    """

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def to_json(self) -> str:
        return json.dumps(self.body())


def to_http_response(error: ApiError) -> func.HttpResponse:
    """The error as the Functions HTTP response Custom Vision clients expect."""
    import azure.functions as func

    return func.HttpResponse(error.to_json(), status_code=error.status,
                             mimetype="application/json")


# --- the errors used across the API ------------------------------------------------------------
def access_denied() -> ApiError:
    return ApiError(401, "401", ACCESS_DENIED_MESSAGE)


def not_found(message: str = "Resource not found") -> ApiError:
    return ApiError(404, "NotFound", message)


def project_not_found() -> ApiError:
    return ApiError(404, "NotFoundProject", "Invalid project")


def iteration_not_found() -> ApiError:
    """Also what prediction answers for a publish name that is not (or no longer) published."""
    return ApiError(404, "NotFoundIteration", "Invalid iteration")


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def iteration_not_trained(status: str) -> ApiError:
    return bad_request("BadRequestIterationIsNotTrained",
                       f"Iteration is not trained (status {status})")


def invalid_publish_name(message: str = "Invalid publish name") -> ApiError:
    return bad_request("BadRequestInvalidPublishName", message)


def iteration_not_published() -> ApiError:
    return bad_request("BadRequestIterationNotPublished", "Iteration is not published")


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"Unsupported content type {content_type!r}; send multipart/form-data "
                    "or application/octet-stream")


def image_stream_missing() -> ApiError:
    return bad_request("BadRequestImageStream", "No image data in the request")


def internal_error() -> ApiError:
    """What an unexpected exception answers: no type, no text, no trace (those go to the log)."""
    return ApiError(500, "InternalServerError", "An internal error occurred; it has been logged")


def bad_value(name: str, expected: str) -> ApiError:
    """A request value of the wrong type or shape (the field is named, the value is not
    echoed)."""
    return bad_request("BadRequest", f"{name} must be {expected}")


def prediction_failed(message: str) -> ApiError:
    return ApiError(500, "ErrorPrediction", message)


def model_unavailable(message: str) -> ApiError:
    return ApiError(503, "ErrorPredictionModelNotFound", message)


def service_unavailable() -> ApiError:
    """Storage is unreachable or failing (an outage): retry later. No address, no OS error."""
    return ApiError(503, "ServiceUnavailable",
                    "The service is temporarily unavailable; retry the request later")


# Validation reasons (ARCHITECTURE.md, "Image rules") -> Custom Vision's image error codes.
_IMAGE_CODES: dict[Reason, str] = {
    Reason.EMPTY: "BadRequestImageStream",
    Reason.TOO_LARGE: "BadRequestImageSizeBytes",
    Reason.UNSUPPORTED_FORMAT: "BadRequestImageFormat",
    Reason.CORRUPT: "BadRequestImageFormat",
    Reason.TOO_MANY_PIXELS: "BadRequestImageDimensions",
    Reason.TOO_SMALL: "BadRequestImageDimensions",
    Reason.DIMENSIONS_TOO_LARGE: "BadRequestImageDimensions",
    Reason.BAD_ASPECT_RATIO: "BadRequestImageDimensions",
}


def from_rejection(rejection: Rejection) -> ApiError:
    """A refused image as a 400 with the matching Custom Vision code; the message keeps our
    reason code so a client can tell ``too_small`` from ``bad_aspect_ratio``."""
    code = _IMAGE_CODES.get(rejection.reason, "BadRequest")
    return bad_request(code, f"{rejection.message} ({rejection.reason})")
