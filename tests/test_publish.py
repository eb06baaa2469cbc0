"""Publishing: the library operation and Custom Vision's publish/unpublish route."""

from __future__ import annotations

import json
import uuid

import azure.functions as func
import httpx
import pytest

from functions.publish_api import PUBLISH_ROUTE, publish_iteration
from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.model_factory import color_image, register_color_iteration
from visionpipe.api.errors import ACCESS_DENIED_MESSAGE
from visionpipe.pipeline import publishing
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import IterationStatus, Registry


def call(method: str, project_id: str, iteration_id: str, *, version: str = "v3.3",
         params: dict[str, str] | None = None,
         headers: dict[str, str] | None = None) -> func.HttpResponse:
    headers = {"Training-Key": TEST_TRAINING_KEY} if headers is None else headers
    req = func.HttpRequest(
        method,
        f"http://localhost/customvision/{version}/training/projects/{project_id}/iterations/"
        f"{iteration_id}/publish",
        headers=headers, params=params or {}, body=b"",
        route_params={"apiVersion": version, "projectId": project_id,
                      "iterationId": iteration_id},
    )
    return publish_iteration.build().get_user_function()(req)  # type: ignore[no-any-return]


def body(response: func.HttpResponse) -> object:
    return json.loads(response.get_body())


def test_publish_route_binding_metadata() -> None:
    trigger = publish_iteration.build().get_trigger().get_dict_repr()
    assert trigger["type"] == "httpTrigger"
    assert trigger["route"] == PUBLISH_ROUTE == (
        "customvision/{apiVersion}/training/projects/{projectId}/iterations/{iterationId}/publish")
    assert sorted(str(getattr(m, "value", m)) for m in trigger["methods"]) == ["DELETE", "POST"]


# --- library --------------------------------------------------------------------------------------
def test_publish_and_unpublish(registry: Registry, label_store: LabelStore,
                               project: Project) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    publication = publishing.publish(registry, label_store, project.id, iteration.id, "prod",
                                     "/subscriptions/x/resourceGroups/y")
    assert publication.publish_name == "prod"
    pubs = registry.publications(project.id)
    assert pubs is not None and pubs.by_name["prod"].iteration_id == iteration.id
    assert pubs.by_name["prod"].prediction_resource_id == "/subscriptions/x/resourceGroups/y"
    # the same again is fine and changes nothing
    again = publishing.publish(registry, label_store, project.id, iteration.id, "prod")
    assert again == publication

    publishing.unpublish(registry, project.id, iteration.id)
    pubs = registry.publications(project.id)
    assert pubs is not None and pubs.by_name == {}
    with pytest.raises(publishing.IterationNotPublished):
        publishing.unpublish(registry, project.id, iteration.id)


def test_latest_publication_is_what_the_drop_folder_uses(
    registry: Registry, label_store: LabelStore, project: Project
) -> None:
    first = register_color_iteration(registry, label_store, project)
    second = register_color_iteration(registry, label_store, project)
    publishing.publish(registry, label_store, project.id, first.id, "a")
    publishing.publish(registry, label_store, project.id, second.id, "b")
    pubs = registry.publications(project.id)
    assert pubs is not None and pubs.latest is not None
    assert pubs.latest.iteration_id == second.id


def test_publish_refusals(registry: Registry, label_store: LabelStore, project: Project) -> None:
    done = register_color_iteration(registry, label_store, project)
    training = register_color_iteration(registry, label_store, project,
                                        status=IterationStatus.TRAINING)
    with pytest.raises(publishing.IterationNotTrained):
        publishing.publish(registry, label_store, project.id, training.id, "x")
    with pytest.raises(publishing.IterationNotFound):
        publishing.publish(registry, label_store, project.id, str(uuid.uuid4()), "x")
    with pytest.raises(publishing.ProjectNotFound):
        publishing.publish(registry, label_store, str(uuid.uuid4()), done.id, "x")
    for bad in ("", "   ", "a/b", "a?b", "x" * 300, "tab\there", None):
        with pytest.raises(publishing.InvalidPublishName):
            publishing.publish(registry, label_store, project.id, done.id, bad)


