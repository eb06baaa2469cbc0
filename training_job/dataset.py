"""The dataset of one iteration: a snapshot of the ``images`` table, split, cached and decoded.

The snapshot is taken once, at the start, and written to
``datasets/{projectId}/{iterationId}.jsonl``, so an iteration can always say exactly what it was
trained, selected and tested on, even after the label store has moved on. The split has three
sides (docs/training.md says exactly how they are used):

- ``test``: held out from everything; every reported metric comes from it and from nothing else;
- ``validation``: early stopping and the choice of the best epoch look at it, nothing is reported
  from it (picking the epoch on the reported images would make the numbers optimistic);
- ``train``: what the weights are fitted on.

The split is deterministic in the image bytes (a hash of the project id and the image's sha256,
not the listing order or a random seed), so the same image stays on the same side across
iterations and retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContentSettings
from PIL import Image
from torch.utils.data import Dataset

from visionpipe import names
from visionpipe.imaging import open_oriented
from visionpipe.preprocessing import (
    PreprocessingSpec,
    normalize,
    normalize_into,
    prepare_image,
    resize_and_crop,
)
from visionpipe.stores.label_store import ImageRecord, Project, Tag
from visionpipe.training_rules import MIN_IMAGES_PER_TAG, MIN_REGULAR_TAGS, MIN_TAGS

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from visionpipe.storage import Storage

log = logging.getLogger(__name__)

TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
TRAIN, VALIDATION, TEST = "train", "validation", "test"


class DatasetError(Exception):
    """The data cannot make an iteration (too few images, unknown tags); the message says why."""


@dataclass(frozen=True)
class Sample:
    image_id: str
    sha256: str
    blob_paths: tuple[str, ...]  # inside training-images; the first one that still exists is used
    tag_ids: tuple[str, ...]  # the image's tags among the selected ones
    split: str  # "train" | "validation" | "test"


@dataclass(frozen=True)
class Snapshot:
    """The frozen input of one iteration."""

    project: Project
    tags: tuple[Tag, ...]  # the model's output order
    samples: tuple[Sample, ...]

    @property
    def multilabel(self) -> bool:
        return self.project.multilabel

    @property
    def train(self) -> list[Sample]:
        return [s for s in self.samples if s.split == TRAIN]

    @property
    def validation(self) -> list[Sample]:
        return [s for s in self.samples if s.split == VALIDATION]

    @property
    def test(self) -> list[Sample]:
        return [s for s in self.samples if s.split == TEST]

    def min_images_per_tag(self) -> int:
        """The fewest images any output tag has (all sides together): how "tiny" a project is."""
        counts = Counter(t for s in self.samples for t in s.tag_ids)
        return min((counts[t.id] for t in self.tags), default=0)

    def fingerprint(self) -> str:
        """What a checkpoint was trained on: tags in output order and every sample's side."""
        return hashlib.sha256(json.dumps([self.tag_ids, self.to_jsonl().decode()]).encode()
                              ).hexdigest()

    @property
    def tag_ids(self) -> list[str]:
        return [t.id for t in self.tags]

    @property
    def tag_names(self) -> list[str]:
        return [t.name for t in self.tags]

    def targets(self, samples: Sequence[Sample]) -> np.ndarray:
        """``(N, T)`` float32 0/1 label matrix in output order."""
        column = {t.id: j for j, t in enumerate(self.tags)}
        y = np.zeros((len(samples), len(self.tags)), dtype=np.float32)
        for i, s in enumerate(samples):
            for tag_id in s.tag_ids:
                y[i, column[tag_id]] = 1.0
        return y

    def to_jsonl(self) -> bytes:
        lines = [
            json.dumps(
                {
                    "imageId": s.image_id,
                    "sha256": s.sha256,
                    "blobPath": s.blob_paths[0],
                    "tagIds": list(s.tag_ids),
                    "split": s.split,
                }
            )
            for s in self.samples
        ]
        return ("\n".join(lines) + "\n").encode()


def _split_key(project_id: str, sha256: str) -> str:
    return hashlib.sha256(f"{project_id}:{sha256}".encode()).hexdigest()


def _n_test(n: int, fraction: float) -> int:
    """At least one test image per group of two or more, half-up rounding (not banker's)."""
    if n < 2:
        return 0
    return min(n - 1, max(1, math.floor(n * fraction + 0.5)))


def _n_validation(n: int, n_test: int, fraction: float) -> int:
    """Of a group of ``n`` with ``n_test`` test images: validation images, at least one when
    three or more (one stays for training), same rounding as :func:`_n_test`."""
    if n < 3 or fraction <= 0:
        return 0
    return min(n - 1 - n_test, max(1, math.floor(n * fraction + 0.5)))


