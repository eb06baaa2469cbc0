"""visionpipe.detection_metrics against hand-computed cases, an independent straightforward
implementation written here, and pycocotools (the COCO reference) on randomized cases."""

from __future__ import annotations

import contextlib
import io
import random

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionpipe.annotations import ImageAnnotation, Region
from visionpipe.detection_metrics import (
    APMethod,
    Detection,
    GroundTruth,
    average_precision,
    evaluate,
    greedy_match,
    ground_truths_from,
    iou,
    iou_matrix,
    mean_average_precision,
    precision_recall,
)

# --- hand-computed ---------------------------------------------------------------------------


def test_iou_hand_computed() -> None:
    assert iou((0, 0, 2, 2), (1, 1, 2, 2)) == pytest.approx(1 / 7)
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 1, 1), (1, 0, 1, 1)) == 0.0  # touching edges
    assert iou((0, 0, 1, 1), (5, 5, 1, 1)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # no area, no division by zero
    assert iou((0, 0, 4, 2), (1, 0, 2, 2)) == pytest.approx(0.5)
    m = iou_matrix([(0, 0, 2, 2), (0, 0, 1, 1)], [(1, 1, 2, 2), (0, 0, 1, 1), (9, 9, 1, 1)])
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, [[1 / 7, 0.25, 0], [0, 1, 0]])
    with pytest.raises(ValueError):
        iou_matrix([(0, 0, float("nan"), 1)], [(0, 0, 1, 1)])
    with pytest.raises(ValueError):
        iou_matrix([(0, 0, -1, 1)], [(0, 0, 1, 1)])


def test_greedy_match_takes_detections_by_score_not_by_overlap() -> None:
    gts = [(0, 0, 10, 10)]
    dets = [(0, 0, 10, 10), (0, 0, 9, 10)]  # the perfect box has the lower score
    assert greedy_match(gts, dets, [0.4, 0.9], 0.5).tolist() == [-1, 0]


def test_greedy_match_takes_the_best_free_ground_truth() -> None:
    gts = [(0, 0, 10, 10), (1, 0, 10, 10)]
    dets = [(1, 0, 10, 10), (0, 0, 10, 10), (50, 50, 5, 5)]
    assert greedy_match(gts, dets, [0.9, 0.8, 0.7], 0.5).tolist() == [1, 0, -1]
    # a duplicate of an already matched box is a false positive, IoU below threshold unmatched
    assert greedy_match([(0, 0, 10, 10)], [(0, 0, 10, 10), (0, 0, 10, 10)], [0.9, 0.8],
                        0.5).tolist() == [0, -1]
    assert greedy_match([(0, 0, 10, 10)], [(0, 0, 10, 4.9)], [0.9], 0.5).tolist() == [-1]
    assert greedy_match([(0, 0, 10, 10)], [(0, 0, 10, 5)], [0.9], 0.5).tolist() == [0]  # ==
    assert greedy_match([(0, 0, 1, 1)], [(0, 0, 1, 1)], [0.9], 1.0).tolist() == [0]
    assert greedy_match([], [(0, 0, 1, 1)], [0.9], 0.5).tolist() == [-1]
    assert greedy_match([(0, 0, 1, 1)], [], [], 0.5).tolist() == []


def _hand_case() -> tuple[list[GroundTruth], list[Detection]]:
    """Two dogs; detections: hit (0.9), miss (0.8), hit (0.7); one cat without detections;
    one 'bird' detection on an image with no birds."""
    gts = [GroundTruth("a", "dog", 0.0, 0.0, 0.2, 0.2), GroundTruth("b", "dog", 0.5, 0.5, 0.2, 0.2),
           GroundTruth("a", "cat", 0.6, 0.0, 0.3, 0.3)]
    dets = [Detection("a", "dog", 0.9, 0.0, 0.0, 0.2, 0.2),
            Detection("a", "dog", 0.8, 0.3, 0.3, 0.1, 0.1),
            Detection("b", "dog", 0.7, 0.51, 0.5, 0.2, 0.2),
            Detection("b", "bird", 0.95, 0.0, 0.0, 0.1, 0.1)]
    return gts, dets


