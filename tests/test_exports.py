"""Exports to every platform (visionpipe.api.export, training_job.export_worker,
training_job.exporters): the asynchronous flow over real HTTP and a real Azurite queue, the
parity proof per platform/flavor, poison handling, and the DockerFile export's server started
with Python from the unpacked zip."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import TEST_TRAINING_KEY
from tests.drops import wait_for
from tests.model_factory import (
    SMALL_SPEC,
    build_color_model,
    color_image,
    register_color_iteration,
)
from training_job.export_worker import ExportWorker, ExportWorkerOptions, Outcome
from training_job.exporters import export
from training_job.exporters.parity import compare, golden_images, onnx_runner, served_batch
from visionpipe import names
from visionpipe.local.azurite import free_port
from visionpipe.manifest import Manifest, TagOutput
from visionpipe.messages import BadMessage, ExportRequest, decode_body
from visionpipe.storage import Storage
from visionpipe.stores.exports import ExportStore
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Registry

KEY = {"Training-Key": TEST_TRAINING_KEY}
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_FLOAT16 = importlib.util.find_spec("onnxconverter_common") is not None
FLAVORS = [("ONNX", "ONNX10"), ("ONNX", "ONNX12"),
           pytest.param("ONNX", "ONNXFloat16", marks=pytest.mark.skipif(
               not HAS_FLOAT16, reason="onnxconverter-common is not installed "
                                       "(make setup-exporters)")),
           ("ONNX", "ONNXInt8"), ("DockerFile", "Linux"), ("DockerFile", "ARM"),
           pytest.param("OpenVino", "", marks=pytest.mark.skipif(
               not HAS_OPENVINO, reason="the openvino converter is not installed "
                                        "(make setup-exporters)"))]


def color_manifest(model: bytes) -> Manifest:
    return Manifest("p", "i", "Multiclass",
                    tuple(TagOutput(f"tag-{n}", n) for n in ("red", "green", "blue")),
                    SMALL_SPEC, "color-test-model", False, 17,
                    hashlib.sha256(model).hexdigest())


@pytest.fixture(scope="module")
def client(local_host: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_host + "/customvision/v3.4-preview/training",
                      headers=KEY, timeout=30) as c:
        yield c


@pytest.fixture
def worker(storage: Storage) -> ExportWorker:
    return ExportWorker(storage, ExportWorkerOptions(visibility_timeout=30, retry_delay=1))


def drain(worker: ExportWorker, rows: ExportStore, project_id: str, iteration_id: str,
          platform: str, flavor: str) -> str:
    """Run the worker until the export row leaves Exporting; its final status."""
    def settled() -> str | None:
        worker.run_once()
        row = rows.get(project_id, iteration_id, platform, flavor)
        return row.status if row and row.status != "Exporting" else None
    return wait_for(settled, timeout=120)


# --- the parity proof, per platform/flavor ------------------------------------------------------
@pytest.mark.parametrize(("platform", "flavor"), FLAVORS)
def test_every_flavor_converts_and_answers_like_the_served_model(platform: str,
                                                                 flavor: str) -> None:
    model = build_color_model()
    result = export(model, color_manifest(model), platform, flavor)
    parity = result.manifest["parity"]
    assert result.passed, result.reason
    assert parity["passed"] is True and parity["top1Agreement"] == 1.0
    assert parity["maxAbsProbDiff"] <= parity["tolerance"]
    assert parity["top1Compared"] >= parity["images"] - 2  # colour fields have clear winners
    with zipfile.ZipFile(io.BytesIO(result.archive or b"")) as z:
        shipped = json.loads(z.read("export.json"))
        assert shipped["parity"] == parity and shipped["source"]["sha256"] == \
            hashlib.sha256(model).hexdigest()
        assert z.read("labels.txt").decode().split() == ["red", "green", "blue"]
        for f in shipped["files"]:
            assert hashlib.sha256(z.read(f["name"])).hexdigest() == f["sha256"]


def test_a_model_that_answers_differently_fails_parity() -> None:
    images = golden_images()
    batch = served_batch(images, SMALL_SPEC)
    served = onnx_runner(build_color_model(), SMALL_SPEC.input_name)(batch)
    other = onnx_runner(build_color_model(permutation=(1, 2, 0)), SMALL_SPEC.input_name)(batch)
    record = compare(served, other, 1e-2, "onnxruntime")
    assert record["passed"] is False and record["top1Agreement"] < 1.0
    assert "top-1 agreement" in record["reason"]
    nearly = compare(served, served + 2e-3, 1e-3, "onnxruntime")
    assert nearly["passed"] is False and "exceeds the tolerance" in nearly["reason"]


def hardswish_model() -> bytes:
    """A valid opset-17 model with HardSwish (opset 14+): no ONNX10 form exists."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"], axis=1),
         helper.make_node("HardSwish", ["f"], ["h"]),
         helper.make_node("Softmax", ["h"], ["probabilities"], axis=1)],
        "hs", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 56, 56])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


