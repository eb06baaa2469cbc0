"""One iteration, start to finish: snapshot, download, fine-tune, export, check, evaluate, register.

Queue handling lives in training_job.worker; this module knows nothing about messages, only about
a project, an iteration row and the options. Every step overwrites what a killed earlier attempt
at the same iteration may have left, so a retry converges on one consistent iteration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training_job import dataset as ds
from training_job.checkpoints import BlobCheckpoints
from training_job.detection_pipeline import DetectionOptions
from training_job.evaluate import confusion_png, evaluate, pr_curve_png
from training_job.export import PARITY_TOLERANCE, ExportError, export_onnx, onnx_session, parity
from training_job.kfold import cross_validate
from training_job.model import (
    DEFAULT_BACKBONE,
    DEFAULT_WEIGHTS_DIR,
    USER_WEIGHTS_DIR,
    WithProbabilities,
    build_model,
    weights_file,
)
from training_job.train import EpochResult, TrainConfig, fit
from visionpipe import names
from visionpipe.manifest import (
    CONFUSION_MATRIX_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PR_CURVE_FILE,
    Manifest,
    TagOutput,
)
from visionpipe.messages import TrainingRequest
from visionpipe.preprocessing import PreprocessingSpec
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Iteration, IterationEnded, IterationStatus, Registry

log = logging.getLogger(__name__)

CONFIG_FILE = "training_config.json"
KFOLD_BELOW = 20  # images of the rarest tag under which a GPU job cross-validates by default
EXPORT_RESERVE_S = 120.0  # kept out of the training budget for export, evaluation, upload
PARITY_CHUNK = 64


@dataclass
class JobOptions:
    """How this deployment trains (command-line options; the request picks Regular/Advanced)."""

    backbone: str = DEFAULT_BACKBONE
    weights: Path | None = None  # explicit file; else weights_dir/{backbone}.pth when present
    weights_dir: Path = DEFAULT_WEIGHTS_DIR
    resize: int = 256
    crop: int = 224
    epochs: int = 10  # Regular: a quick fixed budget
    patience: int = 3
    regular_budget_minutes: float = 30.0
    advanced_epochs: int = 60  # Advanced: longer, bounded by reservedBudgetInHours
    advanced_patience: int = 8
    advanced_budget_hours: float = 1.0  # when the request reserves none
    batch_size: int = 32
    lr: float = 1e-3
    device: str = "auto"
    workers: int | None = None
    amp: bool = True
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache/visionpipe/images")
    exporter: str = "dynamo"
    parity_tolerance: float = PARITY_TOLERANCE
    min_images_per_tag: int = ds.MIN_IMAGES_PER_TAG
    seed: int = 0
    # repeated k-fold on the training images when the rarest tag has fewer images than this
    # (0: never); the spread it measures fills precisionStdDeviation / recallStdDeviation.
    # None: KFOLD_BELOW on a GPU, off on a CPU (there it would triple the demo's training time)
    kfold_below: int | None = None
    kfold_folds: int = 3
    kfold_repeats: int = 2
    checkpoints: bool = True  # per epoch, in blob storage: a killed job resumes from there
    checkpoint_every_s: float = 60.0  # at most one checkpoint save per this many seconds
    # object detection projects (training_job.detection_pipeline): the detector's own options
    detection: DetectionOptions = field(default_factory=DetectionOptions)

    @property
    def spec(self) -> PreprocessingSpec:
        return PreprocessingSpec(resize=self.resize, crop=self.crop,
                                 input_shape=(-1, 3, self.crop, self.crop))

    def weights_path(self) -> Path:
        """``--weights``; else the baked-in file; else (default folder only) the developer's."""
        if self.weights:
            return self.weights
        baked = weights_file(self.weights_dir, self.backbone)
        if self.weights_dir == DEFAULT_WEIGHTS_DIR and not baked.is_file():
            local = weights_file(USER_WEIGHTS_DIR, self.backbone)
            if local.is_file():
                return local
        return baked

    def kfold_threshold(self) -> int:
        """``kfold_below`` as given, else :data:`KFOLD_BELOW` on CUDA and 0 (off) on a CPU."""
        if self.kfold_below is not None:
            return self.kfold_below
        from training_job.train import resolve_device

        return KFOLD_BELOW if resolve_device(self.device).type == "cuda" else 0

    def budget_seconds(self, request: TrainingRequest) -> float:
        """The whole wall-clock budget of one iteration: Advanced ``reservedBudgetInHours``
        (default ``advanced_budget_hours``), Regular ``regular_budget_minutes``."""
        if request.training_type == "Advanced":
            return (request.reserved_budget_in_hours or self.advanced_budget_hours) * 3600.0
        return self.regular_budget_minutes * 60.0

    def train_config(self, request: TrainingRequest, seconds_used: float) -> TrainConfig:
        budget = self.budget_seconds(request)
        if request.training_type == "Advanced":
            epochs, patience = self.advanced_epochs, self.advanced_patience
        else:
            epochs, patience = self.epochs, self.patience
        return TrainConfig(
            epochs=epochs, patience=patience,
            time_budget_s=max(60.0, budget - seconds_used - EXPORT_RESERVE_S),
            batch_size=self.batch_size, lr=self.lr, device=self.device, workers=self.workers,
            amp=self.amp, seed=self.seed,
        )


