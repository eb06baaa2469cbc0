"""Classification metrics at a probability threshold, in Custom Vision's terms; numpy only.

The training job computes an iteration's metrics with these functions, and stores the raw test-set
predictions beside them (``metrics.json``), so the Function app (which never imports torch) can
recompute precision and recall at any threshold a client asks for, with the very same code.

Conventions (one per tag, then overall):
- a tag is *predicted* for an image when its probability is >= the threshold (multiclass and
  multilabel alike, as Custom Vision reports them);
- precision = TP / predicted (0.0 when nothing was predicted), recall = TP / actual (0.0 when the
  tag has no test image);
- average precision is the area under the step precision-recall curve (the non-interpolated
  definition scikit-learn uses), threshold-free;
- overall precision and recall pool the counts of all tags (micro average); overall average
  precision is the mean over tags that have test images.

Spread (``precisionStdDeviation`` / ``recallStdDeviation``): for a small project the job also
runs repeated k-fold cross-validation on its training images and keeps every fold's held-out
predictions in metrics.json (``crossValidationRuns``); :func:`with_spread` computes each fold's
precision and recall at the threshold and reports their mean and sample standard deviation
(ddof 1) beside the test-split figures. Without cross-validation the deviations are 0.0 and
``crossValidation`` is absent. docs/training.md says the whole protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.5
#: metrics.json's key for the cross-validation folds' raw predictions (beside ``predictions``)
CROSS_VALIDATION_RUNS = "crossValidationRuns"


def _as_arrays(labels: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
    return (y > 0.5).astype(np.float64), p


def pr_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, highest score first.

    Returns ``(precision, recall, thresholds)``; tied scores form one point, so the curve does not
    depend on the order of tied images.
    """
    y = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last_of_run]
    fp = (last_of_run + 1) - tp
    positives = float(y.sum())
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / positives if positives else np.zeros_like(tp, dtype=np.float64)
    return precision, recall, s[last_of_run]


def average_precision(labels: Any, scores: Any) -> float:
    """Area under the step precision-recall curve; 0.0 when there is no positive image."""
    precision, recall, _ = pr_curve(labels, scores)
    if recall.size == 0 or recall[-1] == 0:
        return 0.0
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * precision))


def metrics_at_threshold(
    labels: Any,
    probabilities: Any,
    tag_ids: Sequence[str],
    tag_names: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    train_images: int = 0,
) -> dict[str, Any]:
    """Per-tag and overall precision, recall and AP for ``(N, T)`` 0/1 labels and probabilities.

    Returns the iteration metrics shape shared by the manifest, the ``iterations`` row, metrics.json
    and the API's performance route.
    """
    y, p = _as_arrays(labels, probabilities)
    if y.shape[1] != len(tag_ids) or len(tag_ids) != len(tag_names):
        raise ValueError(f"{y.shape[1]} columns but {len(tag_ids)} tag ids, {len(tag_names)} names")
    predicted = p >= threshold
    actual = y > 0.5
    tp = (predicted & actual).sum(axis=0)
    n_pred = predicted.sum(axis=0)
    n_true = actual.sum(axis=0)
    per_tag = []
    aps = []
    for j, (tag_id, name) in enumerate(zip(tag_ids, tag_names, strict=True)):
        ap = average_precision(y[:, j], p[:, j])
        if n_true[j]:
            aps.append(ap)
        per_tag.append(
            {
                "id": tag_id,
                "name": name,
                "precision": float(tp[j] / n_pred[j]) if n_pred[j] else 0.0,
                "recall": float(tp[j] / n_true[j]) if n_true[j] else 0.0,
                "averagePrecision": ap,
                "count": int(n_true[j]),
            }
        )
    total_tp, total_pred, total_true = int(tp.sum()), int(n_pred.sum()), int(n_true.sum())
    return {
        "threshold": float(threshold),
        "precision": total_tp / total_pred if total_pred else 0.0,
        "recall": total_tp / total_true if total_true else 0.0,
        "averagePrecision": float(np.mean(aps)) if aps else 0.0,
        "perTag": per_tag,
        "testImages": int(y.shape[0]),
        "trainImages": int(train_images),
    }


def predictions_document(
    tag_ids: Sequence[str],
    tag_names: Sequence[str],
    samples: Sequence[tuple[str, str, Sequence[str], Sequence[float]]],
) -> dict[str, Any]:
    """The raw test-set predictions kept in metrics.json: ``(imageId, sha256, tag ids, probs)``."""
    return {
        "tagIds": list(tag_ids),
        "tagNames": list(tag_names),
        "samples": [
            {
                "imageId": image_id,
                "sha256": sha,
                "labels": list(labels),
                "probabilities": [round(float(x), 6) for x in probs],
            }
            for image_id, sha, labels, probs in samples
        ],
    }


