"""The Negative tag, with Custom Vision's semantics, through the official SDK and the real job.

- ``create_tag(type="Negative")``, ``get_tags``, ``update_tag`` carry the type; one Negative tag
  per project (``BadRequestMultipleNegativeTag``, also under concurrent creates); GeneralProduct
  and unknown types are refused (``BadRequestTagType``);
- an image tagged Negative carries no other tag: uploads answer
  ``ErrorNegativeAndRegularTagOnSameImage`` per image, tagging answers 400
  ``BadRequestNegativeAndRegularTagOnSameImage`` and writes nothing;
- the Negative tag follows the minimum-images rule like any tag, and object detection refuses
  to train with Negative images (``BadRequestDetectionTrainingNotAllowNegativeTag``);
- a classifier learns the Negative images as a class it answers (quick test of a trained
  iteration).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
    ImageTagCreateEntry,
    Tag,
)
from msrest.authentication import ApiKeyCredentials

from tests.conftest import TEST_TRAINING_KEY
from tests.model_factory import color_image
from tests.test_training import make_queues, request_body, run_job
from tests.training_worker import own_request_queue
from training_job.dataset import DatasetError, build_snapshot
from visionpipe import names
from visionpipe.domains import DETECTION_DOMAINS
from visionpipe.storage import Storage
from visionpipe.stores.label_store import (
    NEGATIVE_TAG,
    ImageFacts,
    ImageRecord,
    LabelStore,
    NegativeTagConflict,
    NegativeTagExists,
)
from visionpipe.stores.registry import IterationStatus, Registry

NEGATIVE_AND_REGULAR = "BadRequestNegativeAndRegularTagOnSameImage"


@pytest.fixture(scope="module")
def request_queue(storage: Storage) -> Iterator[str]:
    """A queue of this module's own behind ``TRAINING_REQUESTS_QUEUE`` (Azurite is shared)."""
    with own_request_queue(storage, "tr-neg") as name:
        yield name


@pytest.fixture
def trainer(local_host: str, request_queue: str) -> CustomVisionTrainingClient:
    return CustomVisionTrainingClient(
        local_host, ApiKeyCredentials(in_headers={"Training-key": TEST_TRAINING_KEY}))


def code_of(raised: pytest.ExceptionInfo[CustomVisionErrorException]) -> str:
    return str(raised.value.error.code)


def upload(trainer: CustomVisionTrainingClient, project_id: str, color: str, seed: int,
           tag_ids: list[str]) -> tuple[str, str | None]:
    """One picture; (status, image id)."""
    summary = trainer.create_images_from_files(project_id, ImageFileCreateBatch(images=[
        ImageFileCreateEntry(name=f"{color}{seed}.jpg",
                             contents=color_image(color, (256, 256), "JPEG", seed=seed),
                             tag_ids=tag_ids)]))
    (result,) = summary.images
    return result.status, result.image.id if result.image else None


