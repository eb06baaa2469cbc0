"""The ``visionpipe`` CLI through typer's runner against a real local host over HTTP.

Training is stood in for by ``tests/model_factory.py`` (a tiny torch-free ONNX iteration), so the
loop upload -> status -> metrics -> publish -> predict -> export -> quarantine runs in seconds.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from tests.cli_runner import invoke, runner
from tests.conftest import TEST_TRAINING_KEY
from tests.model_factory import color_image, register_color_iteration
from visionpipe import names
from visionpipe.client.cli import app
from visionpipe.local.azurite import free_port
from visionpipe.rejections import Reason, Rejection
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore
from visionpipe.stores.quarantine import quarantine_blob
from visionpipe.stores.registry import IterationStatus, Registry

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
PER_TAG = [{"id": "x", "name": n, "precision": 0.9, "recall": 0.8, "averagePrecision": 0.85}
           for n in ("red", "green", "blue")]
METRICS = {"overall": {"precision": 0.9, "recall": 0.8, "averagePrecision": 0.85},
           "perTag": PER_TAG}


pytestmark = pytest.mark.usefixtures("cli_env")


def tag_folders(root: Path, per_tag: int = 3) -> Path:
    for tag in ("red", "green", "blue"):
        (root / tag).mkdir(parents=True)
        for i in range(per_tag):
            (root / tag / f"{tag}-{i}.jpg").write_bytes(color_image(tag, seed=i))
    return root


def test_upload_reports_uploaded_duplicate_rejected(tmp_path: Path, project_name: str,
                                                    label_store: LabelStore) -> None:
    folder = tag_folders(tmp_path / "set")
    (folder / "red" / "copy.jpg").write_bytes(color_image("red", seed=0))  # same bytes twice
    (folder / "blue" / "tiny.png").write_bytes(color_image("blue", (32, 32), "PNG"))
    (folder / "loose.jpg").write_bytes(color_image("green", seed=9))  # not in a tag folder

    out = invoke("upload", str(folder), "--project", project_name)
    assert f"created project {project_name}" in out
    assert "9 uploaded, 1 duplicate, 2 rejected" in out
    assert "ErrorImageDimensions" in out and "not in a tag folder" in out
    project = label_store.find_project(project_name)
    assert project is not None
    assert {t.name for t in label_store.list_tags(project.id)} == {"red", "green", "blue"}

    rows = json.loads(invoke("upload", str(folder), "--project", project_name, "--json"))
    by_file = {Path(r["file"]).name: r for r in rows}
    assert set(rows[0]) >= {"file", "tags", "outcome", "status", "reason", "imageId"}
    assert by_file["red-1.jpg"]["outcome"] == "duplicate"  # second upload: all known already
    assert by_file["tiny.png"]["status"] == "ErrorImageDimensions"
    assert by_file["loose.jpg"]["outcome"] == "rejected"


def test_the_loop(tmp_path: Path, project_name: str, label_store: LabelStore,
                  registry: Registry, storage: Storage) -> None:
    invoke("upload", str(tag_folders(tmp_path / "set", per_tag=2)), "--project", project_name,
           "--multilabel")
    project = label_store.find_project(project_name)
    assert project is not None and project.multilabel
    iteration = register_color_iteration(registry, label_store, project, metrics=METRICS)
    registry.upload_artifact(project.id, iteration.id, "pr_curve.png", PNG, "image/png")

    rows = json.loads(invoke("status", project_name, "--json"))
    assert rows[0]["id"] == iteration.id and rows[0]["status"] == "Completed"
    assert set(rows[0]) >= {"name", "status", "progress", "publishName", "failureReason"}

    out = invoke("metrics", project_name, "--out", str(tmp_path / "plots"))
    assert "red" in out and "90.0%" in out and "confusion_matrix.png: not recorded" in out
    doc = json.loads(invoke("metrics", project.id, "--json", "--out", str(tmp_path / "plots")))
    assert [t["name"] for t in doc["perTagPerformance"]] == ["red", "green", "blue"]
    assert Path(doc["plots"]["pr_curve.png"]).read_bytes() == PNG
    assert doc["plots"]["confusion_matrix.png"] is None

    assert "published" in invoke("publish", project_name, "--iteration", iteration.name,
                                 "--name", "prod")
    held_back = tmp_path / "held"
    held_back.mkdir()
    for color in ("red", "green", "blue"):
        (held_back / f"{color}.jpg").write_bytes(color_image(color, seed=50))
    out = invoke("predict", project_name, str(held_back))
    assert "red.jpg" in out and "prod" in out
    rows = json.loads(invoke("predict", project_name, str(held_back), "--json"))
    assert [(Path(r["file"]).name, r["tagName"]) for r in rows] == [
        ("blue.jpg", "blue"), ("green.jpg", "green"), ("red.jpg", "red")]
    assert all(set(r) >= {"file", "tagName", "probability", "predictions"} for r in rows)
    one = json.loads(invoke("predict", project_name, str(held_back / "red.jpg"), "--json",
                            "--name", "prod"))
    assert one[0]["file"] == str(held_back / "red.jpg")

    model = tmp_path / "out" / "model.onnx"
    assert "wrote" in invoke("export", project_name, "--iteration", iteration.id,
                             "--out", str(model))
    assert model.read_bytes() == registry.download_artifact(project.id, iteration.id,
                                                            "model.onnx")

    assert "nothing quarantined" in invoke("quarantine", project_name)
    path = f"{project_name}/red/broken.jpg"
    storage.container(names.TRAINING_IMAGES).upload_blob(path, b"not an image")
    quarantine_blob(storage, names.TRAINING_IMAGES, path,
                    Rejection(Reason.UNSUPPORTED_FORMAT, "not an image"))
    rows = json.loads(invoke("quarantine", project_name, "--json"))
    assert [(r["reason"], r["source"]["path"]) for r in rows] == [("unsupported_format", path)]
    assert "unsupported_format" in invoke("quarantine", project_name)


def drop_requests(storage: Storage, project_id: str) -> int:
    """Take this test's training request off the shared queue: no other module's worker should
    spend minutes training it."""
    import base64

    queue, dropped = storage.queue(names.TRAINING_REQUESTS), 0
    for message in queue.receive_messages(max_messages=32, visibility_timeout=1):
        text = str(message.content)
        with suppress(ValueError):
            text += base64.b64decode(text).decode("utf-8", "replace")
        if project_id in text:
            queue.delete_message(message)
            dropped += 1
    return dropped


def test_train_then_watch_progress(tmp_path: Path, project_name: str, storage: Storage,
                                   label_store: LabelStore, registry: Registry) -> None:
    invoke("upload", str(tag_folders(tmp_path / "set", per_tag=5)), "--project", project_name)
    started = json.loads(invoke("train", project_name, "--json"))
    assert started["status"] == "Training"
    project = label_store.find_project(project_name)
    assert project is not None
    assert drop_requests(storage, project.id) == 1  # the request is queued for the worker

    def worker() -> None:  # what training_job does to the row, quickly
        for epoch in (1, 2):
            time.sleep(0.3)
            registry.update_iteration(project.id, started["id"], progress={
                "phase": "training", "epoch": epoch, "epochs": 2, "trainLoss": 0.5 / epoch,
                "valMetric": 0.8})
        registry.update_iteration(project.id, started["id"], status=IterationStatus.FAILED,
                                  failureReason="not enough images",
                                  progress={"phase": "failed", "epoch": 2, "epochs": 2})

    thread = threading.Thread(target=worker)
    thread.start()
    result = runner.invoke(app, ["status", project_name, "--watch", "--json",
                                 "--interval", "0.1"])
    thread.join()
    assert result.exit_code == 1, result.output
    row = json.loads(result.stdout)
    assert row["status"] == "Failed" and row["failureReason"] == "not enough images"
    assert row["progress"]["epoch"] == 2


def test_errors_are_one_line(project_name: str) -> None:
    result = runner.invoke(app, ["status", project_name])
    assert result.exit_code == 1
    assert f"no project named '{project_name}'" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1

    result = runner.invoke(app, ["--training-key", "wrong", "status", project_name])
    assert result.exit_code == 1 and "access denied" in result.output

    dead = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["--endpoint", dead, "status", project_name])
    assert result.exit_code == 1 and f"cannot reach {dead}" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["--endpoint", dead, "--debug", "status", project_name])
    assert result.exit_code == 1 and result.exception is not None  # raised, traceback shown
    assert type(result.exception).__name__ == "ClientError"


def test_extension_routes_need_the_training_key(local_host: str) -> None:
    import httpx

    for path in ("projects/x/quarantine", "projects/x/iterations/y/progress",
                 "projects/x/iterations/y/artifacts/pr_curve.png"):
        response = httpx.get(f"{local_host}/visionpipe/v1/{path}")
        assert response.status_code == 401 and set(response.json()) == {"code", "message"}
    response = httpx.get(f"{local_host}/visionpipe/v1/projects/x/iterations/y/artifacts/"
                         "model.onnx", headers={"Training-Key": TEST_TRAINING_KEY})
    assert response.status_code == 404


def test_extension_route_binding_metadata() -> None:
    from functions import visionpipe_api

    routes = {
        fn.build().get_trigger().get_dict_repr()["route"]
        for fn in (visionpipe_api.quarantine, visionpipe_api.iteration_progress,
                   visionpipe_api.iteration_artifact)
    }
    assert routes == {
        "visionpipe/v1/projects/{projectId}/quarantine",
        "visionpipe/v1/projects/{projectId}/iterations/{iterationId}/progress",
        "visionpipe/v1/projects/{projectId}/iterations/{iterationId}/artifacts/{name}",
    }


def test_export_parity_line_speaks_in_the_records_terms() -> None:
    """A detector's record is boxes, CoreML's claims nothing it did not run: neither may print
    "top-1 agreement 0%" (the old line read every record as a classification one)."""
    from visionpipe.client.cli import parity_line

    boxes = parity_line({"kind": "detection", "images": 8, "runtime": "OpenVINO CPU",
                         "detectionsMatched": 248, "tiesSkipped": 3, "minIoU": 0.99999,
                         "maxScoreDiff": 1.2e-7, "passed": True})
    assert "248 boxes matched" in boxes and "min IoU 1.0000" in boxes and "top-1" not in boxes
    coreml = parity_line({"images": 8, "passed": None, "runtime": "Core ML runs on Apple only",
                          "verifiedBy": "verify_coreml.py",
                          "intermediate": {"images": 8, "runtime": "torch", "passed": True,
                                           "top1Agreement": 1.0, "maxAbsProbDiff": 2.1e-6,
                                           "tolerance": 1e-3}})
    assert coreml.startswith("parity not measured here: Core ML runs on Apple only")
    assert "verify_coreml.py" in coreml and "top-1 agreement 100%" in coreml
    assert "2.10e-06" in coreml
    plain = parity_line({"images": 24, "runtime": "onnxruntime", "top1Agreement": 1.0,
                         "maxAbsProbDiff": 3e-5, "tolerance": 1e-4, "passed": True})
    assert "top-1 agreement 100%" in plain and "3.00e-05 <= tolerance 0.0001" in plain
