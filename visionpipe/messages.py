"""Queue message shapes (DESIGN §4): training requests and Custom Vision's training events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TRAINING_TYPES = ("Regular", "Advanced")
TRAINING_COMPLETED = "TrainingCompleted"
TRAINING_FAILED = "TrainingFailed"


class BadMessage(ValueError):
    """A message that can never be processed, whatever the retry (bad JSON, missing fields)."""


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
        try:
            d = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadMessage(f"training request is not JSON: {e}") from e
        if not isinstance(d, dict):
            raise BadMessage("training request must be a JSON object")
        project_id, project_name = d.get("projectId"), d.get("projectName")
        if not (isinstance(project_id, str) and project_id) and not (
            isinstance(project_name, str) and project_name
        ):
            raise BadMessage("training request names no project (projectId or projectName)")
        training_type = d.get("trainingType") or "Regular"
        if training_type not in TRAINING_TYPES:
            raise BadMessage(f"trainingType must be one of {TRAINING_TYPES}, not {training_type!r}")
        tags = d.get("selectedTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadMessage("selectedTags must be a list of tag ids")
        try:
            budget = int(d.get("reservedBudgetInHours") or 0)
        except (TypeError, ValueError) as e:
            raise BadMessage("reservedBudgetInHours must be an integer") from e
        return cls(
            project_id=project_id or None,
            project_name=project_name or None,
            iteration_id=d.get("iterationId") or None,
            training_type=training_type,
            reserved_budget_in_hours=budget,
            selected_tags=tuple(tags),
            requested_at=d.get("requestedAt") or datetime.now(UTC).isoformat(),
        )


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
        try:
            d = json.loads(body)
            content = d["Content"]
            event = cls(content["projectId"], content["iterationId"], content["trainingStatus"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise BadMessage(f"not a training event: {e}") from e
        if d.get("type") != "Training":
            raise BadMessage(f"unknown event type {d.get('type')!r}")
        if event.training_status not in (TRAINING_COMPLETED, TRAINING_FAILED):
            raise BadMessage(f"unknown training status {event.training_status!r}")
        return event
