"""Trained iterations: rows in the ``iterations`` table, artifacts under ``models/``, and the
published pointer.

- ``iterations``: PartitionKey = project id, RowKey = iteration id. Status moves
  Training -> Completed | Failed; progress and metrics are JSON columns a client can poll.
  One more row per project, RowKey ``lock-training``: the training lock (see below).
- ``models/{projectId}/{iterationId}/``: model.onnx, manifest.json, metrics.json, plots.
- ``models/{projectId}/published.json``: the published pointer, one small blob per project whose
  ETag tells serving cheaply whether anything changed. Custom Vision lets several iterations be
  published under different names; the drop folder uses the most recently published one.

The training lock: one training at a time per project, across every Function instance.
:meth:`Registry.start_training` writes the lock row (``holder`` = the new iteration's id,
``counter`` = its number) and the iteration row in one entity-group transaction, the lock row
under its ETag, so of several concurrent calls exactly one succeeds. The lock is held while its
holder iteration exists and is Queued or Training: an iteration that ends (Completed, Failed,
Canceled) or is deleted frees it, even when nobody released it explicitly (a killed worker leaves
its iteration Training, and the retried message trains it: still in progress, as in the service).
:meth:`Registry.end_training` releases it early; :meth:`Registry.update_iteration` calls it when
it writes a final status.

Ending a training races with cancelling it: both are conditional writes under the row's ETag.
:meth:`Registry.cancel_iteration` writes Canceled only over a row still in progress, and
:meth:`Registry.finish_iteration` (the job's final Completed) writes only over a row still in
progress, else raises :class:`IterationEnded`; whichever write lands first wins, the other sees
the changed ETag, reads again and gives way. A cancel that lands in the milliseconds before the
Completed write therefore wins: the row stays Canceled and the job discards its artifacts
(training_job/pipeline.py; docs/training.md, "Cancel").
"""

from __future__ import annotations

import json
import re
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypedDict, Unpack

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableErrorCode, TableTransactionError, UpdateMode
from azure.storage.blob import ContentSettings

from visionpipe import names
from visionpipe.manifest import MANIFEST_FILE, Manifest
from visionpipe.storage import Storage

PUBLISHED_FILE = "published.json"
_JSON_COLUMNS = ("selectedTags", "progress", "metrics")
_LOCK_KEY = "lock-training"  # RowKey of the training lock (iteration ids are GUIDs)
_DELETING = "project-deleted"  # lock holder while a project is being deleted
_MAX_RETRIES = 20
_NUMBERED = re.compile(r"Iteration (\d+)")
_LOST_RACE = frozenset({
    TableErrorCode.ENTITY_ALREADY_EXISTS, TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED,
    TableErrorCode.CONDITION_NOT_MET, TableErrorCode.ENTITY_NOT_FOUND,
    TableErrorCode.RESOURCE_NOT_FOUND,
})


class IterationStatus(StrEnum):
    """Custom Vision's iteration statuses. visionpipe writes Training at once (the request is
    queued in the same call) and then Completed or Failed; Queued and Canceled rows parse too."""

    QUEUED = "Queued"
    TRAINING = "Training"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"


#: A training is in progress while an iteration is in one of these.
IN_PROGRESS = frozenset({IterationStatus.QUEUED, IterationStatus.TRAINING})


class TrainingInProgress(RuntimeError):
    """The project already has a training in progress (or is being deleted)."""