def test_hand_computed_precision_recall_and_ap() -> None:
    gts, dets = _hand_case()
    # dog's curve: (P 1, R .5), (P .5, R .5), (P 2/3, R 1)
    voc = average_precision(gts, dets, method=APMethod.VOC_ALL_POINTS)
    assert voc["dog"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    coco = average_precision(gts, dets, method=APMethod.COCO_101)
    assert coco["dog"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)  # recalls 0..0.5 -> 1
    assert coco["cat"] == 0.0 and voc["cat"] == 0.0
    assert coco["bird"] is None and voc["bird"] is None  # no ground truth: undefined

    at_075 = precision_recall(gts, dets, probability_threshold=0.75)
    dog = at_075["dog"]
    assert (dog.true_positives, dog.false_positives, dog.false_negatives) == (1, 1, 1)
    assert dog.precision == 0.5 and dog.recall == 0.5
    assert at_075["cat"].precision is None and at_075["cat"].recall == 0.0
    assert at_075["bird"].precision == 0.0 and at_075["bird"].recall is None

    report = evaluate(gts, dets, probability_threshold=0.5, method=APMethod.VOC_ALL_POINTS)
    assert report.per_tag["dog"].precision == pytest.approx(2 / 3)
    assert report.per_tag["dog"].recall == 1.0
    assert report.precision == pytest.approx(2 / 4)  # 2 hits among 4 detections, all tags
    assert report.recall == pytest.approx(2 / 3)  # 2 of 3 ground truths
    assert report.mean_average_precision == pytest.approx((0.5 + 0.5 * 2 / 3 + 0.0) / 2)


def test_no_data_is_undefined_not_zero() -> None:
    report = evaluate([], [])
    assert report.per_tag == {} and report.precision is None and report.recall is None
    assert report.mean_average_precision is None
    assert mean_average_precision({"a": None}) is None
    assert mean_average_precision({"a": 1.0, "b": 0.5, "c": None}) == 0.75


def test_ground_truths_from_parsed_annotations() -> None:
    ann = ImageAnnotation("x.jpg", (Region("dog", 0.1, 0.2, 0.3, 0.4),))
    assert ground_truths_from([ann]) == [GroundTruth("x.jpg", "dog", 0.1, 0.2, 0.3, 0.4)]


# --- randomized: reference implementations ---------------------------------------------------


def _random_case(rng: random.Random) -> tuple[list[GroundTruth], list[Detection]]:
    gts: list[GroundTruth] = []
    dets: list[Detection] = []
    tags = ["t0", "t1", "t2"][: rng.randint(1, 3)]
    for i in range(rng.randint(1, 5)):
        image = f"img{i}"
        for tag in tags:
            for _ in range(rng.randint(0, 5)):
                w, h = rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.5)
                box = (rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h)
                gts.append(GroundTruth(image, tag, *box))
                for _ in range(rng.choice([0, 1, 1, 1, 2])):  # misses, hits and duplicates
                    j = [b + rng.gauss(0, 0.03) for b in box]
                    dets.append(Detection(image, tag, rng.random(), j[0], j[1], abs(j[2]),
                                          abs(j[3])))
            for _ in range(rng.randint(0, 3)):  # pure false positives
                w, h = rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.5)
                dets.append(Detection(image, tag, rng.random(), rng.uniform(0, 1 - w),
                                      rng.uniform(0, 1 - h), w, h))
    return gts, dets


def _plain_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _plain_outcomes(gts: list[GroundTruth], dets: list[Detection], thr: float,
                    tag: str) -> tuple[list[tuple[float, bool]], int]:
    """(probability, hit) of every detection of ``tag``, with plain loops."""
    out: list[tuple[float, bool]] = []
    for image in {d.image for d in dets if d.tag == tag}:
        g = [(x.left, x.top, x.width, x.height) for x in gts if x.tag == tag and x.image == image]
        used = [False] * len(g)
        mine = sorted((d for d in dets if d.tag == tag and d.image == image),
                      key=lambda d: -d.probability)
        for d in mine:
            box = (d.left, d.top, d.width, d.height)
            best, best_iou = -1, thr
            for k, gb in enumerate(g):
                if not used[k] and _plain_iou(box, gb) >= best_iou:
                    best, best_iou = k, _plain_iou(box, gb)
            if best >= 0:
                used[best] = True
            out.append((d.probability, best >= 0))
    return sorted(out, key=lambda o: -o[0]), sum(1 for x in gts if x.tag == tag)


def _plain_voc_ap(outcomes: list[tuple[float, bool]], n_gt: int) -> float:
    """VOC all-points AP written differently: the mean, over every ground truth, of the best
    precision reached at its recall or beyond (0 for ground truths never found)."""
    precisions, hits = [], 0
    for k, (_, hit) in enumerate(outcomes, 1):
        hits += hit
        precisions.append((hit, hits / k))
    total = 0.0
    for k, (hit, _) in enumerate(precisions):
        if hit:
            total += max(p for _, p in precisions[k:])
    return total / n_gt


