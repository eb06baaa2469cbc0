"""Export rows (``exports`` table): one per requested platform/flavor of an iteration.

The row is the export's state (``Exporting`` -> ``Done`` | ``Failed``); the ``export-requests``
message only names it. PartitionKey is the project id, RowKey ``{iterationId}|{platform}|{flavor}``
(``|`` is legal in a RowKey and in none of the parts), so one partition query lists an iteration's
exports and a project's delete can drop them all. The converted file lives in
``models/{projectId}/{iterationId}/exports/`` and goes with the iteration's other artifacts.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from visionpipe import names
from visionpipe.storage import Storage

EXPORTING, DONE, FAILED = "Exporting", "Done", "Failed"
MAX_REASON = 2000


def row_key(iteration_id: str, platform: str, flavor: str) -> str:
    return f"{iteration_id}|{platform}|{flavor}"


def archive_path(project_id: str, iteration_id: str, platform: str, flavor: str) -> str:
    """The export zip in the models container."""
    return f"{project_id}/{iteration_id}/exports/{platform}-{flavor or 'default'}.zip"


@dataclass(frozen=True)
class ExportRow:
    project_id: str
    iteration_id: str
    platform: str
    flavor: str
    status: str
    reason: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    etag: str = ""

    @classmethod
    def from_entity(cls, e: Any) -> ExportRow:
        iteration_id, platform, flavor = str(e["RowKey"]).split("|", 2)
        try:
            manifest = json.loads(e.get("manifest") or "{}")
        except ValueError:
            manifest = {}
        return cls(str(e["PartitionKey"]), iteration_id, platform, flavor, str(e["status"]),
                   str(e.get("reason") or ""), manifest if isinstance(manifest, dict) else {},
                   str(e.metadata.get("etag", "")) if hasattr(e, "metadata") else "")


class ExportStore:
    def __init__(self, storage: Storage) -> None:
        self._table = storage.table(names.EXPORTS_TABLE)

    def get(self, project_id: str, iteration_id: str, platform: str,
            flavor: str) -> ExportRow | None:
        try:
            return ExportRow.from_entity(self._table.get_entity(
                project_id, row_key(iteration_id, platform, flavor)))
        except ResourceNotFoundError:
            return None

    def list(self, project_id: str, iteration_id: str) -> list[ExportRow]:
        rows = self._table.query_entities(
            "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
            parameters={"pk": project_id, "lo": f"{iteration_id}|", "hi": f"{iteration_id}}}"})
        return [ExportRow.from_entity(r) for r in rows]

    def start(self, project_id: str, iteration_id: str, platform: str, flavor: str) -> bool:
        """Create the row as Exporting, or turn a Failed one back to Exporting. False when the
        export already exists in another state, or another request won the race: only the
        caller that gets True enqueues a conversion."""
        entity = {"PartitionKey": project_id, "RowKey": row_key(iteration_id, platform, flavor),
                  "status": EXPORTING, "reason": "", "manifest": "",
                  "requested": datetime.now(UTC)}
        try:
            self._table.create_entity(entity)
            return True
        except ResourceExistsError:
            pass
        row = self.get(project_id, iteration_id, platform, flavor)
        if row is None or row.status != FAILED:
            return False
        try:
            self._table.update_entity(entity, etag=row.etag,
                                      match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def finish(self, row: ExportRow, status: str, reason: str = "",
               manifest: dict[str, Any] | None = None) -> None:
        self._table.upsert_entity({
            "PartitionKey": row.project_id,
            "RowKey": row_key(row.iteration_id, row.platform, row.flavor),
            "status": status, "reason": reason[:MAX_REASON],
            "manifest": json.dumps(manifest or {}), "finished": datetime.now(UTC)})

    def forget(self, project_id: str, iteration_id: str, platform: str, flavor: str) -> None:
        """Drop a row whose request could not be enqueued (so a retry may start it again)."""
        with contextlib.suppress(ResourceNotFoundError):
            self._table.delete_entity(project_id, row_key(iteration_id, platform, flavor))

    def delete_project(self, project_id: str) -> None:
        """Forget every export row of a project (its zips live under ``models/{p}/``, which the
        registry deletes)."""
        for entity in list(self._table.query_entities("PartitionKey eq @p",
                                                      parameters={"p": project_id})):
            with contextlib.suppress(ResourceNotFoundError):
                self._table.delete_entity(entity["PartitionKey"], entity["RowKey"])
