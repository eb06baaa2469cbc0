"""ONNX export of a trained detector, its interface check and the torch-vs-ONNX Runtime parity
check.

The graph is :class:`~training_job.detection_model.NormalizedDetections` traced at the fixed
input size with the TorchScript exporter (``dynamo=False``, opset 17): torchvision's detection
post-processing (box decoding, clipping, per-class NMS, score floor, top 200) is traced into the
graph, so serving runs onnxruntime + numpy only (visionpipe.detection_decode). The dynamo
exporter of torch 2.14.1 cannot export it: ``torch.export`` stops on the data-dependent shapes of
the RoI post-processing (measured; see training_job.detection_model).

Parity: on the same inputs, every detection scoring >= ``PARITY_MIN_SCORE`` on either side must
have a counterpart on the other: same label, box IoU >= ``PARITY_MIN_IOU``, score within
``PARITY_SCORE_TOL`` (order does not matter: near-ties may swap), on all but
``PARITY_MAX_DISAGREEING`` of the pictures (see :func:`compare` and :func:`check_parity`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training_job.detection_model import DetectorSpec, NormalizedDetections
from training_job.export import ExportError, check_interface, opset_of
from visionpipe.detection_decode import (
    OUTPUT_NAMES,
    DetectionPreprocessing,
    detection_manifest_fields,
)
from visionpipe.detection_metrics import iou_matrix

log = logging.getLogger(__name__)
# ExportError is training_job.export's: the worker records either export's failure the same way

OPSET = 17
PARITY_MIN_IOU = 0.99
PARITY_SCORE_TOL = 1e-3
PARITY_MIN_SCORE = 0.2  # every box from here up must agree; see compare
PARITY_MAX_DISAGREEING = 0.1  # of the pictures (at least one); see check_parity


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
    model, graph_input = check_interface(path, prep.input_name, OUTPUT_NAMES, "detector")
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    if dims != list(prep.input_shape):
        raise ExportError(f"input shape {dims} is not {list(prep.input_shape)}")
    return opset_of(model)


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
    disagreeing: int = 0  # pictures whose boxes differed (tolerated: see check_parity)


def _match(reference: Outputs, served: Outputs, min_score: float, min_iou: float,
           score_tol: float, ious: np.ndarray, what: str) -> list[tuple[int, int]]:
    """Each ``reference`` detection scoring >= ``min_score`` -> the free ``served`` detection of
    the same label, IoU >= ``min_iou`` and score within ``score_tol`` (the best overlapping
    one), best first; raise :class:`ExportError` for one without."""
    (_, rs, rl), (_, ss, sl) = reference, served
    used = np.zeros(len(ss), dtype=bool)
    pairs = []
    for i in np.argsort(-rs, kind="stable"):
        if rs[i] < min_score:
            break
        ok = ~used & (sl == rl[i]) & (np.abs(ss - rs[i]) <= score_tol)
        ok &= ious[i] >= min_iou
        if not ok.any():
            near = int(np.argmax(ious[i])) if len(ss) else -1
            raise ExportError(
                f"{what} detection {int(i)} (label {int(rl[i])}, score {rs[i]:.5f}) has no "
                f"counterpart; nearest: label {int(sl[near]) if near >= 0 else -1}, score "
                f"{ss[near] if near >= 0 else float('nan'):.5f}, IoU "
                f"{ious[i, near] if near >= 0 else 0.0:.4f}")
        j = int(np.flatnonzero(ok)[np.argmax(ious[i][ok])])
        used[j] = True
        pairs.append((int(i), j))
    return pairs


def compare(reference: Outputs, served: Outputs, score_floor: float,
            min_iou: float = PARITY_MIN_IOU, score_tol: float = PARITY_SCORE_TOL,
            min_score: float = PARITY_MIN_SCORE) -> tuple[float, float]:
    """(min IoU, max |score diff|) of matched detections; raise :class:`ExportError` when a
    detection scoring >= ``min_score`` on either side has no counterpart on the other (same
    label, IoU >= ``min_iou``, score within ``score_tol``; the counterpart may score under
    ``min_score``, so a box at the edge matches whichever side of it the other lands).

    Under ``min_score`` boxes may differ: a weak box rests on a proposal or two. Above it a box
    can still differ on a few pictures: the RPN keeps its best ``rpn_proposals_test`` proposals,
    and objectness scores that tie to float precision at that edge round differently in the two
    runtimes (measured on a 128 px detector trained from scratch, 150 test proposals: 2 of 41
    pictures had a ~0.5 box whose counterpart scored ~0.1; with 1000 proposals, none over 0.2
    differed). :func:`check_parity` tolerates that on a few pictures.
    ``score_floor`` is the detector's own floor, the least ``min_score`` can be."""
    min_score = max(min_score, score_floor)
    ious = iou_matrix(reference[0], served[0])
    pairs = _match(reference, served, min_score, min_iou, score_tol, ious, "torch")
    _match(served, reference, min_score, min_iou, score_tol, ious.T, "ONNX Runtime")
    if not pairs:
        return 1.0, 0.0
    worst_iou = min(float(ious[i, j]) for i, j in pairs)
    worst_score = max(float(abs(served[1][j] - reference[1][i])) for i, j in pairs)
    return worst_iou, worst_score


