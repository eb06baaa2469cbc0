"""Cancel a training: ``POST /visionpipe/v1/projects/{projectId}/iterations/{iterationId}/cancel``.

Custom Vision cannot cancel a training; visionpipe can. The route writes the iteration Canceled
with a reason (under the row's ETag, so a training that registers at the same moment stays
Completed) and frees the project's training lock at once, so the next training request can start.
The training job, local worker and Container Apps job alike, reads the row between training
steps and stops within seconds (training_job.worker.CancelWatch); a request still waiting in the
queue is dropped when it is received. docs/training.md, "Cancel", says the whole story.
"""

from __future__ import annotations

from typing import Any

from visionpipe.api import errors as api_errors
from visionpipe.api.iterations import IterationApi
from visionpipe.stores.registry import IterationStatus
from visionpipe.timestamps import iso

#: The reason written on the iteration (Custom Vision's ``trainingErrorDetails``).
CANCELED_REASON = "Canceled by request"
NOT_IN_PROGRESS = "BadRequestIterationNotInProgress"


def cancel(api: IterationApi, project_id: str, iteration_id: str) -> dict[str, Any]:
    """Cancel a queued or running training; the iteration as Custom Vision shows it, plus its
    visionpipe progress. 400 ``BadRequestIterationNotInProgress`` when it has already ended (a
    second cancel of a Canceled iteration answers it unchanged: cancelling is idempotent)."""
    iteration = api.iteration(project_id, iteration_id)  # 404s for an unknown project/iteration
    if iteration.status == IterationStatus.CANCELED:
        return _answer(api, iteration)
    if not iteration.in_progress:
        raise api_errors.bad_request(
            NOT_IN_PROGRESS, f"the iteration is {iteration.status}; only a queued or running "
            "training can be canceled")
    reason = f"{CANCELED_REASON} at {iso(_now())}"
    canceled = api.registry.cancel_iteration(project_id, iteration_id, reason)
    if canceled is None:
        raise api_errors.iteration_not_found()
    if canceled.status != IterationStatus.CANCELED:  # it ended on its own meanwhile
        raise api_errors.bad_request(
            NOT_IN_PROGRESS, f"the iteration is {canceled.status}; only a queued or running "
            "training can be canceled")
    return _answer(api, canceled)


def _answer(api: IterationApi, iteration: Any) -> dict[str, Any]:
    return {**api.to_json(iteration), "progress": iteration.progress}


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
