"""The census of the official Custom Vision SDK's surface: every public operation of both clients
(``CustomVisionTrainingClient``, ``CustomVisionPredictionClient``) is either exercised by a named
test that calls it, or listed with a reason in ``NOT_SUPPORTED``, which must be the README's
"What is not supported (yet)" table, word for word. So the surface can neither shrink silently
(a route removed still fails the test that exercises it) nor be overstated (an operation nobody
calls must be listed as not supported, in the README too).

An operation that lands moves from ``NOT_SUPPORTED`` (and the README's table) to ``EXERCISED``.
"""

from __future__ import annotations

import ast
import inspect
import re
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.prediction.models import (
    CustomVisionErrorException as PredictionError,
)
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
)
from msrest.authentication import ApiKeyCredentials

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
NOT_SUPPORTED_HEADING = "### What is not supported (yet)"

QUICKSTART = "tests/test_sdk_quickstart.py::test_custom_vision_python_quickstart"
SURFACE = "tests/test_sdk_surface.py"
PROJECTS = "tests/test_api_projects.py"
IMAGES = "tests/test_api_images.py"
DETECTION = "tests/test_detection_api.py"
REGIONS = f"{DETECTION}::test_regions_at_upload_added_listed_and_deleted"
DETECT = f"{DETECTION}::test_detect_image_and_url_store_and_nostore"
SUGGESTIONS = f"{DETECTION}::test_region_proposals_and_suggestions_come_from_a_trained_detector"
COPY = "tests/test_project_copy.py"

#: Operation -> a test that calls it through the SDK against the local host.
EXERCISED: dict[str, str] = {
    # training: projects, domains, tags
    "create_project": f"{PROJECTS}::test_project_lifecycle",
    "get_project": f"{PROJECTS}::test_project_lifecycle",
    "get_projects": f"{PROJECTS}::test_project_lifecycle",
    "update_project": f"{PROJECTS}::test_project_lifecycle",
    "delete_project": f"{PROJECTS}::test_project_lifecycle",
    "get_domains": f"{PROJECTS}::test_domains",
    "get_domain": f"{PROJECTS}::test_domains",
    "export_project": f"{COPY}::test_classification_project_copies_and_later_changes_do_not_leak",
    "import_project": f"{COPY}::test_classification_project_copies_and_later_changes_do_not_leak",
    "create_tag": f"{PROJECTS}::test_tags_crud_and_counts",
    "get_tag": f"{PROJECTS}::test_tags_crud_and_counts",
    "get_tags": f"{PROJECTS}::test_tags_crud_and_counts",
    "update_tag": f"{PROJECTS}::test_tags_crud_and_counts",
    "delete_tag": f"{PROJECTS}::test_tags_crud_and_counts",
    # training: images
    "create_images_from_data": f"{IMAGES}::test_multipart_and_raw_uploads",
    "create_images_from_files": f"{IMAGES}::test_files_upload_lands_in_the_store",
    "create_images_from_urls": f"{IMAGES}::test_url_uploads",
    "create_images_from_predictions":
        f"{SURFACE}::test_stored_prediction_keeps_its_picture_and_becomes_a_training_image",
    "create_image_tags": f"{IMAGES}::test_untagged_then_tagged_queries_and_deletes",
    "delete_image_tags": f"{IMAGES}::test_untagged_then_tagged_queries_and_deletes",
    "delete_images": f"{IMAGES}::test_untagged_then_tagged_queries_and_deletes",
    "get_images": f"{IMAGES}::test_untagged_then_tagged_queries_and_deletes",
    "get_images_by_ids": f"{IMAGES}::test_untagged_then_tagged_queries_and_deletes",
    "get_image_count": f"{IMAGES}::test_untagged_then_tagged_queries_and_deletes",
    "get_tagged_images": f"{IMAGES}::test_untagged_then_tagged_queries_and_deletes",
    "get_untagged_images": f"{IMAGES}::test_untagged_then_tagged_queries_and_deletes",
    "get_tagged_image_count": f"{IMAGES}::test_files_upload_lands_in_the_store",
    "get_untagged_image_count": f"{IMAGES}::test_multipart_and_raw_uploads",
    "update_image_metadata":
        f"{SURFACE}::test_image_metadata_is_set_at_upload_updated_and_returned",
    # training: object detection regions
    "create_image_regions": REGIONS,
    "delete_image_regions": REGIONS,
    "get_image_region_proposals": SUGGESTIONS,
    "suggest_tags_and_regions": SUGGESTIONS,
    # training: training, iterations, publishing, export, artifacts
    "train_project": QUICKSTART,
    "get_iteration": QUICKSTART,
    "get_iterations": QUICKSTART,
    "update_iteration": QUICKSTART,
    "delete_iteration": QUICKSTART,
    "get_iteration_performance": QUICKSTART,
    "get_image_performances": QUICKSTART,
    "get_image_performance_count": QUICKSTART,
    "publish_iteration": QUICKSTART,
    "unpublish_iteration": QUICKSTART,
    "export_iteration": QUICKSTART,
    "get_exports": QUICKSTART,
    "get_artifact": f"{SURFACE}::test_get_artifact_serves_an_iterations_artifacts",
    # training: quick test and the prediction store
    "quick_test_image": QUICKSTART,
    "quick_test_image_url": f"{SURFACE}::test_classify_image_url_stores_and_nostore_keeps_nothing",
    "query_predictions": QUICKSTART,
    "delete_prediction": QUICKSTART,
    "query_suggested_images": QUICKSTART,
    "query_suggested_image_count": QUICKSTART,
    # prediction
    "classify_image": QUICKSTART,
    "classify_image_with_no_store": QUICKSTART,
    "classify_image_url": f"{SURFACE}::test_classify_image_url_stores_and_nostore_keeps_nothing",
    "classify_image_url_with_no_store":
        f"{SURFACE}::test_classify_image_url_stores_and_nostore_keeps_nothing",
    "detect_image": DETECT,
    "detect_image_with_no_store": DETECT,
    "detect_image_url": DETECT,
    "detect_image_url_with_no_store": DETECT,
}