class IterationEnded(RuntimeError):
    """:meth:`Registry.finish_iteration` found the row no longer in progress (a cancel, most
    likely, landed first): nothing was written. ``iteration`` is the row as it now is."""

    def __init__(self, iteration: Iteration) -> None:
        super().__init__(f"iteration {iteration.id} is {iteration.status}")
        self.iteration = iteration


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Iteration:
    project_id: str
    id: str
    name: str
    status: IterationStatus
    created: datetime
    last_modified: datetime
    training_type: str = "Regular"
    reserved_budget_in_hours: int = 0
    selected_tags: tuple[str, ...] = ()
    classification_type: str = "Multiclass"
    trained_at: datetime | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    failure_reason: str = ""
    backbone: str = ""
    # What the iteration was trained on (sorted image sha256 + tag ids, hashed): the train route
    # compares it to refuse "nothing changed" like the service (BadRequestTrainingNotNeeded).
    dataset_fingerprint: str = ""
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def in_progress(self) -> bool:
        return self.status in IN_PROGRESS

    @classmethod
    def from_entity(cls, e: dict[str, Any]) -> Iteration:
        return cls(
            project_id=e["PartitionKey"],
            id=e["RowKey"],
            name=e.get("name", ""),
            status=IterationStatus(e["status"]),
            created=e["created"],
            last_modified=e.get("lastModified", e["created"]),
            training_type=e.get("trainingType", "Regular"),
            reserved_budget_in_hours=int(e.get("reservedBudgetInHours", 0)),
            selected_tags=tuple(json.loads(e.get("selectedTags") or "[]")),
            classification_type=e.get("classificationType", "Multiclass"),
            trained_at=e.get("trainedAt"),
            progress=json.loads(e.get("progress") or "{}"),
            metrics=json.loads(e.get("metrics") or "{}"),
            failure_reason=e.get("failureReason", ""),
            backbone=e.get("backbone", ""),
            dataset_fingerprint=e.get("datasetFingerprint", ""),
            timings=json.loads(e.get("timingsJson") or "{}"),
        )


@dataclass(frozen=True)
class Publication:
    iteration_id: str
    publish_name: str
    prediction_resource_id: str
    published_at: str


@dataclass(frozen=True)
class Publications:
    """The parsed published pointer of one project, with the ETag it was read at."""

    by_name: dict[str, Publication]
    etag: str | None

    @property
    def latest(self) -> Publication | None:
        """The most recently published iteration (what the drop folder predicts with)."""
        if not self.by_name:
            return None
        return max(self.by_name.values(), key=lambda p: p.published_at)

    def for_iteration(self, iteration_id: str) -> Publication | None:
        return next((p for p in self.by_name.values() if p.iteration_id == iteration_id), None)


class NotFound(LookupError):
    pass


class IterationFields(TypedDict, total=False):
    """What a new iteration row records of the request that started it: the keywords of
    :meth:`Registry.create_iteration` and :meth:`Registry.start_training` (one list, so the two
    ways of creating a row cannot drift; the defaults are in ``Registry._iteration_entity``)."""

    training_type: str  # "Regular" (default) or "Advanced"
    reserved_budget_in_hours: int  # default 0
    selected_tags: tuple[str, ...]  # default (): every tag
    classification_type: str  # "Multiclass" (default) or "Multilabel"
    dataset_fingerprint: str  # default "": not recorded


def _if_unchanged(entity: Any) -> dict[str, Any]:
    return {"etag": entity.metadata["etag"], "match_condition": MatchConditions.IfNotModified}


