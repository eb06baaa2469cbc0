"""Hostile request bodies and query values, over real HTTP to the local host with valid keys and a
real project: wrong types and shapes are a 400 in Custom Vision's error shape, one bad entry of an
``images/urls`` batch fails only itself, over-long query values are refused, an unexpected
exception is a detail-free 500 JSON, and -- over EVERY route of the app, enumerated from
``function_app.app`` so a new route is covered without touching this file -- generated JSON
bodies and query values never produce a 5xx or an error without a code and a message.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TEST_PREDICTION_KEY, TEST_TRAINING_KEY
from tests.hostile.test_ssrf import Victim, victim  # noqa: F401 - the fixture
from visionpipe import names
from visionpipe.stores.label_store import GENERAL_DOMAIN_ID, LabelStore, Project
from visionpipe.stores.registry import Iteration

KEYS = {"Training-Key": TEST_TRAINING_KEY, "Prediction-Key": TEST_PREDICTION_KEY}
V = "customvision/v3.3/training/projects/{p}"


def assert_error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    """An error in Custom Vision's shape: JSON ``{"code": str, "message": str}``."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("code"), str) and body["code"]
    assert isinstance(body.get("message"), str) and body["message"]
    return body


@pytest.fixture
def ids(project: Project, published: Iteration, label_store: LabelStore) -> dict[str, str]:
    return {"p": project.id, "i": published.id,
            "t": label_store.list_tags(project.id)[0].id}


# (method, path, query, raw body): each answered 500 (or fetched junk) before the typed accessor.
WRONG_TYPES: list[tuple[str, str, dict[str, str], bytes]] = [
    ("PATCH", V, {}, b'{"name": 123}'),
    ("PATCH", V, {}, b'{"name": ["a"]}'),
    ("PATCH", V, {}, b'{"description": {"a": 1}}'),
    ("PATCH", V, {}, b'{"settings": "x"}'),
    ("PATCH", V, {}, b'{"settings": {"domainId": 5}}'),
    ("PATCH", V, {}, b'{"settings": {"classificationType": []}}'),
    ("PATCH", V, {}, b"[1, 2]"),
    ("PATCH", V, {}, b"null"),
    ("PATCH", V, {}, b'{"name": NaN}'),
    ("PATCH", V, {}, b'{"name": 1e400}'),
    ("PATCH", V, {}, b"[" * 100_000 + b"]" * 100_000),
    ("PATCH", V + "/tags/{t}", {}, b'{"name": 5}'),
    ("PATCH", V + "/tags/{t}", {}, b'{"type": []}'),
    ("GET", V + "/iterations/{i}/performance", {"threshold": "abc"}, b""),
    ("GET", V + "/iterations/{i}/performance", {"threshold": "Infinity"}, b""),
    ("GET", V + "/iterations/{i}/performance/images", {"take": "9" * 30}, b""),
    ("POST", V + "/quicktest/url", {}, b'{"url": 5}'),
    ("POST", V + "/quicktest/url", {}, b'{"url": null}'),
    ("POST", V + "/quicktest/url", {}, b'{"url": ["http://127.0.0.1/"]}'),
    ("POST", V + "/quicktest/url", {}, b'"http://127.0.0.1/"'),
    ("POST", V + "/train", {}, b'{"selectedTags": "abc"}'),
    ("POST", V + "/train", {"reservedBudgetInHours": "9" * 25}, b""),
    ("POST", V + "/predictions/query", {}, b'{"tags": [1]}'),
    ("POST", V + "/predictions/query", {}, b'{"tags": [{"id": "x", "minThreshold": "abc"}]}'),
    ("POST", V + "/predictions/query", {}, b'{"startTime": 5}'),
    ("POST", V + "/predictions/query", {}, b'{"maxCount": 1' + b"0" * 5000 + b"}"),
    ("POST", V + "/predictions/query", {}, b'{"continuation": 1e300}'),
    ("POST", V + "/images/suggested", {"iterationId": "{i}"}, b'{"tagIds": "abc"}'),
    ("POST", V + "/images/suggested", {"iterationId": "{i}"}, b'{"threshold": "abc"}'),
    ("POST", V + "/images/suggested", {"iterationId": "{i}"}, b'{"tagIds": [[1]]}'),
    ("POST", V + "/images/suggested/count", {"iterationId": "{i}"}, b'{"tagIds": 5}'),
    ("POST", V + "/images/suggested", {"iterationId": "a/b#c"}, b"{}"),
    ("POST", V + "/images/files", {}, b'{"images": [{"contents": "eA=="}], "tagIds": 5}'),
    ("POST", V + "/images/files", {}, b'{"images": "x"}'),
    ("POST", V + "/images/urls", {}, b'{"images": [{"url": "http://10.0.0.1/"}], "tagIds": {}}'),
    ("POST", V + "/images/predictions", {}, b'{"images": [{"id": "x"}], "tagIds": "x"}'),
    ("POST", V + "/images/tags", {}, b'{"tags": [{"imageId": 5, "tagId": []}]}'),
]