class Timer:
    """Named wall-clock phases, for the manifest and the iteration row."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    def phase(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.phases[f"{name}Seconds"] = round(now - since, 3)
        return now

    def total(self) -> dict[str, float]:
        return {**self.phases, "totalSeconds": round(time.perf_counter() - self.started, 3)}


def _progress(phase: str, epoch: int = 0, epochs: int = 0, train_loss: float | None = None,
              val_metric: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "epoch": epoch, "epochs": epochs, "trainLoss": train_loss,
            "valMetric": val_metric, **extra}


def train_iteration(
    storage: Storage,
    project: Project,
    iteration: Iteration,
    request: TrainingRequest,
    options: JobOptions,
    check_lease: Callable[[], None] = lambda: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Manifest:
    """Train and register ``iteration``; raise (DatasetError, ExportError, ...) when it cannot be.

    ``check_lease`` raises when this worker no longer owns the request (another execution may be
    retraining the same iteration) or the iteration was canceled: called at every phase
    boundary, after every epoch and before anything is registered. ``should_stop`` is asked
    between training steps (a stop, a lost lease, a cancel). A checkpoint left by a killed
    earlier attempt of the same training is resumed (training_job.checkpoints).
    """
    if project.detection:  # an object detection domain: boxes in, a detector out
        from training_job.detection_pipeline import train_detection_iteration

        return train_detection_iteration(storage, project, iteration, request, options,
                                         check_lease, should_stop)
    registry = Registry(storage)
    label_store = LabelStore(storage)
    spec = options.spec
    timer = Timer()
    progress = progress_recorder(registry, project.id, iteration.id)

    # no status here: the row is Training already (the worker checked), and a cancel that lands
    # meanwhile must not be overwritten
    progress(_progress("snapshot"), backbone=options.backbone)

    # 1. the dataset snapshot, cached locally, stored beside the other iterations'
    t = time.perf_counter()
    snapshot = ds.take_snapshot(label_store, project, request.selected_tags,
                                min_per_tag=options.min_images_per_tag)
    t = timer.phase("snapshot", t)
    snapshot, cache = fetch_snapshot(storage, snapshot, iteration.id, options.cache_dir,
                                     options.min_images_per_tag, progress)
    t = timer.phase("download", t)
    check_lease()  # a cancel while downloading stops here, before any training
    train, validation, test = snapshot.train, snapshot.validation, snapshot.test
    sizes = {"trainImages": len(train), "validationImages": len(validation),
             "testImages": len(test)}
    log.info("project %s, iteration %s: %d tags (%s), %d train / %d validation / %d test "
             "images, %s", project.name, iteration.id, len(snapshot.tags),
             ", ".join(snapshot.tag_names), len(train), len(validation), len(test),
             project.classification_type)

    # 2. fine-tune: weights fitted on train, the epoch chosen on validation, test untouched
    weights = options.weights_path()
    built = build_model(options.backbone, len(snapshot.tags), weights)
    used = weights_used(built.weights)
    log.info("weights: %s", used)
    files = lambda samples: [cache.path(s.sha256) for s in samples]  # noqa: E731
    advanced = request.training_type == "Advanced"
    train_set = ds.CachedImages(files(train), snapshot.targets(train),
                                ds.train_transform(spec, strong=advanced), spec.min_decode_size)
    val_set = ds.ServedImages(files(validation), snapshot.targets(validation), spec)
    recal_set = ds.ServedImages(files(train), snapshot.targets(train), spec)
    config = options.train_config(request, time.perf_counter() - timer.started)
    checkpoints = BlobCheckpoints(storage, project.id, iteration.id, {
        "dataset": snapshot.fingerprint(), "backbone": options.backbone,
        "weights": built.weights, "spec": spec.to_dict(), "epochs": config.epochs,
        "batchSize": config.batch_size, "lr": config.lr, "seed": config.seed,
        "trainingType": request.training_type,
    }, every_s=options.checkpoint_every_s) if options.checkpoints else None

    def on_epoch(r: EpochResult) -> None:
        progress(_progress("training", r.epoch, r.epochs, round(r.train_loss, 5),
                           round(r.val_metric, 5), imagesPerSecond=round(r.images_per_s, 2),
                           weights=used, **sizes))
        check_lease()

    progress(_progress("training", 0, config.epochs, weights=used, **sizes))
    model, fitted = fit(built, snapshot.multilabel, train_set, val_set, recal_set, config,
                        on_epoch, should_stop, checkpoints)
    t = timer.phase("train", t)

    # 2b. small project: the spread over repeated k-fold on the training images
    cross_validation = None
    if snapshot.min_images_per_tag() < options.kfold_threshold():
        check_lease()
        progress(_progress("crossValidation", fitted.best_epoch, config.epochs, weights=used,
                           **sizes))
        budget_left = config.time_budget_s - timer.phases.get("trainSeconds", 0.0)
        cross_validation = cross_validate(
            snapshot, cache, spec, options.backbone, weights, config, fitted.best_epoch,
            options.kfold_folds, options.kfold_repeats, time.monotonic() + budget_left,
            should_stop)
        t = timer.phase("crossValidation", t)

    # 3. export and check
    progress(_progress("exporting", fitted.best_epoch, config.epochs))
    served_model = WithProbabilities(model, snapshot.multilabel).eval()
    with tempfile.TemporaryDirectory(prefix="visionpipe-export-") as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        opset = export_onnx(served_model, spec, onnx_path, options.exporter)
        model_bytes = onnx_path.read_bytes()
    t = timer.phase("export", t)
    check_lease()

    # 4. parity and evaluation: the exported model on the test pictures, preprocessed by the
    # serving code itself (draft decode and all), so each test image's probabilities are the
    # ones quick test answers for it
    progress(_progress("evaluating", fitted.best_epoch, config.epochs))
    session = onnx_session(model_bytes)
    worst, probs = 0.0, []
    for i in range(0, len(test), PARITY_CHUNK):
        diff, served = parity(session, served_model,
                              ds.served_inputs(cache, test[i:i + PARITY_CHUNK], spec))
        worst = max(worst, diff)
        probs.append(served)
    log.info("parity: max |onnx - torch| = %.2e on %d test images (tolerance %.0e)",
             worst, len(test), options.parity_tolerance)
    if worst > options.parity_tolerance:
        raise ExportError(f"ONNX Runtime and torch disagree by {worst:.2e} in probability "
                          f"(tolerance {options.parity_tolerance:.0e}); not registering")
    probabilities = np.concatenate(probs)
    labels = snapshot.targets(test)
    metrics, metrics_doc = evaluate(labels, probabilities, snapshot.tag_ids, snapshot.tag_names,
                                    [(s.image_id, s.sha256) for s in test], len(train),
                                    validation_images=len(validation),
                                    cross_validation=cross_validation)
    pr_png = pr_curve_png(labels, probabilities, metrics)
    cm_png = confusion_png(labels, probabilities, snapshot.tag_names, snapshot.multilabel)
    t = timer.phase("evaluate", t)

    # 5. register: artifacts first (manifest last: it is what serving reads), then the row
    check_lease()
    progress(_progress("registering", fitted.best_epoch, config.epochs))
    timings = timer.total()
    manifest = Manifest(
        project_id=project.id,
        iteration_id=iteration.id,
        classification_type=project.classification_type,
        tags=tuple(TagOutput(tag.id, tag.name, tag.type) for tag in snapshot.tags),
        preprocessing=spec,
        backbone=options.backbone,
        pretrained=built.pretrained,
        onnx_opset=opset,
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        metrics=metrics,
        timings=timings,
        created=datetime.now(UTC).isoformat(),
    )
    resolved = {
        "request": request.to_dict(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "train": asdict(config),
        "fit": fitted.to_dict(),
        "pretrained": built.pretrained,
        "weights": built.weights,
        "weightsUsed": used,
        "split": sizes,
        "parityMaxAbsDiff": worst,
        "exporter": options.exporter,
    }
    upload_artifacts(registry, project.id, iteration.id, [
        (MODEL_FILE, model_bytes, "application/octet-stream"),
        (METRICS_FILE, json.dumps(metrics_doc, indent=1).encode(), "application/json"),
        (PR_CURVE_FILE, pr_png, "image/png"),
        (CONFUSION_MATRIX_FILE, cm_png, "image/png"),
        (CONFIG_FILE, json.dumps(resolved, indent=2, default=str).encode(), "application/json"),
        (MANIFEST_FILE, manifest.to_json().encode(), "application/json"),
    ])
    check_lease()
    timings = timer.total()
    register_completed(
        registry, project.id, iteration.id, checkpoints, check_lease,
        progress=_progress("completed", fitted.best_epoch, config.epochs,
                           round(fitted.history[-1].train_loss, 5) if fitted.history else None,
                           round(fitted.best_metric, 5), stopped=fitted.stopped,
                           epochsRun=len(fitted.history), resumedFrom=fitted.resumed_from,
                           weights=used, trainingType=request.training_type,
                           budgetSeconds=round(options.budget_seconds(request)),
                           usedSeconds=timings["totalSeconds"], **sizes),
        metrics=metrics,
        trainedAt=datetime.now(UTC),
        failureReason="",
        backbone=options.backbone,
        pretrained=built.pretrained,
        timingsJson=json.dumps(timings),
    )
    log.info("iteration %s Completed in %.1fs: precision %.3f, recall %.3f, AP %.3f on %d test "
             "images%s", iteration.id, timings["totalSeconds"], metrics["precision"],
             metrics["recall"], metrics["averagePrecision"], len(test),
             "" if built.pretrained else " (RANDOM INIT)")
    return manifest


def progress_recorder(registry: Registry, project_id: str, iteration_id: str
                      ) -> Callable[..., None]:
    """``progress(value, **columns)``: the iteration row's progress, best effort (a progress
    write that fails must not fail the training)."""

    def progress(value: dict[str, Any], **columns: Any) -> None:
        try:
            registry.update_iteration(project_id, iteration_id, progress=value, **columns)
        except Exception as e:  # noqa: BLE001 - progress is advisory
            log.warning("could not record progress: %s", e)

    return progress


def fetch_snapshot(storage: Storage, snapshot: ds.Snapshot, iteration_id: str, cache_dir: Path,
                   min_per_tag: int, progress: Callable[..., None]
                   ) -> tuple[ds.Snapshot, ds.ImageCache]:
    """Download the snapshot's images into the local cache (those that cannot be fetched are
    left out, the minimums re-checked) and store the split as the iteration's dataset."""
    cache = ds.ImageCache(storage.container(names.TRAINING_IMAGES), cache_dir)
    progress(_progress("download", images=len(snapshot.samples)))
    missing = cache.fetch_all(snapshot.samples)
    if missing:
        log.warning("%d images could not be fetched; training without them", len(missing))
        snapshot = ds.without(snapshot, missing, min_per_tag=min_per_tag)
    ds.write_snapshot(storage, snapshot, iteration_id)
    return snapshot, cache