def check_parity(session: Any, model: nn.Module, spec: DetectorSpec,
                 inputs: Iterable[np.ndarray],
                 max_disagreeing: float = PARITY_MAX_DISAGREEING) -> ParityReport:
    """Run every ``(1, 3, S, S)`` input through torch and ONNX Runtime and :func:`compare_all`
    the answers."""
    return compare_all(((run_torch(model, spec, x), run_onnx(session, x)) for x in inputs),
                       spec.score_floor, max_disagreeing)


def compare_all(answers: Iterable[tuple[Outputs, Outputs]], score_floor: float,
                max_disagreeing: float = PARITY_MAX_DISAGREEING) -> ParityReport:
    """:func:`compare` per picture (torch's answer, ONNX Runtime's). A picture whose boxes
    disagree is allowed for up to ``max_disagreeing`` of the pictures (at least one): a proposal
    at the edge of the RPN's budget can flip between runtimes and take a box with it (see
    :func:`compare`); a broken export disagrees on most pictures. More raises
    :class:`ExportError` with the first disagreement."""
    pictures, detections, worst_iou, worst_score = 0, 0, 1.0, 0.0
    disagreements: list[str] = []
    for reference, served in answers:
        pictures += 1
        detections += len(reference[1])
        try:
            low_iou, score_diff = compare(reference, served, score_floor)
        except ExportError as e:
            disagreements.append(f"picture {pictures - 1}: {e}")
            continue
        worst_iou, worst_score = min(worst_iou, low_iou), max(worst_score, score_diff)
    allowed = max(1, math.floor(max_disagreeing * pictures))
    if len(disagreements) > allowed:
        raise ExportError(f"torch and ONNX Runtime disagree on {len(disagreements)} of "
                          f"{pictures} pictures (at most {allowed} may): {disagreements[0]}")
    for line in disagreements:
        log.warning("detector parity, tolerated: %s", line)
    log.info("detector parity on %d pictures (%d detections): min IoU %.5f, max |score diff| "
             "%.2e, %d picture(s) with a flipped proposal", pictures, detections, worst_iou,
             worst_score, len(disagreements))
    return ParityReport(pictures, detections, worst_iou, worst_score, len(disagreements))


def manifest_fields(spec: DetectorSpec, prep: DetectionPreprocessing) -> dict[str, Any]:
    """The detection entries of the iteration manifest (visionpipe.detection_decode)."""
    return detection_manifest_fields(prep, architecture=spec.architecture,
                                     score_floor=spec.score_floor,
                                     max_detections=spec.max_detections, nms_iou=spec.nms_iou)
