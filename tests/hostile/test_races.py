"""Races between Function instances: trainings, name claims, tag deletes during uploads.

Several instances of the Function app run at once, so nothing here may rely on an in-process
lock: every race is run over real HTTP to the local host (a threaded server) and directly through
the library from many threads, each released at the same moment by a barrier, and repeated so a
lucky interleaving cannot pass it. The deterministic interleavings call the library's steps in
the order the race would run them.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import TEST_TRAINING_KEY
from tests.model_factory import color_image
from tests.training_worker import own_request_queue
from visionpipe import names
from visionpipe.storage import Storage
from visionpipe.stores.label_store import ImageFacts, LabelStore, NameTaken, Project, image_id
from visionpipe.stores.registry import IterationStatus, Registry, TrainingInProgress

KEY = {"Training-Key": TEST_TRAINING_KEY}
ROUNDS = 5  # every race is run this many times
NAME_ROUNDS = 12  # name races: the old claim's window was short, so more tries
PARALLEL = 16  # callers per race

T = TypeVar("T")


def race(n: int, call: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``call(0..n-1)`` in ``n`` threads released together; results or exceptions."""
    barrier = threading.Barrier(n)

    def one(i: int) -> T | BaseException:
        barrier.wait()
        try:
            return call(i)
        except Exception as e:  # noqa: BLE001 - the caller sorts them
            return e

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def code_of(response: httpx.Response) -> str:
    return str(response.json().get("code", ""))


@pytest.fixture(scope="module")
def request_queue(storage: Storage) -> Iterator[str]:
    """A queue of this module's own behind ``TRAINING_REQUESTS_QUEUE`` (Azurite is shared)."""
    with own_request_queue(storage, "tr-race") as name:
        yield name


@pytest.fixture(scope="module")
def api(local_host: str, request_queue: str) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=PARALLEL * 2, max_keepalive_connections=PARALLEL * 2)
    with httpx.Client(base_url=local_host + "/customvision/v3.3/training", headers=KEY,
                      timeout=60, limits=limits) as client:
        yield client


def queued_for(storage: Storage, queue: str, project_id: str) -> list[dict[str, Any]]:
    client = storage.queues.get_queue_client(queue)
    props = client.get_queue_properties()
    assert props.approximate_message_count <= 32, "peek sees at most 32 messages"
    bodies = [json.loads(base64.b64decode(m.content))
              for m in client.peek_messages(max_messages=32)]
    return [b for b in bodies if b.get("projectId") == project_id]


def trainable(label_store: LabelStore, project: Project) -> None:
    """Two tags with five image records each (the train route never reads the bytes)."""
    for tag_name in ("a", "b"):
        tag = label_store.get_or_create_tag(project.id, tag_name)
        for i in range(5):
            sha = f"{uuid.uuid4().hex}{uuid.uuid4().hex}"
            label_store.add_image(project, tag, ImageFacts(sha, 300, 300, "JPEG", 999),
                                  f"{project.name}/{tag_name}/{i}.jpg")


