"""Publishing iterations, and what happens when training reports back (``training-events``).

Publishing is what makes an iteration serve: the HTTP prediction routes find it by its publish
name, and the drop folder uses the project's most recently published one. The auto-publish gate
(off unless ``AUTO_PUBLISH`` is set; ``make demo`` turns it on) publishes a freshly trained
iteration under ``AUTO_PUBLISH_NAME`` only when its overall metrics are no worse than those of
what it would displace: the iteration of that name, and the one the drop folder uses now.

Anyone who can write to the ``training-events`` queue can claim that training completed, so a
``TrainingCompleted`` event is believed only when the iteration's artifacts say the same: a
``manifest.json`` of this very project and iteration, and the ``model.onnx`` whose SHA-256 that
manifest records. An event the artifacts do not back (forged, or early) is ignored with a log
line: it completes nothing and publishes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from visionpipe import names
from visionpipe.manifest import METRICS_FILE, MODEL_FILE, overall_section
from visionpipe.messages import TRAINING_COMPLETED, TRAINING_FAILED, TrainingEvent
from visionpipe.pipeline import lifecycle_events
from visionpipe.stores.label_store import LabelStore
from visionpipe.stores.registry import (
    Iteration,
    IterationStatus,
    NotFound,
    Publication,
    Registry,
)

if TYPE_CHECKING:
    from visionpipe.settings import Settings

log = logging.getLogger(__name__)

SETTING_AUTO_PUBLISH = names.SETTING_AUTO_PUBLISH
SETTING_AUTO_PUBLISH_NAME = names.SETTING_AUTO_PUBLISH_NAME
DEFAULT_AUTO_PUBLISH_NAME = "latest"

MAX_PUBLISH_NAME = 256
_FORBIDDEN_IN_NAME = set('/\\?#%"<>|*:')

FAILED_WITHOUT_REASON = "training failed and reported no reason"
#: ``EventOutcome.status`` of an event that changed nothing because nothing backs it.
IGNORED = "Ignored"


# --- errors (the HTTP adapter maps them to Custom Vision's codes) -------------------------------
class PublishError(Exception):
    """Base of the refusals below."""


class ProjectNotFound(PublishError):
    pass


class IterationNotFound(PublishError):
    pass


class IterationNotTrained(PublishError):
    def __init__(self, status: str) -> None:
        super().__init__(f"iteration is {status}, not Completed")
        self.status = status


class InvalidPublishName(PublishError):
    pass


class IterationNotPublished(PublishError):
    pass


def check_publish_name(name: str | None) -> str:
    """A publish name is part of the prediction URL: 1-256 printable characters, none of which
    would change the URL's meaning."""
    if name is None or not name.strip():
        raise InvalidPublishName("publishName is required")
    if len(name) > MAX_PUBLISH_NAME:
        raise InvalidPublishName(f"publishName is longer than {MAX_PUBLISH_NAME} characters")
    bad = sorted({c for c in name if c in _FORBIDDEN_IN_NAME or not c.isprintable()})
    if bad:
        raise InvalidPublishName(f"publishName must not contain {''.join(bad)!r}")
    return name


def publish(
    registry: Registry,
    label_store: LabelStore,
    project_id: str,
    iteration_id: str,
    publish_name: str | None,
    prediction_resource_id: str = "",
    *,
    overwrite: bool = False,
) -> Publication:
    """Publish a trained iteration under a name.

    A name already held by another iteration is taken over only with ``overwrite`` (as the
    v3.4 API's ``overwrite`` query parameter); re-publishing the same thing succeeds unchanged.
    """
    name = check_publish_name(publish_name)
    if label_store.get_project(project_id) is None:
        raise ProjectNotFound(project_id)
    iteration = registry.get_iteration(project_id, iteration_id)
    if iteration is None:
        raise IterationNotFound(iteration_id)
    if iteration.status != IterationStatus.COMPLETED:
        raise IterationNotTrained(str(iteration.status))
    try:
        registry.read_manifest(project_id, iteration_id)  # a model that can actually be served
    except (NotFound, ValueError) as e:
        raise IterationNotTrained(f"{iteration.status} without a usable model ({e})") from e
    current = registry.current_publications(project_id)
    holder = current.by_name.get(name)
    if holder is not None and holder.iteration_id != iteration_id and not overwrite:
        raise InvalidPublishName(
            f"publish name {name!r} is already used by iteration {holder.iteration_id}; "
            "unpublish that iteration first, or pass overwrite=true")
    if holder is not None and holder.iteration_id == iteration_id:
        return holder
    publication = registry.publish(project_id, iteration_id, name, prediction_resource_id)
    _notify_serving(project_id)
    log.info("project %s: published iteration %s as %r", project_id, iteration_id, name)
    lifecycle_events.publish(lifecycle_events.iteration_published(project_id, iteration_id, name))
    return publication


