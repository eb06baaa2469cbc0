"""Queue message shapes (docs/ARCHITECTURE.md): training requests and Custom Vision's training
events, and the one place they are validated.

A queue is an input like any other: a person, a script or anyone holding a SAS can put anything
on it. Everything the worker and the events function act on is checked here first, strictly
(exact JSON types, finite numbers, ids that are GUIDs), so that a message that could never be
processed is recognised as such on its first delivery (:class:`BadMessage`) instead of failing
somewhere deeper, again on every redelivery: in Azure each redelivery of a training request
starts another GPU job.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TRAINING_TYPES = ("Regular", "Advanced")
TRAINING_COMPLETED = "TrainingCompleted"
TRAINING_FAILED = "TrainingFailed"

#: Custom Vision ids (projects, iterations, tags) are GUIDs; the registry keys rows by them.
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
MAX_PROJECT_NAME = 256  # as the API and the drop folder
MAX_SELECTED_TAGS = 1000
MAX_BUDGET_HOURS = 2**31 - 1  # an Int32 column of the iterations table
MAX_TIMESTAMP = 64


class BadMessage(ValueError):
    """A message that can never be processed, whatever the retry (bad JSON, missing fields)."""


def decode_body(content: str | bytes | None) -> str:
    """Base64 JSON (the Functions default encoding) or, leniently, plain JSON text as a person
    may enqueue it from a portal or Storage Explorer. Never raises: what is neither is returned
    as it is and fails as JSON."""
    if isinstance(content, bytes):
        content = content.decode("utf-8", errors="replace")
    text = content or ""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return text


def _no_constant(name: str) -> Any:
    raise BadMessage(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadMessage(f"{text[:20]} is out of range")
    return value


def load_object(body: str | bytes, what: str) -> dict[str, Any]:
    """Strict JSON: an object, no ``NaN``/``Infinity``, no number that overflows to infinity."""
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except BadMessage as e:
        raise BadMessage(f"{what}: {e}") from e
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadMessage(f"{what} is not JSON") from e
    if not isinstance(value, dict):
        raise BadMessage(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def guid(value: Any, name: str) -> str:
    """A GUID string, lower-cased as the registry writes them."""
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        raise BadMessage(f"{name} must be a GUID")
    return value.lower()


def _optional_guid(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    return None if value is None or value == "" else guid(value, key)


def _project_name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadMessage("projectName must be a non-empty string")
    if len(value) > MAX_PROJECT_NAME or not value.isprintable():
        raise BadMessage(f"projectName must be at most {MAX_PROJECT_NAME} printable characters")
    return value


def _budget(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadMessage("reservedBudgetInHours must be an integer")
    if not 0 <= value <= MAX_BUDGET_HOURS:
        raise BadMessage(f"reservedBudgetInHours must be in [0, {MAX_BUDGET_HOURS}]")
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_SELECTED_TAGS:
        raise BadMessage(f"selectedTags must be a list of at most {MAX_SELECTED_TAGS} tag ids")
    return tuple(guid(t, "selectedTags[]") for t in value)


def _training_type(value: Any) -> str:
    if value is None or value == "":
        return "Regular"
    if value not in TRAINING_TYPES:
        raise BadMessage(f"trainingType must be one of {TRAINING_TYPES}")
    return str(value)


def _timestamp(value: Any) -> str:
    if value is None or value == "":
        return datetime.now(UTC).isoformat()
    if not isinstance(value, str) or len(value) > MAX_TIMESTAMP:
        raise BadMessage("requestedAt must be a timestamp string")
    return value


@dataclass(frozen=True)
class TrainingRequest:
    """What to train. A person or scheduler may give ``project_name`` instead of ``project_id``
    and leave out ``iteration_id`` (the job then creates the iteration itself)."""

    project_id: str | None = None
    project_name: str | None = None
    iteration_id: str | None = None
    training_type: str = "Regular"
    reserved_budget_in_hours: int = 0
    selected_tags: tuple[str, ...] = ()
    requested_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "trainingType": self.training_type,
            "reservedBudgetInHours": self.reserved_budget_in_hours,
            "selectedTags": list(self.selected_tags),
            "requestedAt": self.requested_at,
        }
        if self.project_id:
            d["projectId"] = self.project_id
        if self.project_name:
            d["projectName"] = self.project_name
        if self.iteration_id:
            d["iterationId"] = self.iteration_id
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, body: str | bytes) -> TrainingRequest:
        """The request in ``body``, or :class:`BadMessage` saying what is wrong with it."""
        d = load_object(body, "training request")
        project_id = _optional_guid(d, "projectId")
        project_name = _project_name(d.get("projectName"))
        if project_id is None and project_name is None:
            raise BadMessage("training request names no project (projectId or projectName)")
        return cls(
            project_id=project_id,
            project_name=project_name,
            iteration_id=_optional_guid(d, "iterationId"),
            training_type=_training_type(d.get("trainingType")),
            reserved_budget_in_hours=_budget(d.get("reservedBudgetInHours")),
            selected_tags=_tags(d.get("selectedTags")),
            requested_at=_timestamp(d.get("requestedAt")),
        )

    @classmethod
    def from_queue(cls, content: str | bytes | None) -> TrainingRequest:
        """A request as it comes off the queue (base64, or plain JSON put there by hand)."""
        return cls.from_json(decode_body(content))


@dataclass(frozen=True)
class TrainingEvent:
    """Custom Vision's own training notification shape."""

    project_id: str
    iteration_id: str
    training_status: str  # TrainingCompleted | TrainingFailed

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": "1.0",
                "type": "Training",
                "Content": {
                    "projectId": self.project_id,
                    "iterationId": self.iteration_id,
                    "trainingStatus": self.training_status,
                },
            }
        )

    @classmethod
    def from_json(cls, body: str | bytes) -> TrainingEvent:
        d = load_object(body, "training event")
        if d.get("type") != "Training":
            raise BadMessage("not a training event (type must be 'Training')")
        content = d.get("Content")
        if not isinstance(content, dict):
            raise BadMessage("not a training event (no Content object)")
        status = content.get("trainingStatus")
        if status not in (TRAINING_COMPLETED, TRAINING_FAILED):
            raise BadMessage(f"trainingStatus must be {TRAINING_COMPLETED} or {TRAINING_FAILED}")
        return cls(guid(content.get("projectId"), "projectId"),
                   guid(content.get("iterationId"), "iterationId"), str(status))