# --- one training at a time ---------------------------------------------------------------------
class TestTrainingLock:
    def test_parallel_train_calls_over_http(
            self, api: httpx.Client, storage: Storage, request_queue: str,
            registry: Registry, label_store: LabelStore, project: Project) -> None:
        trainable(label_store, project)
        names_seen: list[str] = []
        for round_ in range(ROUNDS):
            responses = race(PARALLEL, lambda _: api.post(
                f"/projects/{project.id}/train", params={"forceTrain": "true"}))
            assert all(isinstance(r, httpx.Response) for r in responses), responses
            ok = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 200]
            refused = [r for r in responses
                       if isinstance(r, httpx.Response) and r.status_code != 200]
            assert len(ok) == 1, f"round {round_}: {len(ok)} trainings started"
            assert {(r.status_code, code_of(r)) for r in refused} == {
                (400, "BadRequestTrainingAlreadyInProgress")}
            iteration = ok[0].json()
            running = [i for i in registry.list_iterations(project.id) if i.in_progress]
            assert [i.id for i in running] == [iteration["id"]]
            messages = queued_for(storage, request_queue, project.id)
            assert [m["iterationId"] for m in messages] == [iteration["id"]]
            names_seen.append(iteration["name"])
            # The job finishes: the next round may train again.
            registry.update_iteration(project.id, iteration["id"],
                                      status=IterationStatus.COMPLETED)
            storage.queues.get_queue_client(request_queue).clear_messages()
        assert names_seen == [f"Iteration {n}" for n in range(1, ROUNDS + 1)]
        all_names = [i.name for i in registry.list_iterations(project.id)]
        assert len(all_names) == len(set(all_names)) == ROUNDS

    def test_parallel_start_training_in_the_library(
            self, registry: Registry, project: Project) -> None:
        for round_ in range(ROUNDS):
            results = race(PARALLEL, lambda _: registry.start_training(project.id))
            started = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, BaseException)]
            assert len(started) == 1, f"round {round_}: {len(started)} trainings started"
            assert all(isinstance(e, TrainingInProgress) for e in refused), refused
            registry.update_iteration(project.id, started[0].id, status=IterationStatus.FAILED)
        listed = registry.list_iterations(project.id)
        assert sorted(i.name for i in listed) == sorted(
            f"Iteration {n}" for n in range(1, ROUNDS + 1))

    @pytest.mark.parametrize("end", ["Completed", "Failed", "Canceled", "deleted"])
    def test_the_lock_is_released_when_the_iteration_ends(
            self, registry: Registry, project: Project, end: str) -> None:
        first = registry.start_training(project.id)
        with pytest.raises(TrainingInProgress):
            registry.start_training(project.id)
        if end == "deleted":
            registry.delete_iteration(project.id, first.id)
        else:
            registry.update_iteration(project.id, first.id, status=end)
        second = registry.start_training(project.id)
        assert second.id != first.id and second.name == "Iteration 2"

    def test_queued_counts_as_in_progress(self, api: httpx.Client, registry: Registry,
                                          label_store: LabelStore, project: Project) -> None:
        trainable(label_store, project)
        first = registry.start_training(project.id)
        registry.update_iteration(project.id, first.id, status=IterationStatus.QUEUED)
        r = api.post(f"/projects/{project.id}/train")
        assert (r.status_code, code_of(r)) == (400, "BadRequestTrainingAlreadyInProgress")

    def test_a_dead_worker_keeps_the_training_in_progress_until_it_ends(
            self, api: httpx.Client, storage: Storage, label_store: LabelStore,
            project: Project) -> None:
        """A killed worker leaves its iteration Training; its message comes back and the retry
        ends it. Until then the training is in progress (as in the service), after that the lock
        is free without anyone releasing it."""
        trainable(label_store, project)
        r = api.post(f"/projects/{project.id}/train")
        assert r.status_code == 200
        held = r.json()["id"]
        again = api.post(f"/projects/{project.id}/train")
        assert code_of(again) == "BadRequestTrainingAlreadyInProgress"
        # The retried job records Failed; written to the table directly here, so that no
        # release call is made at all: the lock must be free all the same.
        from azure.data.tables import UpdateMode

        storage.table(names.ITERATIONS_TABLE).update_entity(
            {"PartitionKey": project.id, "RowKey": held, "status": "Failed"},
            mode=UpdateMode.MERGE)
        r = api.post(f"/projects/{project.id}/train")
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "Iteration 2"

    def test_an_iteration_registered_without_the_lock_blocks_training(
            self, api: httpx.Client, registry: Registry, label_store: LabelStore,
            project: Project) -> None:
        """The training job registers iterations that were queued without one (CLI, bench)."""
        trainable(label_store, project)
        registry.create_iteration(project.id)
        r = api.post(f"/projects/{project.id}/train")
        assert code_of(r) == "BadRequestTrainingAlreadyInProgress"


