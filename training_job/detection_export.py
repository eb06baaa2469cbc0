"""ONNX export of a trained detector, its interface check and the torch-vs-ONNX Runtime parity
check.

The graph is :class:`~training_job.detection_model.NormalizedDetections` traced at the fixed
input size with the TorchScript exporter (``dynamo=False``, opset 17): torchvision's detection
post-processing (box decoding, clipping, per-class NMS, score floor, top 200) is traced into the
graph, so serving runs onnxruntime + numpy only (visionpipe.detection_decode). The dynamo
exporter of torch 2.14.1 cannot export it: ``torch.export`` stops on the data-dependent shapes of
the RoI post-processing (measured; see training_job.detection_model).

Parity: on the same inputs, ONNX Runtime's detections must be torch's, matched by order (best
first): same count, same labels, box IoU >= ``PARITY_MIN_IOU``, score within ``PARITY_SCORE_TOL``.
Two detections whose scores are within the tolerance may come out in either order; a box whose
score is within the tolerance of the floor may be present on one side only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training_job.detection_model import DetectorSpec, NormalizedDetections
from visionpipe.detection_decode import (
    OUTPUT_NAMES,
    DetectionPreprocessing,
    detection_manifest_fields,
)
from visionpipe.detection_metrics import iou_matrix

log = logging.getLogger(__name__)

OPSET = 17
PARITY_MIN_IOU = 0.99
PARITY_SCORE_TOL = 1e-3


class ExportError(Exception):
    """The exported detector is unusable (malformed, wrong interface, or disagrees with torch)."""


def export_detector(model: nn.Module, spec: DetectorSpec, prep: DetectionPreprocessing,
                    path: Path) -> int:
    """Write the detector (CPU, eval mode) to ``path`` as ONNX; return its opset."""
    if prep.input_size != spec.input_size:
        raise ValueError(f"preprocessing input {prep.input_size} != detector {spec.input_size}")
    served = NormalizedDetections(model.eval(), spec.input_size, spec.score_floor).eval()
    example = torch.zeros(prep.input_shape)
    chatter = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in torchvision
        torch.onnx.export(
            served, (example,), str(path),
            input_names=[prep.input_name], output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "detections"} for name in OUTPUT_NAMES},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    for line in chatter.getvalue().splitlines():
        log.debug("%s", line)
    opset = check_detector_onnx(path, prep)
    _runs_on_any_picture(path, prep)
    return opset


def _runs_on_any_picture(path: Path, prep: DetectionPreprocessing) -> None:
    """ONNX Runtime must answer (possibly nothing) on a blank, a saturated and a noise picture:
    a traced graph can carry shape assumptions of its example input (see
    NormalizedDetections), and serving must never fail on a picture that has no objects."""
    session = onnx_session(path.read_bytes())
    rng = np.random.default_rng(0)
    pictures = {
        "blank": np.zeros(prep.input_shape, np.float32),
        "saturated": np.full(prep.input_shape, 3.0, np.float32),
        "noise": rng.normal(size=prep.input_shape).astype(np.float32),
    }
    for name, x in pictures.items():
        try:
            boxes, scores, labels = run_onnx(session, x)
        except Exception as e:  # noqa: BLE001 - any runtime failure makes the file unusable
            raise ExportError(f"ONNX Runtime fails on a {name} picture: {e}") from e
        if not (len(boxes) == len(scores) == len(labels)) or boxes.shape[1:] != (4,):
            raise ExportError(f"inconsistent outputs on a {name} picture")


def check_detector_onnx(path: Path, prep: DetectionPreprocessing) -> int:
    """``onnx.checker`` plus the interface the manifest promises; return the opset."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - any checker complaint makes the file unusable
        raise ExportError(f"onnx.checker rejected the detector: {e}") from e
    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if [i.name for i in inputs] != [prep.input_name]:
        raise ExportError(f"inputs are {[i.name for i in inputs]}, expected [{prep.input_name!r}]")
    if [o.name for o in model.graph.output] != list(OUTPUT_NAMES):
        raise ExportError(f"outputs are {[o.name for o in model.graph.output]}, "
                          f"expected {list(OUTPUT_NAMES)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if dims != list(prep.input_shape):
        raise ExportError(f"input shape {dims} is not {list(prep.input_shape)}")
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def onnx_session(model_bytes: bytes) -> Any:
    """An ONNX Runtime CPU session, as serving creates it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def run_onnx(session: Any, x: np.ndarray) -> Outputs:
    boxes, scores, labels = session.run(list(OUTPUT_NAMES), {session.get_inputs()[0].name: x})
    return boxes, scores, labels


@torch.no_grad()
def run_torch(model: nn.Module, spec: DetectorSpec, x: np.ndarray) -> Outputs:
    boxes, scores, labels = NormalizedDetections(model.eval(), spec.input_size, spec.score_floor)(
        torch.from_numpy(x))
    return boxes.numpy(), scores.numpy(), labels.numpy()


@dataclass(frozen=True)
class ParityReport:
    pictures: int
    detections: int  # torch's, over all pictures
    min_iou: float  # of matched boxes (1.0 when none)
    max_score_diff: float


def compare(reference: Outputs, served: Outputs, score_floor: float,
            min_iou: float = PARITY_MIN_IOU, score_tol: float = PARITY_SCORE_TOL
            ) -> tuple[float, float]:
    """(min IoU, max |score diff|) of ``served`` against ``reference`` detections matched by
    order; raise :class:`ExportError` when they disagree beyond the tolerances."""
    (rb, rs, rl), (sb, ss, sl) = reference, served
    keep_r = rs >= score_floor + score_tol  # a box at the floor may fall on either side of it
    keep_s = ss >= score_floor + score_tol
    rb, rs, rl = rb[keep_r], rs[keep_r], rl[keep_r]
    sb, ss, sl = sb[keep_s], ss[keep_s], sl[keep_s]
    if abs(len(rs) - len(ss)) > 0:
        # a box whose score sits just at the edge of the kept set is allowed to differ
        n = min(len(rs), len(ss))
        extra = np.concatenate([rs[n:], ss[n:]])
        if (extra > score_floor + 2 * score_tol).any():
            raise ExportError(f"torch finds {len(rs)} boxes, ONNX Runtime {len(ss)}")
        rb, rs, rl, sb, ss, sl = rb[:n], rs[:n], rl[:n], sb[:n], ss[:n], sl[:n]
    if not len(rs):
        return 1.0, 0.0
    ious = iou_matrix(rb, sb)
    worst_iou, worst_score = 1.0, 0.0
    used = np.zeros(len(ss), dtype=bool)
    for i in range(len(rs)):
        # by order; where scores tie within the tolerance, any free box of the tie may match
        candidates = [i] + [j for j in np.flatnonzero(np.abs(ss - rs[i]) <= score_tol) if j != i]
        match = next((j for j in candidates if not used[j] and sl[j] == rl[i]
                      and ious[i, j] >= min_iou and abs(ss[j] - rs[i]) <= score_tol), None)
        if match is None:
            raise ExportError(
                f"detection {i} differs: torch label {int(rl[i])} score {rs[i]:.5f}, ONNX Runtime "
                f"label {int(sl[i]) if i < len(sl) else -1} score "
                f"{ss[i] if i < len(ss) else float('nan'):.5f}, IoU "
                f"{ious[i, i] if i < len(ss) else 0.0:.4f}")
        used[match] = True
        worst_iou = min(worst_iou, float(ious[i, match]))
        worst_score = max(worst_score, float(abs(ss[match] - rs[i])))
    return worst_iou, worst_score


def check_parity(session: Any, model: nn.Module, spec: DetectorSpec,
                 inputs: Iterable[np.ndarray]) -> ParityReport:
    """Run every ``(1, 3, S, S)`` input through torch and ONNX Runtime and :func:`compare`."""
    pictures, detections, worst_iou, worst_score = 0, 0, 1.0, 0.0
    for x in inputs:
        reference = run_torch(model, spec, x)
        served = run_onnx(session, x)
        low_iou, score_diff = compare(reference, served, spec.score_floor)
        pictures += 1
        detections += len(reference[1])
        worst_iou, worst_score = min(worst_iou, low_iou), max(worst_score, score_diff)
    report = ParityReport(pictures, detections, worst_iou, worst_score)
    log.info("detector parity on %d pictures (%d detections): min IoU %.5f, max |score diff| "
             "%.2e", pictures, detections, worst_iou, worst_score)
    return report


def manifest_fields(spec: DetectorSpec, prep: DetectionPreprocessing) -> dict[str, Any]:
    """The detection entries of the iteration manifest (visionpipe.detection_decode)."""
    return detection_manifest_fields(prep, architecture=spec.architecture,
                                     score_floor=spec.score_floor,
                                     max_detections=spec.max_detections, nms_iou=spec.nms_iou)
