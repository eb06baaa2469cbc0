"""Golden images and the parity proof every export carries (docs/ARCHITECTURE.md, "Exports").

Golden images are generated, not sampled: saturated colour fields across the hue circle,
gradients and stripes, each with seeded noise, encoded as PNG (lossless, so every runtime decodes
the very same pixels). They go through the serving preprocessing and the served ONNX model gives
the reference probabilities; the exported model must agree on the top-1 tag of every image whose
reference margin is clear of the flavor's tolerance (a near-tie cannot define a top-1: such images
are counted as ``tiesSkipped``, and their probabilities are still compared) and stay within the
tolerance in absolute probability everywhere.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from visionpipe.detection_decode import DetectionPreprocessing, to_detection_input
from visionpipe.detection_metrics import iou_matrix
from visionpipe.preprocessing import PreprocessingSpec, normalize, prepare_image

GOLDEN_COUNT = 24
GOLDEN_SIZE = (160, 120)  # not square, so the resize-and-crop path is exercised

#: Largest allowed |probability difference| per platform/flavor: exact conversions are held to
#: float32 rounding, reduced-precision ones to what their arithmetic can promise.
TOLERANCES: dict[tuple[str, str], float] = {
    ("ONNX", "ONNX10"): 1e-4,
    ("ONNX", "ONNX12"): 1e-4,
    ("ONNX", "ONNXFloat16"): 1e-2,
    ("ONNX", "ONNXInt8"): 5e-2,
    ("OpenVino", ""): 1e-3,
    ("DockerFile", "Linux"): 1e-4,
    ("DockerFile", "ARM"): 1e-4,
    # onnx2tf rebuilds the graph op by op in TensorFlow and keeps float32, but the kernels are
    # another runtime's (XNNPACK for TFLite, Eigen/oneDNN for TensorFlow), so float32 sums are
    # reordered: held to OpenVINO's 1e-3 (another runtime's kernels), not the 1e-4 of files that
    # ONNX Runtime runs. Measured: 1.3e-5 on the tiny colour model (both flavors) and 8e-7 on
    # mobilenet_v3_large at 224 (SavedModel), so 1e-3 leaves head-room for deeper graphs.
    ("TensorFlow", "TensorFlowNormal"): 1e-3,
    ("TensorFlow", "TensorFlowLite"): 1e-3,
    # Core ML cannot run here: this tolerance is the one verify_coreml.py applies on a Mac
    # (CPU only, float32 compute precision), and the one the intermediate torch graph meets here.
    ("CoreML", ""): 1e-3,
}

#: Detection parity per platform/flavor: (least IoU of matched boxes, largest |score diff|).
#: Exact float32 conversions keep the boxes to rounding; float16 and INT8 move them a little.
DETECTION_TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    ("ONNX", "ONNX10"): (0.999, 1e-4),
    ("ONNX", "ONNX12"): (0.999, 1e-4),
    ("ONNX", "ONNXFloat16"): (0.98, 1e-2),
    ("ONNX", "ONNXInt8"): (0.9, 5e-2),
    ("OpenVino", ""): (0.99, 1e-3),
}
DETECTION_GOLDEN_COUNT = 8
NMS_IOU_EPS = 1e-3
#: At most this share of the detections may be excused as ties (measured: 7.5% on torchvision's
#: Faster R-CNN at random initialisation, where dozens of boxes share one score, ONNX Runtime
#: against OpenVINO).
MAX_TIE_SHARE = 0.2


def golden_images(count: int = GOLDEN_COUNT, seed: int = 20260101) -> list[bytes]:
    """``count`` deterministic PNG pictures (the same bytes on every run and machine)."""
    rng = np.random.default_rng(seed)
    w, h = GOLDEN_SIZE
    out: list[bytes] = []
    for k in range(count):
        hue = (k * 0.61803398875) % 1.0
        rgb = np.asarray(colorsys.hsv_to_rgb(hue, 0.85, 0.9)) * 255.0
        kind = k % 3
        base = np.broadcast_to(rgb, (h, w, 3)).astype(np.float32)
        if kind == 1:  # a gradient towards a darker shade
            base = base * np.linspace(0.55, 1.0, w, dtype=np.float32)[None, :, None]
        elif kind == 2:  # stripes of the colour and a lighter tint
            stripes = (np.arange(w) // 12 % 2).astype(np.float32)[None, :, None]
            base = base * (1 - 0.3 * stripes) + 255.0 * 0.3 * stripes
        pixels = np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def golden_scenes(count: int = DETECTION_GOLDEN_COUNT, seed: int = 20260102) -> list[bytes]:
    """``count`` deterministic PNG scenes for detection parity: a noisy background with one to
    three filled squares and circles of saturated colours (things a detector fires on)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    for k in range(count):
        size = 96 + 16 * (k % 3)  # several sizes: the stretch to the input size is exercised
        pixels = np.clip(rng.integers(80, 180, 3)[None, None, :]
                         + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(img)
        for j in range(1 + k % 3):
            side = int(size * rng.uniform(0.2, 0.4))
            x, y = (int(v) for v in rng.integers(0, size - side, 2))
            colour = tuple(int(c) for c in np.asarray(colorsys.hsv_to_rgb(
                ((k + j) * 0.381966) % 1.0, 0.9, 0.9)) * 255)
            shape = draw.rectangle if (k + j) % 2 == 0 else draw.ellipse
            shape((x, y, x + side, y + side), fill=colour)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def detection_inputs(images: list[bytes], prep: DetectionPreprocessing) -> list[np.ndarray]:
    """Scene bytes -> one ``(1, 3, S, S)`` input each, exactly as serving prepares a picture."""
    return [to_detection_input(Image.open(io.BytesIO(data)), prep) for data in images]


def served_batch(images: list[bytes], spec: PreprocessingSpec) -> np.ndarray:
    """Image bytes -> the input batch, exactly as serving prepares a picture."""
    return normalize(np.stack([prepare_image(data, spec) for data in images]), spec)


def onnx_runner(model: bytes | str, input_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Run an ONNX model (bytes or path) with ONNX Runtime on the CPU, as serving does."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return lambda batch: np.asarray(session.run(None, {input_name: batch})[0], np.float32)


def onnx_outputs(model: bytes | str, input_name: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Every output of an ONNX model on one batch (a detector's boxes, scores and labels)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return lambda batch: [np.asarray(o) for o in session.run(None, {input_name: batch})]


def compare(reference: np.ndarray, candidate: np.ndarray, tolerance: float,
            runtime: str) -> dict[str, Any]:
    """The parity record: top-1 agreement, max |probability difference|, and the verdict."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if reference.shape != candidate.shape:
        return {"images": len(reference), "passed": False, "runtime": runtime,
                "tolerance": tolerance,
                "reason": f"output shape {candidate.shape} differs from {reference.shape}"}
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if reference.shape[1] > 1 else np.ones(len(reference))
    clear = margin > 2 * tolerance
    agree = reference.argmax(axis=1) == candidate.argmax(axis=1)
    compared = int(clear.sum())
    agreement = float(agree[clear].mean()) if compared else 0.0
    max_diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    finite = bool(np.isfinite(candidate).all())
    passed = finite and compared > 0 and agreement == 1.0 and max_diff <= tolerance
    record: dict[str, Any] = {
        "images": len(reference), "top1Compared": compared,
        "tiesSkipped": len(reference) - compared, "top1Agreement": agreement,
        "maxAbsProbDiff": max_diff, "tolerance": tolerance, "runtime": runtime, "passed": passed,
    }
    if not passed:
        record["reason"] = (
            "the exported model gives non-finite outputs" if not finite else
            "no golden image has a clear top-1" if compared == 0 else
            f"top-1 agreement {agreement:.1%} (needs 100%)" if agreement < 1.0 else
            f"max |prob diff| {max_diff:.3g} exceeds the tolerance {tolerance:g}")
    return record


Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (N, 4) ltwh, scores, labels


def as_detections(outputs: list[np.ndarray]) -> Detections:
    """A detector's ``[boxes, scores, labels]`` (visionpipe.detection_decode) as arrays."""
    if len(outputs) < 3:
        raise ValueError(f"a detector answers boxes, scores and labels; got {len(outputs)} "
                         "outputs")
    boxes, scores, labels = outputs[:3]
    return (np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).ravel(),
            np.asarray(labels).astype(np.int64).ravel())


def compare_detections(reference: list[Detections], candidate: list[Detections],
                       tolerance: tuple[float, float], score_floor: float, runtime: str,
                       nms_iou: float = 0.5, max_detections: int = 0) -> dict[str, Any]:
    """The detection parity record: every served detection must have a candidate of the same
    tag whose box overlaps it by at least ``tolerance[0]`` IoU and whose score is within
    ``tolerance[1]``, and the candidate may add nothing.

    Some detections are not defined by the model, only by its runtime's order of equal numbers,
    and are counted as ``tiesSkipped`` instead (the classification check's near-ties):

    * a box whose score lies within the score tolerance of the floor (rounding moves it across);
    * NMS between two overlapping boxes of one tag whose scores tie within the tolerance keeps
      whichever its runtime meets first: an unmatched box is excused when the other side has a
      box of the same tag and score that overlaps it by at least the NMS IoU;
    * at the ``max_detections`` cap, which of the boxes tied with the last one are kept.

    Measured on torchvision's Faster R-CNN (random initialisation, many equal scores), where
    ONNX Runtime and OpenVINO kept different members of tied pairs (IoU 0.53 > NMS 0.5).
    """
    min_iou, score_tol = tolerance
    record: dict[str, Any] = {"kind": "detection", "images": len(reference),
                              "tolerance": {"minIoU": min_iou, "maxScoreDiff": score_tol},
                              "runtime": runtime}
    worst_iou, worst_score, matched, ties, failure = 1.0, 0.0, 0, 0, ""
    edge = score_floor + 2 * score_tol
    for k, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        if not (np.isfinite(cand[0]).all() and np.isfinite(cand[1]).all()):
            failure = f"picture {k}: the exported model gives non-finite boxes or scores"
            break
        pairs, lonely_ref, lonely_cand = _match(ref, cand, min_iou, score_tol)
        for i, j, overlap in pairs:
            matched += 1
            worst_iou = min(worst_iou, overlap)
            worst_score = max(worst_score, float(abs(cand[1][j] - ref[1][i])))
        for side, lonely, other, name in ((ref, lonely_ref, cand, "has no match"),
                                          (cand, lonely_cand, ref, "is made only by the "
                                                                   "exported model")):
            for i in lonely:
                if _tied(side, i, other, score_tol, nms_iou, edge, max_detections):
                    ties += 1
                    continue
                failure = (f"picture {k}: a detection of tag {int(side[2][i])} score "
                           f"{side[1][i]:.4f} {name}")
                break
            if failure:
                break
        if failure:
            break
    if not failure and ties > MAX_TIE_SHARE * (matched + ties):
        # A box moved by less than the NMS IoU with its score kept looks like a tie from one
        # box; ties are rare in a trained detector, so many of them mean real disagreement.
        failure = (f"{ties} of {matched + ties} detections differ (more than "
                   f"{MAX_TIE_SHARE:.0%} can be ties of equal scores)")
    record.update({"detectionsMatched": matched, "tiesSkipped": ties, "minIoU": worst_iou,
                   "maxScoreDiff": worst_score, "passed": not failure and matched > 0})
    if failure:
        record["reason"] = failure
    elif matched == 0:
        record["reason"] = "no golden scene gives a detection above the score floor"
    return record


def _match(ref: Detections, cand: Detections, min_iou: float, score_tol: float
           ) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Pairs (same tag, score within the tolerance, IoU >= ``min_iou``) taken best IoU first,
    and the indices left over on each side."""
    (rb, rs, rl), (cb, cs, cl) = ref, cand
    if not len(rs) or not len(cs):
        return [], list(range(len(rs))), list(range(len(cs)))
    ious = iou_matrix(rb, cb)
    ok = (rl[:, None] == cl[None, :]) & (np.abs(rs[:, None] - cs[None, :]) <= score_tol) \
        & (ious >= min_iou)
    pairs: list[tuple[int, int, float]] = []
    used_r, used_c = np.zeros(len(rs), bool), np.zeros(len(cs), bool)
    for flat in np.argsort(-np.where(ok, ious, -1.0), axis=None, kind="stable"):
        i, j = divmod(int(flat), len(cs))
        if not ok[i, j]:
            break
        if not used_r[i] and not used_c[j]:
            used_r[i] = used_c[j] = True
            pairs.append((i, j, float(ious[i, j])))
    return pairs, list(np.flatnonzero(~used_r)), list(np.flatnonzero(~used_c))


def _tied(side: Detections, i: int, other: Detections, score_tol: float, nms_iou: float,
          edge: float, max_detections: int) -> bool:
    """Whether detection ``i`` of ``side`` exists or not only by a tie (see compare_detections)."""
    boxes, scores, labels = side
    if scores[i] <= edge:
        return True
    if max_detections and len(scores) >= max_detections \
            and scores[i] <= scores.min() + score_tol:
        return True
    ob, os_, ol = other
    if not len(os_):
        return False
    same = (ol == labels[i]) & (np.abs(os_ - scores[i]) <= score_tol)
    # NMS compares IoU with its threshold in the runtime's float32: a pair at the threshold
    # itself (anchor grids make exact 0.5s) is suppressed on one runtime and kept on another.
    return bool((same & (iou_matrix(boxes[i:i + 1], ob)[0] >= nms_iou - NMS_IOU_EPS)).any())
