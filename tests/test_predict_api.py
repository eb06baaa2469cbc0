"""The HTTP prediction routes: handlers through real ``func.HttpRequest`` objects, then real HTTP
against the local host (including the unmodified Custom Vision SDK and 50 concurrent calls)."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import azure.functions as func
import httpx
import pytest

from functions.prediction_api import CLASSIFY_ROUTE, classify_image, classify_image_nostore
from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.drops import wait_for
from tests.model_factory import color_image, register_color_iteration
from visionpipe.api.errors import ACCESS_DENIED_MESSAGE
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.prediction_store import PredictionStore
from visionpipe.stores.registry import Iteration, Registry

MB = 1024 * 1024


def request(project_id: str, body: bytes, *, name: str = "prod", version: str = "v3.1",
            nostore: bool = False, headers: dict[str, str] | None = None,
            params: dict[str, str] | None = None) -> func.HttpRequest:
    headers = {"Prediction-Key": TEST_PREDICTION_KEY,
               "Content-Type": "application/octet-stream"} if headers is None else headers
    route = {"apiVersion": version, "projectId": project_id, "publishedName": name}
    url = (f"http://localhost/customvision/{version}/prediction/{project_id}/classify/"
           f"iterations/{name}/image" + ("/nostore" if nostore else ""))
    return func.HttpRequest("POST", url, headers=headers, params=params or {},
                            route_params=route, body=body)


def call(req: func.HttpRequest, nostore: bool = False) -> func.HttpResponse:
    handler = (classify_image_nostore if nostore else classify_image).build().get_user_function()
    return handler(req)  # type: ignore[no-any-return]


def multipart(data: bytes, field: str = "imageData") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{field}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_route_binding_metadata() -> None:
    for fn, suffix in ((classify_image, ""), (classify_image_nostore, "/nostore")):
        trigger = fn.build().get_trigger().get_dict_repr()
        assert trigger["type"] == "httpTrigger"
        assert trigger["route"] == CLASSIFY_ROUTE + suffix
        assert trigger["route"].startswith("customvision/{apiVersion}/prediction/{projectId}/")
        assert [str(getattr(m, "value", m)) for m in trigger["methods"]] == ["POST"]
        assert str(getattr(trigger["authLevel"], "value", trigger["authLevel"])) == "anonymous"


@pytest.mark.parametrize("version", ["v3.0", "v3.1"])
def test_octet_stream_prediction_in_custom_vision_shape(
    project: Project, published: Iteration, version: str
) -> None:
    response = call(request(project.id, color_image("red"), version=version), nostore=True)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = json.loads(response.get_body())
    assert set(body) == {"id", "project", "iteration", "created", "predictions"}
    assert body["project"] == project.id and body["iteration"] == published.id
    assert body["predictions"][0]["tagName"] == "red"
    uuid.UUID(body["id"])


def test_multipart_prediction_is_stored(
    storage: Storage, project: Project, published: Iteration
) -> None:
    body, content_type = multipart(color_image("green"))
    response = call(request(project.id, body, params={"application": "camera-7"}, headers={
        "Prediction-Key": TEST_PREDICTION_KEY, "Content-Type": content_type}))
    assert response.status_code == 200
    answer = json.loads(response.get_body())
    assert answer["predictions"][0]["tagName"] == "green"
    row = PredictionStore(storage).get(project.id, answer["id"])
    assert row is not None and row.source == "api" and row.application == "camera-7"
    assert row.publish_name == "prod" and row.predictions[0].tag_name == "green"


def test_nostore_stores_nothing(storage: Storage, project: Project, published: Iteration) -> None:
    response = call(request(project.id, color_image("blue"), nostore=True), nostore=True)
    answer = json.loads(response.get_body())
    assert PredictionStore(storage).get(project.id, answer["id"]) is None


@pytest.mark.parametrize("headers", [
    {},
    {"Prediction-Key": "wrong"},
    {"Prediction-Key": ""},
    {"Training-Key": "test-training-key"},  # the other key is not this one
    {"Prediction-Key": TEST_PREDICTION_KEY + "x"},
])
def test_missing_or_wrong_key_is_401_with_custom_vision_body(
    project: Project, published: Iteration, headers: dict[str, str]
) -> None:
    response = call(request(project.id, color_image("red"), headers=headers))
    assert response.status_code == 401
    assert json.loads(response.get_body()) == {"code": "401", "message": ACCESS_DENIED_MESSAGE}


def test_image_over_4_mb_is_a_clear_400(project: Project, published: Iteration) -> None:
    data = color_image("red")
    data = data + b"\0" * (4 * MB + 1 - len(data))
    response = call(request(project.id, data))
    assert response.status_code == 400
    body = json.loads(response.get_body())
    assert body["code"] == "BadRequestImageSizeBytes"
    assert "4,194,305 bytes" in body["message"] and "too_large" in body["message"]


@pytest.mark.parametrize(("data", "code"), [
    (b"", "BadRequestImageStream"),
    (b"%PDF-1.7 not an image", "BadRequestImageFormat"),
    (color_image("red", size=(64, 64)), "BadRequestImageDimensions"),
])
def test_refused_images_are_400_with_the_matching_code(
    project: Project, published: Iteration, data: bytes, code: str
) -> None:
    response = call(request(project.id, data))
    assert response.status_code == 400
    assert json.loads(response.get_body())["code"] == code


def test_unpublished_name_is_custom_vision_not_found(project: Project,
                                                      published: Iteration) -> None:
    response = call(request(project.id, color_image("red"), name="staging"))
    assert response.status_code == 404
    assert json.loads(response.get_body()) == {"code": "NotFoundIteration",
                                               "message": "Invalid iteration"}
    unknown = call(request(str(uuid.uuid4()), color_image("red")))
    assert unknown.status_code == 404


def test_unsupported_api_version_is_not_found(project: Project, published: Iteration) -> None:
    response = call(request(project.id, color_image("red"), version="v2.0"))
    assert response.status_code == 404
    assert json.loads(response.get_body())["code"] == "NotFound"


# --- real HTTP -----------------------------------------------------------------------------------
def _url(base: str, project_id: str, name: str = "prod", nostore: bool = True) -> str:
    return (f"{base}/customvision/v3.1/prediction/{project_id}/classify/iterations/{name}/image"
            + ("/nostore" if nostore else ""))


def test_http_prediction_and_errors(local_host: str, project: Project,
                                    published: Iteration) -> None:
    with httpx.Client(timeout=30) as client:
        ok = client.post(_url(local_host, project.id), content=color_image("blue"),
                         headers={"Prediction-Key": TEST_PREDICTION_KEY,
                                  "Content-Type": "application/octet-stream"})
        assert ok.status_code == 200 and ok.json()["predictions"][0]["tagName"] == "blue"
        denied = client.post(_url(local_host, project.id), content=color_image("blue"))
        assert denied.status_code == 401 and denied.json()["code"] == "401"
        missing = client.post(_url(local_host, project.id, "nope"), content=color_image("blue"),
                              headers={"Prediction-Key": TEST_PREDICTION_KEY})
        assert missing.status_code == 404 and missing.json()["code"] == "NotFoundIteration"
        big = client.post(_url(local_host, project.id), content=b"\xff\xd8\xff" + b"\0" * 4 * MB,
                          headers={"Prediction-Key": TEST_PREDICTION_KEY})
        assert big.status_code == 400 and big.json()["code"] == "BadRequestImageSizeBytes"


def test_50_concurrent_http_predictions(local_host: str, project: Project,
                                        published: Iteration) -> None:
    colours = ["red", "green", "blue"] * 17
    images = [color_image(c, seed=i) for i, c in enumerate(colours[:50])]

    def predict(data: bytes) -> tuple[int, str]:
        with httpx.Client(timeout=60) as client:
            r = client.post(_url(local_host, project.id), content=data,
                            headers={"Prediction-Key": TEST_PREDICTION_KEY})
            return r.status_code, r.json()["predictions"][0]["tagName"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(predict, images))
    assert answers == [(200, c) for c in colours[:50]]


def test_the_official_sdk_works_unmodified(local_host: str, project: Project,
                                           published: Iteration) -> None:
    from azure.cognitiveservices.vision.customvision.prediction import (
        CustomVisionPredictionClient,
    )
    from azure.cognitiveservices.vision.customvision.prediction.models import (
        CustomVisionErrorException,
    )
    from msrest.authentication import ApiKeyCredentials

    credentials = ApiKeyCredentials(in_headers={"Prediction-key": TEST_PREDICTION_KEY})
    client = CustomVisionPredictionClient(local_host, credentials)
    result = client.classify_image(project.id, "prod", color_image("red"))
    assert result.iteration == published.id
    assert result.predictions[0].tag_name == "red" and result.predictions[0].probability > 0.9
    nostore = client.classify_image_with_no_store(project.id, "prod", color_image("green"))
    assert nostore.predictions[0].tag_name == "green"
    with pytest.raises(CustomVisionErrorException) as caught:
        client.classify_image(project.id, "unknown-name", color_image("red"))
    assert caught.value.error.code == "NotFoundIteration"


def test_pixels_that_do_not_decode_are_a_400(project: Project, published: Iteration) -> None:
    # Validation's decode is the model's decode: a file cut short fails it, a 400, never a 500.
    whole = color_image("red", fmt="PNG")
    response = call(request(project.id, whole[: len(whole) // 2]))
    assert response.status_code == 400
    body = json.loads(response.get_body())
    assert body["code"] == "BadRequestImageFormat" and "truncated" in body["message"]


def test_hot_swap_over_http_while_requests_run(
    local_host: str, registry: Registry, label_store: LabelStore, project: Project,
    published: Iteration,
) -> None:
    """Publishing a newer iteration under the same name (Training API, overwrite) while clients
    keep predicting: no errors, and each client switches to the new iteration for good."""
    import threading

    newer = register_color_iteration(registry, label_store, project, permutation=(1, 2, 0))
    seen: list[list[tuple[int, str, str]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def client(mine: list[tuple[int, str, str]]) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                r = http.post(_url(local_host, project.id), content=color_image("red"),
                              headers={"Prediction-Key": TEST_PREDICTION_KEY})
                body = r.json()
                mine.append((r.status_code, body.get("iteration", ""),
                             body.get("predictions", [{}])[0].get("tagName", "")))

    threads = [threading.Thread(target=client, args=(mine,)) for mine in seen]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(len(mine) >= 3 for mine in seen))
        swap = httpx.post(
            f"{local_host}/customvision/v3.4-preview/training/projects/{project.id}/iterations/"
            f"{newer.id}/publish", params={"publishName": "prod", "predictionId": "p",
                                           "overwrite": "true"},
            headers={"Training-Key": TEST_TRAINING_KEY}, timeout=30)
        assert swap.status_code == 200
        wait_for(lambda: all(sum(1 for s in mine if s[1] == newer.id) >= 3 for mine in seen))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    for mine in seen:
        assert all(status == 200 for status, _, _ in mine)
        switch = next(i for i, s in enumerate(mine) if s[1] == newer.id)
        assert all(s[1:] == (published.id, "red") for s in mine[:switch])
        assert all(s[1:] == (newer.id, "blue") for s in mine[switch:])


def test_multipart_bytes_come_out_exactly_as_sent() -> None:
    from visionpipe.api.multipart import BadBody, image_from_body, parse_multipart

    payload = bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n\r\n" + b"\n\r\x00"
    body, content_type = multipart(payload)
    assert image_from_body(body, content_type) == payload
    assert image_from_body(payload, "application/octet-stream") == payload
    assert image_from_body(payload, None) == payload
    two = (b"--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n"
           b"--b\r\nContent-Disposition: form-data; name=\"imageData\"; filename=\"a.jpg\"\r\n"
           b"Content-Type: image/jpeg\r\n\r\n" + payload + b"\r\n--b--\r\n")
    assert image_from_body(two, 'multipart/form-data; boundary="b"') == payload
    parts = parse_multipart(two, "multipart/form-data; boundary=b")
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("other", None, None), ("imageData", "a.jpg", "image/jpeg")]
    with pytest.raises(BadBody):
        image_from_body(two, "multipart/form-data")  # no boundary


def test_a_malformed_multipart_body_is_a_400(project: Project, published: Iteration) -> None:
    response = call(request(project.id, b"--x\r\nno separator here", headers={
        "Prediction-Key": TEST_PREDICTION_KEY, "Content-Type": "multipart/form-data; boundary=y"}))
    assert response.status_code == 400
    assert json.loads(response.get_body())["code"] == "BadRequestImageStream"