def upload_artifacts(registry: Registry, project_id: str, iteration_id: str,
                     artifacts: list[tuple[str, bytes, str]]) -> None:
    """(name, bytes, content type) in order: the manifest goes last, as it is what serving
    reads."""
    for name, data, kind in artifacts:
        registry.upload_artifact(project_id, iteration_id, name, data, kind)


def register_completed(registry: Registry, project_id: str, iteration_id: str,
                       checkpoints: BlobCheckpoints | None, check_lease: Callable[[], None],
                       **columns: Any) -> None:
    """The iteration row to Completed with ``columns``, then the checkpoint deleted.

    Completed only over a row still Training (under its ETag): a cancel that landed since the
    last check wins, and what this attempt uploaded is discarded (registry.finish_iteration);
    then ``check_lease`` raises (the worker's cancel watch or lost lease: no event), else
    :class:`IterationEnded` does."""
    try:
        registry.finish_iteration(project_id, iteration_id, IterationStatus.COMPLETED, **columns)
    except IterationEnded as ended:
        log.warning("iteration %s became %s before it could be registered", iteration_id,
                    ended.iteration.status)
        if ended.iteration.status != IterationStatus.COMPLETED:  # else: another execution's
            registry.delete_artifacts(project_id, iteration_id)  # model, at the same paths
            if checkpoints is not None:
                checkpoints.delete()
        check_lease()
        raise
    if checkpoints is not None:
        checkpoints.delete()


def weights_used(weights: str) -> str:
    """What ``status`` and ``metrics`` say the backbone started from."""
    return f"pretrained ({Path(weights).name})" if weights else "random init"