class Registry:
    def __init__(self, storage: Storage) -> None:
        self._table = storage.table(names.ITERATIONS_TABLE)
        self._models = storage.container(names.MODELS)

    # --- iteration rows -----------------------------------------------------------------------
    def create_iteration(
        self,
        project_id: str,
        *,
        iteration_id: str | None = None,
        name: str | None = None,
        **fields: Unpack[IterationFields],
    ) -> Iteration:
        """Create an iteration in status Training; an existing id is returned unchanged.

        This does not take the training lock (the training job registers iterations queued
        without one); the train route uses :meth:`start_training`."""
        iteration_id = iteration_id or str(uuid.uuid4())
        existing = self.get_iteration(project_id, iteration_id)
        if existing is not None:
            return existing
        entity = self._iteration_entity(
            project_id, iteration_id,
            name or f"Iteration {self._last_number(project_id, self._lock(project_id)) + 1}",
            fields)
        with suppress(ResourceExistsError):  # a concurrent create of the same id: theirs stands
            self._table.create_entity(entity)
        return self._written(project_id, iteration_id)

    def _written(self, project_id: str, iteration_id: str) -> Iteration:
        """The row just written, as stored; :class:`NotFound` when a concurrent delete removed
        it since (every write that answers the row reads it back here)."""
        found = self.get_iteration(project_id, iteration_id)
        if found is None:  # deleted by a concurrent call since
            raise NotFound(f"iteration {iteration_id} of project {project_id}")
        return found

    @staticmethod
    def _iteration_entity(project_id: str, iteration_id: str, name: str,
                          fields: IterationFields) -> dict[str, Any]:
        unknown = set(fields) - set(IterationFields.__annotations__)
        if unknown:
            raise TypeError(f"unexpected iteration fields: {sorted(unknown)}")
        now = _now()
        entity: dict[str, Any] = {
            "PartitionKey": project_id,
            "RowKey": iteration_id,
            "name": name,
            "status": str(IterationStatus.TRAINING),
            "created": now,
            "lastModified": now,
            "trainingType": fields.get("training_type", "Regular"),
            "reservedBudgetInHours": int(fields.get("reserved_budget_in_hours", 0)),
            "selectedTags": json.dumps(list(fields.get("selected_tags", ()))),
            "classificationType": fields.get("classification_type", "Multiclass"),
        }
        if fields.get("dataset_fingerprint"):
            entity["datasetFingerprint"] = fields["dataset_fingerprint"]
        return entity

    # --- the training lock ----------------------------------------------------------------------
    def start_training(self, project_id: str, **fields: Unpack[IterationFields]) -> Iteration:
        """Take the project's training lock and create its iteration (status Training), both in
        one transaction; :class:`TrainingInProgress` when another training holds the lock.

        The lock row also counts iterations, so names ("Iteration 7") never repeat, even after
        deletes."""
        for _ in range(_MAX_RETRIES):
            lock = self._lock(project_id)
            if lock is not None and self._held(project_id, lock):
                raise TrainingInProgress(f"a training of project {project_id} is in progress")
            number = self._last_number(project_id, lock) + 1
            iteration_id = str(uuid.uuid4())
            lock_row = {"PartitionKey": project_id, "RowKey": _LOCK_KEY,
                        "holder": iteration_id, "counter": number}
            take: tuple[Any, ...] = (
                ("create", lock_row) if lock is None
                else ("update", lock_row, {"mode": UpdateMode.REPLACE, **_if_unchanged(lock)}))
            entity = self._iteration_entity(
                project_id, iteration_id, f"Iteration {number}", fields)
            try:
                self._table.submit_transaction([take, ("create", entity)])
            except TableTransactionError as e:
                if e.error_code in _LOST_RACE:
                    continue  # another call took the lock first: look at who holds it
                raise
            return self._written(project_id, iteration_id)
        raise TrainingInProgress(f"project {project_id}: too much contention for the lock")

    def end_training(self, project_id: str, iteration_id: str) -> None:
        """Release the lock if ``iteration_id`` holds it (an ended or deleted iteration). Not
        needed for correctness (a lock whose holder ended is free), it keeps the row honest."""
        lock = self._lock(project_id)
        if lock is None or lock.get("holder") != iteration_id:
            return
        with suppress(ResourceModifiedError, ResourceNotFoundError):
            self._table.update_entity(
                {"PartitionKey": project_id, "RowKey": _LOCK_KEY, "holder": ""},
                mode=UpdateMode.MERGE, **_if_unchanged(lock))

    def block_training(self, project_id: str) -> None:
        """Hold the lock for a project deletion: no training can start until
        :meth:`delete_project` removes the lock with everything else. Raises
        :class:`TrainingInProgress` while an iteration is Queued or Training."""
        for _ in range(_MAX_RETRIES):
            lock = self._lock(project_id)
            if lock is not None and lock.get("holder") == _DELETING:
                return  # a delete that died half-way, being repeated
            if lock is not None and self._held(project_id, lock):
                raise TrainingInProgress(f"a training of project {project_id} is in progress")
            if any(i.in_progress for i in self.list_iterations(project_id)):
                raise TrainingInProgress(f"a training of project {project_id} is in progress")
            row = {"PartitionKey": project_id, "RowKey": _LOCK_KEY, "holder": _DELETING,
                   "counter": self._last_number(project_id, lock)}
            try:
                if lock is None:
                    self._table.create_entity(row)
                else:
                    self._table.update_entity(row, mode=UpdateMode.REPLACE, **_if_unchanged(lock))
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                continue
            return
        raise TrainingInProgress(f"project {project_id}: too much contention for the lock")

    def unblock_training(self, project_id: str) -> None:
        """Give the lock back after a project deletion that failed before the project row went
        (the project stays usable; repeating the delete takes the lock again)."""
        self.end_training(project_id, _DELETING)

    def _lock(self, project_id: str) -> Any:
        try:
            return self._table.get_entity(project_id, _LOCK_KEY)
        except ResourceNotFoundError:
            return None

    def _held(self, project_id: str, lock: Any) -> bool:
        holder = lock.get("holder") or ""
        if holder == _DELETING:
            return True
        if not holder:
            return False
        iteration = self.get_iteration(project_id, holder)
        return iteration is not None and iteration.in_progress

    def _last_number(self, project_id: str, lock: Any) -> int:
        """The highest iteration number used so far: the lock's counter, or a higher number in
        a name (iterations registered without the lock), or the count of iterations."""
        iterations = self.list_iterations(project_id)
        numbers = [len(iterations), int(lock.get("counter", 0)) if lock is not None else 0]
        numbers += [int(m.group(1)) for i in iterations if (m := _NUMBERED.fullmatch(i.name))]
        return max(numbers)

    def get_iteration(self, project_id: str, iteration_id: str) -> Iteration | None:
        if iteration_id == _LOCK_KEY:
            return None
        try:
            return Iteration.from_entity(self._table.get_entity(project_id, iteration_id))
        except ResourceNotFoundError:
            return None

    def list_iterations(self, project_id: str) -> list[Iteration]:
        rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": project_id})
        return sorted((Iteration.from_entity(r) for r in rows if r["RowKey"] != _LOCK_KEY),
                      key=lambda i: i.created)

    @staticmethod
    def _changes(project_id: str, iteration_id: str, columns: dict[str, Any]) -> dict[str, Any]:
        """The MERGE entity for ``columns`` (dicts/lists in JSON columns serialised)."""
        entity: dict[str, Any] = {"PartitionKey": project_id, "RowKey": iteration_id}
        for key, value in columns.items():
            if key in _JSON_COLUMNS and not isinstance(value, str):
                value = json.dumps(value)
            if isinstance(value, StrEnum):
                value = str(value)
            entity[key] = value
        entity["lastModified"] = _now()
        return entity

    def finish_iteration(self, project_id: str, iteration_id: str, status: IterationStatus,
                         **columns: Any) -> Iteration:
        """Write a final ``status`` (with ``columns``) only over a row still in progress, under
        the ETag it was read at; frees the training lock. Raises :class:`IterationEnded` (nothing
        written) when the row has ended meanwhile, :class:`NotFound` when it is gone.

        The job's Completed write goes through here: a cancel that lands between the job's last
        check and this write changes the ETag, the write fails, the row is read again, and the
        cancel wins instead of being overwritten."""
        if iteration_id == _LOCK_KEY:
            raise NotFound(f"iteration {iteration_id} of project {project_id}")
        for _ in range(_MAX_RETRIES):
            try:
                row = self._table.get_entity(project_id, iteration_id)
            except ResourceNotFoundError as e:
                raise NotFound(f"iteration {iteration_id} of project {project_id}") from e
            current = Iteration.from_entity(row)
            if not current.in_progress:
                raise IterationEnded(current)
            entity = self._changes(project_id, iteration_id, {**columns, "status": status})
            try:
                self._table.update_entity(entity, mode=UpdateMode.MERGE, **_if_unchanged(row))
            except ResourceNotFoundError as e:
                raise NotFound(f"iteration {iteration_id} of project {project_id}") from e
            except ResourceModifiedError:
                continue  # written meanwhile (a cancel, a progress write): look again
            self.end_training(project_id, iteration_id)
            return self._written(project_id, iteration_id)
        raise TrainingInProgress(f"iteration {iteration_id}: too much contention to finish it")

    def delete_artifacts(self, project_id: str, iteration_id: str) -> None:
        """Delete what a training uploaded under ``models/{projectId}/{iterationId}/`` (the row
        stays): an attempt whose iteration was canceled registers nothing."""
        for blob in list(self._models.list_blobs(name_starts_with=f"{project_id}/{iteration_id}/")):
            with suppress(ResourceNotFoundError):
                self._models.delete_blob(blob.name)

    def update_iteration(self, project_id: str, iteration_id: str, **columns: Any) -> Iteration:
        """Merge columns into the row (dicts/lists in JSON columns are serialised), whatever the
        row's status: a final status that must not overwrite a cancel goes through
        :meth:`finish_iteration`."""
        entity = self._changes(project_id, iteration_id, columns)
        if iteration_id == _LOCK_KEY:
            raise NotFound(f"iteration {iteration_id} of project {project_id}")
        try:
            self._table.update_entity(entity, mode=UpdateMode.MERGE)
        except ResourceNotFoundError as e:
            raise NotFound(f"iteration {iteration_id} of project {project_id}") from e
        found = self.get_iteration(project_id, iteration_id)
        if found is None:  # deleted by a concurrent call since
            raise NotFound(f"iteration {iteration_id} of project {project_id}")
        if "status" in columns and not found.in_progress:
            self.end_training(project_id, iteration_id)
        return found

    def cancel_iteration(self, project_id: str, iteration_id: str, reason: str
                         ) -> Iteration | None:
        """Write Canceled (with ``reason``) if the iteration is still in progress, under its
        ETag, so a training that registers at the same moment is never marked Canceled after
        the fact; frees the training lock. The row as it is now, or None when there is none.
        The training job notices the status and stops (training_job.worker.CancelWatch)."""
        for _ in range(_MAX_RETRIES):
            try:
                row = self._table.get_entity(project_id, iteration_id)
            except ResourceNotFoundError:
                return None
            if iteration_id == _LOCK_KEY or not Iteration.from_entity(row).in_progress:
                return self.get_iteration(project_id, iteration_id)
            change = {"PartitionKey": project_id, "RowKey": iteration_id,
                      "status": str(IterationStatus.CANCELED), "failureReason": reason,
                      "lastModified": _now()}
            try:
                self._table.update_entity(change, mode=UpdateMode.MERGE, **_if_unchanged(row))
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # progress was written meanwhile: look again
            self.end_training(project_id, iteration_id)
            return self.get_iteration(project_id, iteration_id)
        raise TrainingInProgress(f"iteration {iteration_id}: too much contention to cancel it")

    def delete_iteration(self, project_id: str, iteration_id: str) -> None:
        for blob in self._models.list_blobs(name_starts_with=f"{project_id}/{iteration_id}/"):
            self._models.delete_blob(blob.name)
        self._table.delete_entity(project_id, iteration_id)
        self.end_training(project_id, iteration_id)

    def delete_project(self, project_id: str) -> None:
        """Delete every iteration row, the training lock and everything under
        ``models/{projectId}/`` (artifacts and the published pointer)."""
        for blob in list(self._models.list_blobs(name_starts_with=f"{project_id}/")):
            with suppress(ResourceNotFoundError):
                self._models.delete_blob(blob.name)
        rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": project_id},
                                          select=["PartitionKey", "RowKey"])
        keys = [r["RowKey"] for r in rows]
        for key in sorted(keys, key=lambda k: k == _LOCK_KEY):  # the lock last
            with suppress(ResourceNotFoundError):
                self._table.delete_entity(project_id, key)

    # --- artifacts ----------------------------------------------------------------------------
    @staticmethod
    def artifact_path(project_id: str, iteration_id: str, filename: str) -> str:
        return f"{project_id}/{iteration_id}/{filename}"

    def upload_artifact(
        self, project_id: str, iteration_id: str, filename: str, data: bytes, content_type: str
    ) -> None:
        self._models.upload_blob(
            self.artifact_path(project_id, iteration_id, filename),
            data,
            overwrite=True,
            content_settings=ContentSettings(content_type=content_type),
        )

    def download_artifact(self, project_id: str, iteration_id: str, filename: str) -> bytes:
        path = self.artifact_path(project_id, iteration_id, filename)
        try:
            return self._models.download_blob(path).readall()
        except ResourceNotFoundError as e:
            raise NotFound(f"models/{path}") from e

    def read_manifest(self, project_id: str, iteration_id: str) -> Manifest:
        return Manifest.from_json(self.download_artifact(project_id, iteration_id, MANIFEST_FILE))

    # --- the published pointer ----------------------------------------------------------------
    def _pointer(self, project_id: str) -> str:
        return f"{project_id}/{PUBLISHED_FILE}"

    def current_publications(self, project_id: str) -> Publications:
        """The pointer as it is now (an absent pointer is no publications, never None)."""
        pubs = self.publications(project_id)
        if pubs is None:  # only a conditional read answers None; this one is unconditional
            raise RuntimeError(f"project {project_id}: the publication pointer did not read")
        return pubs

    def publications(
        self, project_id: str, if_none_match: str | None = None
    ) -> Publications | None:
        """Read the pointer; with ``if_none_match`` return None when it has not changed."""
        blob = self._models.get_blob_client(self._pointer(project_id))
        try:
            if if_none_match:
                downloader = blob.download_blob(
                    etag=if_none_match, match_condition=MatchConditions.IfModified
                )
            else:
                downloader = blob.download_blob()
        except ResourceNotFoundError:
            return Publications({}, None)
        except ResourceModifiedError:  # 304 Not Modified
            return None
        except Exception as e:  # the SDK maps 304 to HttpResponseError on some versions
            if getattr(e, "status_code", None) == 304:
                return None
            raise
        raw = json.loads(downloader.readall() or b"{}")
        by_name = {
            name: Publication(
                iteration_id=p["iterationId"],
                publish_name=name,
                prediction_resource_id=p.get("predictionResourceId", ""),
                published_at=p["publishedAt"],
            )
            for name, p in raw.get("publications", {}).items()
        }
        return Publications(by_name, downloader.properties.etag)

    def _write_publications(self, project_id: str, pubs: Publications) -> None:
        body = {
            "publications": {
                name: {
                    "iterationId": p.iteration_id,
                    "predictionResourceId": p.prediction_resource_id,
                    "publishedAt": p.published_at,
                }
                for name, p in pubs.by_name.items()
            }
        }
        kwargs: dict[str, Any] = (
            {"etag": pubs.etag, "match_condition": MatchConditions.IfNotModified}
            if pubs.etag
            else {}
        )
        self._models.upload_blob(
            self._pointer(project_id),
            json.dumps(body, indent=2),
            overwrite=True,
            content_settings=ContentSettings(content_type="application/json"),
            **kwargs,
        )

    def _change_publications(self, project_id: str, change: Any) -> None:
        """Read-modify-write the pointer with an ETag condition, retrying on races."""
        for _ in range(20):
            current = self.current_publications(project_id)
            try:
                self._write_publications(project_id, change(current))
                return
            except (ResourceModifiedError, ResourceExistsError):
                continue
        raise RuntimeError(f"could not update the published pointer of {project_id}")

    def publish(
        self,
        project_id: str,
        iteration_id: str,
        publish_name: str,
        prediction_resource_id: str = "",
    ) -> Publication:
        """Publish a Completed iteration under a name (replacing what that name pointed at)."""
        iteration = self.get_iteration(project_id, iteration_id)
        if iteration is None:
            raise NotFound(f"iteration {iteration_id} of project {project_id}")
        if iteration.status != IterationStatus.COMPLETED:
            raise ValueError(f"iteration {iteration_id} is {iteration.status}, not Completed")
        publication = Publication(
            iteration_id, publish_name, prediction_resource_id, _now().isoformat()
        )

        def change(pubs: Publications) -> Publications:
            by_name = {n: p for n, p in pubs.by_name.items() if p.iteration_id != iteration_id}
            by_name[publish_name] = publication
            return Publications(by_name, pubs.etag)

        self._change_publications(project_id, change)
        return publication

    def unpublish(self, project_id: str, iteration_id: str) -> bool:
        """Withdraw an iteration's publication; False when it was not published."""
        pubs = self.current_publications(project_id)
        if pubs.for_iteration(iteration_id) is None:
            return False

        def change(p: Publications) -> Publications:
            kept = {n: x for n, x in p.by_name.items() if x.iteration_id != iteration_id}
            return Publications(kept, p.etag)

        self._change_publications(project_id, change)
        return True