# --- the asynchronous flow over HTTP ------------------------------------------------------------
def test_export_is_asynchronous_and_done_with_a_signed_zip(
        client: httpx.Client, storage: Storage, registry: Registry, label_store: LabelStore,
        project: Project, worker: ExportWorker) -> None:
    it = register_color_iteration(registry, label_store, project)
    url = f"/projects/{project.id}/iterations/{it.id}/export"
    r = client.post(url, params={"platform": "onnx", "flavor": "onnxint8"})
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["platform"], r.json()["flavor"]) == \
        ("Exporting", "ONNX", "ONNXInt8")
    assert r.json()["downloadUri"] is None
    again = client.post(url, params={"platform": "ONNX", "flavor": "ONNXInt8"}).json()
    assert again["status"] == "Exporting"  # the same row: no second conversion is queued
    requests = storage.queue(names.EXPORT_REQUESTS)
    mine = [m for m in requests.peek_messages(max_messages=32)
            if f'"{it.id}"' in m.content.decode()]
    assert len(mine) == 1

    rows = ExportStore(storage)
    assert drain(worker, rows, project.id, it.id, "ONNX", "ONNXInt8") == "Done"
    listed = client.get(url).json()
    assert [(e["platform"], e["flavor"], e["status"]) for e in listed] == \
        [("ONNX", None, "Done"), ("ONNX", "ONNXInt8", "Done")]
    done = listed[1]
    assert done["parity"]["passed"] is True and done["parity"]["tolerance"] == 5e-2
    download = httpx.get(done["downloadUri"])  # plain GET: the link is signed for this export
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as z:
        assert json.loads(z.read("export.json"))["parity"] == done["parity"]
        assert z.read("model.onnx") != build_color_model()  # converted, not the served file
    plain = listed[0]["downloadUri"]
    assert httpx.get(plain).content == build_color_model()
    # The plain link's signature does not open the converted export, nor the reverse.
    forged = plain.replace("/download?", "/download?platform=ONNX&flavor=ONNXInt8&")
    assert httpx.get(forged).status_code == 401
    assert httpx.get(done["downloadUri"].replace("ONNXInt8", "ONNX12")).status_code == 401
    # Done is final: asking again answers the row and queues nothing.
    assert client.post(url, params={"platform": "ONNX", "flavor": "ONNXInt8"}).json()[
        "status"] == "Done"
    assert not [m for m in requests.peek_messages(max_messages=32)
                if f'"{it.id}"' in m.content.decode()]
    got = client.get(f"/projects/{project.id}/iterations/{it.id}").json()
    assert got["exportableTo"] == ["ONNX", "OpenVino", "DockerFile", "TensorFlow", "CoreML"]


def test_a_conversion_that_cannot_be_done_is_failed_with_its_reason(
        client: httpx.Client, storage: Storage, registry: Registry, label_store: LabelStore,
        project: Project, worker: ExportWorker) -> None:
    it = register_color_iteration(registry, label_store, project, model=hardswish_model())
    url = f"/projects/{project.id}/iterations/{it.id}/export"
    assert client.post(url, params={"platform": "ONNX", "flavor": "ONNX10"}).json()[
        "status"] == "Exporting"
    assert drain(worker, ExportStore(storage), project.id, it.id, "ONNX", "ONNX10") == "Failed"
    failed = client.get(url).json()[1]
    assert failed["status"] == "Failed" and failed["downloadUri"] is None
    assert "opset 10" in failed["reason"] and "HardSwish" in failed["reason"]
    # A Failed export may be asked for again: it is queued afresh.
    assert client.post(url, params={"platform": "ONNX", "flavor": "ONNX10"}).json()[
        "status"] == "Exporting"