def test_a_taken_name_needs_overwrite(registry: Registry, label_store: LabelStore,
                                      project: Project) -> None:
    first = register_color_iteration(registry, label_store, project)
    second = register_color_iteration(registry, label_store, project)
    publishing.publish(registry, label_store, project.id, first.id, "prod")
    with pytest.raises(publishing.InvalidPublishName, match="already used"):
        publishing.publish(registry, label_store, project.id, second.id, "prod")
    publishing.publish(registry, label_store, project.id, second.id, "prod", overwrite=True)
    pubs = registry.publications(project.id)
    assert pubs is not None and {n: p.iteration_id for n, p in pubs.by_name.items()} == {
        "prod": second.id}


# --- the route ------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v3.3", "v3.4-preview"])
def test_publish_route_publishes_and_unpublishes(
    registry: Registry, label_store: LabelStore, project: Project, version: str
) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    ok = call("POST", project.id, iteration.id, version=version,
              params={"publishName": "prod", "predictionId": "/subscriptions/s/x"})
    assert ok.status_code == 200 and body(ok) is True
    pubs = registry.publications(project.id)
    assert pubs is not None and pubs.by_name["prod"].iteration_id == iteration.id

    gone = call("DELETE", project.id, iteration.id, version=version)
    assert gone.status_code == 204 and gone.get_body() == b""
    pubs = registry.publications(project.id)
    assert pubs is not None and not pubs.by_name


@pytest.mark.parametrize("headers", [{}, {"Training-Key": "nope"},
                                     {"Prediction-Key": TEST_PREDICTION_KEY}])
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_publish_route_needs_the_training_key(
    registry: Registry, label_store: LabelStore, project: Project, headers: dict[str, str],
    method: str,
) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    response = call(method, project.id, iteration.id, headers=headers,
                    params={"publishName": "prod", "predictionId": "p"})
    assert response.status_code == 401
    assert body(response) == {"code": "401", "message": ACCESS_DENIED_MESSAGE}
    pubs = registry.publications(project.id)
    assert pubs is not None and not pubs.by_name


def test_publish_route_errors_in_custom_vision_codes(
    registry: Registry, label_store: LabelStore, project: Project
) -> None:
    done = register_color_iteration(registry, label_store, project)
    training = register_color_iteration(registry, label_store, project,
                                        status=IterationStatus.TRAINING)
    params = {"publishName": "prod", "predictionId": "p"}
    cases = [
        (call("POST", project.id, training.id, params=params), 400,
         "BadRequestIterationIsNotTrained"),
        (call("POST", project.id, str(uuid.uuid4()), params=params), 404, "NotFoundIteration"),
        (call("POST", str(uuid.uuid4()), done.id, params=params), 404, "NotFoundProject"),
        (call("POST", project.id, done.id, params={"predictionId": "p"}), 400,
         "BadRequestInvalidPublishName"),
        (call("DELETE", project.id, done.id), 400, "BadRequestIterationNotPublished"),
        (call("POST", project.id, done.id, params=params, version="v1.0"), 404, "NotFound"),
    ]
    for response, status, code in cases:
        assert (response.status_code, body(response)["code"]) == (status, code)  # type: ignore[index]


def test_publish_over_http_then_predict_with_it(
    local_host: str, registry: Registry, label_store: LabelStore, project: Project
) -> None:
    """Publishing takes effect for prediction at once in the publishing process; unpublishing
    turns the name into Custom Vision's not-found."""
    iteration = register_color_iteration(registry, label_store, project)
    base = (f"{local_host}/customvision/v3.3/training/projects/{project.id}/iterations/"
            f"{iteration.id}")
    predict = (f"{local_host}/customvision/v3.1/prediction/{project.id}/classify/iterations/"
               "live/image/nostore")
    keys = {"Prediction-Key": TEST_PREDICTION_KEY}
    with httpx.Client(timeout=30) as client:
        assert client.post(predict, content=color_image("red"), headers=keys).status_code == 404
        published = client.post(f"{base}/publish", params={"publishName": "live",
                                                           "predictionId": "p"},
                                headers={"Training-Key": TEST_TRAINING_KEY})
        assert published.status_code == 200 and published.json() is True
        answer = client.post(predict, content=color_image("red"), headers=keys)
        assert answer.status_code == 200 and answer.json()["iteration"] == iteration.id
        removed = client.delete(f"{base}/publish", headers={"Training-Key": TEST_TRAINING_KEY})
        assert removed.status_code == 204
        after = client.post(predict, content=color_image("red"), headers=keys)
        assert after.status_code == 404 and after.json()["code"] == "NotFoundIteration"