#: Operation -> why it is not served; must equal the README's table (empty: every operation
#: of SDK 3.1.1 is served).
NOT_SUPPORTED: dict[str, str] = {}


def operations(client: type) -> set[str]:
    """The public operations of an SDK client: what its generated operations mixin defines
    (``close`` and the rest of the plumbing come from ``SDKClient``)."""
    mixin = next(c for c in client.__mro__ if c.__name__.endswith("OperationsMixin"))
    return {name for name, member in vars(mixin).items()
            if not name.startswith("_") and inspect.isfunction(member)}


TRAINING_OPS = operations(CustomVisionTrainingClient)
PREDICTION_OPS = operations(CustomVisionPredictionClient)


def test_every_operation_is_exercised_or_listed_as_not_supported() -> None:
    every = TRAINING_OPS | PREDICTION_OPS
    assert len(TRAINING_OPS) >= 52 and len(PREDICTION_OPS) >= 8  # SDK 3.1.1, or newer
    assert not EXERCISED.keys() & NOT_SUPPORTED.keys(), "listed both ways"
    unaccounted = every - EXERCISED.keys() - NOT_SUPPORTED.keys()
    assert not unaccounted, f"neither exercised nor listed as not supported: {sorted(unaccounted)}"
    unknown = (EXERCISED.keys() | NOT_SUPPORTED.keys()) - every
    assert not unknown, f"not operations of the SDK: {sorted(unknown)}"


@cache
def _test_functions(path: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _calls(node: ast.AST) -> set[str]:
    return {c.func.attr for c in ast.walk(node)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}


@pytest.mark.parametrize("operation", sorted(EXERCISED))
def test_the_named_test_exists_and_calls_the_operation(operation: str) -> None:
    path, _, name = EXERCISED[operation].partition("::")
    assert (REPO / path).is_file(), f"{operation}: no file {path}"
    found = _test_functions(path).get(name)
    assert found is not None, f"{operation}: no test {name} in {path}"
    assert operation in _calls(found), f"{EXERCISED[operation]} never calls .{operation}("


def readme_not_supported(text: str) -> dict[str, str]:
    """The README's "What is not supported (yet)" table: operation -> reason."""
    start = text.index(NOT_SUPPORTED_HEADING) + len(NOT_SUPPORTED_HEADING)
    end = text.find("\n#", start)
    section = text[start:end if end >= 0 else len(text)]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        m = re.fullmatch(r"\|\s*`([a-z_]+)`\s*\|\s*(.+?)\s*\|", line.strip())
        if m is not None:
            assert m.group(1) not in rows, f"{m.group(1)} is in the README's table twice"
            rows[m.group(1)] = m.group(2)
    return rows


def test_not_supported_is_the_readmes_table() -> None:
    assert readme_not_supported(README.read_text(encoding="utf-8")) == NOT_SUPPORTED


def _dummy(name: str) -> Any:
    """A value for an operation's required parameter, enough to reach the service."""
    if name in ("image_data",):
        return b"\xff\xd8\xff"
    if name in ("url",):
        return "http://example.invalid/picture.jpg"
    if name in ("published_name", "token"):
        return "prod"
    if name.endswith("_ids"):
        return [str(uuid.uuid4())]
    return str(uuid.uuid4())


@pytest.mark.parametrize("operation", sorted(NOT_SUPPORTED))
def test_not_supported_operations_raise_the_sdks_own_error(local_host: str,
                                                           operation: str) -> None:
    """Each listed operation is answered in the service's error shape, so the SDK raises
    ``CustomVisionErrorException`` (never a ``TypeError`` from an empty body)."""
    if operation in PREDICTION_OPS:
        client: Any = CustomVisionPredictionClient(
            local_host, ApiKeyCredentials(in_headers={"Prediction-key": TEST_PREDICTION_KEY}))
        error: type[Exception] = PredictionError
    else:
        client = CustomVisionTrainingClient(
            local_host, ApiKeyCredentials(in_headers={"Training-key": TEST_TRAINING_KEY}))
        error = CustomVisionErrorException
    method = getattr(client, operation)
    required = [p.name for p in inspect.signature(method).parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    with pytest.raises(error) as raised:
        method(*[_dummy(n) for n in required])
    assert raised.value.error.code and raised.value.error.message  # type: ignore[attr-defined]