@pytest.mark.parametrize(("platform", "flavor", "code"), [
    ("VAIDK", "", "BadRequestProjectUnsupportedExportPlatform"),
    ("TensorFlow", "SavedModel", "BadRequestExportValidationFailed"),
    ("CoreML", "ONNX12", "BadRequestExportValidationFailed"),
    ("Nope", "", "BadRequestProjectUnsupportedExportPlatform"),
    ("ONNX", "ONNX9", "BadRequestExportValidationFailed"),
    ("DockerFile", "Windows", "BadRequestExportValidationFailed"),
])
def test_unknown_platforms_and_flavors_are_refused(client: httpx.Client, registry: Registry,
                                                   label_store: LabelStore, project: Project,
                                                   platform: str, flavor: str,
                                                   code: str) -> None:
    it = register_color_iteration(registry, label_store, project)
    r = client.post(f"/projects/{project.id}/iterations/{it.id}/export",
                    params={"platform": platform, "flavor": flavor})
    assert (r.status_code, r.json()["code"]) == (400, code)


# --- the queue contract -------------------------------------------------------------------------
def test_export_request_contract() -> None:
    good = ExportRequest("0" * 8 + "-0000-0000-0000-" + "0" * 12,
                         "1" * 8 + "-1111-1111-1111-" + "1" * 12, "OpenVino")
    assert ExportRequest.from_queue(base64.b64encode(good.to_json().encode())) == good
    for bad in ('{"platform": "ONNX"}', "[]", "not json",
                good.to_json().replace("OpenVino", "TensorFlow"),
                good.to_json().replace('"flavor": ""', '"flavor": "ARM"'),
                good.to_json().replace("OpenVino", "ONNX")):  # plain ONNX needs no conversion
        with pytest.raises(BadMessage):
            ExportRequest.from_json(bad)


def test_bad_export_message_is_parked_once(storage: Storage, worker: ExportWorker) -> None:
    queue = storage.queues.get_queue_client(names.EXPORT_REQUESTS)
    poison = storage.queues.get_queue_client(names.EXPORT_REQUESTS + names.POISON_SUFFIX)
    marker = f"not an export {datetime.now(UTC).isoformat()}"
    queue.send_message(marker)
    outcomes: list[Outcome | None] = []

    def parked() -> bool:
        outcomes.append(worker.run_once())
        return any(m.content == marker for m in poison.peek_messages(max_messages=32))
    wait_for(parked, timeout=30)
    assert Outcome.POISONED in outcomes
    copies = [m for m in poison.peek_messages(max_messages=32) if m.content == marker]
    assert len(copies) == 1
    assert not [m for m in queue.peek_messages(max_messages=32) if m.content == marker]


def test_message_for_a_missing_row_is_parked_and_a_finished_row_is_not_redone(
        storage: Storage, registry: Registry, label_store: LabelStore, project: Project,
        worker: ExportWorker) -> None:
    it = register_color_iteration(registry, label_store, project)
    queue = storage.queue(names.EXPORT_REQUESTS)
    poison = storage.queues.get_queue_client(names.EXPORT_REQUESTS + names.POISON_SUFFIX)
    orphan = ExportRequest(project.id, it.id, "DockerFile", "ARM")  # no row was ever requested
    queue.send_message(orphan.to_json().encode())
    wait_for(lambda: worker.run_once() == Outcome.POISONED
             or [m for m in poison.peek_messages(max_messages=32)
                 if it.id in decode_body(m.content)], timeout=30)
    assert len([m for m in poison.peek_messages(max_messages=32)
                if it.id in decode_body(m.content)]) == 1
    rows = ExportStore(storage)
    assert rows.start(project.id, it.id, "DockerFile", "Linux")
    request = ExportRequest(project.id, it.id, "DockerFile", "Linux")
    queue.send_message(request.to_json().encode())
    assert drain(worker, rows, project.id, it.id, "DockerFile", "Linux") == "Done"
    first = rows.get(project.id, it.id, "DockerFile", "Linux")
    queue.send_message(request.to_json().encode())  # a redelivery after it finished
    raw = storage.queues.get_queue_client(names.EXPORT_REQUESTS)
    wait_for(lambda: worker.run_once() is None or not [
        m for m in raw.peek_messages(max_messages=32) if it.id in decode_body(m.content)],
        timeout=30)
    assert rows.get(project.id, it.id, "DockerFile", "Linux") == first


# --- the DockerFile export runs -----------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_zip() -> bytes:
    model = build_color_model()
    result = export(model, color_manifest(model), "DockerFile", "Linux")
    assert result.archive is not None
    return result.archive