# --- unique names -------------------------------------------------------------------------------
class TestNameClaims:
    def test_parallel_project_creates_over_http(self, api: httpx.Client,
                                                label_store: LabelStore) -> None:
        def one_round(round_: int) -> None:
            name = f"race-{uuid.uuid4().hex[:8]}"
            # mixed case: the names are the same name
            responses = race(PARALLEL, lambda i: api.post(
                "/projects", params={"name": name.upper() if i % 2 else name}))
            assert all(isinstance(r, httpx.Response) for r in responses), responses
            ok = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 200]
            assert len(ok) == 1, f"round {round_}: {len(ok)} projects named {name!r}"
            assert {(r.status_code, code_of(r)) for r in responses
                    if isinstance(r, httpx.Response) and r.status_code != 200} == {
                (400, "BadRequestProjectNameNotUnique")}
            same = [p for p in label_store.list_projects() if p.name.lower() == name]
            assert [p.id for p in same] == [ok[0].json()["id"]]
            assert label_store.find_project(name) == same[0]

        for round_ in range(NAME_ROUNDS):
            one_round(round_)

    def test_parallel_project_creates_in_the_library(self, label_store: LabelStore) -> None:
        def one_round(round_: int) -> None:
            name = f"race-{uuid.uuid4().hex[:8]}"
            results = race(PARALLEL, lambda _: label_store.create_project_unique(name))
            created = [r for r in results if not isinstance(r, BaseException)]
            assert len(created) == 1, f"round {round_}: {len(created)} projects"
            assert all(isinstance(r, NameTaken) for r in results if r not in created)
            # the drop folder's create-on-first-sight: one project, whoever asks
            got = race(PARALLEL, lambda _: label_store.create_project(name))
            assert {getattr(p, "id", p) for p in got} == {created[0].id}
            fresh = f"race-{uuid.uuid4().hex[:8]}"
            got = race(PARALLEL, lambda _: label_store.create_project(fresh))
            assert len({getattr(p, "id", p) for p in got}) == 1, got
            assert len([p for p in label_store.list_projects() if p.name == fresh]) == 1

        for round_ in range(NAME_ROUNDS):
            one_round(round_)

    def test_parallel_tag_creates(self, api: httpx.Client, label_store: LabelStore,
                                  project: Project) -> None:
        def one_round(round_: int) -> None:
            name = f"tag-{uuid.uuid4().hex[:8]}"
            responses = race(PARALLEL, lambda _: api.post(f"/projects/{project.id}/tags",
                                                          params={"name": name}))
            ok = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 200]
            assert len(ok) == 1, f"round {round_}: {len(ok)} tags named {name!r}"
            assert {(r.status_code, code_of(r)) for r in responses
                    if isinstance(r, httpx.Response) and r.status_code != 200} == {
                (400, "BadRequestTagNameNotUnique")}
            library = f"tag-{uuid.uuid4().hex[:8]}"
            results = race(PARALLEL, lambda _: label_store.create_tag(project.id, library))
            assert len([r for r in results if not isinstance(r, BaseException)]) == 1
            got = race(PARALLEL, lambda _: label_store.get_or_create_tag(project.id, name))
            assert {getattr(t, "id", t) for t in got} == {ok[0].json()["id"]}

        for round_ in range(NAME_ROUNDS):
            one_round(round_)
        tags = [t.name for t in label_store.list_tags(project.id)]
        assert len(tags) == len(set(tags)) == 2 * NAME_ROUNDS

    def test_parallel_renames_and_creates_of_one_name(
            self, api: httpx.Client, label_store: LabelStore) -> None:
        """Projects renamed to one name while others create it: one of them holds it."""
        def one_round(round_: int) -> None:
            target = f"race-{uuid.uuid4().hex[:8]}"
            renamed = [label_store.create_project_unique(f"{target}-{i}") for i in range(4)]

            def act(i: int) -> httpx.Response:
                if i < len(renamed):
                    return api.patch(f"/projects/{renamed[i].id}", json={"name": target})
                return api.post("/projects", params={"name": target})

            responses = race(PARALLEL, act)
            ok = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 200]
            assert len(ok) == 1, f"round {round_}: {len(ok)} projects took {target!r}"
            assert {code_of(r) for r in responses if isinstance(r, httpx.Response)
                    and r.status_code != 200} == {"BadRequestProjectNameNotUnique"}
            holders = [p for p in label_store.list_projects() if p.name == target]
            assert [p.id for p in holders] == [ok[0].json()["id"]]
            # The losers kept their names (still theirs); the winner's old name is free.
            for project in renamed:
                current = label_store.get_project(project.id)
                assert current is not None
                assert label_store.find_project(current.name) == current
                if project.id == ok[0].json()["id"]:
                    assert label_store.find_project(project.name) is None

        for round_ in range(NAME_ROUNDS):
            one_round(round_)

    def test_parallel_tag_renames_and_creates(self, label_store: LabelStore,
                                              project: Project) -> None:
        def one_round(round_: int) -> None:
            target = f"tag-{uuid.uuid4().hex[:8]}"
            tags = [label_store.create_tag(project.id, f"{target}-{i}") for i in range(4)]

            def act(i: int) -> object:
                if i < len(tags):
                    return label_store.update_tag(project.id, tags[i].id, name=target)
                return label_store.create_tag(project.id, target)

            results = race(PARALLEL, act)
            won = [r for r in results if not isinstance(r, BaseException)]
            assert len(won) == 1, f"round {round_}: {len(won)} tags named {target!r}"
            assert all(isinstance(r, NameTaken) for r in results if r not in won)
            assert label_store.find_tag(project.id, target) == won[0]
            assert [t.name for t in label_store.list_tags(project.id)].count(target) == 1
            for tag in tags:  # old names free for the winner, still held by the others
                owner = label_store.find_tag(project.id, tag.name)
                assert (owner is None) == (tag.id == won[0].id)  # type: ignore[union-attr]

        for round_ in range(NAME_ROUNDS):
            one_round(round_)