@pytest.mark.parametrize(("method", "path", "params", "body"), WRONG_TYPES,
                         ids=[f"{m} {p.rsplit('}', 1)[-1] or '/'} {b[:40]!r}"
                              for m, p, _, b in WRONG_TYPES])
def test_wrong_types_are_a_400(local_host: str, ids: dict[str, str], method: str, path: str,
                               params: dict[str, str], body: bytes) -> None:
    response = httpx.request(
        method, f"{local_host}/{path.format(**ids)}",
        params={k: v.format(**ids) for k, v in params.items()}, content=body,
        headers={**KEYS, "Content-Type": "application/json"}, timeout=30)
    assert_error(response)


def test_one_bad_url_entry_fails_only_itself(
    local_host: str, project: Project, victim: Victim,  # noqa: F811
    app_setting: Callable[[str, str | None], None],
) -> None:
    app_setting(names.SETTING_URL_FETCH_ALLOWED_NETWORKS, "127.0.0.0/8")
    entries = [{"url": "http://[::1"}, {"url": 5}, {"url": None}, {"url": "http://h:99999/"},
               {"url": "http://127.0.0.1:1/", "tagIds": "x"}, {"url": victim.url("/ok.jpg")}]
    response = httpx.post(
        f"{local_host}/customvision/v3.3/training/projects/{project.id}/images/urls",
        json={"images": entries}, headers=KEYS, timeout=30)
    assert response.status_code == 207, response.text
    statuses = [i["status"] for i in response.json()["images"]]
    assert statuses[-1] == "OK"
    assert all(s.startswith("Error") for s in statuses[:-1]), statuses


@pytest.mark.parametrize("route", ["prediction", "training", "visionpipe"])
def test_over_long_query_values_are_a_400(local_host: str, project: Project,
                                          published: Iteration, route: str) -> None:
    path = {
        "prediction": f"customvision/v3.0/prediction/{project.id}/classify/iterations/prod/image",
        "training": f"customvision/v3.3/training/projects/{project.id}/images",
        "visionpipe": f"visionpipe/v1/projects/{project.id}/quarantine",
    }[route]
    from tests.model_factory import color_image

    method = "POST" if route == "prediction" else "GET"
    response = httpx.request(method, f"{local_host}/{path}", params={"application": "a" * 40_000},
                             content=color_image("red") if method == "POST" else b"",
                             headers=KEYS, timeout=30)
    assert_error(response)


@pytest.mark.parametrize("route", ["training", "visionpipe"])
def test_unexpected_failures_are_a_json_500_without_details(
    local_host: str, project: Project, app_setting: Callable[[str, str | None], None],
    route: str,
) -> None:
    """A storage account that cannot be signed for (a broken key) is an unexpected failure: the
    client gets Custom Vision's shape and nothing of the cause."""
    app_setting(names.STORAGE_CONNECTION,
                "DefaultEndpointsProtocol=http;AccountName=broken;AccountKey=not*base64;"
                "BlobEndpoint=http://127.0.0.1:9/broken;QueueEndpoint=http://127.0.0.1:9/broken;"
                "TableEndpoint=http://127.0.0.1:9/broken;")
    path = {"training": f"customvision/v3.3/training/projects/{project.id}/tags",
            "visionpipe": f"visionpipe/v1/projects/{project.id}/quarantine"}[route]
    response = httpx.get(f"{local_host}/{path}", headers=KEYS, timeout=30)
    body = assert_error(response, 500)
    assert body["code"] == "InternalServerError"
    for leak in ("broken", "base64", "Error", "127.0.0.1", "Traceback"):
        assert leak not in body["message"], body


# --- every route, generated bodies and query values --------------------------------------------
FIELDS = ["name", "description", "settings", "domainId", "classificationType", "type", "url",
          "images", "contents", "tagIds", "tags", "imageId", "tagId", "id", "selectedTags",
          "threshold", "maxCount", "continuation", "startTime", "endTime", "iterationId",
          "application", "orderBy", "session", "sortBy", "minThreshold", "maxThreshold"]