# --- the tag type --------------------------------------------------------------------------------
def test_negative_tag_type_is_stored_answered_and_unique(
        trainer: CustomVisionTrainingClient, local_host: str) -> None:
    project = trainer.create_project(f"neg-{uuid.uuid4().hex[:8]}")
    negative = trainer.create_tag(project.id, "none of these", type="Negative")
    regular = trainer.create_tag(project.id, "cat")
    assert (negative.type, regular.type) == ("Negative", "Regular")
    assert {t.name: t.type for t in trainer.get_tags(project.id)} == {
        "none of these": "Negative", "cat": "Regular"}
    assert trainer.get_tag(project.id, negative.id).type == "Negative"

    with pytest.raises(CustomVisionErrorException) as second:
        trainer.create_tag(project.id, "other negative", type="Negative")
    assert code_of(second) == "BadRequestMultipleNegativeTag"
    with pytest.raises(CustomVisionErrorException) as retype:
        trainer.update_tag(project.id, regular.id, Tag(name="cat", description="", type="Negative"))
    assert code_of(retype) == "BadRequestMultipleNegativeTag"
    for bad in ("GeneralProduct", "Bogus", "x" * 5000, "../Negative"):
        with pytest.raises(CustomVisionErrorException) as refused:
            trainer.create_tag(project.id, f"t-{uuid.uuid4().hex[:6]}", type=bad)
        assert code_of(refused) == "BadRequestTagType", bad
    assert len(trainer.get_tags(project.id)) == 2  # nothing was created by the refusals

    # a rename without a type keeps it; a type in any case is stored in Custom Vision's spelling
    renamed = httpx.patch(f"{local_host}/customvision/v3.3/training/projects/{project.id}/tags/"
                          f"{negative.id}", json={"name": "nothing"}, timeout=30,
                          headers={"Training-Key": TEST_TRAINING_KEY})
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["type"]) == ("nothing", "Negative")
    for bad_body in ({"name": "nothing", "type": 7}, {"name": "nothing", "type": ["Negative"]}):
        wrong = httpx.patch(f"{local_host}/customvision/v3.3/training/projects/{project.id}/"
                            f"tags/{negative.id}", json=bad_body, timeout=30,
                            headers={"Training-Key": TEST_TRAINING_KEY})
        assert wrong.status_code == 400 and "code" in wrong.json(), wrong.text
    # back to Regular frees the project's one Negative slot; delete frees it too
    back = Tag(name="nothing", description="", type="Regular")
    assert trainer.update_tag(project.id, negative.id, back).type == "Regular"
    lower = Tag(name="cat", description="", type="negative")
    assert trainer.update_tag(project.id, regular.id, lower).type == "Negative"
    trainer.delete_tag(project.id, regular.id)
    again = trainer.create_tag(project.id, "empty", type="Negative")
    assert again.type == "Negative"


def test_concurrent_negative_creates_make_exactly_one(storage: Storage) -> None:
    store = LabelStore(storage)
    project = store.create_project(f"neg-race-{uuid.uuid4().hex[:8]}")

    def create(i: int) -> str:
        try:
            return store.create_tag(project.id, f"neg {i}", type=NEGATIVE_TAG).id
        except NegativeTagExists:
            return ""

    with ThreadPoolExecutor(8) as pool:
        made = [t for t in pool.map(create, range(8)) if t]
    assert len(made) == 1
    tags = store.list_tags(project.id)
    assert [t.id for t in tags if t.negative] == made
    assert len(tags) == 1  # the losers left neither a tag nor a name behind
    assert store.negative_tag_id(project.id) == made[0]
    store.delete_project(project.id)


# --- images: Negative alone ----------------------------------------------------------------------
def test_an_image_tagged_negative_carries_no_other_tag(
        trainer: CustomVisionTrainingClient) -> None:
    project = trainer.create_project(f"neg-ml-{uuid.uuid4().hex[:8]}",
                                     classification_type="Multilabel")
    negative = trainer.create_tag(project.id, "nothing", type="Negative")
    cat = trainer.create_tag(project.id, "cat")
    dog = trainer.create_tag(project.id, "dog")

    status, _ = upload(trainer, project.id, "red", 1, [negative.id, cat.id])
    assert status == "ErrorNegativeAndRegularTagOnSameImage"
    assert trainer.get_tagged_image_count(project.id) == 0
    status, lonely = upload(trainer, project.id, "green", 2, [negative.id])
    assert status == "OK" and lonely
    status, pet = upload(trainer, project.id, "blue", 3, [cat.id, dog.id])  # multilabel: fine
    assert status == "OK" and pet

    for image_id, tag_id in ((lonely, cat.id), (pet, negative.id)):
        with pytest.raises(CustomVisionErrorException) as refused:
            trainer.create_image_tags(
                project.id, tags=[ImageTagCreateEntry(image_id=image_id, tag_id=tag_id)])
        assert code_of(refused) == NEGATIVE_AND_REGULAR
    # one bad pair refuses the whole batch before anything is written
    with pytest.raises(CustomVisionErrorException) as batch:
        trainer.create_image_tags(project.id, tags=[
            ImageTagCreateEntry(image_id=pet, tag_id=cat.id),
            ImageTagCreateEntry(image_id=lonely, tag_id=dog.id)])
    assert code_of(batch) == NEGATIVE_AND_REGULAR
    images = {i.id: sorted(t.tag_name for t in i.tags)
              for i in trainer.get_tagged_images(project.id)}
    assert images == {lonely: ["nothing"], pet: ["cat", "dog"]}
    # a tag whose images carry other tags cannot become the Negative tag
    trainer.delete_tag(project.id, negative.id)
    with pytest.raises(CustomVisionErrorException) as shared:
        trainer.update_tag(project.id, dog.id, Tag(name="dog", description="", type="Negative"))
    assert code_of(shared) == NEGATIVE_AND_REGULAR
    assert trainer.get_tag(project.id, dog.id).type == "Regular"


