"""Hostile training requests: whatever is wrong with one, it ends as exactly one copy in
``{queue}-poison`` and leaves the request queue; a message that is wrong in itself does so on its
first delivery, without retries (in Azure every redelivery starts another GPU job).

Real Azurite queues (each test has its own), the worker's own per-message code:
:meth:`Worker.run_once` driven the way ``--watch`` drives it (an exception is logged and the loop
goes on), and :meth:`Worker.handle` for deliveries a test hands over itself.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from training_job.worker import PARKED_SUFFIX, Outcome, Worker, WorkerOptions
from visionpipe import names
from visionpipe.messages import TrainingRequest
from visionpipe.storage import Storage
from visionpipe.stores.label_store import Project
from visionpipe.stores.registry import IterationStatus, Registry

DEADLINE = 20.0  # seconds; the old worker looped for minutes


@dataclass
class Queues:
    requests: str
    events: str

    @property
    def poison(self) -> str:
        return self.requests + names.POISON_SUFFIX


@pytest.fixture
def queues(storage: Storage) -> Queues:
    tag = uuid.uuid4().hex[:8]
    made = Queues(f"hp-{tag}", f"hp-ev-{tag}")
    for name in (made.requests, made.poison, made.events):
        storage.queues.create_queue(name)
    return made


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def enqueue(storage: Storage, queues: Queues, content: str) -> None:
    """Put ``content`` on the request queue exactly as given (no encoding added)."""
    storage.queues.get_queue_client(queues.requests).send_message(content)


def make_worker(storage: Storage, queues: Queues, max_dequeue_count: int = 5) -> Worker:
    # visibility 2 s: a delivery that dies is visible again quickly (the old code looped on it)
    return Worker(storage, None, WorkerOptions(queues.requests, queues.events,
                                               visibility_timeout=2,
                                               max_dequeue_count=max_dequeue_count,
                                               retry_delay=0))


def queued(storage: Storage, name: str) -> int:
    """Messages in a queue, visible or not."""
    props = storage.queues.get_queue_client(name).get_queue_properties()
    return int(props.approximate_message_count or 0)


def contents(storage: Storage, name: str) -> list[str]:
    return [m.content for m in
            storage.queues.get_queue_client(name).peek_messages(max_messages=32)]


def drive(worker: Worker, storage: Storage, queues: Queues) -> list[str]:
    """Run the worker as ``--watch`` does until the request queue is empty (visible or not);
    fail when it is not empty by the deadline. Returns the outcomes, exceptions by name."""
    outcomes: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while queued(storage, queues.requests):
        assert time.monotonic() < deadline, (
            f"still queued after {DEADLINE:.0f} s; outcomes {outcomes}, "
            f"{queued(storage, queues.poison)} cop(ies) in poison")
        try:
            outcome = worker.run_once()
        except Exception as e:  # noqa: BLE001 - what the --watch loop survives
            outcomes.append(type(e).__name__)
            continue
        if outcome is None:
            time.sleep(0.1)  # a delivery that died is invisible for a moment: poll again
        else:
            outcomes.append(str(outcome))
    return outcomes


# --- messages that are wrong in themselves -------------------------------------------------------
Body = Callable[[Project], str]


def request(**fields: object) -> Body:
    """A base64 JSON request for the test's (existing) project with ``fields`` on top; a field
    given as a ``str`` starting with ``RAW:`` is spliced in as raw JSON text (NaN, 1e400)."""

    def build(project: Project) -> str:
        d: dict[str, object] = {"projectId": project.id, "trainingType": "Regular"}
        raw: dict[str, str] = {}
        for key, value in fields.items():
            if isinstance(value, str) and value.startswith("RAW:"):
                raw[key] = value[4:]
                d[key] = f"@@{key}@@"
            elif value is None:
                d.pop(key, None)
            else:
                d[key] = value
        text = json.dumps(d)
        for key, literal in raw.items():
            text = text.replace(f'"@@{key}@@"', literal)
        return b64(text)

    return build


BAD_MESSAGES: dict[str, Body] = {
    # not a request at all
    "not-base64-not-json": lambda p: "not base64 at all!",
    "base64-of-binary": lambda p: b64(b"\xff\xfe\x00\x81garbage"),
    "base64-of-text": lambda p: b64("{not json"),
    "json-array": lambda p: b64("[1, 2]"),
    "json-string": lambda p: b64('"train please"'),
    "json-null": lambda p: b64("null"),
    "deeply-nested": lambda p: b64("[" * 20_000 + "]" * 20_000),
    "huge-integer": request(reservedBudgetInHours="RAW:" + "9" * 5000),
    # NaN / Infinity
    "budget-infinity": request(reservedBudgetInHours="RAW:Infinity"),
    "budget-nan": request(reservedBudgetInHours="RAW:NaN"),
    "budget-overflows-to-infinity": request(reservedBudgetInHours="RAW:1e400"),
    "project-id-nan": request(projectId="RAW:NaN"),
    # wrong types
    "budget-string": request(reservedBudgetInHours="ten"),
    "budget-bool": request(reservedBudgetInHours=True),
    "budget-negative": request(reservedBudgetInHours=-1),
    "budget-fraction": request(reservedBudgetInHours=1.5),
    "iteration-id-int": request(iterationId=123),
    "project-id-int": request(projectId=123),
    "project-name-list": request(projectId=None, projectName=["a"]),
    "training-type-object": request(trainingType={"x": 1}),
    "selected-tags-string": request(selectedTags="abc"),
    "requested-at-number": request(requestedAt=5),
    # ids that are not GUIDs
    "iteration-id-traversal": request(iterationId="../../x"),
    "project-id-traversal": request(projectId="../x"),
    "iteration-id-odata": request(iterationId="x' or PartitionKey ne '"),
    "selected-tag-not-guid": request(selectedTags=["../x"]),
    # nothing to train
    "no-project": request(projectId=None),
    "unknown-project-id": request(projectId=str(uuid.uuid4())),
    "unknown-project-name": request(projectId=None, projectName="no-such-project-8c1d2e"),
}


@pytest.mark.parametrize("make_body", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_bad_message_is_parked_once_on_first_delivery(
    storage: Storage, queues: Queues, project: Project, make_body: Body,
    caplog: pytest.LogCaptureFixture,
) -> None:
    content = make_body(project)
    enqueue(storage, queues, content)
    outcomes = drive(make_worker(storage, queues), storage, queues)
    assert outcomes == [Outcome.POISONED], "parked on its first delivery, no retries"
    assert contents(storage, queues.poison) == [content], "exactly one copy, unchanged"
    assert queued(storage, queues.requests) == 0
    assert queued(storage, queues.events) == 0, "a bad message trains nothing, reports nothing"
    assert Registry(storage).list_iterations(project.id) == []
    assert "moved training request" in caplog.text


REPORTED = {  # the messages that looped in the issue (dequeue count 9, 4 copies after 140 s)
    "budget-infinity": BAD_MESSAGES["budget-infinity"],
    "iteration-id-int": BAD_MESSAGES["iteration-id-int"],
    "iteration-id-traversal": BAD_MESSAGES["iteration-id-traversal"],
}


@pytest.mark.parametrize("make_body", REPORTED.values(), ids=REPORTED.keys())
def test_once_mode_parks_the_reported_messages(
    storage: Storage, queues: Queues, project: Project, make_body: Body,
) -> None:
    """``python -m training_job --once`` (one Container Apps Job execution), in process: one
    execution, exit 0, the request gone, one copy parked."""
    from training_job.cli import get_args_parser, main

    content = make_body(project)
    enqueue(storage, queues, content)
    args = get_args_parser().parse_args([
        "--once", "--queue", queues.requests, "--events-queue", queues.events,
        "--visibility-timeout", "2", "--retry-delay", "0"])
    assert main(args) == 0
    assert queued(storage, queues.requests) == 0
    assert contents(storage, queues.poison) == [content]


def test_legitimate_requests_are_not_bad(project: Project) -> None:
    """The strict checks accept what the API, the CLI and a person send."""
    from_api = TrainingRequest(project_id=project.id, iteration_id=str(uuid.uuid4()),
                               training_type="Advanced", reserved_budget_in_hours=2,
                               selected_tags=(str(uuid.uuid4()), str(uuid.uuid4())))
    assert TrainingRequest.from_queue(b64(from_api.to_json())) == from_api
    by_hand = TrainingRequest.from_queue('{"projectName": "flowers", "trainingType": null}')
    assert (by_hand.project_name, by_hand.project_id, by_hand.iteration_id) == (
        "flowers", None, None)
    assert by_hand.training_type == "Regular"


# --- the poison path meeting a failure -----------------------------------------------------------
def spend_deliveries(storage: Storage, queues: Queues, times: int) -> None:
    """Deliveries that died: received, never deleted, visible again at once."""
    raw = storage.queues.get_queue_client(queues.requests)
    for _ in range(times):
        message = raw.receive_message(visibility_timeout=30)
        assert message is not None
        raw.update_message(message, visibility_timeout=0)


def test_failure_while_failing_the_iteration_still_parks_once(
    storage: Storage, queues: Queues, project: Project, caplog: pytest.LogCaptureFixture,
) -> None:
    """A spent request (every delivery died) whose iteration the poison path must record as
    Failed, with the events queue gone (the Failed event cannot be sent) and the poison queue
    gone too: the iteration is still Failed, the request still ends as one copy."""
    registry = Registry(storage)
    iteration = registry.create_iteration(project.id)
    content = b64(TrainingRequest(project_id=project.id, iteration_id=iteration.id).to_json())
    enqueue(storage, queues, content)
    storage.queues.delete_queue(queues.events)
    storage.queues.delete_queue(queues.poison)
    spend_deliveries(storage, queues, 2)

    outcomes = drive(make_worker(storage, queues, max_dequeue_count=2), storage, queues)

    assert outcomes == [Outcome.POISONED]
    assert contents(storage, queues.poison) == [content]
    after = registry.get_iteration(project.id, iteration.id)
    assert after is not None and after.status == IterationStatus.FAILED
    assert "dequeued 3 times" in after.failure_reason
    assert "could not record iteration" in caplog.text


def test_redelivery_after_the_copy_was_made_makes_no_second_copy(
    storage: Storage, queues: Queues, project: Project,
) -> None:
    """What a worker killed between copying and deleting leaves: the copy in ``-poison``, its
    record in ``quarantine/{queue}/``, and the request still queued. The next delivery only
    deletes it."""
    content = request(iterationId="../../x")(project)
    enqueue(storage, queues, content)
    raw = storage.queues.get_queue_client(queues.requests)
    first = raw.receive_message(visibility_timeout=30)
    assert first is not None
    storage.queues.get_queue_client(queues.poison).send_message(content)
    record = {"reason": "bad_request", "message": "bad training request", "messageId": first.id,
              "dequeueCount": 1, "queue": queues.poison,
              "parkedAt": datetime.now(UTC).isoformat()}
    storage.container(names.QUARANTINE).upload_blob(
        f"{queues.requests}/{first.id}{PARKED_SUFFIX}", json.dumps(record))
    raw.update_message(first, visibility_timeout=0)  # the dead worker's lease runs out

    outcomes = drive(make_worker(storage, queues), storage, queues)

    assert outcomes == [Outcome.POISONED]
    assert contents(storage, queues.poison) == [content]


# --- duplicate deliveries -----------------------------------------------------------------------
@pytest.mark.parametrize("late_first", [True, False], ids=["late-first", "late-last"])
def test_duplicate_delivery_parks_one_copy(
    storage: Storage, queues: Queues, project: Project, late_first: bool,
) -> None:
    """Two deliveries of one bad message (the first one's visibility ran out while it was
    slow): the one holding the message parks it, the late one leaves it alone."""
    content = request(reservedBudgetInHours="RAW:Infinity")(project)
    enqueue(storage, queues, content)
    raw = storage.queues.get_queue_client(queues.requests)
    late = raw.receive_message(visibility_timeout=30)
    assert late is not None
    raw.update_message(late, visibility_timeout=0)  # its visibility ran out
    holder = raw.receive_message(visibility_timeout=30)
    assert holder is not None and holder.id == late.id

    worker = make_worker(storage, queues)
    if late_first:
        outcomes = [worker.handle(late), worker.handle(holder)]
        assert outcomes == [Outcome.DUPLICATE, Outcome.POISONED]
    else:
        outcomes = [worker.handle(holder), worker.handle(late)]
        assert outcomes == [Outcome.POISONED, Outcome.DUPLICATE]
    assert contents(storage, queues.poison) == [content]
    assert queued(storage, queues.requests) == 0