def build_snapshot(
    project: Project,
    tags: Sequence[Tag],
    records: Iterable[ImageRecord],
    selected_tag_ids: Sequence[str] = (),
    min_per_tag: int = MIN_IMAGES_PER_TAG,
    test_fraction: float = TEST_FRACTION,
    validation_fraction: float = VALIDATION_FRACTION,
) -> Snapshot:
    """Select the images of the selected tags (all tags when none are given) and split them.

    Stratified: each image is grouped under its rarest selected tag, the group is ordered by a
    hash of the project id and the image bytes, and its first ``test_fraction`` (at least one
    of two or more) go to the test side, the next ``validation_fraction`` (at least one of three
    or more) to the validation side, the rest to training. Adding images to a group moves at
    most the images at the quota boundaries.
    """
    by_id = {t.id: t for t in tags}
    if selected_tag_ids:
        unknown = [t for t in selected_tag_ids if t not in by_id]
        if unknown:
            raise DatasetError(f"selected tags not in project {project.name!r}: {unknown}")
        chosen = [by_id[t] for t in dict.fromkeys(selected_tag_ids)]
    else:
        chosen = list(tags)
    chosen_ids = {t.id for t in chosen}
    picked: list[tuple[ImageRecord, tuple[str, ...]]] = []
    for record in records:
        labels = tuple(t for t in record.tag_ids if t in chosen_ids)
        if labels and record.blob_paths:
            picked.append((record, labels))
    counts = Counter(t for _, labels in picked for t in labels)
    short = [f"{t.name!r} ({counts[t.id]})" for t in chosen if counts[t.id] < min_per_tag]
    if short:
        raise DatasetError(
            f"every tag needs at least {min_per_tag} images; too few for {', '.join(short)}"
        )
    if len(chosen) < MIN_TAGS:
        raise DatasetError(f"training needs at least {MIN_TAGS} tags, got {len(chosen)}")
    _check_negative(chosen, picked)

    order = {t.id: j for j, t in enumerate(chosen)}
    groups: dict[str, list[tuple[ImageRecord, tuple[str, ...]]]] = {}
    for record, labels in picked:
        rarest = min(labels, key=lambda t: (counts[t], order[t]))
        groups.setdefault(rarest, []).append((record, labels))
    samples: list[Sample] = []
    for tag in chosen:
        group = sorted(groups.get(tag.id, []), key=lambda rl: _split_key(project.id, rl[0].sha256))
        n_test = _n_test(len(group), test_fraction)
        n_val = _n_validation(len(group), n_test, validation_fraction)
        for i, (record, labels) in enumerate(group):
            split = TEST if i < n_test else VALIDATION if i < n_test + n_val else TRAIN
            samples.append(
                Sample(record.id, record.sha256, record.blob_paths,
                       tuple(sorted(labels, key=order.__getitem__)), split)
            )
    samples.sort(key=lambda s: (s.split, s.sha256))
    return Snapshot(project, tuple(chosen), tuple(samples))


def _check_negative(chosen: Sequence[Tag],
                    picked: Sequence[tuple[ImageRecord, tuple[str, ...]]]) -> None:
    """The Negative tag's rules on the snapshot actually trained (the label store refuses them
    on every write; a tagging that raced with a tag's change to Negative is caught here).

    The Negative tag stays one output among the others: its images (and only they) have it as
    their one label, so a multiclass model learns "none of the tags" as a class it can answer,
    and a multilabel model learns it as its own output beside all-zero others."""
    negative = {t.id for t in chosen if t.negative}
    regular = len(chosen) - len(negative)
    if regular < MIN_REGULAR_TAGS:
        raise DatasetError(f"training needs at least {MIN_REGULAR_TAGS} tag that is not the "
                           "Negative tag")
    mixed = sum(1 for _, labels in picked if negative.intersection(labels) and len(labels) > 1)
    if mixed:
        raise DatasetError(f"{mixed} image(s) carry the Negative tag and another tag; an image "
                           "tagged Negative carries no other tag")


def take_snapshot(
    label_store: Any, project: Project, selected_tag_ids: Sequence[str] = (), **kwargs: Any
) -> Snapshot:
    """:func:`build_snapshot` over the project's current rows in the ``images`` table."""
    tags = label_store.list_tags(project.id)
    records = label_store.list_images(project.id)
    return build_snapshot(project, tags, records, selected_tag_ids, **kwargs)


def without(snapshot: Snapshot, missing: set[str], **kwargs: Any) -> Snapshot:
    """The snapshot rebuilt without images whose bytes could not be fetched (re-checks minimums)."""
    records = [
        ImageRecord(snapshot.project.id, s.sha256, s.tag_ids, s.blob_paths, 0, 0, "", 0,
                    snapshot.project.created)
        for s in snapshot.samples
        if s.sha256 not in missing
    ]
    return build_snapshot(snapshot.project, snapshot.tags, records, [t.id for t in snapshot.tags],
                          **kwargs)


def write_snapshot(storage: Storage, snapshot: Snapshot, iteration_id: str) -> str:
    """Store the split as ``datasets/{projectId}/{iterationId}.jsonl``."""
    path = f"{snapshot.project.id}/{iteration_id}.jsonl"
    storage.container(names.DATASETS).upload_blob(
        path, snapshot.to_jsonl(), overwrite=True,
        content_settings=ContentSettings(content_type="application/x-ndjson"),
    )
    return path