def test_drop_folder_and_regions_keep_the_rule(storage: Storage) -> None:
    """The store refuses on every write path: a second folder for the same bytes (ingest) and a
    region's tag joining a Negative image (detection)."""
    from visionpipe.stores.label_store import MULTILABEL

    store = LabelStore(storage)
    project = store.create_project(f"neg-drop-{uuid.uuid4().hex[:8]}", MULTILABEL)
    negative = store.create_tag(project.id, "none", type=NEGATIVE_TAG)
    cat = store.get_or_create_tag(project.id, "cat")
    data = color_image("green", (64, 64), "PNG", seed=9)
    facts = ImageFacts(hashlib.sha256(data).hexdigest(), 64, 64, "PNG", len(data))
    store.add_image(project, negative, facts, f"{project.name}/none/a.png")
    with pytest.raises(NegativeTagConflict) as refused:
        store.add_image(project, cat, facts, f"{project.name}/cat/a.png")
    assert refused.value.rejection.reason == "conflicting_tag"
    with pytest.raises(NegativeTagConflict):
        store.add_image_regions(project, facts.sha256, [(cat.id, (0.1, 0.1, 0.2, 0.2))], 300)
    record = store.get_image(project.id, facts.sha256)
    assert record is not None and record.tag_ids == (negative.id,) and record.regions == ()
    store.delete_project(project.id)


# --- training rules ------------------------------------------------------------------------------
def test_negative_counts_as_a_tag_and_needs_its_five_images(
        trainer: CustomVisionTrainingClient, request_queue: str, storage: Storage) -> None:
    project = trainer.create_project(f"neg-min-{uuid.uuid4().hex[:8]}")
    cat = trainer.create_tag(project.id, "cat")
    negative = trainer.create_tag(project.id, "nothing", type="Negative")
    for seed in range(5):
        assert upload(trainer, project.id, "red", seed, [cat.id])[0] == "OK"
    for seed in range(3):
        assert upload(trainer, project.id, "green", seed, [negative.id])[0] == "OK"
    with pytest.raises(CustomVisionErrorException) as short:
        trainer.train_project(project.id)
    assert code_of(short) == "BadRequestTrainingValidationFailed"
    assert "'nothing' (3)" in str(short.value.error.message)
    for seed in range(3, 5):
        assert upload(trainer, project.id, "green", seed, [negative.id])[0] == "OK"
    # one Regular tag and the Negative tag: two tags, five images each, trainable
    iteration = trainer.train_project(project.id)
    assert iteration.status == "Training"
    Registry(storage).cancel_iteration(project.id, iteration.id, "test: no worker here")


def test_snapshot_refuses_a_mixed_image_and_a_negative_only_selection() -> None:
    """The job's own check on what it trains (a tagging that raced with a type change)."""
    from visionpipe.stores.label_store import MULTILABEL, Project
    from visionpipe.stores.label_store import Tag as StoreTag

    project = Project(str(uuid.uuid4()), "p", MULTILABEL)
    cat = StoreTag(str(uuid.uuid4()), project.id, "cat")
    neg = StoreTag(str(uuid.uuid4()), project.id, "none", type=NEGATIVE_TAG)

    def rec(i: int, *tags: str) -> ImageRecord:
        return ImageRecord(project.id, f"{i:064x}", tags, (f"p/{i}.png",), 8, 8, "PNG", 1,
                           project.created)

    good = [rec(i, cat.id) for i in range(5)] + [rec(10 + i, neg.id) for i in range(5)]
    snapshot = build_snapshot(project, [cat, neg], good)
    assert [t.name for t in snapshot.tags] == ["cat", "none"]
    negatives = [s for s in snapshot.samples if neg.id in s.tag_ids]
    assert len(negatives) == 5 and all(s.tag_ids == (neg.id,) for s in negatives)
    with pytest.raises(DatasetError, match="Negative tag and another"):
        build_snapshot(project, [cat, neg], [*good, rec(99, cat.id, neg.id)])
    other = StoreTag(str(uuid.uuid4()), project.id, "other", type=NEGATIVE_TAG)
    with pytest.raises(DatasetError, match="not the Negative tag"):
        build_snapshot(project, [neg, other], [rec(i, neg.id) for i in range(5)]
                       + [rec(20 + i, other.id) for i in range(5)])


