"""One object detection iteration, start to finish: the detection twin of training_job.pipeline.

training_job.pipeline hands a project with an object detection domain over to
:func:`train_detection_iteration`, which keeps the classification job's guarantees with a
detector (training_job.detection_model): the dataset snapshot written beside the other
iterations', the deterministic three-sided split of training_job.dataset (stratified by each
image's rarest tag, keyed by a hash of the project id and the image bytes), progress on the
iteration row after every epoch, cancel and lease checks at every phase boundary, a blob
checkpoint a killed attempt resumes from, ONNX export with box decoding and NMS in the graph, the
ORT-vs-torch parity check, metrics on the test split only, the pictures that explain them, the
manifest, and the same registration (artifacts first, manifest last, then the row; the worker
sends the same events).

Metrics are what serving answers: the exported graph is run by ONNX Runtime on the test pictures
preprocessed by the serving code, its outputs read by visionpipe.detection_decode, and every box
(down to the detector's score floor) is kept in metrics.json with the true boxes
(visionpipe.metrics.detections_document), so the performance route recomputes precision, recall
and AP at any probability and overlap threshold without torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training_job import dataset as ds
from training_job.checkpoints import BlobCheckpoints
from training_job.detection_export import (
    check_parity,
    export_detector,
    manifest_fields,
    onnx_session,
    run_onnx,
)
from training_job.detection_model import (
    DEFAULT_DOMAIN,
    DetectorSpec,
    build_detector,
    detector_for_domain,
)
from training_job.detection_train import (
    DetectionDataset,
    DetectionEpoch,
    DetectionSample,
    DetectionTrainConfig,
    fit,
)
from training_job.model import DEFAULT_WEIGHTS_DIR
from visionpipe.annotations import Region
from visionpipe.detection_decode import DetectionPreprocessing, read_detections
from visionpipe.domains import get_domain
from visionpipe.manifest import (
    DETECTIONS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PR_CURVE_FILE,
    Manifest,
    TagOutput,
)
from visionpipe.messages import TrainingRequest
from visionpipe.metrics import DETECTIONS, detection_metrics_at, detections_document
from visionpipe.storage import Storage
from visionpipe.stores.label_store import ImageRecord, LabelStore, Project
from visionpipe.stores.registry import Iteration, Registry
from visionpipe.training_rules import MIN_IMAGES_PER_TAG_DETECTION, region_tagged

log = logging.getLogger(__name__)

PICTURE_IMAGES = 8  # test pictures drawn in detections.png
PR_THRESHOLDS = 60  # probability thresholds the per-tag PR curves are sampled at


@dataclass
class DetectionOptions:
    """How this deployment trains detectors (command line ``--detection-*``). None: the domain's
    detector (training_job.detection_model.DOMAIN_DETECTORS) decides."""

    input_size: int | None = None
    epochs: int = 30  # Regular; Advanced trains ``advanced_epochs``
    patience: int = 8
    advanced_epochs: int = 80
    advanced_patience: int = 15
    batch_size: int = 8
    lr: float = 3e-4  # AdamW; with BatchNorm momentum 0.1 and clipping at 5 from a random init
    box_head_size: int | None = None
    roi_samples: int | None = None
    rpn_proposals: int | None = None  # RPN proposals kept while training
    min_images_per_tag: int = MIN_IMAGES_PER_TAG_DETECTION

    def detector(self, domain_name: str) -> DetectorSpec:
        spec = detector_for_domain(domain_name)
        if self.input_size:
            spec = spec.scaled(self.input_size)
        changes: dict[str, int] = {}
        if self.box_head_size:
            changes["box_head_size"] = self.box_head_size
        if self.roi_samples:
            changes["roi_samples_train"] = self.roi_samples
        if self.rpn_proposals:
            changes["rpn_proposals_train"] = self.rpn_proposals
        return replace(spec, **changes) if changes else spec


def regions_fingerprint(records: dict[str, ImageRecord], samples: Sequence[ds.Sample]) -> str:
    """The boxes a snapshot trains on, as one hash (checkpoint identity: moving a box is another
    training)."""
    h = hashlib.sha256()
    for s in samples:
        for g in records[s.sha256].regions:
            if g.tag_id in s.tag_ids:
                h.update(f"{s.sha256}:{g.tag_id}:{g.left:.6f},{g.top:.6f},{g.width:.6f},"
                         f"{g.height:.6f}\n".encode())
    return h.hexdigest()


def _samples(cache: ds.ImageCache, records: dict[str, ImageRecord],
             samples: Sequence[ds.Sample]) -> list[DetectionSample]:
    """Snapshot samples -> training pictures with their boxes of the selected tags (tag ids as
    the detector's tag names, so two tags can never be confused by name)."""
    out = []
    for s in samples:
        regions = tuple(Region(g.tag_id, g.left, g.top, g.width, g.height)
                        for g in records[s.sha256].regions if g.tag_id in s.tag_ids)
        out.append(DetectionSample(cache.path(s.sha256).read_bytes(), regions))
    return out


def train_detection_iteration(
    storage: Storage,
    project: Project,
    iteration: Iteration,
    request: TrainingRequest,
    options: Any,  # training_job.pipeline.JobOptions (not imported: it imports this module)
    check_lease: Callable[[], None] = lambda: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Manifest:
    """Train and register a detection ``iteration`` (see the module docstring); raise
    (DatasetError, ExportError, Interrupted, ...) when it cannot be, as
    training_job.pipeline.train_iteration does."""
    from training_job.pipeline import (
        CONFIG_FILE,
        EXPORT_RESERVE_S,
        Timer,
        _progress,
        fetch_snapshot,
        progress_recorder,
        register_completed,
        upload_artifacts,
        weights_used,
    )
    from training_job.train import resolve_device

    registry = Registry(storage)
    label_store = LabelStore(storage)
    det: DetectionOptions = options.detection
    timer = Timer()
    progress = progress_recorder(registry, project.id, iteration.id)

    domain = get_domain(project.domain_id)
    domain_name = domain.name if domain is not None else DEFAULT_DOMAIN
    spec = det.detector(domain_name)
    prep = DetectionPreprocessing(input_size=spec.input_size)
    progress(_progress("snapshot"), backbone=spec.architecture)

    # 1. the snapshot: regions -> per-image tags -> the classification job's split rules
    t = time.perf_counter()
    records = region_tagged(label_store.list_images(project.id))
    by_sha = {r.sha256: r for r in records}
    snapshot = ds.build_snapshot(project, label_store.list_tags(project.id), records,
                                 request.selected_tags, min_per_tag=det.min_images_per_tag)
    t = timer.phase("snapshot", t)
    snapshot, cache = fetch_snapshot(storage, snapshot, iteration.id, options.cache_dir,
                                     det.min_images_per_tag, progress)
    t = timer.phase("download", t)
    check_lease()
    train, validation, test = snapshot.train, snapshot.validation, snapshot.test
    sizes = {"trainImages": len(train), "validationImages": len(validation),
             "testImages": len(test)}
    tag_ids = snapshot.tag_ids
    log.info("project %s, iteration %s: object detection (%s, %d px), %d tags (%s), %d train / "
             "%d validation / %d test images", project.name, iteration.id, domain_name,
             spec.input_size, len(tag_ids), ", ".join(snapshot.tag_names), len(train),
             len(validation), len(test))

    # 2. fine-tune: weights fitted on train, the epoch chosen on validation mAP, test untouched
    weights_dirs = () if options.weights_dir == DEFAULT_WEIGHTS_DIR else (options.weights_dir,)
    torch.manual_seed(options.seed)  # a random init is part of what makes a retry reproducible
    built = build_detector(spec, len(tag_ids), weights_dirs=weights_dirs)
    used = weights_used(built.weights)
    train_set = DetectionDataset(_samples(cache, by_sha, train), tag_ids, prep, train=True,
                                 seed=options.seed)
    val_set = DetectionDataset(_samples(cache, by_sha, validation), tag_ids, prep)
    test_samples = _samples(cache, by_sha, test)
    advanced = request.training_type == "Advanced"
    budget = options.budget_seconds(request)
    config = DetectionTrainConfig(
        epochs=det.advanced_epochs if advanced else det.epochs,
        patience=det.advanced_patience if advanced else det.patience,
        time_budget_s=max(60.0, budget - (time.perf_counter() - timer.started)
                          - EXPORT_RESERVE_S),
        batch_size=det.batch_size, lr=det.lr, device=str(resolve_device(options.device)),
        seed=options.seed)
    checkpoints = BlobCheckpoints(storage, project.id, iteration.id, {
        "dataset": snapshot.fingerprint(), "regions": regions_fingerprint(by_sha, snapshot.samples),
        "detector": spec.to_dict(), "weights": built.weights, "epochs": config.epochs,
        "batchSize": config.batch_size, "lr": config.lr, "seed": config.seed,
        "trainingType": request.training_type,
    }, every_s=options.checkpoint_every_s) if options.checkpoints else None
    resume = checkpoints.load() if checkpoints is not None else None
    resumed_from = int(resume["epoch"]) + 1 if resume else 0

    with tempfile.TemporaryDirectory(prefix="visionpipe-detector-") as tmp:
        local_checkpoint = Path(tmp) / "checkpoint.pth"

        def on_epoch(r: DetectionEpoch) -> None:
            progress(_progress("training", r.epoch, r.epochs, round(r.train_loss, 5),
                               round(r.val_map, 5), imagesPerSecond=round(
                                   len(train_set) / max(r.seconds, 1e-6), 2),
                               weights=used, **sizes))
            if checkpoints is not None and checkpoints.due():
                checkpoints.save(torch.load(local_checkpoint, map_location="cpu",
                                            weights_only=False))
            check_lease()

        progress(_progress("training", 0, config.epochs, weights=used, **sizes))
        model, fitted = fit(built, train_set, val_set, config, on_epoch, should_stop,
                            checkpoint_path=local_checkpoint if checkpoints else None,
                            resume=resume)
    t = timer.phase("train", t)
    check_lease()

    # 3. export and check: the graph on the test pictures against torch
    progress(_progress("exporting", fitted.best_epoch, config.epochs))
    with tempfile.TemporaryDirectory(prefix="visionpipe-export-") as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        opset = export_detector(model, spec, prep, onnx_path)
        model_bytes = onnx_path.read_bytes()
    t = timer.phase("export", t)
    check_lease()
    progress(_progress("evaluating", fitted.best_epoch, config.epochs))
    session = onnx_session(model_bytes)
    test_set = DetectionDataset(test_samples, tag_ids, prep)
    inputs = [test_set.input(i)[None].numpy() for i in range(len(test_set))]
    # (a blank picture is export_detector's business: ONNX Runtime must answer on one there)
    parity = check_parity(session, model, spec, inputs)

    # 4. metrics on the test split, from what serving answers
    rows = []
    for s, sample, x in zip(test, test_samples, inputs, strict=True):
        found = read_detections(*run_onnx(session, x), num_tags=len(tag_ids),
                                score_floor=spec.score_floor,
                                max_detections=spec.max_detections)
        rows.append((s.image_id, s.sha256,
                     [(tag_ids.index(r.tag), r.left, r.top, r.width, r.height)
                      for r in sample.regions],
                     [(p.tag_index, p.probability, p.left, p.top, p.width, p.height)
                      for p in found]))
    document = detections_document(tag_ids, snapshot.tag_names, rows)
    metrics = detection_metrics_at(document, train_images=len(train))
    metrics["validationImages"] = len(validation)
    metrics["split"] = "test"
    metrics_doc = {**metrics, DETECTIONS: document}
    pr_png = detection_pr_png(document, metrics)
    boxes_png = detections_png(test_samples[:PICTURE_IMAGES], rows[:PICTURE_IMAGES],
                               snapshot.tag_names)
    t = timer.phase("evaluate", t)

    # 5. register: artifacts first (manifest last: it is what serving reads), then the row
    check_lease()
    progress(_progress("registering", fitted.best_epoch, config.epochs))
    fields = manifest_fields(spec, prep)
    manifest = Manifest(
        project_id=project.id,
        iteration_id=iteration.id,
        classification_type=project.classification_type,
        tags=tuple(TagOutput(tag.id, tag.name, tag.type) for tag in snapshot.tags),
        preprocessing=prep.normalization(),
        backbone=spec.architecture,
        pretrained=bool(built.pretrained),
        onnx_opset=opset,
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        output_name=fields["detection"]["outputs"]["boxes"],
        metrics=metrics,
        timings=timer.total(),
        created=datetime.now(UTC).isoformat(),
        domain_type=fields["domainType"],
        detection_preprocessing=prep,
        detection=fields["detection"],
    )
    resolved = {
        "request": request.to_dict(),
        "domain": domain_name,
        "detector": spec.to_dict(),
        "options": {k: str(v) if isinstance(v, Path) else v
                    for k, v in asdict(det).items()},
        "train": asdict(config),
        "fit": fitted.to_dict(),
        "pretrained": built.pretrained,
        "weights": built.weights,
        "weightsUsed": used,
        "split": sizes,
        "parity": asdict(parity),
        "resumedFrom": resumed_from,
    }
    upload_artifacts(registry, project.id, iteration.id, [
        (MODEL_FILE, model_bytes, "application/octet-stream"),
        (METRICS_FILE, json.dumps(metrics_doc, indent=1).encode(), "application/json"),
        (PR_CURVE_FILE, pr_png, "image/png"),
        (DETECTIONS_FILE, boxes_png, "image/png"),
        (CONFIG_FILE, json.dumps(resolved, indent=2, default=str).encode(), "application/json"),
        (MANIFEST_FILE, manifest.to_json().encode(), "application/json"),
    ])
    check_lease()
    timings = timer.total()
    last = fitted.history[-1] if fitted.history else None
    register_completed(
        registry, project.id, iteration.id, checkpoints, check_lease,
        progress=_progress("completed", fitted.best_epoch, config.epochs,
                           round(last.train_loss, 5) if last else None,
                           round(fitted.best_map, 5), stopped=fitted.stopped,
                           epochsRun=len(fitted.history), resumedFrom=resumed_from,
                           weights=used, trainingType=request.training_type,
                           budgetSeconds=round(budget), usedSeconds=timings["totalSeconds"],
                           **sizes),
        metrics=metrics,
        trainedAt=datetime.now(UTC),
        failureReason="",
        backbone=spec.architecture,
        pretrained=bool(built.pretrained),
        timingsJson=json.dumps(timings),
    )
    log.info("iteration %s Completed in %.1fs: mAP@0.5 %.3f, precision %.3f, recall %.3f on %d "
             "test images%s", iteration.id, timings["totalSeconds"], metrics["averagePrecision"],
             metrics["precision"], metrics["recall"], len(test),
             "" if built.pretrained else " (RANDOM INIT)")
    return manifest


# --- pictures ----------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def detection_pr_png(document: dict[str, Any], metrics: dict[str, Any]) -> bytes:
    """One precision-recall curve per tag at the metrics' overlap threshold: a point per
    probability threshold (the distinct probabilities of the served boxes, at most
    ``PR_THRESHOLDS`` quantiles of them) where the tag has boxes; AP in the legend, the operating
    threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from visionpipe.detection_metrics import evaluate
    from visionpipe.metrics import detection_inputs

    overlap = float(metrics.get("overlapThreshold", 0.5))
    gts, dets = detection_inputs(document)
    scores = np.unique([d.probability for d in dets])
    if len(scores) > PR_THRESHOLDS:
        scores = np.unique(np.quantile(scores, np.linspace(0, 1, PR_THRESHOLDS)))
    curves: dict[str, list[tuple[float, float]]] = {}
    for threshold in scores[::-1]:
        report = evaluate(gts, dets, probability_threshold=float(threshold),
                          iou_threshold=overlap)
        for tag, m in report.per_tag.items():
            if m.precision is not None and m.recall is not None:
                curves.setdefault(tag, []).append((m.recall, m.precision))
    fig, ax = plt.subplots(figsize=(6, 5))
    for tag in metrics["perTag"]:
        points = curves.get(tag["id"], [])  # by falling threshold: recall never falls
        (line,) = ax.plot([r for r, _ in points], [p for _, p in points], "-",
                          label=f"{tag['name']} (AP {tag['averagePrecision']:.2f}, "
                                f"n={tag['count']} boxes)")
        ax.plot(tag["recall"], tag["precision"], "o", color=line.get_color())
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall per tag at IoU {overlap:.2f}, test split of "
                 f"{metrics['testImages']} images (dots: threshold {metrics['threshold']:.2f})",
                 fontsize="small")
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def detections_png(samples: Sequence[DetectionSample], rows: Sequence[tuple[Any, ...]],
                   tag_names: Sequence[str], threshold: float = 0.5) -> bytes:
    """Test pictures with their true boxes (green, dashed) and the served boxes at or above
    ``threshold`` (red, with tag and probability)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from visionpipe.imaging import open_oriented

    n = max(1, len(samples))
    cols = min(4, n)
    rows_n = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(3 * cols, 3 * rows_n), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sample, row in zip(axes.ravel(), samples, rows, strict=False):
        picture = open_oriented(sample.data)
        w, h = picture.size
        ax.imshow(picture)
        for _tag, left, top, width, height in row[2]:
            ax.add_patch(Rectangle((left * w, top * h), width * w, height * h, fill=False,
                                   edgecolor="lime", linestyle="--", linewidth=1.5))
        for tag, p, left, top, width, height in row[3]:
            if p < threshold:
                continue
            ax.add_patch(Rectangle((left * w, top * h), width * w, height * h, fill=False,
                                   edgecolor="red", linewidth=1.2))
            ax.text(left * w, top * h, f"{tag_names[int(tag)]} {p:.2f}", color="white",
                    fontsize=6, va="bottom", bbox={"facecolor": "red", "pad": 1, "lw": 0})
    fig.suptitle(f"Test pictures: true boxes (green, dashed), predicted at >= {threshold:.2f} "
                 "(red)", fontsize="small")
    return _png(fig)