class ImageCache:
    """Training images on local disk, keyed by the sha256 of their bytes.

    Bytes are verified against the key on download, so a cache hit never needs re-checking and a
    blob overwritten with other content is noticed instead of trained on under the wrong label.
    """

    def __init__(self, container: ContainerClient, root: Path) -> None:
        self._container = container
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def _download(self, sample: Sample) -> bool:
        target = self.path(sample.sha256)
        if target.exists():
            return True
        for blob_path in sample.blob_paths:
            try:
                data = self._container.download_blob(blob_path).readall()
            except ResourceNotFoundError:
                log.warning("image %s: blob %s is gone", sample.image_id, blob_path)
                continue
            if hashlib.sha256(data).hexdigest() != sample.sha256:
                log.warning("image %s: blob %s now holds other bytes", sample.image_id, blob_path)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)  # atomic: a concurrent reader sees all bytes or none
            return True
        return False

    def fetch_all(self, samples: Sequence[Sample], workers: int = 8) -> set[str]:
        """Download what is not cached yet (in parallel); return the sha256s that are missing."""
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            found = list(pool.map(self._download, samples))
        return {s.sha256 for s, ok in zip(samples, found, strict=True) if not ok}


# --- decoding and transforms ---------------------------------------------------------------------
class EvalTransform:
    """The serving preprocessing (visionpipe.preprocessing) as a tensor transform: the validation
    pictures the model is selected on are exactly what serving will feed it."""

    def __init__(self, spec: PreprocessingSpec) -> None:
        self.spec = spec

    def __call__(self, img: Image.Image) -> torch.Tensor:
        crop = np.asarray(resize_and_crop(img, self.spec), dtype=np.uint8)
        return torch.from_numpy(normalize(crop[None], self.spec)[0])


def train_transform(spec: PreprocessingSpec, strong: bool = False
                    ) -> Callable[[Image.Image], torch.Tensor]:
    """Augmentation for training: random crops of 35-100 % of the picture, flips, mild colour
    changes (no hue shift: colour is often what tells tags apart). ``strong`` (Advanced
    training, which has the epochs to use it): crops of 20-100 %, small rotations, stronger
    colour changes and random erasing."""
    from torchvision import transforms as T

    if not strong:
        return T.Compose(
            [
                T.RandomResizedCrop(spec.crop, scale=(0.35, 1.0)),
                T.RandomHorizontalFlip(),
                T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
                T.ToTensor(),
                T.Normalize(spec.mean, spec.std),
            ]
        )
    return T.Compose(
        [
            T.RandomResizedCrop(spec.crop, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomRotation(15),
            T.ColorJitter(brightness=0.35, contrast=0.35, saturation=0.35),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
            T.RandomErasing(p=0.25),
        ]
    )


class CachedImages(Dataset):
    """Decoded, EXIF-oriented pictures from the local cache with their 0/1 target vectors."""

    def __init__(
        self,
        files: Sequence[Path],
        targets: np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor],
        min_size: tuple[int, int] | None,
    ) -> None:
        self.files = list(files)
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        self.transform = transform
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = open_oriented(self.files[index].read_bytes(), min_size=self.min_size)
        return self.transform(img), self.targets[index]


def served_input(data: bytes, spec: PreprocessingSpec) -> np.ndarray:
    """Image bytes -> the (3, H, W) float32 input serving would feed the model for them.

    The very functions of the prediction and quick-test routes (visionpipe.serving.core): JPEG
    draft decode, the integer pre-shrink of large pictures, the one-pass resize and crop, the
    lookup-table normalisation. Evaluation goes through here, so an image's score in the
    iteration's performance equals its quick-test score.
    """
    out = np.empty((3, spec.crop, spec.crop), dtype=np.float32)
    normalize_into(out, prepare_image(data, spec), spec)
    return out


class ServedImages(Dataset):
    """Pictures preprocessed exactly as serving does (validation, recalibration, evaluation)."""

    def __init__(self, files: Sequence[Path], targets: np.ndarray, spec: PreprocessingSpec
                 ) -> None:
        self.files = list(files)
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        self.spec = spec

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = served_input(self.files[index].read_bytes(), self.spec)
        return torch.from_numpy(x), self.targets[index]


def served_inputs(cache: ImageCache, samples: Sequence[Sample], spec: PreprocessingSpec
                  ) -> np.ndarray:
    """``(N, 3, H, W)`` serving inputs of cached samples (see :func:`served_input`)."""
    out = np.empty((len(samples), 3, spec.crop, spec.crop), dtype=np.float32)
    for i, s in enumerate(samples):
        out[i] = served_input(cache.path(s.sha256).read_bytes(), spec)
    return out


def load_pictures(cache: ImageCache, samples: Sequence[Sample], spec: PreprocessingSpec
                  ) -> list[Image.Image]:
    """Decoded pictures exactly as serving decodes them (for evaluation and the parity check)."""
    return [
        open_oriented(cache.path(s.sha256).read_bytes(), min_size=spec.min_decode_size)
        for s in samples
    ]
