"""Object-detection quality numbers, computed with numpy alone (no torch) at request time.

Custom Vision reports, for an iteration and a probability threshold and an overlap (IoU)
threshold: per-tag precision, recall and average precision, and overall precision, recall and
mAP. The Function app serves without torch, so these are computed here from the ground-truth
boxes and the model's detections.

Conventions (those of pycocotools, which the tests use as the reference):

* Boxes are ``left, top, width, height`` (Custom Vision's shape; any consistent unit).
* Matching is per image and per tag, greedy by descending probability (stable for ties): each
  detection takes the still-unmatched ground truth it overlaps most, if that IoU is at least the
  threshold (IoU equal to the threshold matches; among equal IoUs the later ground truth wins,
  as pycocotools). Because higher-probability detections match first, the matches of the
  detections above a probability threshold do not depend on those below it, so one matching
  pass serves both the precision/recall at a threshold and the whole precision-recall curve.
* AP of a tag: ``COCO_101`` is COCO's 101-point interpolated AP at one IoU threshold;
  ``VOC_ALL_POINTS`` is PASCAL VOC 2010+'s area under the interpolated curve at every recall
  step. mAP is the mean AP over the tags that have ground truth (COCO ignores the others too).
* Undefined numbers are ``None``, not 0: precision with no detections, recall and AP with no
  ground truth. The API decides how to show them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:  # numpy is this module's only runtime dependency (the training job uses it too)
    from visionpipe.annotations import ImageAnnotation

# pycocotools' recall thresholds, built the same way so a recall that equals a threshold
# compares the same.
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1,
                                     endpoint=True)


class APMethod(StrEnum):
    COCO_101 = "coco_101"
    VOC_ALL_POINTS = "voc_all_points"


@dataclass(frozen=True)
class GroundTruth:
    image: str
    tag: str
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class Detection:
    image: str
    tag: str
    probability: float
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class TagMetrics:
    tag: str
    ground_truths: int
    detections: int  # at or above the probability threshold
    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float | None  # None: no detections at the threshold
    recall: float | None  # None: no ground truth
    average_precision: float | None  # None: no ground truth


@dataclass(frozen=True)
class DetectionReport:
    per_tag: Mapping[str, TagMetrics]
    precision: float | None  # micro-averaged over tags: all true positives / all detections
    recall: float | None  # all true positives / all ground truths
    mean_average_precision: float | None  # mean AP over the tags with ground truth


# --- geometry and matching -------------------------------------------------------------------


def _boxes(values: ArrayLike, what: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).reshape(-1, 4) if np.size(values) else \
        np.zeros((0, 4))
    if not np.isfinite(array).all() or (array[:, 2:] < 0).any():
        raise ValueError(f"{what}: boxes must be finite with non-negative width and height")
    return array


def iou_matrix(boxes_a: ArrayLike, boxes_b: ArrayLike) -> NDArray[np.float64]:
    """IoU of every box in ``boxes_a`` (N x 4, left top width height) with every box in
    ``boxes_b`` (M x 4): an N x M array. Boxes that do not overlap (or have no area) give 0."""
    a, b = _boxes(boxes_a, "boxes_a"), _boxes(boxes_b, "boxes_b")
    ax0, ay0, aw, ah = (a[:, i, None] for i in range(4))
    bx0, by0, bw, bh = (b[None, :, i] for i in range(4))
    iw = np.clip(np.minimum(ax0 + aw, bx0 + bw) - np.maximum(ax0, bx0), 0.0, None)
    ih = np.clip(np.minimum(ay0 + ah, by0 + bh) - np.maximum(ay0, by0), 0.0, None)
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two ``(left, top, width, height)`` boxes."""
    return float(iou_matrix([box_a], [box_b])[0, 0])


def greedy_match(gt_boxes: ArrayLike, det_boxes: ArrayLike, det_scores: ArrayLike,
                 iou_threshold: float) -> NDArray[np.int64]:
    """For each detection (in input order), the index of the ground truth it matches, or -1.

    One image, one tag. Detections are taken by descending score (stable for ties); each takes
    the unmatched ground truth of highest IoU if that IoU >= ``iou_threshold``.
    """
    gts, dets = _boxes(gt_boxes, "gt_boxes"), _boxes(det_boxes, "det_boxes")
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(dets):
        raise ValueError("one score per detection box is needed")
    matched = np.full(len(dets), -1, dtype=np.int64)
    if not len(gts) or not len(dets):
        return matched
    ious = iou_matrix(dets, gts)
    threshold = min(iou_threshold, 1 - 1e-10)  # so that threshold 1.0 still matches equal boxes
    free = np.ones(len(gts), dtype=bool)
    for d in np.argsort(-scores, kind="mergesort"):
        candidates = np.where(free & (ious[d] >= threshold), ious[d], -1.0)
        best = len(gts) - 1 - int(np.argmax(candidates[::-1]))  # the last of equal maxima
        if candidates[best] >= 0:
            matched[d] = best
            free[best] = False
    return matched


# --- per tag ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TagCurve:
    """A tag's detections over all images, by descending score, with their match outcome."""

    scores: NDArray[np.float64]
    true_positive: NDArray[np.bool_]
    ground_truths: int


