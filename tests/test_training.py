"""The training job end to end against a real Azurite: request in, servable iteration out.

One small iteration (3 tags x 12 generated 256 px pictures, MobileNetV3-Small from a random init,
112 px crops) is trained once per module and shared by the assertions; the failure paths
(too few images, malformed messages, a killed worker) run beside it on their own queues, so tests
of other modules that use ``training-requests`` are never disturbed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from training_job.cli import get_args_parser, main
from training_job.worker import Outcome, Worker, WorkerOptions
from visionpipe import names
from visionpipe.imaging import open_oriented
from visionpipe.local.samples import make_image
from visionpipe.manifest import (
    CONFUSION_MATRIX_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PR_CURVE_FILE,
    Manifest,
)
from visionpipe.messages import TrainingEvent, TrainingRequest
from visionpipe.preprocessing import to_input
from visionpipe.storage import Storage
from visionpipe.stores.label_store import MULTILABEL, ImageFacts, LabelStore, Project
from visionpipe.stores.registry import IterationStatus, Registry

REPO = Path(__file__).resolve().parents[1]
KINDS = ("circle", "square", "stripes")
PER_KIND = 12


def seed_project(storage: Storage, name: str, kinds: tuple[str, ...] = KINDS,
                 per_kind: int = PER_KIND, multilabel: bool = False) -> Project:
    """Upload generated pictures into the drop folder and record them as ingest would."""
    store = LabelStore(storage)
    project = store.create_project(name, MULTILABEL if multilabel else "Multiclass")
    container = storage.container(names.TRAINING_IMAGES)
    for kind in kinds:
        tag = store.get_or_create_tag(project.id, kind)
        for seed in range(per_kind):
            data = make_image(kind, seed, size=(256, 256))
            path = f"{name}/{kind}/{seed}.jpg"
            container.upload_blob(path, data, overwrite=True)
            facts = ImageFacts(hashlib.sha256(data).hexdigest(), 256, 256, "JPEG", len(data))
            store.add_image(project, tag, facts, path)
    return project


@dataclass
class Queues:
    requests: str
    events: str

    def send(self, storage: Storage, body: str | bytes) -> None:
        storage.queue(self.requests).send_message(body.encode() if isinstance(body, str) else body)

    def events_received(self, storage: Storage) -> list[TrainingEvent]:
        q = storage.queue(self.events)
        out = []
        for m in q.receive_messages(max_messages=32, visibility_timeout=1):
            out.append(TrainingEvent.from_json(m.content))
            q.delete_message(m)
        return out

    def visible(self, storage: Storage, poison: bool = False) -> list[Any]:
        name = self.requests + (names.POISON_SUFFIX if poison else "")
        return list(storage.queue(name).peek_messages(max_messages=32))


def request_body(project_id: str, iteration_id: str) -> str:
    return TrainingRequest(project_id=project_id, iteration_id=iteration_id).to_json()


def make_queues(storage: Storage) -> Queues:
    """Queues of its own for each scenario (names: 3-63 lowercase letters, digits, hyphens)."""
    tag = uuid.uuid4().hex[:8]
    queues = Queues(f"tr-{tag}", f"te-{tag}")
    for name in (queues.requests, queues.requests + names.POISON_SUFFIX, queues.events):
        storage.queues.create_queue(name)
    return queues


def job_argv(queues: Queues, cache_dir: Path, *extra: str) -> list[str]:
    """Small and fast: MobileNetV3-Small, 112 px, random init (no weights), torchscript export."""
    return [
        "--queue", queues.requests, "--events-queue", queues.events,
        "--backbone", "mobilenet_v3_small", "--resize", "128", "--crop", "112",
        "--epochs", "8", "--patience", "8", "--batch-size", "8", "--lr", "2e-3",
        "--exporter", "torchscript", "--cache-dir", str(cache_dir),
        "--weights-dir", str(cache_dir / "no-weights-here"),
        "--visibility-timeout", "60", "--retry-delay", "0", "--log-level", "INFO",
        "--kfold-below", "0",  # cross-validation has its tests (tests/test_training_trust.py)
        *extra,
    ]


def run_job(queues: Queues, cache_dir: Path, *extra: str) -> int:
    return main(get_args_parser().parse_args(["--once", *job_argv(queues, cache_dir, *extra)]))


# --- the trained iteration, shared -------------------------------------------------------------
@dataclass
class Trained:
    storage: Storage
    project: Project
    queues: Queues
    cache_dir: Path
    iteration_id: str
    exit_code: int
    events: list[TrainingEvent]
    seconds: float


@pytest.fixture(scope="module")
def trained(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    project = seed_project(storage, f"train-{uuid.uuid4().hex[:8]}")
    queues = make_queues(storage)
    cache_dir = tmp_path_factory.mktemp("image-cache")
    # a person's hand-made request: a project name, no iteration id
    queues.send(storage, json.dumps({"projectName": project.name, "trainingType": "Regular"}))
    t0 = time.perf_counter()
    code = run_job(queues, cache_dir)
    seconds = time.perf_counter() - t0
    iterations = Registry(storage).list_iterations(project.id)
    assert len(iterations) == 1, iterations
    yield Trained(storage, project, queues, cache_dir, iterations[0].id, code,
                  queues.events_received(storage), seconds)


@pytest.mark.slow
def test_iteration_completed_and_request_deleted(trained: Trained) -> None:
    it = Registry(trained.storage).get_iteration(trained.project.id, trained.iteration_id)
    assert it is not None
    assert trained.exit_code == 0
    assert it.status == IterationStatus.COMPLETED, it.failure_reason
    assert it.failure_reason == ""
    assert it.trained_at is not None
    assert it.backbone == "mobilenet_v3_small"
    assert it.progress["phase"] == "completed" and it.progress["epochs"] == 8
    assert 1 <= it.progress["epoch"] <= 8
    assert it.metrics["testImages"] == 3 and it.metrics["trainImages"] == 30
    assert it.metrics["validationImages"] == 3
    row = trained.storage.table(names.ITERATIONS_TABLE).get_entity(trained.project.id, it.id)
    assert json.loads(row["timingsJson"])["totalSeconds"] > 0 and row["pretrained"] is False
    assert trained.queues.visible(trained.storage) == []  # deleted after registration
    assert trained.queues.visible(trained.storage, poison=True) == []
    print(f"\ntrained one iteration in {trained.seconds:.1f}s")


@pytest.mark.slow
def test_completed_event_arrives(trained: Trained) -> None:
    assert trained.events == [
        TrainingEvent(trained.project.id, trained.iteration_id, "TrainingCompleted")
    ]


@pytest.mark.slow
def test_manifest_fields(trained: Trained) -> None:
    registry = Registry(trained.storage)
    manifest = registry.read_manifest(trained.project.id, trained.iteration_id)
    assert manifest.project_id == trained.project.id
    assert manifest.iteration_id == trained.iteration_id
    assert manifest.classification_type == "Multiclass"
    assert [t.name for t in manifest.tags] == list(KINDS)
    tags = LabelStore(trained.storage).list_tags(trained.project.id)
    assert [t.id for t in manifest.tags] == [t.id for t in tags]
    spec = manifest.preprocessing
    assert (spec.resize, spec.crop, spec.input_name) == (128, 112, "input")
    assert spec.input_shape == (-1, 3, 112, 112)
    assert manifest.backbone == "mobilenet_v3_small"
    assert manifest.pretrained is False  # said in the manifest, not only in the log
    assert manifest.output_name == "probabilities"
    assert manifest.onnx_opset >= 13
    model = registry.download_artifact(trained.project.id, trained.iteration_id, MODEL_FILE)
    assert manifest.model_sha256 == hashlib.sha256(model).hexdigest()
    assert manifest.metrics["perTag"][0]["name"] == KINDS[0]
    assert {"trainSeconds", "exportSeconds", "totalSeconds"} <= set(manifest.timings)
    raw = json.loads(registry.download_artifact(trained.project.id, trained.iteration_id,
                                                "manifest.json"))
    assert raw["onnx"]["inputName"] == "input" and raw["onnx"]["outputName"] == "probabilities"


def _session(trained: Trained) -> tuple[Any, Manifest]:
    import onnxruntime as ort

    registry = Registry(trained.storage)
    manifest = registry.read_manifest(trained.project.id, trained.iteration_id)
    model = registry.download_artifact(trained.project.id, trained.iteration_id, MODEL_FILE)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]), manifest


@pytest.mark.slow
def test_onnx_serves_held_out_pictures_better_than_chance(trained: Trained) -> None:
    session, manifest = _session(trained)
    spec = manifest.preprocessing
    assert session.get_inputs()[0].name == "input"
    assert session.get_outputs()[0].name == "probabilities"
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch axis
    pictures, truth = [], []
    for j, kind in enumerate(KINDS):
        for seed in range(1000, 1010):  # never seen in training
            pictures.append(open_oriented(make_image(kind, seed, size=(256, 256)),
                                          min_size=spec.min_decode_size))
            truth.append(j)
    probs = session.run(["probabilities"], {"input": to_input(pictures, spec)})[0]
    assert probs.shape == (30, 3)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)  # softmax inside the graph
    one = session.run(["probabilities"], {"input": to_input(pictures[:1], spec)})[0]
    assert np.allclose(one, probs[:1], atol=1e-5)  # batch 1 works and agrees
    accuracy = float(np.mean(probs.argmax(1) == np.asarray(truth)))
    print(f"\nheld-out accuracy {accuracy:.2f} (chance 0.33)")
    assert accuracy >= 0.6


@pytest.mark.slow
def test_parity_holds_and_config_is_kept(trained: Trained) -> None:
    registry = Registry(trained.storage)
    config = json.loads(registry.download_artifact(trained.project.id, trained.iteration_id,
                                                   "training_config.json"))
    assert config["parityMaxAbsDiff"] <= 1e-3
    assert config["pretrained"] is False and config["weights"] == ""
    assert config["fit"]["best_epoch"] >= 1
    assert config["request"]["projectName"] == trained.project.name


@pytest.mark.slow
def test_metrics_and_plots_stored_beside_the_model(trained: Trained) -> None:
    registry = Registry(trained.storage)
    pid, iid = trained.project.id, trained.iteration_id
    doc = json.loads(registry.download_artifact(pid, iid, METRICS_FILE))
    it = registry.get_iteration(pid, iid)
    assert it is not None
    assert {k: v for k, v in doc.items() if k != "predictions"} == it.metrics
    assert it.metrics["precisionStdDeviation"] == 0.0  # no cross-validation asked for
    assert doc["threshold"] == 0.5
    assert [t["count"] for t in doc["perTag"]] == [1, 1, 1]
    for key in ("precision", "recall", "averagePrecision"):
        assert 0.0 <= doc[key] <= 1.0
    samples = doc["predictions"]["samples"]
    assert len(samples) == 3 and len(samples[0]["probabilities"]) == 3
    assert doc["predictions"]["tagIds"] == [t["id"] for t in doc["perTag"]]
    for name in (PR_CURVE_FILE, CONFUSION_MATRIX_FILE):
        png = registry.download_artifact(pid, iid, name)
        assert Image.open(io.BytesIO(png)).format == "PNG"
    split = trained.storage.container(names.DATASETS).download_blob(f"{pid}/{iid}.jsonl")
    lines = [json.loads(x) for x in split.readall().decode().splitlines()]
    assert len(lines) == 36 and sum(x["split"] == "test" for x in lines) == 3
    assert sum(x["split"] == "validation" for x in lines) == 3


@pytest.mark.slow
def test_duplicate_delivery_after_completion_trains_nothing(trained: Trained) -> None:
    storage = trained.storage
    request = TrainingRequest(project_id=trained.project.id, iteration_id=trained.iteration_id)
    trained.queues.send(storage, request.to_json())
    assert run_job(trained.queues, trained.cache_dir) == 0
    assert len(Registry(storage).list_iterations(trained.project.id)) == 1
    assert trained.queues.visible(storage) == []
    # the event is re-sent (it may be what a killed earlier attempt never got to send)
    assert trained.queues.events_received(storage) == [
        TrainingEvent(trained.project.id, trained.iteration_id, "TrainingCompleted")
    ]


# --- failure paths -------------------------------------------------------------------------------
def test_too_few_images_fails_the_iteration_with_a_reason(
    storage: Storage, tmp_path: Path
) -> None:
    project = seed_project(storage, f"few-{uuid.uuid4().hex[:8]}", per_kind=4)
    queues = make_queues(storage)
    iteration_id = str(uuid.uuid4())
    queues.send(storage, request_body(project.id, iteration_id))
    assert run_job(queues, tmp_path) == 0
    it = Registry(storage).get_iteration(project.id, iteration_id)
    assert it is not None and it.status == IterationStatus.FAILED
    assert "at least 5 images" in it.failure_reason and "'circle' (4)" in it.failure_reason
    assert queues.events_received(storage) == [
        TrainingEvent(project.id, iteration_id, "TrainingFailed")
    ]
    assert queues.visible(storage) == [] and queues.visible(storage, poison=True) == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        json.dumps({"trainingType": "Regular"}).encode(),  # names no project
        json.dumps({"projectName": "no-such-project-anywhere"}).encode(),
    ],
    ids=["bad-json", "no-project", "unknown-project"],
)
def test_malformed_request_ends_in_poison_at_once(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    queues = make_queues(storage)
    queues.send(storage, body)
    outcomes = []
    worker_options = WorkerOptions(queues.requests, queues.events, visibility_timeout=30,
                                   max_dequeue_count=3, retry_delay=0)
    worker = Worker(storage, None, worker_options)
    for _ in range(5):
        outcomes.append(worker.run_once())
    # no retry can fix the message itself: parked on its first delivery (tests/hostile/)
    assert outcomes == [Outcome.POISONED, None, None, None, None]
    assert queues.visible(storage) == []
    poisoned = queues.visible(storage, poison=True)
    assert [m.content for m in poisoned] == [body]  # parked unchanged
    assert "moved training request" in caplog.text
    assert queues.events_received(storage) == []


def test_request_dequeued_too_often_is_poisoned_and_its_iteration_failed(
    storage: Storage, tmp_path: Path
) -> None:
    """A request whose every attempt died (e.g. killed for memory) is not retried forever."""
    project = seed_project(storage, f"dies-{uuid.uuid4().hex[:8]}", per_kind=5)
    registry = Registry(storage)
    iteration = registry.create_iteration(project.id)
    queues = make_queues(storage)
    queues.send(storage, request_body(project.id, iteration.id))
    raw = storage.queues.get_queue_client(queues.requests)
    for _ in range(2):  # two attempts that "died": received, never deleted, visible again
        assert raw.receive_message(visibility_timeout=1) is not None
        time.sleep(1.2)
    worker = Worker(storage, None, WorkerOptions(queues.requests, queues.events,
                                                 max_dequeue_count=2))
    assert worker.run_once() == Outcome.POISONED
    it = registry.get_iteration(project.id, iteration.id)
    assert it is not None and it.status == IterationStatus.FAILED
    assert "dequeued 3 times" in it.failure_reason
    assert len(queues.visible(storage, poison=True)) == 1
    assert queues.events_received(storage) == [
        TrainingEvent(project.id, iteration.id, "TrainingFailed")
    ]


@pytest.mark.slow
def test_killed_worker_retrains_the_same_iteration_once(
    storage: Storage, tmp_path: Path
) -> None:
    """SIGTERM hands the request back at once; SIGKILL leaves it hidden until its visibility
    timeout runs out (renewed while alive); then the same iteration id is retrained, once.
    Multilabel, so the sigmoid head is trained and served here too."""
    project = seed_project(storage, f"kill-{uuid.uuid4().hex[:8]}", kinds=("ring", "checker"),
                           per_kind=8, multilabel=True)
    both = make_image("triangle", 7, size=(256, 256))  # one picture carrying both tags
    store = LabelStore(storage)
    storage.container(names.TRAINING_IMAGES).upload_blob(f"{project.name}/x/both.jpg", both)
    facts = ImageFacts(hashlib.sha256(both).hexdigest(), 256, 256, "JPEG", len(both))
    for tag in store.list_tags(project.id):
        store.add_image(project, tag, facts, f"{project.name}/x/both.jpg")
    queues = make_queues(storage)
    registry = Registry(storage)
    iteration_id = str(uuid.uuid4())
    queues.send(storage, TrainingRequest(project_id=project.id, iteration_id=iteration_id,
                                         requested_at="2026-11-01T00:00:00+00:00").to_json())
    visibility = 3
    argv = [sys.executable, "-m", "training_job", "--once",
            *job_argv(queues, tmp_path, "--epochs", "200", "--patience", "200",
                      "--visibility-timeout", str(visibility))]

    def start_and_wait_for_training() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            it = registry.get_iteration(project.id, iteration_id)
            # Received by *this* process (the request is hidden again; after a SIGTERM the row
            # still shows the earlier run's epochs) and training.
            if it is not None and it.progress.get("epoch", 0) >= 1 \
                    and not queues.visible(storage):
                return proc
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode()[-3000:])  # type: ignore[union-attr]
            time.sleep(0.2)
        proc.kill()
        raise AssertionError("the worker never reached its first epoch")

    # 1. SIGTERM: the worker stops cleanly and the request is visible again at once
    proc = start_and_wait_for_training()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert len(queues.visible(storage)) == 1

    # 2. SIGKILL while training: the lease kept it hidden past its timeout; then it reappears
    proc = start_and_wait_for_training()
    time.sleep(visibility * 1.5)
    assert queues.visible(storage) == [], "the lease did not keep the request hidden"
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + visibility + 10
    while not queues.visible(storage):
        assert time.monotonic() < deadline, "the request never reappeared"
        time.sleep(0.3)
    assert registry.get_iteration(project.id, iteration_id).status == IterationStatus.TRAINING  # type: ignore[union-attr]

    # 3. the next execution retrains the same iteration id; one row, one event
    assert run_job(queues, tmp_path, "--epochs", "2") == 0
    rows = registry.list_iterations(project.id)
    assert [r.id for r in rows] == [iteration_id]
    assert rows[0].status == IterationStatus.COMPLETED, rows[0].failure_reason
    assert queues.visible(storage) == [] and queues.visible(storage, poison=True) == []
    assert queues.events_received(storage) == [
        TrainingEvent(project.id, iteration_id, "TrainingCompleted")
    ]
    manifest = registry.read_manifest(project.id, iteration_id)
    assert manifest.classification_type == "Multilabel"
    import onnxruntime as ort

    model = registry.download_artifact(project.id, iteration_id, MODEL_FILE)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    picture = open_oriented(both, min_size=manifest.preprocessing.min_decode_size)
    probs = session.run(None, {"input": to_input([picture] * 2, manifest.preprocessing)})[0]
    assert probs.shape == (2, 2) and ((probs >= 0) & (probs <= 1)).all()  # sigmoid per tag


@pytest.mark.slow
def test_iteration_failing_parity_is_failed_and_never_registered(
    storage: Storage, tmp_path: Path
) -> None:
    """A model whose ONNX export disagrees with torch must not be served: here the tolerance
    is impossible to meet, so the (otherwise fine) iteration is Failed and nothing is left in
    models/, not even what an earlier attempt of the same iteration uploaded."""
    from training_job.cli import job_options

    project = seed_project(storage, f"parity-{uuid.uuid4().hex[:8]}", per_kind=5)
    registry = Registry(storage)
    iteration = registry.create_iteration(project.id)
    registry.upload_artifact(project.id, iteration.id, MODEL_FILE, b"stale", "x/y")
    queues = make_queues(storage)
    queues.send(storage, request_body(project.id, iteration.id))
    args = get_args_parser().parse_args(job_argv(queues, tmp_path, "--epochs", "1"))
    options = job_options(args)
    options.parity_tolerance = -1.0
    worker = Worker(storage, options, WorkerOptions(queues.requests, queues.events))
    assert worker.run_once() == Outcome.FAILED
    it = registry.get_iteration(project.id, iteration.id)
    assert it is not None and it.status == IterationStatus.FAILED
    assert "disagree" in it.failure_reason and "not registering" in it.failure_reason
    models = storage.container(names.MODELS)
    assert list(models.list_blobs(name_starts_with=f"{project.id}/{iteration.id}/")) == []
    assert queues.events_received(storage) == [
        TrainingEvent(project.id, iteration.id, "TrainingFailed")
    ]
    assert queues.visible(storage) == []


@pytest.mark.slow
def test_watch_mode_polls_and_stops_on_sigterm(storage: Storage, tmp_path: Path) -> None:
    """The local worker of `make up`: handles what arrives while it runs, exits 0 on SIGTERM."""
    queues = make_queues(storage)
    argv = [sys.executable, "-m", "training_job", "--watch", "--poll-interval", "0.2",
            *job_argv(queues, tmp_path, "--max-dequeue-count", "1")]
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        queues.send(storage, b"{not json")
        deadline = time.monotonic() + 60
        while not queues.visible(storage, poison=True):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the watching worker never handled the message"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "moved training request" in log and "training worker stopped" in log
