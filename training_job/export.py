"""ONNX export, structural checks and the torch-vs-ONNX Runtime parity check.

An iteration is only as good as what serving runs, so the exported file is checked three ways
before it may be registered: ``onnx.checker`` (well-formed), its interface (input name, output
name, dynamic batch axis, as the manifest promises), and parity (ONNX Runtime and torch agree on
the test pictures to ``PARITY_TOLERANCE`` in probability).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionpipe.preprocessing import PreprocessingSpec

log = logging.getLogger(__name__)

OUTPUT_NAME = "probabilities"
PARITY_TOLERANCE = 1e-3
EXPORTERS = ("dynamo", "torchscript")
TORCHSCRIPT_OPSET = 17


class ExportError(Exception):
    """The exported model is unusable (malformed, wrong interface, or disagrees with torch)."""


def export_onnx(
    model: nn.Module, spec: PreprocessingSpec, path: Path, exporter: str = "dynamo"
) -> int:
    """Write ``model`` (CPU, eval mode, ending in probabilities) to ``path``; return its opset.

    ``dynamo`` is torch's current exporter; ``torchscript`` is the older one, several times faster
    to run, kept as a selectable fallback (and used by the tests for speed).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}")
    model = model.eval()
    example = torch.zeros(2, 3, spec.crop, spec.crop)  # batch 2: keeps the batch axis symbolic
    chatter = io.StringIO()  # the dynamo exporter prints its steps to stdout: keep them in the log
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
        warnings.simplefilter("ignore")  # the exporters are chatty about things we do not use
        if exporter == "dynamo":
            torch.onnx.export(
                model, (example,), str(path),
                input_names=[spec.input_name], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                external_data=False, dynamo=True, verbose=False,
            )
        else:
            torch.onnx.export(
                model, (example,), str(path),
                input_names=[spec.input_name], output_names=[OUTPUT_NAME],
                dynamic_axes={spec.input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=TORCHSCRIPT_OPSET, do_constant_folding=True, dynamo=False,
            )
    for line in chatter.getvalue().splitlines():
        log.debug("%s", line)
    return check_onnx(path, spec)


def check_interface(path: Path, input_name: str, output_names: Sequence[str],
                    what: str = "model") -> tuple[Any, Any]:
    """``onnx.checker`` (full check), then one graph input named ``input_name`` and the outputs
    ``output_names`` in that order; return (the loaded model, its input). Shared by the
    classifier's and the detector's export checks (training_job.detection_export)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - any checker complaint makes the file unusable
        raise ExportError(f"onnx.checker rejected the {what}: {e}") from e
    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if [i.name for i in inputs] != [input_name]:
        raise ExportError(f"inputs are {[i.name for i in inputs]}, expected [{input_name!r}]")
    if [o.name for o in model.graph.output] != list(output_names):
        raise ExportError(f"outputs are {[o.name for o in model.graph.output]}, "
                          f"expected {list(output_names)}")
    return model, inputs[0]


def opset_of(model: Any) -> int:
    """The default-domain opset an ONNX model imports (0: none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_onnx(path: Path, spec: PreprocessingSpec) -> int:
    """``onnx.checker`` plus the interface the manifest promises; return the model's opset."""
    model, graph_input = check_interface(path, spec.input_name, [OUTPUT_NAME])
    dims = graph_input.type.tensor_type.shape.dim
    if len(dims) != 4 or dims[0].HasField("dim_value"):
        raise ExportError("the input's batch axis is not dynamic")
    if [d.dim_value for d in dims[1:]] != [3, spec.crop, spec.crop]:
        raise ExportError(f"input shape {[d.dim_value for d in dims[1:]]} is not "
                          f"[3, {spec.crop}, {spec.crop}]")
    return opset_of(model)


def onnx_session(model_bytes: bytes) -> Any:
    """An ONNX Runtime CPU session, as serving creates it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, batch: np.ndarray, chunk: int = 32) -> np.ndarray:
    input_name = session.get_inputs()[0].name
    outs = [session.run([OUTPUT_NAME], {input_name: batch[i:i + chunk]})[0]
            for i in range(0, len(batch), chunk)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@torch.no_grad()
def run_torch(model: nn.Module, batch: np.ndarray, chunk: int = 32) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(batch[i:i + chunk])).numpy()
            for i in range(0, len(batch), chunk)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def parity(session: Any, model: nn.Module, batch: np.ndarray) -> tuple[float, np.ndarray]:
    """Max abs difference of probabilities, ONNX Runtime vs torch (CPU, fp32) on ``batch``;
    also returns the ONNX probabilities, which is what serving will answer."""
    served = run_onnx(session, batch)
    reference = run_torch(model, batch)
    if served.shape != reference.shape:
        raise ExportError(f"ONNX output shape {served.shape} != torch {reference.shape}")
    diff = float(np.max(np.abs(served - reference))) if served.size else 0.0
    return diff, served