def test_dockerfile_lints_and_copies_only_what_the_zip_holds(docker_zip: bytes) -> None:
    from dockerfile_parse import DockerfileParser

    with zipfile.ZipFile(io.BytesIO(docker_zip)) as z:
        shipped = set(z.namelist())
        parser = DockerfileParser(fileobj=io.BytesIO(z.read("Dockerfile")))
    instructions = [i["instruction"] for i in parser.structure]
    assert parser.baseimage == "python:3.11-slim"
    assert instructions.count("FROM") == 1 and "HEALTHCHECK" in instructions
    users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")  # never runs as root
    copied = {src for i in parser.structure if i["instruction"] == "COPY"
              for src in i["value"].split()[:-1]}
    assert copied <= shipped and {"server.py", "model.onnx", "manifest.json"} <= copied
    cmd = [i["value"] for i in parser.structure if i["instruction"] == "CMD"]
    assert [json.loads(c) for c in cmd] == [["python", "/app/server.py"]]
    with zipfile.ZipFile(io.BytesIO(docker_zip)) as z:
        requirements = z.read("requirements.txt").decode().splitlines()
    assert all("==" in line for line in requirements)
    assert {line.split("==")[0] for line in requirements} == {"onnxruntime", "numpy", "pillow"}


def test_the_exported_server_classifies_an_image(docker_zip: bytes, tmp_path: Path) -> None:
    zipfile.ZipFile(io.BytesIO(docker_zip)).extractall(tmp_path)
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
    server = subprocess.Popen([sys.executable, str(tmp_path / "server.py")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "red.jpg").write_bytes(color_image("red"))
    files = ThreadingHTTPServer(("127.0.0.1", 0),
                                partial(SimpleHTTPRequestHandler, directory=str(pictures)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, timeout=30, interval=0.2)
        answer = httpx.post(base + "/image", content=color_image("blue"), timeout=10).json()
        assert answer["predictions"][0]["tagName"] == "blue"
        assert set(answer) == {"id", "project", "iteration", "created", "predictions"}
        assert answer["predictions"][0]["probability"] >= answer["predictions"][1]["probability"]
        shipped = json.loads((tmp_path / "manifest.json").read_text())
        types = {t["id"]: t["type"] for t in shipped["tags"]}  # recorded at training time
        assert {p["tagId"]: p["tagType"] for p in answer["predictions"]} == types
        form = httpx.post(base + "/image", files={"imageData": color_image("green")},
                          timeout=10).json()
        assert form["predictions"][0]["tagName"] == "green"
        url = f"http://127.0.0.1:{files.server_address[1]}/red.jpg"
        by_url = httpx.post(base + "/url", json={"url": url}, timeout=10).json()
        assert by_url["predictions"][0]["tagName"] == "red"
        bad = httpx.post(base + "/image", content=b"not a picture", timeout=10)
        assert bad.status_code == 400 and bad.json()["code"] == "BadRequestImageFormat"
        assert httpx.post(base + "/url", json={"url": "file:///etc/passwd"},
                          timeout=10).status_code == 400
        # What the server answers is what the served model answers on the same bytes.
        served = onnx_runner(build_color_model(), SMALL_SPEC.input_name)(
            served_batch([color_image("blue")], SMALL_SPEC))[0]
        got = sorted(answer["predictions"], key=lambda p: ["red", "green", "blue"].index(
            p["tagName"]))
        assert np.allclose([p["probability"] for p in got], served, atol=1e-4)
    finally:
        files.shutdown()
        server.terminate()
        server.wait(timeout=10)


# --- the CLI ------------------------------------------------------------------------------------
def test_cli_export_waits_and_prints_the_parity(local_host: str, storage: Storage,
                                                registry: Registry, label_store: LabelStore,
                                                project: Project, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from visionpipe.client.cli import app

    monkeypatch.setenv("VISIONPIPE_ENDPOINT", local_host)
    monkeypatch.setenv("VISIONPIPE_TRAINING_KEY", TEST_TRAINING_KEY)
    it = register_color_iteration(registry, label_store, project)
    worker = ExportWorker(storage, ExportWorkerOptions(poll_interval=0.2))
    thread = threading.Thread(target=worker.watch, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(app, ["export", project.name, "--iteration", it.id,
                                          "--platform", "DockerFile", "--flavor", "ARM",
                                          "--out", str(tmp_path / "exports")])
    finally:
        worker.stop.set()
        thread.join(timeout=30)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "top-1 agreement 100%" in result.output and "max |prob diff|" in result.output
    written = tmp_path / "exports" / f"{it.id}.DockerFile.ARM.zip"
    with zipfile.ZipFile(written) as z:
        assert "arm64" in z.read("Dockerfile").decode()
