"""Hostile drop-folder names and quarantine records (issue 10), against a real Azurite.

The storage SDK puts a blob name into the request URL and the HTTP client collapses ``..``
segments, so ``predict-images/a/../../models/{p}/{i}/model.onnx`` addresses another container's
blob. SharedKey signs the path (the request then fails), but a SAS or an Entra token does not:
with those the old code moved a published model into quarantine and deleted it. Every case here
runs with a SharedKey connection string *and* with an account SAS (Azurite's well-known dev key),
on both drop paths, through the library and through the local host's Event Grid webhook.

Also here: reason records that a drop could forge, records that cannot be read (the quarantine
route must never answer 500), and drop folders spelled in another case than their project.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from tests.conftest import TEST_TRAINING_KEY
from tests.drops import typed, upload
from visionpipe import names
from visionpipe.blob_names import escape_name, name_digest, unsafe_reason
from visionpipe.local.azurite import Azurite
from visionpipe.local.bridge import LOCAL_TOPIC
from visionpipe.local.samples import make_image
from visionpipe.pipeline.drop_predict import DropFolderPredictor, DropOutcome
from visionpipe.pipeline.events import BlobCreated, parse_blob_created
from visionpipe.pipeline.ingest import Outcome, ingest_training_blob
from visionpipe.rejections import Reason
from visionpipe.serving.core import reset_serving
from visionpipe.settings import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    StorageSettings,
    get_settings,
    reset_settings,
)
from visionpipe.storage import Storage, get_storage
from visionpipe.stores.label_store import Project
from visionpipe.stores.quarantine import REASON_SUFFIX, UNREADABLE, digest_path

DROPS = (names.TRAINING_IMAGES, names.PREDICT_IMAGES)
AUTH_KINDS = ("shared_key", "sas")
FULL_ACCESS = AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                                    create=True, update=True, process=True)

# {v}: the victim's name inside ``models`` ({project id}/{iteration id}/model.onnx).
# These collapse onto the victim when an HTTP client normalises the URL.
TRAVERSALS = {
    "parent-parent": "a/../../models/{v}",
    "training-layout": "proj/cat/../../../models/{v}",
    "dot-then-parent": "./../models/{v}",
    "deeper": "a/b/../../../models/{v}",
}
# These do not collapse in this client, but some layer might decode or normalise them into a
# traversal, or the service would refuse them: all are refused before any storage call.
ENCODED = {
    "pct-dots": "a/%2e%2e/%2e%2e/models/{v}",
    "pct-upper-and-slash": "a/%2E%2E/..%2Fmodels/{v}",
    "pct-double": "a/%252e%252e/%252e%252e/models/{v}",
    "pct-backslash": "a/..%5c..%5cmodels/{v}",
    "backslashes": "a\\..\\..\\models\\{v}",
    "leading-slash": "/../models/{v}",
    "empty-segment": "a//../models/{v}",
    "nul": "a/\x00/../models/{v}",
    "newline": "a/x\n/models/{v}",
    "c1-control": "a/\x85/models/{v}",
    "bidi-override": "a/\u202egpj.exe/{v}",
    "fullwidth-dots": "a/\uff0e\uff0e/\uff0e\uff0e/models/{v}",
    "fullwidth-slash": "a\uff0f..\uff0f..\uff0fmodels/{v}",
    "long-segment": "a/" + "x" * 256 + "/{v}",
    "long-name": "a/" + "b/" * 520 + "{v}",
    "trailing-slash": "a/models/{v}/",
    "lone-dot": "a/./{v}",
    "lone-surrogate": "a/\udc80/../models/{v}",  # legal in the event's JSON, not in a URL
}
HOSTILE = {**TRAVERSALS, **ENCODED}


# --- storage with either kind of credential ---------------------------------------------------
def sas_connection_string(azurite: Azurite, permission: AccountSasPermissions = FULL_ACCESS
                          ) -> str:
    """A connection string holding an account SAS (blob, queue, table) instead of the key."""
    sas = generate_account_sas(
        AZURITE_ACCOUNT, AZURITE_KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=permission, expiry=datetime.now(UTC) + timedelta(days=1), services="bqt",
    )
    endpoints = [part for part in azurite.connection_string.split(";")
                 if part.startswith(("BlobEndpoint=", "QueueEndpoint=", "TableEndpoint="))]
    return ";".join([*endpoints, f"SharedAccessSignature={sas}"])


@pytest.fixture(scope="module")
def sas_storage(storage: Storage, azurite: Azurite) -> Storage:
    sas = Storage(StorageSettings(connection_string=sas_connection_string(azurite)))
    assert "AccountKey" not in (sas.settings.connection_string or "")
    return sas


@pytest.fixture(params=AUTH_KINDS)
def auth(request: pytest.FixtureRequest, storage: Storage, sas_storage: Storage
         ) -> tuple[str, Storage]:
    return request.param, (sas_storage if request.param == "sas" else storage)


@pytest.fixture(params=AUTH_KINDS)
def host_auth(request: pytest.FixtureRequest, storage: Storage, azurite: Azurite
              ) -> Iterator[str]:
    """The local host's storage credential: the connection string, or an account SAS (set the
    way an app setting would be, so the function code itself runs with it)."""
    saved = os.environ.get(names.STORAGE_CONNECTION)

    def switch(value: str | None) -> None:
        if value is not None:
            os.environ[names.STORAGE_CONNECTION] = value
        reset_settings()
        get_storage.cache_clear()
        reset_serving()

    if request.param == "sas":
        switch(sas_connection_string(azurite))
        assert "SharedAccessSignature" in (get_storage().settings.connection_string or "")
    try:
        yield request.param
    finally:
        if request.param == "sas":
            switch(saved)


# --- victims, hostile events and what they must leave behind ----------------------------------
def put_victim(storage: Storage) -> tuple[str, bytes]:
    """A published-model-shaped blob of another project: ``{p}/{i}/model.onnx`` in ``models``."""
    name = f"{uuid.uuid4()}/{uuid.uuid4()}/model.onnx"
    data = os.urandom(64)
    storage.container(names.MODELS).upload_blob(name, data)
    return name, data


def victim_intact(storage: Storage, name: str, data: bytes) -> bool:
    client = storage.container(names.MODELS).get_blob_client(name)
    return bool(client.exists()) and client.download_blob().readall() == data


def blob_url(storage: Storage, container: str, name: str) -> str:
    return f"{storage.container(container).url}/{quote(name, safe='/')}"


def grid_dict(storage: Storage, container: str, subject_name: str, url: str | None,
              event_id: str | None = None) -> dict[str, Any]:
    """A BlobCreated event in the Event Grid schema, as a forger (or Event Grid) would send it."""
    data: dict[str, Any] = {"api": "PutBlob", "eTag": "0x8DC0FFEE", "contentLength": 1234,
                            "contentType": "image/jpeg", "blobType": "BlockBlob"}
    if url is not None:
        data["url"] = url
    return {
        "id": event_id or str(uuid.uuid4()),
        "topic": LOCAL_TOPIC,
        "subject": f"/blobServices/default/containers/{container}/blobs/{subject_name}",
        "eventType": names.BLOB_CREATED,
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
        "dataVersion": "",
        "metadataVersion": "1",
    }


def hostile_event(storage: Storage, container: str, name: str) -> BlobCreated:
    try:
        url: str | None = blob_url(storage, container, name)
    except UnicodeEncodeError:  # a lone surrogate: Event Grid would send the subject alone
        url = None
    raw = grid_dict(storage, container, name, url)
    return parse_blob_created(event_id=raw["id"], event_type=raw["eventType"],
                              subject=raw["subject"], data=raw["data"], container=container)


def deliver(container: str, storage: Storage, event: BlobCreated) -> str | None:
    """Run the drop path of ``container`` on ``event``; the reason code it answers."""
    if container == names.TRAINING_IMAGES:
        result = ingest_training_blob(event, storage, get_settings())
        assert result.outcome == Outcome.QUARANTINED
        return str(result.rejection.reason) if result.rejection else None
    answer = DropFolderPredictor(storage, get_settings()).handle(event)
    assert answer.outcome == DropOutcome.REJECTED and answer.result_path is None
    return answer.code


def entries_at(storage: Storage, prefix: str) -> list[str]:
    return [b.name for b in storage.container(names.QUARANTINE).list_blobs(name_starts_with=prefix)]


def the_one_record(storage: Storage, container: str, name: str) -> dict[str, Any]:
    """The name's reason record, asserting that nothing else was written for it (no bytes)."""
    path = digest_path(container, name)
    assert entries_at(storage, path) == [path + REASON_SUFFIX]
    raw = storage.container(names.QUARANTINE).download_blob(path + REASON_SUFFIX).readall()
    assert all(b >= 0x20 or b in b"\n" for b in raw)  # escaped: no control bytes in the record
    record = json.loads(raw)
    assert record["reason"] == Reason.BAD_PATH
    assert record["source"]["path"] == escape_name(name)
    assert record["source"]["nameSha256"] == name_digest(name)
    return dict(record)


