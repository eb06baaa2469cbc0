"""Iteration routes over real HTTP (the local host): list/get/rename/delete, performance at any
threshold, image performances, ONNX export with signed download links."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from functions.export_api import download_export, export_iteration
from functions.iterations_api import ITERATION_ROUTE, iteration_performance
from tests.conftest import TEST_TRAINING_KEY
from tests.model_factory import build_color_model, register_color_iteration
from visionpipe.api import export_links
from visionpipe.manifest import METRICS_FILE
from visionpipe.metrics import metrics_at_threshold, predictions_document
from visionpipe.pipeline import publishing
from visionpipe.stores.label_store import ImageFacts, LabelStore, Project
from visionpipe.stores.registry import Iteration, IterationStatus, Registry

KEY = {"Training-Key": TEST_TRAINING_KEY}


@pytest.fixture(scope="module")
def client(local_host: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_host + "/customvision/v3.4-preview/training",
                      headers=KEY, timeout=30) as c:
        yield c


# Six test images over three tags, with probabilities that make 0.5 and 0.8 answer differently.
LABELS = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], float)
PROBS = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
                  [0.1, 0.85, 0.05], [0.55, 0.05, 0.4], [0.1, 0.1, 0.8]])


def trained_iteration(registry: Registry, label_store: LabelStore, project: Project) -> Iteration:
    """The colour model plus a metrics.json with raw test predictions, as the job writes it."""
    iteration = register_color_iteration(registry, label_store, project)
    tags = [label_store.find_tag(project.id, n) for n in ("red", "green", "blue")]
    tag_ids = [t.id for t in tags if t]
    names = ["red", "green", "blue"]
    samples = []
    for i, (labels, probs) in enumerate(zip(LABELS, PROBS, strict=True)):
        sha = hashlib.sha256(f"{project.id}-{i}".encode()).hexdigest()
        tag_id = tag_ids[int(np.argmax(labels))]
        label_store.add_image(project, label_store.get_tag(project.id, tag_id),  # type: ignore
                              ImageFacts(sha, 320, 240, "JPEG", 1000), f"{project.name}/x/{i}.jpg")
        samples.append((f"img-{i}", sha, [tag_id], probs.tolist()))
    metrics = metrics_at_threshold(LABELS, PROBS, tag_ids, names, 0.5, train_images=24)
    doc = dict(metrics)
    doc["predictions"] = predictions_document(tag_ids, names, samples)
    registry.upload_artifact(project.id, iteration.id, METRICS_FILE, json.dumps(doc).encode(),
                             "application/json")
    return registry.update_iteration(project.id, iteration.id, metrics=metrics)


def test_binding_metadata() -> None:
    trigger = iteration_performance.build().get_trigger().get_dict_repr()
    assert trigger["route"] == ITERATION_ROUTE + "/performance" == (
        "customvision/{apiVersion}/training/projects/{projectId}/iterations/{iterationId}/"
        "performance")
    routes = {f.build().get_trigger().get_dict_repr()["route"]
              for f in (export_iteration, download_export)}
    assert routes == {
        "customvision/{apiVersion}/training/projects/{projectId}/iterations/{iterationId}/export",
        "customvision/{apiVersion}/training/projects/{projectId}/iterations/{iterationId}/export"
        "/download",
    }


def test_list_and_get_in_custom_vision_shape(client: httpx.Client, registry: Registry,
                                             label_store: LabelStore, project: Project) -> None:
    first = register_color_iteration(registry, label_store, project)
    second = trained_iteration(registry, label_store, project)
    publishing.publish(registry, label_store, project.id, second.id, "prod", "/subs/x")

    listed = client.get(f"/projects/{project.id}/iterations")
    assert listed.status_code == 200
    body = listed.json()
    assert [i["id"] for i in body] == [second.id, first.id]  # newest first
    got = client.get(f"/projects/{project.id}/iterations/{second.id}").json()
    assert got == body[0]
    assert got["status"] == "Completed" and got["projectId"] == project.id
    assert got["publishName"] == "prod" and got["originalPublishResourceId"] == "/subs/x"
    assert got["exportable"] is True and got["exportableTo"] == ["ONNX", "OpenVino", "DockerFile",
                                                             "TensorFlow", "CoreML"]
    assert got["classificationType"] == "Multiclass" and got["trainingType"] == "Regular"
    assert got["created"].endswith("Z") and got["trainedAt"].endswith("Z")
    assert body[1]["publishName"] == ""


def test_unknown_project_iteration_key_and_version(client: httpx.Client, registry: Registry,
                                                   label_store: LabelStore,
                                                   project: Project) -> None:
    it = register_color_iteration(registry, label_store, project)
    r = client.get(f"/projects/{'0' * 8}-0000-0000-0000-{'0' * 12}/iterations")
    assert (r.status_code, r.json()["code"]) == (404, "NotFoundProject")
    r = client.get(f"/projects/{project.id}/iterations/{'1' * 8}-0000-0000-0000-{'0' * 12}")
    assert (r.status_code, r.json()["code"]) == (404, "NotFoundIteration")
    r = client.get(f"/projects/{project.id}/iterations/{it.id}", headers={"Training-Key": "no"})
    assert (r.status_code, r.json()["code"]) == (401, "401")
    r = httpx.get(str(client.base_url).rstrip("/").replace("v3.4-preview", "v9.9")
                  + f"/projects/{project.id}/iterations", headers=KEY)
    assert r.status_code == 404
    r = httpx.get(str(client.base_url).rstrip("/").replace("v3.4-preview", "v3.3")
                  + f"/projects/{project.id}/iterations", headers=KEY)
    assert r.status_code == 200


def test_rename(client: httpx.Client, registry: Registry, label_store: LabelStore,
                project: Project) -> None:
    a = register_color_iteration(registry, label_store, project)
    b = register_color_iteration(registry, label_store, project)
    r = client.patch(f"/projects/{project.id}/iterations/{a.id}", json={"name": "first try"})
    assert r.status_code == 200 and r.json()["name"] == "first try"
    assert registry.get_iteration(project.id, a.id).name == "first try"  # type: ignore[union-attr]
    r = client.patch(f"/projects/{project.id}/iterations/{b.id}", json={"name": "First Try"})
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestIterationNameNotUnique")
    r = client.patch(f"/projects/{project.id}/iterations/{b.id}", json={"name": " "})
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestIterationName")


def test_delete_refused_while_published(client: httpx.Client, registry: Registry,
                                        label_store: LabelStore, project: Project) -> None:
    it = register_color_iteration(registry, label_store, project)
    publishing.publish(registry, label_store, project.id, it.id, "prod")
    r = client.delete(f"/projects/{project.id}/iterations/{it.id}")
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestIterationIsPublished")
    publishing.unpublish(registry, project.id, it.id)
    assert client.delete(f"/projects/{project.id}/iterations/{it.id}").status_code == 204
    assert registry.get_iteration(project.id, it.id) is None
    assert client.get(f"/projects/{project.id}/iterations/{it.id}").status_code == 404


def test_performance_at_any_threshold(client: httpx.Client, registry: Registry,
                                      label_store: LabelStore, project: Project) -> None:
    it = trained_iteration(registry, label_store, project)
    url = f"/projects/{project.id}/iterations/{it.id}/performance"
    at_half = client.get(url).json()
    expected = metrics_at_threshold(LABELS, PROBS, ["a", "b", "c"], ["red", "green", "blue"], 0.5)
    assert at_half["precision"] == pytest.approx(expected["precision"])
    assert at_half["recall"] == pytest.approx(expected["recall"])
    assert at_half["averagePrecision"] == pytest.approx(expected["averagePrecision"])
    assert [t["name"] for t in at_half["perTagPerformance"]] == ["red", "green", "blue"]
    assert set(at_half["perTagPerformance"][0]) == {
        "id", "name", "precision", "precisionStdDeviation", "recall", "recallStdDeviation",
        "averagePrecision"}
    at_high = client.get(url, params={"threshold": "0.8", "overlapThreshold": "0.3"}).json()
    expected_high = metrics_at_threshold(LABELS, PROBS, ["a", "b", "c"], ["r", "g", "b"], 0.8)
    assert at_high["recall"] == pytest.approx(expected_high["recall"]) != at_half["recall"]
    assert at_high["averagePrecision"] == pytest.approx(at_half["averagePrecision"])
    r = client.get(url, params={"threshold": "2"})
    assert r.status_code == 400


def test_performance_of_untrained_iteration(client: httpx.Client, registry: Registry,
                                            project: Project) -> None:
    it = registry.create_iteration(project.id)
    r = client.get(f"/projects/{project.id}/iterations/{it.id}/performance")
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestIterationIsNotTrained")


def test_image_performances(client: httpx.Client, registry: Registry, label_store: LabelStore,
                            project: Project) -> None:
    it = trained_iteration(registry, label_store, project)
    base = f"/projects/{project.id}/iterations/{it.id}/performance/images"
    rows = client.get(base).json()
    assert len(rows) == 6 and client.get(base + "/count").json() == 6
    red = label_store.find_tag(project.id, "red")
    assert red is not None
    only_red = client.get(base, params={"tagIds": red.id}).json()
    assert len(only_red) == 2 and all(r["tags"][0]["tagId"] == red.id for r in only_red)
    assert client.get(base + "/count", params={"tagIds": red.id}).json() == 2
    row = only_red[0]
    assert row["width"] == 320 and row["predictions"][0]["probability"] >= \
        row["predictions"][-1]["probability"]
    assert len(client.get(base, params={"take": "2", "skip": "5"}).json()) == 1


def test_export_onnx_and_download_with_signed_link(client: httpx.Client, registry: Registry,
                                                   label_store: LabelStore,
                                                   project: Project) -> None:
    it = register_color_iteration(registry, label_store, project)
    url = f"/projects/{project.id}/iterations/{it.id}/export"
    r = client.post(url, params={"platform": "ONNX"})
    assert r.status_code == 200
    export = r.json()
    assert export["platform"] == "ONNX" and export["status"] == "Done"
    assert export["newerVersionAvailable"] is False
    listed = client.get(url).json()
    assert [e["status"] for e in listed] == ["Done"]

    download = httpx.get(export["downloadUri"])  # a plain GET, no key: the link is signed
    assert download.status_code == 200
    assert download.content == build_color_model()

    query = parse_qs(urlsplit(export["downloadUri"]).query)
    tampered = export["downloadUri"].replace(query["sig"][0], "0" * 64)
    assert httpx.get(tampered).status_code == 401
    other = register_color_iteration(registry, label_store, project)
    assert httpx.get(export["downloadUri"].replace(it.id, other.id)).status_code == 401

    r = client.post(url, params={"platform": "VAIDK"})
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestProjectUnsupportedExportPlatform")


def test_export_of_untrained_iteration_is_refused(client: httpx.Client, registry: Registry,
                                                  project: Project) -> None:
    it = registry.create_iteration(project.id)
    url = f"/projects/{project.id}/iterations/{it.id}/export"
    r = client.post(url, params={"platform": "ONNX"})
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestIterationIsNotTrained")
    assert client.get(url).json() == []
    failed = registry.update_iteration(project.id, it.id, status=IterationStatus.FAILED,
                                       failureReason="boom")
    got = client.get(f"/projects/{project.id}/iterations/{failed.id}").json()
    assert got["status"] == "Failed" and got["trainingErrorDetails"] == "boom"


def test_export_links_expire_and_bind_ids() -> None:
    now = time.time()
    q = export_links.sign("k", "p", "i", now=now, ttl=60)
    assert export_links.verify("k", "p", "i", q["expires"], q["sig"], now=now + 59)
    assert not export_links.verify("k", "p", "i", q["expires"], q["sig"], now=now + 61)
    assert not export_links.verify("k2", "p", "i", q["expires"], q["sig"], now=now)
    assert not export_links.verify("k", "p", "j", q["expires"], q["sig"], now=now)
    assert not export_links.verify(None, "p", "i", q["expires"], q["sig"], now=now)
    assert not export_links.verify("k", "p", "i", "soon", q["sig"], now=now)
