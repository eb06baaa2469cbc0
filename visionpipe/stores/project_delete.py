"""Deleting a project with everything it owns, in every container and table.

A project owns rows keyed by its id (``projects``, ``tags``, ``images``, ``iterations`` with the
training lock, ``predictions``, ``exports``, ``annotationpairs``), blobs under its id
(``models/{id}/`` with the published pointer, ``datasets/{id}/``) and blobs under its *name*, the
drop-folder layout (``training-images/{name}/``, ``predict-images/{name}/``,
``predictions/{name}/``, ``quarantine/{container}/{name}/`` and the name's digest folder
``quarantine/{container}/_unsafe-names/{hint}/``). Names are
unique case-insensitively and the drop folder resolves them that way, so a folder whose name
matches the project's in any case belongs to it.

Order: the training lock first (no training can start, and none may be running), then blobs and
rows, the project row next to last (a delete that fails half-way can be repeated while the project
still exists), a last sweep for uploads that raced with it, and the lock last (a train call that
gets the lock after that finds the project gone and removes its own iteration).
"""

from __future__ import annotations

import logging
from contextlib import suppress

from azure.core.exceptions import ResourceNotFoundError

from visionpipe import names
from visionpipe.storage import Storage
from visionpipe.stores.annotation_pairs import AnnotationPairs
from visionpipe.stores.exports import ExportStore
from visionpipe.stores.label_store import LabelStore, Project, name_key
from visionpipe.stores.prediction_store import PredictionStore
from visionpipe.stores.quarantine import UNSAFE_FOLDER, project_hint
from visionpipe.stores.registry import Registry

log = logging.getLogger(__name__)

# Where blobs live under the project's name: (container, folder above the name).
NAMED_FOLDERS: tuple[tuple[str, str], ...] = (
    (names.TRAINING_IMAGES, ""),
    (names.PREDICT_IMAGES, ""),
    (names.PREDICTIONS, ""),
    (names.QUARANTINE, f"{names.TRAINING_IMAGES}/"),
    (names.QUARANTINE, f"{names.PREDICT_IMAGES}/"),
)


def delete_project(storage: Storage, store: LabelStore, registry: Registry,
                   project: Project) -> None:
    """Delete ``project`` and everything it owns. Raises
    :class:`~visionpipe.stores.registry.TrainingInProgress` (nothing deleted) while an iteration is
    Queued or Training. The caller checks publication (the service refuses that first)."""
    registry.block_training(project.id)
    try:
        _delete_image_blobs(storage, store, project.id)
        for container, above in NAMED_FOLDERS:
            _delete_named_folder(storage, container, above, project.name)
        for source in names.DROP_CONTAINERS:
            _delete_prefix(storage, names.QUARANTINE,
                           f"{source}/{UNSAFE_FOLDER}/{project_hint(project.name)}/")
        _delete_prefix(storage, names.DATASETS, f"{project.id}/")
        _delete_prefix(storage, names.PREDICTION_IMAGES, f"{project.id}/")  # kept pictures
        PredictionStore(storage).delete_project(project.id)
        ExportStore(storage).delete_project(project.id)
        AnnotationPairs(storage).delete_project(project.id)  # the detection drop's pairs
        store.delete_project(project.id)
    except BaseException:
        if store.get_project(project.id) is not None:
            registry.unblock_training(project.id)  # the project lives on: it may train again
        raise
    # Uploads that raced with the delete (they find the project gone and undo, or are swept here).
    _delete_image_blobs(storage, store, project.id)
    _delete_named_folder(storage, names.TRAINING_IMAGES, "", project.name)
    registry.delete_project(project.id)  # iterations, models, the pointer; the lock last
    log.info("deleted project %s (%s)", project.id, project.name)


def _delete_image_blobs(storage: Storage, store: LabelStore, project_id: str) -> None:
    images = storage.container(names.TRAINING_IMAGES)
    for record in store.delete_project_images(project_id):
        for path in record.blob_paths:
            with suppress(ResourceNotFoundError):
                images.delete_blob(path)


def _delete_named_folder(storage: Storage, container: str, above: str, name: str) -> None:
    """Delete ``{above}{folder}/...`` for every top-level folder that is ``name`` in any case."""
    client = storage.container(container)
    key = name_key(name)
    for item in client.walk_blobs(name_starts_with=above, delimiter="/"):
        folder = item.name[len(above):].rstrip("/")
        if item.name.endswith("/") and name_key(folder) == key:
            _delete_prefix(storage, container, item.name)


def _delete_prefix(storage: Storage, container: str, prefix: str) -> None:
    client = storage.container(container)
    for blob in list(client.list_blobs(name_starts_with=prefix)):
        with suppress(ResourceNotFoundError):
            client.delete_blob(blob.name)