def unpublish(registry: Registry, project_id: str, iteration_id: str) -> None:
    if registry.get_iteration(project_id, iteration_id) is None:
        raise IterationNotFound(iteration_id)
    if not registry.unpublish(project_id, iteration_id):
        raise IterationNotPublished(iteration_id)
    _notify_serving(project_id)
    log.info("project %s: unpublished iteration %s", project_id, iteration_id)


def _notify_serving(project_id: str) -> None:
    """This process changed the pointer: let its own serving core see it at once (other
    instances notice within the pointer's max age)."""
    from visionpipe.serving.core import invalidate_published

    invalidate_published(project_id)


# --- metrics and the auto-publish gate ----------------------------------------------------------
@dataclass(frozen=True, order=True)
class OverallMetrics:
    """What "better" means for a whole iteration: average precision first (it does not depend
    on a threshold), then precision and recall at the 0.5 threshold."""

    average_precision: float
    precision: float
    recall: float


def _number(d: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = d.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def overall_metrics(metrics: Mapping[str, Any] | None) -> OverallMetrics | None:
    """The overall figures of an iteration's metrics (``{"overall": {...}}`` or Custom Vision's
    flat IterationPerformance shape); None when they are not there."""
    if not metrics:
        return None
    source = overall_section(metrics)
    ap = _number(source, "averagePrecision", "average_precision", "ap", "AP")
    precision = _number(source, "precision")
    recall = _number(source, "recall")
    if ap is None and precision is None and recall is None:
        return None
    return OverallMetrics(ap if ap is not None else -1.0, precision if precision is not None
                          else -1.0, recall if recall is not None else -1.0)


def is_worse(candidate: OverallMetrics, incumbent: OverallMetrics) -> bool:
    return candidate < incumbent


@dataclass(frozen=True)
class AutoPublishConfig:
    enabled: bool = False
    publish_name: str = DEFAULT_AUTO_PUBLISH_NAME

    @classmethod
    def from_settings(cls, settings: Settings) -> AutoPublishConfig:
        return cls(enabled=settings.auto_publish, publish_name=settings.auto_publish_name)


@dataclass(frozen=True)
class GateDecision:
    publish: bool
    reason: str


def auto_publish_decision(registry: Registry, iteration: Iteration,
                          publish_name: str) -> GateDecision:
    """Whether ``iteration`` may be auto-published under ``publish_name`` (see module doc)."""
    pubs = registry.current_publications(iteration.project_id)
    mine = pubs.for_iteration(iteration.id)
    if mine is not None:  # a person (or an earlier delivery) published it: keep that name
        return GateDecision(False, f"it is already published as {mine.publish_name!r}")
    incumbents = {p.iteration_id for p in (pubs.by_name.get(publish_name), pubs.latest) if p}
    incumbents.discard(iteration.id)
    if not incumbents:
        return GateDecision(True, "nothing else is published")
    candidate = overall_metrics(iteration.metrics)
    if candidate is None:
        return GateDecision(False, "the new iteration reports no overall metrics")
    for incumbent_id in sorted(incumbents):
        other = registry.get_iteration(iteration.project_id, incumbent_id)
        theirs = overall_metrics(other.metrics) if other else None
        if theirs is not None and is_worse(candidate, theirs):
            return GateDecision(False, f"its overall metrics {candidate} are worse than those of "
                                       f"published iteration {incumbent_id} {theirs}")
    return GateDecision(True, f"its overall metrics {candidate} are no worse than what is "
                              "published")


# --- training events ----------------------------------------------------------------------------
class UnknownIteration(LookupError):
    """A training event about an iteration the registry does not have (never resolves itself)."""


@dataclass(frozen=True)
class EventOutcome:
    status: str
    metrics: OverallMetrics | None = None
    published: Publication | None = None
    gate: GateDecision | None = None
    failure_reason: str = ""
    ignored_because: str = ""


def artifacts_problem(registry: Registry, project_id: str, iteration_id: str) -> str | None:
    """Why ``models/{project}/{iteration}/`` does not hold this iteration's model; None when it
    does: a manifest naming this project and iteration, and the model it fingerprints."""
    try:
        manifest = registry.read_manifest(project_id, iteration_id)
    except NotFound:
        return "it has no manifest.json"
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its manifest.json is not a manifest ({type(e).__name__})"
    if (manifest.project_id, manifest.iteration_id) != (project_id, iteration_id):
        return (f"its manifest.json belongs to iteration {str(manifest.iteration_id)[:64]!r} of "
                f"project {str(manifest.project_id)[:64]!r}")
    try:
        model = registry.download_artifact(project_id, iteration_id, MODEL_FILE)
    except NotFound:
        return "it has no model.onnx"
    if hashlib.sha256(model).hexdigest() != str(manifest.model_sha256).lower():
        return "its model.onnx is not the model its manifest.json records (SHA-256 differs)"
    return None


def _recorded_metrics(registry: Registry, iteration: Iteration) -> dict[str, Any]:
    """The iteration's metrics: its row's, else ``metrics.json``, else the manifest's."""
    if iteration.metrics:
        return iteration.metrics
    try:
        raw = registry.download_artifact(iteration.project_id, iteration.id, METRICS_FILE)
        loaded = json.loads(raw)
        if isinstance(loaded, dict) and loaded:
            return loaded
    except (NotFound, ValueError):
        pass
    try:
        return dict(registry.read_manifest(iteration.project_id, iteration.id).metrics)
    except (NotFound, ValueError):
        return {}


def handle_training_event(event: TrainingEvent, registry: Registry, label_store: LabelStore,
                          auto: AutoPublishConfig) -> EventOutcome:
    """Record what training reported; maybe auto-publish. Safe to repeat (at-least-once)."""
    iteration = registry.get_iteration(event.project_id, event.iteration_id)
    if iteration is None:
        raise UnknownIteration(f"training event for unknown iteration {event.iteration_id} of "
                               f"project {event.project_id}")

    if event.training_status == TRAINING_FAILED:
        if iteration.status == IterationStatus.COMPLETED:
            # The job records Failed before it says so, and never fails a registered model:
            # a Failed event for a Completed iteration is not the job's.
            log.warning("project %s: ignoring TrainingFailed for iteration %s, which is "
                        "Completed", iteration.project_id, iteration.id)
            return EventOutcome(IGNORED, ignored_because="the iteration is Completed")
        reason = iteration.failure_reason or FAILED_WITHOUT_REASON
        if iteration.status != IterationStatus.FAILED or not iteration.failure_reason:
            iteration = registry.update_iteration(iteration.project_id, iteration.id,
                                                  status=IterationStatus.FAILED,
                                                  failureReason=reason)
        log.warning("project %s: training of iteration %s failed: %s", iteration.project_id,
                    iteration.id, reason)
        lifecycle_events.publish(lifecycle_events.iteration_failed(
            iteration.project_id, iteration.id, iteration.name, reason))
        return EventOutcome(str(iteration.status), failure_reason=reason)

    if event.training_status != TRAINING_COMPLETED:  # messages.py admits only these two
        raise ValueError(f"unknown training status {event.training_status!r}")
    problem = artifacts_problem(registry, iteration.project_id, iteration.id)
    if problem is not None:
        log.warning("project %s: ignoring TrainingCompleted for iteration %s (%s): %s",
                    iteration.project_id, iteration.id, iteration.status, problem)
        return EventOutcome(IGNORED, ignored_because=problem)
    metrics = _recorded_metrics(registry, iteration)
    changes: dict[str, Any] = {}
    if metrics and not iteration.metrics:
        changes["metrics"] = metrics
    if iteration.status == IterationStatus.TRAINING:
        changes["status"] = IterationStatus.COMPLETED
        changes["trainedAt"] = iteration.trained_at or datetime.now(UTC)
    if changes:
        iteration = registry.update_iteration(iteration.project_id, iteration.id, **changes)
    overall = overall_metrics(iteration.metrics)
    log.info("project %s: iteration %s trained; overall %s", iteration.project_id, iteration.id,
             overall or "(no overall metrics)")
    if iteration.status != IterationStatus.COMPLETED:
        log.warning("project %s: iteration %s reported TrainingCompleted but is %s",
                    iteration.project_id, iteration.id, iteration.status)
        return EventOutcome(str(iteration.status), overall)
    lifecycle_events.publish(lifecycle_events.iteration_completed(
        iteration.project_id, iteration.id, iteration.name, overall and asdict(overall)))
    if not auto.enabled:
        return EventOutcome(str(iteration.status), overall)

    gate = auto_publish_decision(registry, iteration, auto.publish_name)
    if not gate.publish:
        log.warning("project %s: iteration %s not auto-published: %s", iteration.project_id,
                    iteration.id, gate.reason)
        return EventOutcome(str(iteration.status), overall, gate=gate)
    publication = publish(registry, label_store, iteration.project_id, iteration.id,
                          auto.publish_name, overwrite=True)
    log.info("project %s: auto-published iteration %s as %r: %s", iteration.project_id,
             iteration.id, auto.publish_name, gate.reason)
    return EventOutcome(str(iteration.status), overall, publication, gate)