def _curves(gts: Iterable[GroundTruth], dets: Iterable[Detection],
            iou_threshold: float) -> dict[str, _TagCurve]:
    gt_by: dict[tuple[str, str], list[GroundTruth]] = defaultdict(list)
    det_by: dict[tuple[str, str], list[Detection]] = defaultdict(list)
    for g in gts:
        gt_by[g.tag, g.image].append(g)
    for d in dets:
        if not np.isfinite(d.probability):
            raise ValueError(f"detection probability {d.probability!r} is not finite")
        det_by[d.tag, d.image].append(d)
    tags = sorted({tag for tag, _ in gt_by} | {tag for tag, _ in det_by})
    images = sorted({image for _, image in gt_by} | {image for _, image in det_by})
    curves: dict[str, _TagCurve] = {}
    for tag in tags:
        scores: list[NDArray[np.float64]] = []
        hits: list[NDArray[np.bool_]] = []
        total_gt = 0
        for image in images:  # in sorted image order, as pycocotools, for the order of ties
            g, d = gt_by.get((tag, image), []), det_by.get((tag, image), [])
            total_gt += len(g)
            if not d:
                continue
            s = np.array([x.probability for x in d], dtype=np.float64)
            order = np.argsort(-s, kind="mergesort")
            match = greedy_match([(x.left, x.top, x.width, x.height) for x in g],
                                 [(x.left, x.top, x.width, x.height) for x in d], s,
                                 iou_threshold)
            scores.append(s[order])
            hits.append(match[order] >= 0)
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        all_hits = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
        order = np.argsort(-all_scores, kind="mergesort")
        curves[tag] = _TagCurve(all_scores[order], all_hits[order], total_gt)
    return curves


def _ap(curve: _TagCurve, method: APMethod) -> float | None:
    if curve.ground_truths == 0:
        return None
    tp = np.cumsum(curve.true_positive, dtype=np.float64)
    fp = np.cumsum(~curve.true_positive, dtype=np.float64)
    recall = tp / curve.ground_truths
    precision = tp / (tp + fp + np.spacing(1))
    if method is APMethod.COCO_101:
        if not len(recall):
            return 0.0
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
        sampled = np.where(at < len(recall), envelope[np.minimum(at, len(recall) - 1)], 0.0)
        return float(sampled.mean())
    if method is APMethod.VOC_ALL_POINTS:
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    raise ValueError(f"unknown AP method {method!r}")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def evaluate(gts: Iterable[GroundTruth], dets: Iterable[Detection], *,
             probability_threshold: float = 0.5, iou_threshold: float = 0.5,
             method: APMethod = APMethod.COCO_101) -> DetectionReport:
    """Per-tag and overall precision/recall at ``probability_threshold`` (detections with
    probability >= it count) and AP/mAP, all at ``iou_threshold``."""
    per_tag: dict[str, TagMetrics] = {}
    for tag, curve in _curves(gts, dets, iou_threshold).items():
        kept = curve.scores >= probability_threshold
        tp = int(np.count_nonzero(curve.true_positive & kept))
        n = int(np.count_nonzero(kept))
        per_tag[tag] = TagMetrics(
            tag=tag, ground_truths=curve.ground_truths, detections=n, true_positives=tp,
            false_positives=n - tp, false_negatives=curve.ground_truths - tp,
            precision=_ratio(tp, n), recall=_ratio(tp, curve.ground_truths),
            average_precision=_ap(curve, method))
    tps = sum(m.true_positives for m in per_tag.values())
    return DetectionReport(
        per_tag=per_tag,
        precision=_ratio(tps, sum(m.detections for m in per_tag.values())),
        recall=_ratio(tps, sum(m.ground_truths for m in per_tag.values())),
        mean_average_precision=mean_average_precision(
            {t: m.average_precision for t, m in per_tag.items()}))


def precision_recall(gts: Iterable[GroundTruth], dets: Iterable[Detection], *,
                     probability_threshold: float = 0.5, iou_threshold: float = 0.5
                     ) -> dict[str, TagMetrics]:
    """Per-tag counts, precision and recall at a probability threshold (AP included)."""
    return dict(evaluate(gts, dets, probability_threshold=probability_threshold,
                         iou_threshold=iou_threshold).per_tag)


def average_precision(gts: Iterable[GroundTruth], dets: Iterable[Detection], *,
                      iou_threshold: float = 0.5, method: APMethod = APMethod.COCO_101
                      ) -> dict[str, float | None]:
    """Per-tag AP at ``iou_threshold`` over all detections (None for tags without ground
    truth)."""
    return {tag: _ap(curve, method)
            for tag, curve in _curves(gts, dets, iou_threshold).items()}


def mean_average_precision(per_tag_ap: Mapping[str, float | None]) -> float | None:
    """Mean of the defined per-tag APs; None when no tag has ground truth."""
    defined = [ap for ap in per_tag_ap.values() if ap is not None]
    return float(np.mean(defined)) if defined else None


def ground_truths_from(annotations: Iterable[ImageAnnotation]) -> list[GroundTruth]:
    """The ground truth of parsed annotations (visionpipe.annotations), image by image name."""
    return [GroundTruth(a.image_name, r.tag, r.left, r.top, r.width, r.height)
            for a in annotations for r in a.regions]