PARAMS = ["name", "description", "domainId", "classificationType", "targetExportPlatforms",
          "iterationId", "store", "threshold", "overlapThreshold", "tagIds", "orderBy", "take",
          "skip", "taggingStatus", "imageIds", "allImages", "ids", "platform", "flavor",
          "publishName", "predictionId", "overwrite", "trainingType", "reservedBudgetInHours",
          "forceTrain", "application", "expires", "sig", "type"]
#: 8 keeps the test under a minute; raise it (environment) for a longer hunt.
EXAMPLES_PER_ROUTE = int(os.environ.get("HOSTILE_EXAMPLES_PER_ROUTE", "8"))

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70),
           max_value=2**70) | st.floats() | st.text(max_size=20)
           | st.sampled_from(["", "http://[::1", "00000000-0000-0000-0000-000000000000",
                              "a/b#c?d", "\x00", "ONNX", "Newest", "Multilabel", "1e999"]))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=10)
# Mostly objects with the API's own field names (where a wrong type does damage), sometimes any
# JSON, sometimes not JSON at all.
objects = st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=5)
bodies = st.one_of(
    objects.map(lambda d: json.dumps(d).encode()),
    objects.map(lambda d: json.dumps(d).encode()),
    objects.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
)
query_values = (st.text(max_size=30) | st.sampled_from(["-1", "0", "1e999", "NaN", "9" * 30,
                                                        "true", "a,b,,c", "a/b#c"]))
queries = st.dictionaries(st.sampled_from(PARAMS), query_values, max_size=4)


def http_routes(app: Any) -> list[tuple[str, str]]:
    """(method, route template) of every HTTP function the app indexes."""
    from visionpipe.local.host import indexed_functions

    out = []
    for f in indexed_functions(app):
        trigger = f.get_trigger().get_dict_repr()
        if trigger["type"] != "httpTrigger":
            continue
        for method in trigger.get("methods") or ["GET", "POST"]:
            out.append((str(getattr(method, "value", method)).upper(), trigger["route"]))
    # The destructive calls last, the deepest resources first, the project itself at the end.
    return sorted(out, key=lambda mr: (mr[0] == "DELETE", -len(mr[1]) if mr[0] == "DELETE"
                                       else 0, mr))


def fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([A-Za-z_]+)\}", lambda m: values.get(m.group(1), "x"), template)


@pytest.fixture
def route_values(ids: dict[str, str], local_host: str) -> Iterator[dict[str, str]]:
    yield {"projectId": ids["p"], "iterationId": ids["i"], "tagId": ids["t"],
           "imageId": "00000000-0000-0000-0000-000000000000", "publishedName": "prod",
           "domainId": GENERAL_DOMAIN_ID, "name": "metrics.json"}


def test_no_route_answers_a_5xx_or_a_bare_error(
    local_host: str, function_app_module: Any, route_values: dict[str, str],
) -> None:
    routes = http_routes(function_app_module.app)
    assert len(routes) > 30  # every route of the app, not a sample
    runs: list[tuple[str, str, int]] = []
    started = time.monotonic()
    with httpx.Client(base_url=local_host, headers=KEYS, timeout=30) as client:

        def probe_route(method: str, path: str) -> None:
            @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(body=bodies, params=queries)
            def probe(body: bytes, params: dict[str, str]) -> None:
                response = client.request(method, path, params=params, content=body,
                                          headers={"Content-Type": "application/json"})
                runs.append((method, path, response.status_code))
                assert response.status_code < 500, (method, path, params, body[:200],
                                                    response.status_code, response.text[:300])
                if response.status_code >= 400 and method != "HEAD":  # HEAD answers no body
                    assert_error(response, response.status_code)

            probe()

        for method, template in routes:
            version = "v3.1" if "/prediction/" in template else "v3.3"
            probe_route(method, "/" + fill(template, {**route_values, "apiVersion": version}))
    elapsed = time.monotonic() - started
    print(f"\n{len(runs)} generated requests over {len(routes)} (method, route) pairs "
          f"in {elapsed:.1f} s")
    assert {(m, p) for m, p, _ in runs} >= {
        (m, "/" + fill(t, {**route_values, "apiVersion": "v3.1" if "/prediction/" in t
                           else "v3.3"})) for m, t in routes}