def _coco_reference(gts: list[GroundTruth], dets: list[Detection],
                    thr: float) -> dict[str, float | None]:
    scale = 1000.0  # pixels-ish; IoU does not depend on the scale
    images = sorted({g.image for g in gts} | {d.image for d in dets})
    tags = sorted({g.tag for g in gts} | {d.tag for d in dets})
    img_id = {name: i + 1 for i, name in enumerate(images)}
    cat_id = {tag: i + 1 for i, tag in enumerate(tags)}

    def bbox(x: GroundTruth | Detection) -> list[float]:
        return [x.left * scale, x.top * scale, x.width * scale, x.height * scale]

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i, "width": scale, "height": scale} for i in img_id.values()],
            "categories": [{"id": c, "name": t} for t, c in cat_id.items()],
            "annotations": [{"id": k + 1, "image_id": img_id[g.image],
                             "category_id": cat_id[g.tag], "bbox": bbox(g), "iscrowd": 0,
                             "area": g.width * g.height * scale * scale}
                            for k, g in enumerate(gts)]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{"image_id": img_id[d.image], "category_id": cat_id[d.tag],
                                    "bbox": bbox(d), "score": d.probability} for d in dets])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([thr])
        ev.params.maxDets = [10_000]
        ev.params.areaRng = [[0.0, 1e12]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    result: dict[str, float | None] = {}
    for k, c in enumerate(ev.params.catIds):
        curve = ev.eval["precision"][0, :, k, 0, 0]
        tag = tags[c - 1]
        result[tag] = None if curve[0] < 0 else float(curve.mean())
    return result


CASES = 150


def test_coco_ap_matches_pycocotools_on_random_cases() -> None:
    rng = random.Random(12)
    compared = 0
    for case in range(CASES):
        gts, dets = _random_case(rng)
        if not dets:
            continue
        thr = rng.choice([0.3, 0.5, 0.75])
        ours = average_precision(gts, dets, iou_threshold=thr, method=APMethod.COCO_101)
        ref = _coco_reference(gts, dets, thr)
        for tag, expected in ref.items():
            if expected is None:
                assert ours.get(tag) is None, (case, tag)
            else:
                assert ours[tag] == pytest.approx(expected, abs=1e-12), (case, tag)
            compared += 1
        defined = [v for v in ref.values() if v is not None]
        if defined:
            ours_map = mean_average_precision(ours)
            assert ours_map == pytest.approx(float(np.mean(defined)), abs=1e-12)
    assert compared > 2 * CASES  # the comparison really ran on many tags


def test_voc_ap_and_precision_recall_match_plain_loops_on_random_cases() -> None:
    rng = random.Random(7)
    for case in range(CASES):
        gts, dets = _random_case(rng)
        thr, prob = rng.choice([0.3, 0.5, 0.75]), rng.choice([0.0, 0.25, 0.5, 0.9])
        report = evaluate(gts, dets, probability_threshold=prob, iou_threshold=thr,
                          method=APMethod.VOC_ALL_POINTS)
        for tag, m in report.per_tag.items():
            outcomes, n_gt = _plain_outcomes(gts, dets, thr, tag)
            kept = [hit for p, hit in outcomes if p >= prob]
            assert m.ground_truths == n_gt, (case, tag)
            assert (m.detections, m.true_positives) == (len(kept), sum(kept)), (case, tag)
            assert m.false_negatives == n_gt - sum(kept)
            if n_gt:
                assert m.average_precision == pytest.approx(_plain_voc_ap(outcomes, n_gt),
                                                            abs=1e-12), (case, tag)
                assert m.recall == pytest.approx(sum(kept) / n_gt)
            if kept:
                assert m.precision == pytest.approx(sum(kept) / len(kept))


def test_equal_overlaps_resolve_as_pycocotools() -> None:
    """Detection A overlaps both dogs equally (IoU 9/11 exactly); B, lower, overlaps only the
    second. pycocotools gives A the later ground truth, which leaves B a false positive."""
    gts = [GroundTruth("a", "dog", 0, 0, 10, 10), GroundTruth("a", "dog", 2, 0, 10, 10)]
    dets = [Detection("a", "dog", 0.9, 1, 0, 10, 10), Detection("a", "dog", 0.8, 3, 0, 10, 10)]
    assert greedy_match([(0, 0, 10, 10), (2, 0, 10, 10)], [(1, 0, 10, 10), (3, 0, 10, 10)],
                        [0.9, 0.8], 0.6).tolist() == [1, -1]
    ours = average_precision(gts, dets, iou_threshold=0.6)
    assert ours["dog"] == pytest.approx(_coco_reference(gts, dets, 0.6)["dog"], abs=1e-12)
    assert ours["dog"] == pytest.approx(51 / 101)  # recall 0.5 at precision 1, then nothing
