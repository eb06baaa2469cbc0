"""Custom Vision's export routes: ``export_iteration`` and ``get_exports`` (docs/ARCHITECTURE.md,
"Exports").

Every iteration *is* an ONNX model, so the plain ONNX export (no flavor) is ``Done`` at once and
its ``downloadUri`` is a signed link to ``model.onnx``, as before. Every other platform/flavor
(:data:`visionpipe.messages.EXPORT_FLAVORS`) is converted by the training job's export worker,
asynchronously like the service: the request creates an ``Exporting`` row and puts one
:class:`~visionpipe.messages.ExportRequest` on ``export-requests``; the worker converts, proves
parity on golden images and turns the row ``Done`` (a signed link to the export zip) or
``Failed`` (with the reason). Asking again for an export that is Exporting or Done answers its row
and enqueues nothing; asking again for a Failed one starts it over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visionpipe import names
from visionpipe.api import errors as api_errors
from visionpipe.api.context import ContextView
from visionpipe.manifest import MODEL_FILE
from visionpipe.messages import EXPORT_FLAVORS, ExportRequest
from visionpipe.pipeline import lifecycle_events
from visionpipe.stores.exports import DONE, EXPORTING, ExportRow, ExportStore, archive_path
from visionpipe.stores.registry import IterationStatus, NotFound, Registry

#: ``link(platform, flavor)``: the signed download URL ("" platform: the plain model.onnx).
Linker = Callable[[str, str], str]
#: Platforms Custom Vision names that visionpipe does not convert to, and why (the 400 says so).
NOT_OFFERED = {
    "VAIDK": "Vision AI Dev Kit exports are not offered",
}
#: A DockerFile export asked for without a flavor is the Linux one, a TensorFlow one the
#: SavedModel (as in the service).
DEFAULT_FLAVORS = {"DockerFile": "Linux", "TensorFlow": "TensorFlowNormal"}


def canonical(platform: str | None, flavor: str | None) -> tuple[str, str]:
    """Custom Vision's spelling of a platform/flavor given in any case, or a 400."""
    wanted = (platform or "").strip()
    name = next((p for p in EXPORT_FLAVORS if p.casefold() == wanted.casefold()), None)
    if name is None:
        why = NOT_OFFERED.get(wanted.upper(), f"export platform {wanted!r} is not supported")
        raise api_errors.bad_request(
            "BadRequestProjectUnsupportedExportPlatform",
            f"{why}; visionpipe exports to {', '.join(EXPORT_FLAVORS)}")
    given = (flavor or "").strip() or DEFAULT_FLAVORS.get(name, "")
    match = next((f for f in EXPORT_FLAVORS[name] if f.casefold() == given.casefold()), None)
    if match is None:
        offered = [f for f in EXPORT_FLAVORS[name] if f]
        raise api_errors.bad_request("BadRequestExportValidationFailed",
                                     f"{name} flavor {given!r} is not one of {offered}")
    return name, match


@dataclass(frozen=True)
class ExportApi(ContextView):
    """The export routes over one request's :class:`RequestContext` (stores and lookups, the
    trained-iteration check included, come from :class:`ContextView`) and the export rows."""

    rows: ExportStore = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", ExportStore(self.ctx.storage))

    # --- routes ---------------------------------------------------------------------------------
    def export(self, project_id: str, iteration_id: str, platform: str | None,
               flavor: str | None, link: Linker) -> dict[str, Any]:
        """``POST .../export``: Done at once for plain ONNX, else Exporting (one queued request)."""
        self.trained(project_id, iteration_id)
        platform, flavor = canonical(platform, flavor)
        self._model_exists(project_id, iteration_id)
        if platform == "ONNX" and not flavor:
            lifecycle_events.publish(lifecycle_events.export_completed(
                project_id, iteration_id, "ONNX", None), self.storage)
            return plain_json(link)
        if self.rows.start(project_id, iteration_id, platform, flavor):
            request = ExportRequest(project_id, iteration_id, platform, flavor)
            try:
                self.storage.queue(names.EXPORT_REQUESTS).send_message(
                    request.to_json().encode())
            except Exception:
                self.rows.forget(project_id, iteration_id, platform, flavor)
                raise
        row = self.rows.get(project_id, iteration_id, platform, flavor)
        if row is None:  # deleted between the two calls: it is being started over
            row = ExportRow(project_id, iteration_id, platform, flavor, EXPORTING)
        return row_json(row, link)

    def exports(self, project_id: str, iteration_id: str, link: Linker) -> list[dict[str, Any]]:
        """``GET .../export``: the plain ONNX export, then every requested conversion."""
        iteration = self.iteration(project_id, iteration_id)
        if iteration.status != IterationStatus.COMPLETED:
            return []
        rows = self.rows.list(project_id, iteration_id)
        return [plain_json(link), *(row_json(r, link) for r in rows)]

    def download(self, project_id: str, iteration_id: str, platform: str | None,
                 flavor: str | None) -> tuple[bytes, str]:
        """The file behind a download link, and its file name."""
        if not platform:
            try:
                data = self.registry.download_artifact(project_id, iteration_id, MODEL_FILE)
            except NotFound as e:
                raise api_errors.not_found("the iteration has no exported model") from e
            return data, f"{iteration_id}.onnx"
        platform, flavor = canonical(platform, flavor)
        row = self.rows.get(project_id, iteration_id, platform, flavor)
        if row is None or row.status != DONE:
            raise api_errors.not_found("the export is not done")
        path = archive_path(project_id, iteration_id, platform, flavor)
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self.storage.container(names.MODELS).download_blob(path).readall()
        except ResourceNotFoundError as e:
            raise api_errors.not_found("the export file is gone") from e
        return data, f"{iteration_id}.{platform}{'.' + flavor if flavor else ''}.zip"

    def _model_exists(self, project_id: str, iteration_id: str) -> None:
        blob = self.storage.container(names.MODELS).get_blob_client(
            Registry.artifact_path(project_id, iteration_id, MODEL_FILE))
        if not blob.exists():
            raise api_errors.bad_request("BadRequestExportValidationFailed",
                                         "the iteration has no model.onnx")


def plain_json(link: Linker) -> dict[str, Any]:
    return {"platform": "ONNX", "status": DONE, "downloadUri": link("", ""), "flavor": None,
            "newerVersionAvailable": False}


def row_json(row: ExportRow, link: Linker) -> dict[str, Any]:
    """Custom Vision's ``Export``, plus visionpipe's ``parity`` (and ``reason`` when Failed)."""
    body: dict[str, Any] = {
        "platform": row.platform, "status": row.status,
        "downloadUri": link(row.platform, row.flavor) if row.status == DONE else None,
        "flavor": row.flavor or None, "newerVersionAvailable": False,
    }
    if row.manifest.get("parity"):
        body["parity"] = row.manifest["parity"]
    if row.manifest.get("archiveBytes"):
        body["sizeBytes"] = row.manifest["archiveBytes"]
    if row.reason:
        body["reason"] = row.reason
    return body