def test_detection_refuses_to_train_with_negative_images(
        trainer: CustomVisionTrainingClient) -> None:
    project = trainer.create_project(f"neg-od-{uuid.uuid4().hex[:8]}",
                                     domain_id=DETECTION_DOMAINS[0].id)
    negative = trainer.create_tag(project.id, "background", type="Negative")
    with pytest.raises(CustomVisionErrorException) as empty:
        trainer.train_project(project.id)
    assert code_of(empty) != "BadRequestDetectionTrainingNotAllowNegativeTag"  # no images yet
    assert upload(trainer, project.id, "green", 1, [negative.id])[0] == "OK"
    with pytest.raises(CustomVisionErrorException) as refused:
        trainer.train_project(project.id)
    assert code_of(refused) == "BadRequestDetectionTrainingNotAllowNegativeTag"


# --- a classifier learns it ----------------------------------------------------------------------
def test_a_classifier_learns_negative_images_as_a_class_it_answers(
        storage: Storage, trainer: CustomVisionTrainingClient, tmp_path: Path) -> None:
    """Red cats, blue dogs, green "nothing" (Negative): the trained iteration's quick test of
    unseen green pictures answers the Negative tag first."""
    store = LabelStore(storage)
    project = store.create_project(f"neg-train-{uuid.uuid4().hex[:8]}")
    container = storage.container(names.TRAINING_IMAGES)
    tags = {"red": store.get_or_create_tag(project.id, "cat"),
            "blue": store.get_or_create_tag(project.id, "dog"),
            "green": store.create_tag(project.id, "nothing", type=NEGATIVE_TAG)}
    for color, tag in tags.items():
        for seed in range(6):
            data = color_image(color, (64, 64), "PNG", seed=seed)
            path = f"{project.name}/{tag.name}/{seed}.png"
            container.upload_blob(path, data, overwrite=True)
            facts = ImageFacts(hashlib.sha256(data).hexdigest(), 64, 64, "PNG", len(data))
            store.add_image(project, tag, facts, path)
    registry = Registry(storage)
    iteration = registry.start_training(project.id)
    queues = make_queues(storage)
    queues.send(storage, request_body(project.id, iteration.id))
    assert run_job(queues, tmp_path, "--resize", "72", "--crop", "64", "--epochs", "15",
                   "--patience", "15", "--lr", "3e-3") == 0
    it = registry.get_iteration(project.id, iteration.id)
    assert it is not None and it.status == IterationStatus.COMPLETED, it.failure_reason
    manifest = registry.read_manifest(project.id, iteration.id)
    assert [t.name for t in manifest.tags] == ["cat", "dog", "nothing"]
    assert [t.type for t in manifest.tags] == ["Regular", "Regular", "Negative"]

    def answers(color: str) -> list[dict[str, float]]:
        out = []
        for seed in (100, 101, 102):
            result = trainer.quick_test_image(
                project.id, color_image(color, (256, 256), "JPEG", seed=seed),
                iteration_id=iteration.id, store=False)
            assert {p.tag_id for p in result.predictions} == {t.id for t in tags.values()}
            assert {p.tag_name: p.tag_type for p in result.predictions} == {
                "cat": "Regular", "dog": "Regular", "nothing": "Negative"}
            out.append({p.tag_name: p.probability for p in result.predictions})
        return out

    # A tiny random-init model on 4 training pictures a tag: what it must show is separation
    # (the Negative class is learned from the green pictures, not a constant answer), and the
    # Negative tag answered first for most unseen green pictures.
    green, others = answers("green"), answers("red") + answers("blue")
    assert min(a["nothing"] for a in green) > max(a["nothing"] for a in others), (green, others)
    assert sum(max(a, key=a.__getitem__) == "nothing" for a in green) >= 2, green
    store.delete_project(project.id)
    registry.delete_project(project.id)