def arrays_from_predictions(document: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, probabilities)`` arrays, columns in ``tagIds`` order, from a predictions doc."""
    tag_ids = list(document["tagIds"])
    column = {t: j for j, t in enumerate(tag_ids)}
    samples = document.get("samples", [])
    labels = np.zeros((len(samples), len(tag_ids)), dtype=np.float64)
    probs = np.zeros((len(samples), len(tag_ids)), dtype=np.float64)
    for i, sample in enumerate(samples):
        for tag in sample["labels"]:
            if tag in column:
                labels[i, column[tag]] = 1.0
        probs[i] = np.asarray(sample["probabilities"], dtype=np.float64)
    return labels, probs


def recompute(metrics_json: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """The metrics of a stored metrics.json document at another threshold (the API's
    ``performance?threshold=`` route)."""
    document = metrics_json["predictions"]
    labels, probs = arrays_from_predictions(document)
    names = document.get("tagNames") or [
        next((t["name"] for t in metrics_json.get("perTag", []) if t["id"] == tag_id), tag_id)
        for tag_id in document["tagIds"]
    ]
    metrics = metrics_at_threshold(
        labels, probs, document["tagIds"], names, threshold,
        train_images=int(metrics_json.get("trainImages", 0)),
    )
    for key in ("validationImages", "split"):
        if key in metrics_json:
            metrics[key] = metrics_json[key]
    return with_spread(metrics, metrics_json.get(CROSS_VALIDATION_RUNS), threshold)


def cross_validation_document(runs: Sequence[Mapping[str, Any]], folds: int, repeats: int,
                              epochs: int) -> dict[str, Any]:
    """metrics.json's ``crossValidationRuns``: a :func:`predictions_document` per held-out
    fold."""
    return {"folds": int(folds), "repeats": int(repeats), "epochs": int(epochs),
            "runs": [dict(r) for r in runs]}


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def spread(cross_validation: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """Mean and standard deviation over the folds of ``cross_validation`` at ``threshold``:
    overall and per tag id, plus how many folds and images it rests on."""
    runs = [r for r in cross_validation.get("runs", []) if r.get("samples")]
    per_fold = []
    for run in runs:
        labels, probs = arrays_from_predictions(run)
        ids = list(run["tagIds"])
        per_fold.append(metrics_at_threshold(labels, probs, ids, ids, threshold))
    tag_ids = list(runs[0]["tagIds"]) if runs else []

    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)) if values else 0.0, "std": _std(values)}

    per_tag = {}
    for j, tag_id in enumerate(tag_ids):
        with_images = [m["perTag"][j] for m in per_fold if m["perTag"][j]["count"]]
        per_tag[tag_id] = {
            "precision": stat([t["precision"] for t in with_images]),
            "recall": stat([t["recall"] for t in with_images]),
        }
    return {
        "folds": int(cross_validation.get("folds", 0)),
        "repeats": int(cross_validation.get("repeats", 0)),
        "epochs": int(cross_validation.get("epochs", 0)),
        "runs": len(per_fold),
        "images": sum(m["testImages"] for m in per_fold),
        "precision": stat([m["precision"] for m in per_fold]),
        "recall": stat([m["recall"] for m in per_fold]),
        "averagePrecision": stat([m["averagePrecision"] for m in per_fold]),
        "perTag": per_tag,
    }


def with_spread(metrics: dict[str, Any], cross_validation: Mapping[str, Any] | None,
                threshold: float) -> dict[str, Any]:
    """``metrics`` with ``precisionStdDeviation``/``recallStdDeviation`` (overall and per tag)
    from the cross-validation folds (0.0 without any), and their summary as
    ``crossValidation``."""
    out = dict(metrics)
    summary = spread(cross_validation, threshold) if cross_validation else None
    out["precisionStdDeviation"] = summary["precision"]["std"] if summary else 0.0
    out["recallStdDeviation"] = summary["recall"]["std"] if summary else 0.0
    tags = []
    for tag in metrics.get("perTag", []):
        folds = (summary or {}).get("perTag", {}).get(tag["id"])
        tags.append({**tag,
                     "precisionStdDeviation": folds["precision"]["std"] if folds else 0.0,
                     "recallStdDeviation": folds["recall"]["std"] if folds else 0.0})
    out["perTag"] = tags
    if summary is not None:
        out["crossValidation"] = {k: v for k, v in summary.items() if k != "perTag"}
    return out


def confusion_matrix(true_index: Any, predicted_index: Any, n: int) -> np.ndarray:
    """``(n, n)`` counts, rows = actual tag, columns = predicted tag (multiclass: argmax)."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_index, int), np.asarray(predicted_index, int)), 1)
    return matrix