# --- 1. traversal names, both drop paths, both credentials (library) ---------------------------
@pytest.mark.parametrize("container", DROPS)
@pytest.mark.parametrize("template", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_name_never_reaches_storage(
    auth: tuple[str, Storage], storage: Storage, container: str, template: str
) -> None:
    kind, client_storage = auth
    victim, data = put_victim(storage)
    name = template.format(v=victim)
    assert unsafe_reason(name) is not None
    event = hostile_event(client_storage, container, name)
    assert event.path == name

    assert deliver(container, client_storage, event) == Reason.BAD_PATH
    assert victim_intact(storage, victim, data), f"{kind}: the victim model was touched"
    first = the_one_record(storage, container, name)

    # Event Grid delivers at least once: the same event again writes nothing new.
    assert deliver(container, client_storage, event) == Reason.BAD_PATH
    assert victim_intact(storage, victim, data)
    assert the_one_record(storage, container, name) == first


def test_sas_client_really_reaches_across_containers(sas_storage: Storage, storage: Storage
                                                     ) -> None:
    """The premise of the SAS cases: with a SAS, a ``..`` name addresses the victim."""
    victim, data = put_victim(storage)
    stray = sas_storage.container(names.PREDICT_IMAGES).get_blob_client(f"a/../../models/{victim}")
    assert stray.download_blob().readall() == data


# --- 1b. the same events through the local host's Event Grid webhook ---------------------------
def _encoded_dots(name: str) -> str:
    """The URL path of ``name`` with every '.' of a '..' segment written as %2e."""
    return "/".join("%2e%2e" if s == ".." else quote(s) for s in name.split("/"))


WEBHOOK_VARIANTS: dict[str, Callable[[str], tuple[str, Callable[[str], str] | None, str]]] = {
    # variant -> (subject name, url path builder or None, the name the function must act on)
    "subject-and-url": lambda n: (n, lambda p: quote(p, safe="/"), n),
    "url-%2e%2e": lambda n: (n, _encoded_dots, n),
    "literal-%2e%2e": lambda n: (n.replace("..", "%2e%2e"),
                                 lambda p: quote(p.replace("..", "%2e%2e"), safe="/"),
                                 n.replace("..", "%2e%2e")),
    "subject-only": lambda n: (n, None, n),
}


@pytest.mark.parametrize("container", DROPS)
@pytest.mark.parametrize("variant", list(WEBHOOK_VARIANTS))
def test_hostile_event_through_the_webhook(
    host_auth: str, storage: Storage, local_host: str, container: str, variant: str
) -> None:
    victim, data = put_victim(storage)
    name = TRAVERSALS["parent-parent"].format(v=victim)
    subject, url_path, acted_on = WEBHOOK_VARIANTS[variant](name)
    account_url = storage.container(container).url
    url = None if url_path is None else f"{account_url}/{url_path(name)}"
    event = grid_dict(storage, container, subject, url)
    hook = (f"{local_host}/runtime/webhooks/EventGrid"
            f"?functionName={names.EVENT_SUBSCRIPTIONS[container]}")

    for _ in range(2):  # a duplicate delivery of the same event
        response = httpx.post(hook, json=[event], headers={"aeg-event-type": "Notification"})
        assert response.status_code == 202, f"{host_auth}: {response.status_code}"
        assert victim_intact(storage, victim, data), f"{host_auth}: the victim model was touched"
    the_one_record(storage, container, acted_on)


# --- 2. reason records cannot be forged through a drop folder ---------------------------------
def quarantine_listing(local_host: str, project_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{local_host}/visionpipe/v1/projects/{project_id}/quarantine",
                         headers={"Training-Key": TEST_TRAINING_KEY})
    assert response.status_code == 200, (response.status_code, response.text)
    listing = response.json()
    assert isinstance(listing, list)
    return listing


FORGED_BYTES = {
    "not-json": b"\x89PNG this is not json \xff\xfe",
    "forged-json": json.dumps({"reason": "corrupt", "message": "FORGED", "quarantinedAt": "0",
                               "source": {"path": "somebody/else.jpg"}}).encode(),
}


def drop_twice(storage: Storage, container: str, path: str, data: bytes) -> list[str]:
    """Drop a blob and deliver its event twice; what each delivery answered."""
    event = typed(upload(storage, container, path, data), container)
    answers = []
    for _ in range(2):
        if container == names.TRAINING_IMAGES:
            result = ingest_training_blob(event, storage, get_settings())
            answers.append(str(result.rejection.reason)
                           if result.rejection and result.outcome != Outcome.GONE
                           else str(result.outcome))
        else:
            answer = DropFolderPredictor(storage, get_settings()).handle(event)
            answers.append(answer.code or str(answer.outcome))
    return answers


@pytest.mark.parametrize("container", DROPS)
@pytest.mark.parametrize("content", list(FORGED_BYTES))
@pytest.mark.parametrize("suffix", [".reason.json", ".REASON.JSON"])
def test_a_drop_cannot_write_a_reason_record(
    storage: Storage, project: Project, local_host: str, container: str, content: str,
    suffix: str
) -> None:
    folder = f"{project.name}/cat" if container == names.TRAINING_IMAGES else project.name
    path = f"{folder}/x.jpg{suffix}"
    answers = drop_twice(storage, container, path, FORGED_BYTES[content])

    listing = quarantine_listing(local_host, project.id)
    assert "FORGED" not in json.dumps(listing)
    assert [(e["container"], e["reason"], e["source"]["path"]) for e in listing] == [
        (container, Reason.BAD_PATH, path)]
    assert answers == [Reason.BAD_PATH, "gone"]
    # the bytes are kept, under the digest, where no listing takes them for a record
    stored = digest_path(container, path)
    assert sorted(entries_at(storage, stored)) == [stored, stored + REASON_SUFFIX]
    assert not storage.container(container).get_blob_client(path).exists()


@pytest.mark.parametrize("container", DROPS)
def test_a_drop_cannot_overwrite_a_digest_entry(
    storage: Storage, project: Project, container: str
) -> None:
    """``{container}/_unsafe-names/...`` holds the bytes of refused ``.reason.json`` drops; a
    rejected drop whose mirror would land there is kept under its own digest instead."""
    folder = f"{project.name}/cat" if container == names.TRAINING_IMAGES else project.name
    first_path = f"{folder}/x.reason.json"
    assert drop_twice(storage, container, first_path, b"first") == [Reason.BAD_PATH, "gone"]
    kept = digest_path(container, first_path)

    lookalike = kept.split("/", 1)[1]  # _unsafe-names/{hint}/{digest}: a drop of that name
    drop_twice(storage, container, lookalike, b"second, not an image")
    quarantine = storage.container(names.QUARANTINE)
    assert quarantine.download_blob(kept).readall() == b"first"
    record = json.loads(quarantine.download_blob(kept + REASON_SUFFIX).readall())
    assert record["source"]["path"] == first_path
    assert quarantine.download_blob(digest_path(container, lookalike)).readall() == \
        b"second, not an image"


UNREADABLE_RECORDS = {
    "binary": b"\xff\xfe\x00 definitely not json",
    "json-list": b"[1, 2, 3]",
    "no-reason": b'{"message": "where is the reason?"}',
    "reason-not-a-string": b'{"reason": 7, "quarantinedAt": 5}',
    "huge": json.dumps({"reason": "corrupt", "pad": "x" * 70_000}).encode(),
    "empty": b"",
}


@pytest.mark.parametrize("kind", list(UNREADABLE_RECORDS))
def test_the_quarantine_route_never_500s_on_an_unreadable_record(
    storage: Storage, project: Project, local_host: str, kind: str
) -> None:
    """A record left by the old code (or written by anyone with access to the container)."""
    quarantine = storage.container(names.QUARANTINE)
    bad = f"{names.TRAINING_IMAGES}/{project.name}/cat/{kind}.jpg{REASON_SUFFIX}"
    quarantine.upload_blob(bad, UNREADABLE_RECORDS[kind])
    answers = drop_twice(storage, names.TRAINING_IMAGES, f"{project.name}/cat/y.jpg", b"x")
    assert answers == [Reason.UNSUPPORTED_FORMAT, "gone"]

    listing = quarantine_listing(local_host, project.id)
    assert sorted(str(e.get("reason")) for e in listing) == sorted(
        [UNREADABLE, Reason.UNSUPPORTED_FORMAT])
    (unreadable,) = [e for e in listing if e["reason"] == UNREADABLE]
    assert unreadable["record"] == bad and "pad" not in unreadable


# --- 4. drop folders spelled in another case ----------------------------------------------------
def test_quarantine_route_lists_every_spelling_of_the_project(
    storage: Storage, project: Project, local_host: str
) -> None:
    assert project.name == project.name.lower()
    upper, mixed = project.name.upper(), project.name.capitalize()
    # another project whose name starts like this one's must not leak into its listing
    other = f"{project.name}x"
    drops = [
        (names.TRAINING_IMAGES, f"{upper}/cat/a.jpg"),
        (names.TRAINING_IMAGES, f"{mixed}/cat/b.jpg"),
        (names.PREDICT_IMAGES, f"{upper}/c.jpg"),
        (names.TRAINING_IMAGES, f"{other}/cat/d.jpg"),
    ]
    settings = get_settings()
    for container, path in drops:
        event = typed(upload(storage, container, path, b"not an image"), container)
        if container == names.TRAINING_IMAGES:
            assert ingest_training_blob(event, storage, settings).outcome == Outcome.QUARANTINED
        else:
            assert DropFolderPredictor(storage, settings).handle(event).outcome == \
                DropOutcome.REJECTED
    listing = quarantine_listing(local_host, project.id)
    seen = sorted((e["container"], e["source"]["path"]) for e in listing)
    assert seen == sorted(drops[:3])
    assert {e["reason"] for e in listing} == {Reason.UNSUPPORTED_FORMAT}


@pytest.mark.parametrize("container", DROPS)
def test_quarantine_route_lists_a_hostile_name_under_its_first_folder(
    storage: Storage, project: Project, local_host: str, container: str
) -> None:
    """An unsafe name's record is filed under its first folder (any spelling), so the project
    it pretends to belong to sees it; never under another project."""
    victim, data = put_victim(storage)
    hostile = f"{project.name.capitalize()}/../../models/{victim}"
    elsewhere = f"{project.name}x/../../models/{victim}"
    for name in (hostile, elsewhere):
        event = hostile_event(storage, container, name)
        for _ in range(2):
            assert deliver(container, storage, event) == Reason.BAD_PATH
    listing = quarantine_listing(local_host, project.id)
    assert [(e["container"], e["reason"], e["source"]["path"]) for e in listing] == [
        (container, Reason.BAD_PATH, escape_name(hostile))]
    assert victim_intact(storage, victim, data)


def test_case_spelled_drop_of_a_valid_image_still_labels(
    storage: Storage, project: Project, local_host: str
) -> None:
    """The case rule changes the listing only: a valid image in ``MYPROJ/`` is labelled."""
    path = f"{project.name.upper()}/Round/a.jpg"
    event = typed(upload(storage, names.TRAINING_IMAGES, path, make_image("circle", 3)),
                  names.TRAINING_IMAGES)
    assert ingest_training_blob(event, storage, get_settings()).outcome == Outcome.LABELLED
    assert quarantine_listing(local_host, project.id) == []


# --- the rule itself ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "proj/cat/photo 1 (2).jpg", "proj/cat/ünïcödé.jpg", "proj/cat/50% off.jpg",
    "proj/cat/a..b.jpg", "proj/cat/...jpg", "proj/cat/%41.jpg", "proj/.hidden/x.jpg",
    "p/" + "x" * 255, "p/" + "b/" * 509 + "c",
])
def test_ordinary_names_are_safe(name: str) -> None:
    assert unsafe_reason(name) is None
