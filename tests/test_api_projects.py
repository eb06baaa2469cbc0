"""Projects, domains and tags through the real Custom Vision SDK, over HTTP, on Azurite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
)
from msrest.authentication import ApiKeyCredentials

from tests.conftest import TEST_TRAINING_KEY
from visionpipe.domains import GENERAL_DOMAIN_ID
from visionpipe.local.samples import make_image
from visionpipe.stores.label_store import LabelStore
from visionpipe.stores.registry import IterationStatus, Registry

FOOD_DOMAIN_ID = "c151d5b5-dd07-472a-acc8-15d29dea8518"


def client_for(url: str, key: str = TEST_TRAINING_KEY) -> CustomVisionTrainingClient:
    return CustomVisionTrainingClient(
        url, ApiKeyCredentials(in_headers={"Training-key": key}))


@pytest.fixture(scope="module")
def trainer(local_host: str) -> Iterator[CustomVisionTrainingClient]:
    client = client_for(local_host)
    yield client
    client.close()  # a kept-alive connection would hold the local host's shutdown


@pytest.fixture
def project_id(trainer: CustomVisionTrainingClient, project_name: str) -> Iterator[str]:
    project = trainer.create_project(project_name)
    yield project.id


def error_code(exc: pytest.ExceptionInfo[CustomVisionErrorException]) -> str:
    return str(exc.value.error.code)


def test_domains(trainer: CustomVisionTrainingClient) -> None:
    domains = trainer.get_domains()
    general = next(d for d in domains if d.name == "General")
    assert general.id == GENERAL_DOMAIN_ID
    assert all(d.type in ("Classification", "ObjectDetection") and d.exportable and d.enabled
               for d in domains)
    assert sum(d.type == "ObjectDetection" for d in domains) == 6
    assert trainer.get_domain(FOOD_DOMAIN_ID).name == "Food"
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.get_domain(str(uuid.uuid4()))
    assert error_code(exc) == "NotFoundDomain"


def test_project_lifecycle(trainer: CustomVisionTrainingClient, project_name: str,
                           label_store: LabelStore) -> None:
    created = trainer.create_project(project_name, description="birds", domain_id=FOOD_DOMAIN_ID,
                                     classification_type="Multilabel")
    assert created.name == project_name and created.description == "birds"
    assert created.settings.domain_id == FOOD_DOMAIN_ID
    assert created.settings.classification_type == "Multilabel"
    assert created.created is not None
    # the drop folder finds the same project by name
    found = label_store.find_project(project_name)
    assert found is not None and found.id == created.id

    assert trainer.get_project(created.id).name == project_name
    assert created.id in {p.id for p in trainer.get_projects()}

    created.name = project_name + "-renamed"
    created.description = "all birds"
    created.settings.classification_type = "Multiclass"
    updated = trainer.update_project(created.id, created)
    assert updated.name == project_name + "-renamed"
    assert updated.description == "all birds"
    assert updated.settings.classification_type == "Multiclass"
    assert label_store.find_project(project_name) is None  # the name index moved
    assert label_store.find_project(project_name + "-renamed").id == created.id  # type: ignore[union-attr]

    trainer.delete_project(created.id)
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.get_project(created.id)
    assert error_code(exc) == "NotFoundProject"
    assert exc.value.response.status_code == 404
    assert label_store.find_project(project_name + "-renamed") is None


def test_duplicate_project_name_is_refused(trainer: CustomVisionTrainingClient,
                                           project_id: str, project_name: str) -> None:
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.create_project(project_name.upper())
    assert error_code(exc) == "BadRequestProjectNameNotUnique"


@pytest.mark.parametrize(("name", "code"), [
    ("", "BadRequestProjectName"),
    ("a/b", "BadRequestProjectName"),
    (" padded", "BadRequestProjectName"),
])
def test_bad_project_names(trainer: CustomVisionTrainingClient, name: str, code: str) -> None:
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.create_project(name)
    assert error_code(exc) == code


def test_unknown_domain_and_classification(trainer: CustomVisionTrainingClient,
                                           project_name: str) -> None:
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.create_project(project_name, domain_id=str(uuid.uuid4()))
    assert error_code(exc) == "BadRequestProjectUnknownDomain"
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.create_project(project_name, classification_type="Detection")
    assert error_code(exc) == "BadRequestProjectUnknownClassification"


def test_delete_refused_while_published(trainer: CustomVisionTrainingClient, project_id: str,
                                        registry: Registry) -> None:
    iteration = registry.create_iteration(project_id)
    registry.update_iteration(project_id, iteration.id, status=IterationStatus.COMPLETED)
    registry.publish(project_id, iteration.id, "live", "resource")
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.delete_project(project_id)
    assert error_code(exc) == "BadRequestIterationIsPublished"
    registry.unpublish(project_id, iteration.id)
    trainer.delete_project(project_id)
    assert registry.list_iterations(project_id) == []


def test_wrong_key_is_401(local_host: str, project_id: str) -> None:
    with client_for(local_host, "wrong") as intruder, pytest.raises(
            CustomVisionErrorException) as exc:
        intruder.get_projects()
    assert error_code(exc) == "401"
    assert exc.value.response.status_code == 401
    for path in ("domains", f"projects/{project_id}/tags", f"projects/{project_id}/images"):
        r = httpx.get(f"{local_host}/customvision/v3.3/training/{path}")
        assert r.status_code == 401 and r.json()["code"] == "401"


def test_v33_route(local_host: str, project_id: str) -> None:
    r = httpx.get(f"{local_host}/customvision/v3.3/training/projects/{project_id}",
                  headers={"Training-Key": TEST_TRAINING_KEY})
    assert r.status_code == 200 and r.json()["id"] == project_id
    r = httpx.get(f"{local_host}/customvision/v9.9/training/projects/{project_id}",
                  headers={"Training-Key": TEST_TRAINING_KEY})
    assert r.status_code == 404


def test_tags_crud_and_counts(trainer: CustomVisionTrainingClient, project_id: str,
                              label_store: LabelStore) -> None:
    cat = trainer.create_tag(project_id, "cat", description="felines")
    dog = trainer.create_tag(project_id, "dog")
    assert (cat.name, cat.description, cat.type, cat.image_count) == ("cat", "felines",
                                                                      "Regular", 0)
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.create_tag(project_id, "CAT")
    assert error_code(exc) == "BadRequestTagNameNotUnique"

    batch = ImageFileCreateBatch(images=[
        ImageFileCreateEntry(name=f"{i}.jpg", contents=make_image("circle", i), tag_ids=[cat.id])
        for i in range(3)
    ] + [ImageFileCreateEntry(name="d.jpg", contents=make_image("square", 9),
                              tag_ids=[dog.id])])
    assert trainer.create_images_from_files(project_id, batch).is_batch_successful
    trainer.create_images_from_data(project_id, make_image("stripes", 1))  # untagged

    counts = {t.name: t.image_count for t in trainer.get_tags(project_id)}
    assert counts == {"cat": 3, "dog": 1}
    assert trainer.get_tag(project_id, cat.id).image_count == 3
    assert trainer.get_tagged_image_count(project_id) == 4
    assert trainer.get_tagged_image_count(project_id, tag_ids=[dog.id]) == 1
    assert trainer.get_untagged_image_count(project_id) == 1

    cat.name = "kitten"
    cat.description = "small felines"
    renamed = trainer.update_tag(project_id, cat.id, cat)
    assert (renamed.name, renamed.description, renamed.image_count) == (
        "kitten", "small felines", 3)
    assert label_store.find_tag(project_id, "kitten").id == cat.id  # type: ignore[union-attr]
    assert label_store.find_tag(project_id, "cat") is None
    dog.name = "KITTEN"
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.update_tag(project_id, dog.id, dog)
    assert error_code(exc) == "BadRequestTagNameNotUnique"

    trainer.delete_tag(project_id, cat.id)
    assert [t.name for t in trainer.get_tags(project_id)] == ["dog"]
    assert trainer.get_untagged_image_count(project_id) == 4  # the cats lost their tag
    with pytest.raises(CustomVisionErrorException) as exc:
        trainer.get_tag(project_id, cat.id)
    assert error_code(exc) == "NotFoundTag"


def test_unknown_project_is_not_found(trainer: CustomVisionTrainingClient) -> None:
    missing = str(uuid.uuid4())
    for call in (lambda: trainer.get_tags(missing),
                 lambda: trainer.create_tag(missing, "x"),
                 lambda: trainer.get_tagged_images(missing),
                 lambda: trainer.delete_project(missing)):
        with pytest.raises(CustomVisionErrorException) as exc:
            call()
        assert error_code(exc) == "NotFoundProject"