# --- object detection ---------------------------------------------------------------------------
#: metrics.json's key for a detector's raw test-split boxes (beside the classifier's
#: ``predictions``): the truth and every served box of every test image, so the performance route
#: recomputes precision, recall and AP at any ``threshold`` and ``overlapThreshold``.
DETECTIONS = "detections"
DEFAULT_OVERLAP_THRESHOLD = 0.5
_BOX_DIGITS = 5


def detections_document(
    tag_ids: Sequence[str],
    tag_names: Sequence[str],
    samples: Sequence[tuple[str, str, Sequence[Sequence[float]], Sequence[Sequence[float]]]],
) -> dict[str, Any]:
    """The raw test-split boxes kept in metrics.json: per image ``(imageId, sha256, regions,
    predictions)``, a region ``[tagIndex, left, top, width, height]`` and a prediction
    ``[tagIndex, probability, left, top, width, height]`` (fractions of the picture, as served:
    every box down to the detector's score floor, best first)."""

    def row(values: Sequence[float], lead: int) -> list[float | int]:
        return [int(values[0]), *(round(float(v), _BOX_DIGITS) for v in values[1:lead + 5])]

    return {
        "tagIds": list(tag_ids),
        "tagNames": list(tag_names),
        "samples": [
            {"imageId": image_id, "sha256": sha,
             "regions": [row(r, 0) for r in regions],
             "predictions": [row(p, 1) for p in predictions]}
            for image_id, sha, regions, predictions in samples
        ],
    }


def detection_inputs(document: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """(ground truths, detections) of a :func:`detections_document` for
    visionpipe.detection_metrics, tags by id, images by position (ids may repeat in theory)."""
    from visionpipe.detection_metrics import Detection, GroundTruth

    tag_ids = list(document["tagIds"])
    gts, dets = [], []
    for i, sample in enumerate(document.get("samples", [])):
        image = str(i)
        for tag, left, top, width, height in sample.get("regions", []):
            gts.append(GroundTruth(image, tag_ids[int(tag)], left, top, width, height))
        for tag, p, left, top, width, height in sample.get("predictions", []):
            dets.append(Detection(image, tag_ids[int(tag)], p, left, top, width, height))
    return gts, dets


def detection_metrics_at(
    document: Mapping[str, Any],
    threshold: float = DEFAULT_THRESHOLD,
    overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD,
    train_images: int = 0,
) -> dict[str, Any]:
    """A detector's metrics in the iteration metrics shape: per tag precision and recall of the
    boxes with probability >= ``threshold`` (a box is right when it overlaps an unmatched true box
    of its tag by IoU >= ``overlap_threshold``), AP at that IoU (COCO's 101-point
    interpolation, visionpipe.detection_metrics); overall precision and recall pool the boxes of
    all tags, ``averagePrecision`` is the mAP over tags with true boxes. Undefined numbers (no
    boxes, no truth) are 0.0, as Custom Vision shows them."""
    from visionpipe.detection_metrics import evaluate

    gts, dets = detection_inputs(document)
    report = evaluate(gts, dets, probability_threshold=threshold,
                      iou_threshold=overlap_threshold)
    names = list(document.get("tagNames") or document["tagIds"])
    per_tag = []
    for tag_id, name in zip(document["tagIds"], names, strict=True):
        m = report.per_tag.get(tag_id)
        per_tag.append({
            "id": tag_id,
            "name": name,
            "precision": (m.precision or 0.0) if m else 0.0,
            "recall": (m.recall or 0.0) if m else 0.0,
            "averagePrecision": (m.average_precision or 0.0) if m else 0.0,
            "count": m.ground_truths if m else 0,
        })
    return {
        "threshold": float(threshold),
        "overlapThreshold": float(overlap_threshold),
        "precision": report.precision or 0.0,
        "recall": report.recall or 0.0,
        "averagePrecision": report.mean_average_precision or 0.0,
        "meanAveragePrecision": report.mean_average_precision or 0.0,
        "perTag": per_tag,
        "testImages": len(document.get("samples", [])),
        "trainImages": int(train_images),
    }


def recompute_detection(metrics_json: Mapping[str, Any], threshold: float,
                        overlap_threshold: float) -> dict[str, Any]:
    """A stored detector metrics.json at another threshold and overlap (the API's
    ``performance?threshold=&overlapThreshold=`` route)."""
    metrics = detection_metrics_at(metrics_json[DETECTIONS], threshold, overlap_threshold,
                                   train_images=int(metrics_json.get("trainImages", 0)))
    for key in ("validationImages", "split"):
        if key in metrics_json:
            metrics[key] = metrics_json[key]
    return with_spread(metrics, None, threshold)