# --- a tag deleted while images are uploaded ----------------------------------------------------
def facts_of(data: bytes) -> ImageFacts:
    import hashlib

    return ImageFacts(hashlib.sha256(data).hexdigest(), 320, 320, "JPEG", len(data))


def dangling(label_store: LabelStore, project_id: str) -> list[tuple[str, str]]:
    """(image id, tag id) for every image tag that no longer exists."""
    tags = {t.id for t in label_store.list_tags(project_id)}
    return [(r.id, t) for r in label_store.iter_images(project_id) for t in r.tag_ids
            if t not in tags]


class TestTagDeletedDuringUpload:
    """Decision: the delete wins. An upload that raced with it keeps the image, without the
    deleted tag (as if the upload had finished first and the delete had then untagged it)."""

    def test_deleted_between_validation_and_record(self, label_store: LabelStore,
                                                   project: Project) -> None:
        tag = label_store.create_tag(project.id, "doomed")
        assert label_store.get_tag(project.id, tag.id) is not None  # the upload validates
        label_store.delete_tag(project.id, tag.id)  # the delete runs to its end
        data = color_image("red", seed=1)
        added = label_store.create_image(project, (tag.id,), facts_of(data), "p/doomed/x.jpg")
        assert tag.id not in added.image.tag_ids
        assert dangling(label_store, project.id) == []
        assert label_store.get_image(project.id, facts_of(data).sha256) is not None

    def test_deleted_between_validation_and_tagging(self, label_store: LabelStore,
                                                    project: Project) -> None:
        """The images/tags route and the drop folder write tags the same way."""
        keep = label_store.create_tag(project.id, "keep")
        data = color_image("green", seed=2)
        sha = facts_of(data).sha256
        label_store.create_image(project, (), facts_of(data), "p/_untagged/y.jpg")
        doomed = label_store.create_tag(project.id, "doomed")
        label_store.delete_tag(project.id, doomed.id)
        label_store.add_image_tag(project, sha, doomed.id)
        other = color_image("blue", seed=3)
        added = label_store.add_image(project, doomed, facts_of(other), "p/doomed/z.jpg")
        assert doomed.id not in added.image.tag_ids
        label_store.add_image_tag(project, sha, keep.id)
        assert dangling(label_store, project.id) == []
        record = label_store.get_image(project.id, sha)
        assert record is not None and record.tag_ids == (keep.id,)

    def test_deleted_while_a_batch_uploads(self, api: httpx.Client, label_store: LabelStore,
                                           project: Project) -> None:
        images = [color_image("red", seed=100 + i) for i in range(ROUNDS * 24)]
        for round_ in range(ROUNDS):
            tag = label_store.create_tag(project.id, f"doomed-{round_}")
            batch = images[round_ * 24:(round_ + 1) * 24]
            body = {"images": [{"name": f"{i}.jpg",
                                "contents": base64.b64encode(d).decode()}
                               for i, d in enumerate(batch)],
                    "tagIds": [tag.id]}

            def act(i: int, tag_id: str = tag.id, body: dict = body) -> httpx.Response:
                if i == 0:
                    return api.post(f"/projects/{project.id}/images/files", json=body)
                return api.delete(f"/projects/{project.id}/tags/{tag_id}")

            upload, delete = race(2, act)
            assert isinstance(upload, httpx.Response) and upload.status_code in (200, 207)
            assert isinstance(delete, httpx.Response) and delete.status_code == 204
            assert label_store.get_tag(project.id, tag.id) is None
            assert dangling(label_store, project.id) == [], f"round {round_}"
            ids = {image_id(facts_of(d).sha256) for d in batch}
            for result in upload.json()["images"]:  # what the upload reports is what it left
                if result["status"] == "OK":
                    assert result["image"]["id"] in ids

    def test_deleted_while_the_library_records(self, label_store: LabelStore,
                                               project: Project) -> None:
        data = [color_image("blue", seed=500 + i) for i in range(ROUNDS * PARALLEL)]
        for round_ in range(ROUNDS):
            tag = label_store.create_tag(project.id, f"gone-{round_}")

            def act(i: int, tag_id: str = tag.id, round_: int = round_) -> object:
                if i == 0:
                    return label_store.delete_tag(project.id, tag_id)
                d = data[round_ * PARALLEL + i]
                return label_store.create_image(project, (tag_id,), facts_of(d), f"p/{i}.jpg")

            results = race(PARALLEL, act)
            assert not [r for r in results if isinstance(r, BaseException)], results
            assert dangling(label_store, project.id) == [], f"round {round_}"
