"""Quick test: classify an image (bytes or a URL) with any Completed iteration, published or not;
an object detection project's iteration answers boxes instead (``detect_image``'s shape).

It goes through the process's serving core and :func:`visionpipe.api.prediction.classify_image`,
so the session is shared with prediction and an image is refused exactly as the prediction routes
refuse it.
"""

from __future__ import annotations

from typing import Any

from visionpipe.api import errors as api_errors
from visionpipe.api.iterations import IterationApi
from visionpipe.stores.registry import Iteration, IterationStatus


# --- quick test ---------------------------------------------------------------------------------
def default_iteration(api: IterationApi, project_id: str) -> Iteration:
    """No ``iterationId``: the most recently published iteration, else the newest Completed one
    (the service's "default iteration")."""
    latest = api.publications(project_id).latest
    if latest is not None:
        found = api.registry.get_iteration(project_id, latest.iteration_id)
        if found is not None:
            return found
    trained = [i for i in api.registry.list_iterations(project_id)
               if i.status == IterationStatus.COMPLETED]
    if not trained:
        raise api_errors.ApiError(404, "NotFoundProjectDefaultIteration",
                                  "the project has no trained iteration")
    return trained[-1]


def _quick_test_iteration(api: IterationApi, project_id: str,
                          iteration_id: str | None) -> Iteration:
    api.project(project_id)
    iteration = (api.iteration(project_id, iteration_id) if iteration_id
                 else default_iteration(api, project_id))
    if iteration.status != IterationStatus.COMPLETED:
        raise api_errors.iteration_not_trained(str(iteration.status))
    return iteration


def quick_test(api: IterationApi, project_id: str, data: bytes, *,
               iteration_id: str | None = None, store: bool = True) -> dict[str, Any]:
    """Classify ``data`` (already out of the request body) with one iteration, through the same
    :func:`~visionpipe.api.prediction.classify_image` as the prediction routes; an object
    detection project's iteration answers boxes through
    :func:`~visionpipe.api.prediction.detect_image`, as ``detect_image`` does."""
    from visionpipe.api.prediction import classify_image, detect_image
    from visionpipe.serving.core import get_serving
    from visionpipe.settings import get_settings

    project = api.project(project_id)
    iteration = _quick_test_iteration(api, project_id, iteration_id)
    publication = api.publications(project_id).for_iteration(iteration.id) if store else None
    run = detect_image if project.detection else classify_image
    result = run(get_serving(api.storage), project_id, iteration.id, data,
                 get_settings().training_limits, store=store,
                 publish_name=publication.publish_name if publication else "",
                 storage=api.storage)
    return result.to_dict()


def quick_test_url(api: IterationApi, project_id: str, url: str, *,
                   iteration_id: str | None = None, store: bool = True) -> dict[str, Any]:
    """``quicktest/url``: the image fetched by :mod:`visionpipe.api.url_fetch` (the one fetcher,
    with its SSRF refusals and deadline), once the iteration is known to be usable."""
    from visionpipe.api.url_fetch import fetch_image
    from visionpipe.settings import get_settings

    _quick_test_iteration(api, project_id, iteration_id)
    data = fetch_image(url, get_settings().training_limits.max_bytes)
    return quick_test(api, project_id, data, iteration_id=iteration_id, store=store)
