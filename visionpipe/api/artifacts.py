"""``GET projects/{projectId}/artifacts?path=`` (Training v3.4-preview ``get_artifact``): an
iteration's stored artifacts, by their path under ``models/{projectId}/``.

A path is ``{iterationId}/{file}``: an iteration of this project and one of the artifacts the
training job writes (the model, its manifest, the metrics and the two plots). Anything else --
another project's folder, the published pointer, ``..`` or encoded separators (judged by
:mod:`visionpipe.blob_names` before any storage call), an unknown file -- is a 404, and the
answer never says which part was wrong beyond "no such artifact".
"""

from __future__ import annotations

from visionpipe.api import errors as api_errors
from visionpipe.api.adapter import RawBody
from visionpipe.api.iterations import IterationApi
from visionpipe.api.values import is_id
from visionpipe.blob_names import unsafe_reason
from visionpipe.manifest import (
    CONFUSION_MATRIX_FILE,
    DETECTIONS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PR_CURVE_FILE,
)

#: The artifacts served, and their content types.
ARTIFACT_TYPES: dict[str, str] = {
    MODEL_FILE: "application/octet-stream",
    MANIFEST_FILE: "application/json",
    METRICS_FILE: "application/json",
    PR_CURVE_FILE: "image/png",
    CONFUSION_MATRIX_FILE: "image/png",
    DETECTIONS_FILE: "image/png",  # object detection: predicted vs true boxes
}
MAX_PATH_LENGTH = 512


def get_artifact(api: IterationApi, project_id: str, path: str | None) -> RawBody:
    """The artifact at ``path`` (``{iterationId}/{file}``) of one of the project's iterations."""
    from visionpipe.stores.registry import NotFound

    api.project(project_id)
    if not path:
        raise api_errors.bad_request("BadRequest", "path is required, e.g. {iterationId}/"
                                     f"{MODEL_FILE}")
    missing = api_errors.not_found(
        f"no such artifact; a path is {{iterationId}}/{{file}} with file one of "
        f"{', '.join(sorted(ARTIFACT_TYPES))}")
    if len(path) > MAX_PATH_LENGTH or unsafe_reason(path) is not None:
        raise missing
    iteration_id, _, name = path.partition("/")
    if not is_id(iteration_id) or name not in ARTIFACT_TYPES:
        raise missing
    if api.registry.get_iteration(project_id, iteration_id) is None:
        raise missing
    try:
        data = api.registry.download_artifact(project_id, iteration_id, name)
    except NotFound as e:
        raise missing from e
    return RawBody(data, ARTIFACT_TYPES[name])
