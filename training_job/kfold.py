"""Repeated k-fold cross-validation of a small project's training images: the spread of its
precision and recall.

A test split of a few images per tag gives one noisy number. For such projects the job also
trains ``folds x repeats`` extra models on the training side (train + validation images, never
the test images): each repeat deals the images into ``folds`` stratified folds by a hash of the
image bytes and the repeat number, and each fold is held out once while a model is fitted on
the others for the number of epochs the main run selected on validation (no selection on the
held-out fold). The held-out predictions, preprocessed exactly as serving does, go into
metrics.json; visionpipe.metrics.with_spread turns them into mean and standard deviation at any
threshold. docs/training.md says when this runs and what it costs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training_job import dataset as ds
from training_job.model import build_model
from training_job.train import Interrupted, TrainConfig, fit
from visionpipe.metrics import cross_validation_document, predictions_document
from visionpipe.preprocessing import PreprocessingSpec

log = logging.getLogger(__name__)


def fold_of(project_id: str, samples: Sequence[ds.Sample], folds: int, repeat: int
            ) -> list[int]:
    """The fold of each sample in one repeat: stratified by the sample's first tag, ordered by a
    hash of (repeat, project, image bytes), dealt round-robin. Deterministic in the bytes."""
    def key(s: ds.Sample) -> str:
        return hashlib.sha256(f"{repeat}:{project_id}:{s.sha256}".encode()).hexdigest()

    fold = [0] * len(samples)
    by_tag: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_tag.setdefault(s.tag_ids[0] if s.tag_ids else "", []).append(i)
    offset = 0
    for tag in sorted(by_tag):
        for rank, i in enumerate(sorted(by_tag[tag], key=lambda i: key(samples[i]))):
            fold[i] = (rank + offset) % folds
        offset += len(by_tag[tag])  # the next tag starts where this one stopped: even folds
    return fold


def cross_validate(
    snapshot: ds.Snapshot,
    cache: ds.ImageCache,
    spec: PreprocessingSpec,
    backbone: str,
    weights: Path | None,
    config: TrainConfig,
    epochs: int,
    folds: int,
    repeats: int,
    deadline: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, object] | None:
    """Run the folds (until ``deadline``, a ``time.monotonic()`` value) and return metrics.json's
    ``crossValidationRuns``; None when not even one fold fitted in the time."""
    pool = snapshot.train + snapshot.validation
    fold_config = replace(config, epochs=max(1, epochs), patience=max(1, epochs) + 1,
                          time_budget_s=float("inf"))
    files = [cache.path(s.sha256) for s in pool]
    targets = snapshot.targets(pool)
    runs: list[dict[str, object]] = []
    fold_seconds = 0.0
    for repeat in range(repeats):
        assignment = np.asarray(fold_of(snapshot.project.id, pool, folds, repeat))
        for k in range(folds):
            if should_stop():
                raise Interrupted("stop requested during cross-validation")
            if runs and time.monotonic() + fold_seconds > deadline:
                log.warning("cross-validation: stopping after %d of %d folds (time budget)",
                            len(runs), folds * repeats)
                return _document(runs, folds, repeats, epochs) if runs else None
            held = np.flatnonzero(assignment == k)
            kept = np.flatnonzero(assignment != k)
            if len(held) == 0 or len(kept) == 0:
                continue
            t0 = time.monotonic()
            built = build_model(backbone, len(snapshot.tags), weights)
            train_set = ds.CachedImages([files[i] for i in kept], targets[kept],
                                        ds.train_transform(spec), spec.min_decode_size)
            recal = ds.ServedImages([files[i] for i in kept], targets[kept], spec)
            empty = ds.ServedImages([], np.zeros((0, len(snapshot.tags))), spec)
            model, _ = fit(built, snapshot.multilabel, train_set, empty, recal,
                           replace(fold_config, seed=config.seed + 1000 * repeat + k),
                           should_stop=should_stop)
            probs = _predict(model, cache, [pool[i] for i in held], spec, snapshot.multilabel)
            rows = [(pool[i].image_id, pool[i].sha256, list(pool[i].tag_ids), p)
                    for i, p in zip(held, probs, strict=True)]
            runs.append(predictions_document(snapshot.tag_ids, snapshot.tag_names, rows))
            fold_seconds = time.monotonic() - t0
            log.info("cross-validation fold %d/%d of repeat %d/%d: %d held out, %.1fs",
                     k + 1, folds, repeat + 1, repeats, len(held), fold_seconds)
    return _document(runs, folds, repeats, epochs) if runs else None


def _document(runs: list[dict[str, object]], folds: int, repeats: int, epochs: int
              ) -> dict[str, object]:
    return cross_validation_document(runs, folds, repeats, epochs)


@torch.inference_mode()
def _predict(model: torch.nn.Module, cache: ds.ImageCache, samples: Sequence[ds.Sample],
             spec: PreprocessingSpec, multilabel: bool) -> np.ndarray:
    x = torch.from_numpy(ds.served_inputs(cache, samples, spec))
    logits = model.eval()(x).float()
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)
    return probs.numpy()