#: Export platforms and their flavors (Custom Vision's names, plus visionpipe's own ONNX flavors
#: ``ONNXFloat16``/``ONNXInt8``); ``""`` is "no flavor". The plain ONNX export (no flavor) needs no
#: conversion and never goes on the queue; everything else is converted by the export worker.
EXPORT_FLAVORS: dict[str, tuple[str, ...]] = {
    "ONNX": ("", "ONNX10", "ONNX12", "ONNXFloat16", "ONNXInt8"),
    "OpenVino": ("",),
    "DockerFile": ("Linux", "ARM"),
    "TensorFlow": ("TensorFlowNormal", "TensorFlowLite"),
    "CoreML": ("",),
}


@dataclass(frozen=True)
class ExportRequest:
    """Convert one iteration to one platform/flavor (``export-requests``). The export row it
    names (``exports`` table) is the state; the message only says which row to work on."""

    project_id: str
    iteration_id: str
    platform: str
    flavor: str = ""
    requested_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        return json.dumps({"projectId": self.project_id, "iterationId": self.iteration_id,
                           "platform": self.platform, "flavor": self.flavor,
                           "requestedAt": self.requested_at})

    @classmethod
    def from_json(cls, body: str | bytes) -> ExportRequest:
        """The request in ``body``, or :class:`BadMessage` saying what is wrong with it."""
        d = load_object(body, "export request")
        platform, flavor = d.get("platform"), d.get("flavor") or ""
        if not isinstance(platform, str) or platform not in EXPORT_FLAVORS:
            raise BadMessage(f"platform must be one of {tuple(EXPORT_FLAVORS)}")
        if not isinstance(flavor, str) or flavor not in EXPORT_FLAVORS[platform]:
            raise BadMessage(f"{platform} flavor must be one of {EXPORT_FLAVORS[platform]}")
        if platform == "ONNX" and not flavor:
            raise BadMessage("the plain ONNX export needs no conversion")
        return cls(guid(d.get("projectId"), "projectId"), guid(d.get("iterationId"), "iterationId"),
                   platform, flavor, _timestamp(d.get("requestedAt")))

    @classmethod
    def from_queue(cls, content: str | bytes | None) -> ExportRequest:
        return cls.from_json(decode_body(content))
