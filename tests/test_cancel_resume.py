"""Cancel a training, resume a killed one: against a real Azurite, the real worker, real HTTP.

- ``POST /visionpipe/v1/projects/{p}/iterations/{i}/cancel`` (and ``visionpipe cancel``) ends a
  queued or running training as Canceled with a reason within 30 s, frees the project's training
  lock at once, and the worker moves on to the next request;
- a worker killed with SIGKILL leaves a per-epoch checkpoint behind: the redelivered request
  continues from it (one row, one event) instead of training from scratch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch.utils.data import Dataset
from typer.testing import CliRunner

from tests.conftest import TEST_TRAINING_KEY
from tests.drops import wait_for
from tests.test_training import REPO, job_argv, make_queues, request_body, run_job, seed_project
from training_job.checkpoints import checkpoint_blob
from training_job.model import build_model
from training_job.train import Checkpoints, Interrupted, TrainConfig, fit
from training_job.worker import Outcome, Worker, WorkerOptions
from visionpipe import names
from visionpipe.client.cli import app
from visionpipe.messages import TrainingEvent
from visionpipe.storage import Storage
from visionpipe.stores.registry import IterationStatus, Registry

KEY = {"Training-Key": TEST_TRAINING_KEY}


@pytest.fixture(scope="module")
def api(local_host: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_host + "/visionpipe/v1", headers=KEY, timeout=60) as c:
        yield c


def cancel_url(project_id: str, iteration_id: str) -> str:
    return f"/projects/{project_id}/iterations/{iteration_id}/cancel"


def checkpoint_exists(storage: Storage, project_id: str, iteration_id: str) -> bool:
    return storage.container(names.DATASETS).get_blob_client(
        checkpoint_blob(project_id, iteration_id)).exists()


def model_blobs(storage: Storage, project_id: str, iteration_id: str) -> list[str]:
    return [b.name for b in storage.container(names.MODELS).list_blobs(
        name_starts_with=f"{project_id}/{iteration_id}/")]


# --- cancel --------------------------------------------------------------------------------------
def test_cancel_a_queued_training_frees_the_lock_and_the_worker_drops_it(
    storage: Storage, local_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI: `visionpipe cancel P` finds the training in progress by itself."""
    project = seed_project(storage, f"cq-{uuid.uuid4().hex[:8]}", per_kind=5)
    registry = Registry(storage)
    iteration = registry.start_training(project.id)  # as the train route does: lock + row
    queues = make_queues(storage)
    queues.send(storage, request_body(project.id, iteration.id))

    monkeypatch.setenv("VISIONPIPE_ENDPOINT", local_host)
    monkeypatch.setenv("VISIONPIPE_TRAINING_KEY", TEST_TRAINING_KEY)
    result = CliRunner().invoke(app, ["cancel", project.name, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    row = json.loads(result.output)
    assert row["id"] == iteration.id and row["status"] == "Canceled"
    assert row["failureReason"].startswith("Canceled by request")
    it = registry.get_iteration(project.id, iteration.id)
    assert it is not None and it.status == IterationStatus.CANCELED
    # the lock is free at once: the next training can start without waiting for the worker
    nxt = registry.start_training(project.id)
    registry.cancel_iteration(project.id, nxt.id, "test cleanup")

    worker = Worker(storage, None, WorkerOptions(queues.requests, queues.events))
    assert worker.run_once() == Outcome.CANCELED
    assert queues.visible(storage) == [] and queues.visible(storage, poison=True) == []
    assert queues.events_received(storage) == []  # a TrainingFailed would overwrite Canceled
    it = registry.get_iteration(project.id, iteration.id)
    assert it is not None and it.status == IterationStatus.CANCELED

    # nothing left to cancel: said in one line, exit 1
    result = CliRunner().invoke(app, ["cancel", project.name])
    assert result.exit_code == 1 and "no training in progress" in result.output


def test_cancel_refusals(storage: Storage, api: httpx.Client, local_host: str) -> None:
    project = seed_project(storage, f"cr-{uuid.uuid4().hex[:8]}", kinds=("circle", "square"),
                           per_kind=5)
    registry = Registry(storage)
    done = registry.create_iteration(project.id)
    registry.update_iteration(project.id, done.id, status=str(IterationStatus.COMPLETED))
    r = api.post(cancel_url(project.id, done.id))
    assert r.status_code == 400 and r.json()["code"] == "BadRequestIterationNotInProgress"
    assert registry.get_iteration(project.id, done.id).status == IterationStatus.COMPLETED  # type: ignore[union-attr]
    r = api.post(cancel_url(project.id, str(uuid.uuid4())))
    assert r.status_code == 404 and "code" in r.json()
    r = api.post(cancel_url(project.id, "lock-training"))  # the lock row is no iteration
    assert r.status_code == 404 and "code" in r.json()
    r = httpx.post(local_host + "/visionpipe/v1" + cancel_url(project.id, done.id))
    assert r.status_code == 401  # Training-Key required
    # cancelling twice answers the Canceled iteration unchanged
    running = registry.start_training(project.id)
    first = api.post(cancel_url(project.id, running.id))
    second = api.post(cancel_url(project.id, running.id))
    assert first.status_code == second.status_code == 200
    assert first.json()["trainingErrorDetails"] == second.json()["trainingErrorDetails"]
    assert second.json()["status"] == "Canceled"


@pytest.mark.slow
def test_cancel_a_running_training_within_30s_and_the_next_request_proceeds(
    storage: Storage, api: httpx.Client, tmp_path: Path
) -> None:
    """The local worker (--watch) trains A; cancel A; A ends Canceled, cleaned up, no event,
    and the worker goes on to the next request in the queue (B, a bad one: parked at once)."""
    project = seed_project(storage, f"cancel-{uuid.uuid4().hex[:8]}", per_kind=6)
    registry = Registry(storage)
    iteration = registry.start_training(project.id)
    queues = make_queues(storage)
    queues.send(storage, request_body(project.id, iteration.id))
    queues.send(storage, b"{not json")
    argv = [sys.executable, "-m", "training_job", "--watch", "--poll-interval", "0.2",
            *job_argv(queues, tmp_path, "--epochs", "200", "--patience", "200")]
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def training() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            it = registry.get_iteration(project.id, iteration.id)
            return it is not None and it.progress.get("epoch", 0) >= 1

        wait_for(training, timeout=120)
        t0 = time.monotonic()
        r = api.post(cancel_url(project.id, iteration.id))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "Canceled"

        def stopped() -> bool:
            it = registry.get_iteration(project.id, iteration.id)
            return it is not None and it.progress.get("phase") == "canceled"

        wait_for(stopped, timeout=30)
        seconds = time.monotonic() - t0
        wait_for(lambda: len(queues.visible(storage, poison=True)) == 1, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    it = registry.get_iteration(project.id, iteration.id)
    assert it is not None and it.status == IterationStatus.CANCELED
    assert it.failure_reason.startswith("Canceled by request")
    assert queues.visible(storage) == []  # A deleted, B parked
    assert queues.events_received(storage) == []
    assert model_blobs(storage, project.id, iteration.id) == []
    assert not checkpoint_exists(storage, project.id, iteration.id)
    registry.cancel_iteration(project.id, registry.start_training(project.id).id, "cleanup")
    print(f"\ncanceled a running training in {seconds:.1f}s")


# --- resume --------------------------------------------------------------------------------------
class MemoryCheckpoints(Checkpoints):
    """Checkpoints kept in a dict, round-tripped through torch.save as the blob ones are."""

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        import io

        if self.data is None:
            return None
        return torch.load(io.BytesIO(self.data), weights_only=True)  # type: ignore[no-any-return]

    def save(self, state: dict[str, Any]) -> None:
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        self.data = buf.getvalue()
        self.saves += 1


class Noise(Dataset):
    """Deterministic random pictures of two classes (the loop, not the accuracy, is tested)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 64, 64, generator=g)
        self.y = torch.eye(2)[torch.arange(n) % 2]
        self.x[self.y[:, 0] > 0] += 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def test_fit_resumed_from_a_checkpoint_ends_where_an_uninterrupted_fit_ends() -> None:
    config = TrainConfig(epochs=3, patience=3, batch_size=8, device="cpu", workers=0, seed=5)
    train, val = Noise(16, 1), Noise(8, 2)

    def built() -> Any:
        torch.manual_seed(0)
        return build_model("mobilenet_v3_small", 2, None)

    straight, whole = fit(built(), False, train, val, None, config)

    saved = MemoryCheckpoints()

    def die_after_two(r: Any) -> None:
        if r.epoch == 2:
            raise Interrupted("killed")

    with pytest.raises(Interrupted):
        fit(built(), False, train, val, None, config, die_after_two, checkpoints=saved)
    assert saved.saves == 2
    resumed, rest = fit(build_model("mobilenet_v3_small", 2, None), False, train, val, None,
                        config, checkpoints=saved)
    assert rest.resumed_from == 3 and [h.epoch for h in rest.history] == [1, 2, 3]
    assert rest.best_epoch == whole.best_epoch
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


@pytest.mark.slow
def test_killed_job_resumes_from_its_last_checkpoint(storage: Storage, tmp_path: Path) -> None:
    """SIGKILL half-way; the redelivered request continues from the last saved epoch (it trains
    only the epochs after it: ``resumedFrom``), with one row and one event. How much time that
    saves is measured, not asserted (the machines are noisy): the run's seconds are printed."""
    project = seed_project(storage, f"resume-{uuid.uuid4().hex[:8]}", per_kind=6)
    registry = Registry(storage)
    queues = make_queues(storage)
    iteration_id = str(uuid.uuid4())
    queues.send(storage, request_body(project.id, iteration_id))
    visibility, epochs, kill_after = 3, 10, 5
    extra = ("--epochs", str(epochs), "--patience", str(epochs),
             "--visibility-timeout", str(visibility), "--checkpoint-every", "0")
    argv = [sys.executable, "-m", "training_job", "--once", *job_argv(queues, tmp_path, *extra)]
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def epochs_saved() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            it = registry.get_iteration(project.id, iteration_id)
            return it is not None and it.progress.get("epoch", 0) >= kill_after

        wait_for(epochs_saved, timeout=300, interval=0.1)
        proc.kill()  # SIGKILL: no clean-up, the lease simply stops being renewed
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = registry.get_iteration(project.id, iteration_id).progress["epoch"]  # type: ignore[union-attr]
    assert killed_at < epochs, "the first run finished before it could be killed"
    assert checkpoint_exists(storage, project.id, iteration_id)
    wait_for(lambda: bool(queues.visible(storage)), timeout=visibility + 30)

    t0 = time.perf_counter()
    assert run_job(queues, tmp_path, *extra) == 0
    resumed_seconds = time.perf_counter() - t0
    rows = registry.list_iterations(project.id)
    assert [r.id for r in rows] == [iteration_id]
    it = rows[0]
    assert it.status == IterationStatus.COMPLETED, it.failure_reason
    assert queues.events_received(storage) == [
        TrainingEvent(project.id, iteration_id, "TrainingCompleted")]
    assert queues.visible(storage) == [] and queues.visible(storage, poison=True) == []
    assert not checkpoint_exists(storage, project.id, iteration_id)  # removed once registered
    resumed_from = it.progress["resumedFrom"]
    assert kill_after < resumed_from <= killed_at + 1
    config = json.loads(registry.download_artifact(project.id, iteration_id,
                                                   "training_config.json"))
    assert [h["epoch"] for h in config["fit"]["history"]] == list(range(1, epochs + 1))

    print(f"\nkilled after epoch {killed_at} of {epochs}, resumed from epoch {resumed_from}: "
          f"the redelivered run took {resumed_seconds:.1f}s")


# --- a cancel racing with the final Completed write ---------------------------------------------
class _CancelFirst:
    """The iterations table as a registry sees it, except that the first write of a final
    Completed lets a cancel land just before it: after the writer read the row (its last check),
    before its write reaches the table. Everything else goes to the real table."""

    def __init__(self, table: Any, storage: Storage, fired: list[str]) -> None:
        self._real = table
        self._canceller = Registry(storage)  # another process: the cancel route
        self._fired = fired

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def update_entity(self, entity: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if entity.get("status") == str(IterationStatus.COMPLETED) and not self._fired:
            canceled = self._canceller.cancel_iteration(
                entity["PartitionKey"], entity["RowKey"], "Canceled by request (race)")
            assert canceled is not None and canceled.status == IterationStatus.CANCELED
            self._fired.append(entity["RowKey"])
        return self._real.update_entity(entity, *args, **kwargs)


def racing_registry(fired: list[str]) -> type[Registry]:
    class CancelLandsBeforeCompleted(Registry):
        def __init__(self, storage: Storage) -> None:
            super().__init__(storage)
            self._table = _CancelFirst(self._table, storage, fired)

    return CancelLandsBeforeCompleted


def test_finish_iteration_gives_way_to_a_cancel_between_its_read_and_its_write(
        storage: Storage) -> None:
    from visionpipe.stores.registry import IterationEnded

    project_id = str(uuid.uuid4())
    registry = Registry(storage)
    iteration = registry.start_training(project_id)
    fired: list[str] = []
    with pytest.raises(IterationEnded) as ended:
        racing_registry(fired)(storage).finish_iteration(
            project_id, iteration.id, IterationStatus.COMPLETED, metrics={"precision": 1.0})
    assert fired == [iteration.id] and ended.value.iteration.status == IterationStatus.CANCELED
    it = registry.get_iteration(project_id, iteration.id)
    assert it is not None and it.status == IterationStatus.CANCELED and it.metrics == {}
    assert it.failure_reason == "Canceled by request (race)"
    registry.cancel_iteration(project_id, registry.start_training(project_id).id, "lock free")
    # without a race it writes, once: a second finish finds the row ended
    done = registry.start_training(project_id)
    assert registry.finish_iteration(project_id, done.id, IterationStatus.COMPLETED
                                     ).status == IterationStatus.COMPLETED
    with pytest.raises(IterationEnded):
        registry.finish_iteration(project_id, done.id, IterationStatus.FAILED)
    registry.delete_project(project_id)


def test_a_cancel_landing_just_before_the_completed_write_wins(
        storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real job trains a tiny model and uploads its artifacts; the cancel lands after the
    job's last check, before its Completed write. The row stays Canceled, the artifacts and the
    checkpoint are discarded, no event is sent, the request leaves the queue."""
    import training_job.pipeline as pipeline

    project = seed_project(storage, f"race-{uuid.uuid4().hex[:8]}", kinds=("circle", "square"),
                           per_kind=5)
    registry = Registry(storage)
    iteration = registry.start_training(project.id)
    queues = make_queues(storage)
    queues.send(storage, request_body(project.id, iteration.id))
    fired: list[str] = []
    monkeypatch.setattr(pipeline, "Registry", racing_registry(fired))
    assert run_job(queues, tmp_path, "--epochs", "1", "--patience", "1", "--resize", "72",
                   "--crop", "64", "--checkpoint-every", "0") == 0
    assert fired == [iteration.id], "the job never tried to write Completed"
    it = registry.get_iteration(project.id, iteration.id)
    assert it is not None and it.status == IterationStatus.CANCELED, it.status
    assert it.failure_reason == "Canceled by request (race)" and it.metrics == {}
    assert queues.events_received(storage) == []
    assert model_blobs(storage, project.id, iteration.id) == []
    assert not checkpoint_exists(storage, project.id, iteration.id)
    assert queues.visible(storage) == [] and queues.visible(storage, poison=True) == []
    registry.cancel_iteration(project.id, registry.start_training(project.id).id, "lock free")
