"""The ``CoreML`` platform: ``model.mlpackage`` (an ML Program, float32 compute precision,
macOS 13 / iOS 16 and later) from the served ONNX model.

coremltools has had no ONNX front end since version 6, so the path is ONNX -> torch
(onnx2torch, operator by operator) -> ``torch.jit.trace`` -> ``coremltools.convert``. Core ML
runs only on Apple platforms, so the exported file cannot be run here and no parity is claimed
for it (``passed`` stays ``None``). What is proven here instead is the step that can go wrong
silently: the torch graph coremltools compiles from is run on the golden images and must agree
with the served ONNX model within the platform's tolerance, or the export fails. The zip carries
``verify_coreml.py`` with the golden inputs and the served model's answers, so the user proves
the exported file itself on a Mac (it prints the same parity figures and exits non-zero when
they fail).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from training_job.exporters.built import Built, ConversionError
from training_job.exporters.parity import TOLERANCES, golden_images, onnx_runner, served_batch
from training_job.exporters.tensorflow_import import before_tensorflow
from visionpipe.manifest import Manifest

log = logging.getLogger(__name__)

PACKAGE = "model.mlpackage"
VERIFY_SCRIPT = "verify_coreml.py"
GOLDEN_INPUTS = "verify/golden_inputs.npy"
GOLDEN_REFERENCE = "verify/golden_reference.npy"
VERIFY_SETTINGS = "verify/settings.json"
MAX_BATCH = 64  # the package's batch axis is a range 1..MAX_BATCH where the ONNX one is symbolic
NOT_RUNNABLE = ("not run: Core ML runs only on Apple platforms (macOS, iOS); run "
                f"{VERIFY_SCRIPT} from this zip on a Mac to measure the exported file")


TORCH_OPSET = 17  # the newest opset onnx2torch 1.5 converts every operator of (ReduceMean-18: no)


def for_onnx2torch(model: Any) -> Any:
    """Rewrite what onnx2torch cannot read into equivalent ONNX it can; the intermediate parity
    check (the torch graph against the served model) proves the rewrite changed nothing.

    * opset 18+ (torch's dynamo exporter writes 18: ReduceMean takes its axes as an input) is
      lowered to 17 with onnx's version converter;
    * torch's exporters share equal constants through ``Identity`` nodes, and onnx2torch reads a
      Conv's weights and bias from initializers only: each such constant is copied to the name
      the Identity gives it;
    * ``Reshape(allowzero=1)`` (dynamo) to a constant shape with no zero in it means what
      ``allowzero=0`` means, which is all onnx2torch implements.
    """
    from onnx import numpy_helper, version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > TORCH_OPSET:
        try:
            model = version_converter.convert_version(model, TORCH_OPSET)
        except Exception as e:  # noqa: BLE001 - the converter's complaint is the reason
            raise ConversionError(f"the opset {opset} model cannot be lowered to opset "
                                  f"{TORCH_OPSET} for onnx2torch: {str(e)[-200:]}") from e
    weights = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in weights:
            model.graph.initializer.append(numpy_helper.from_array(
                numpy_helper.to_array(weights[node.input[0]]), node.output[0]))
            continue
        if node.op_type == "Reshape" and node.input[1] in weights \
                and 0 not in numpy_helper.to_array(weights[node.input[1]]):
            kept = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(kept)
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def to_torch(source: bytes) -> Any:
    import onnx
    from onnx2torch import convert

    try:
        return convert(for_onnx2torch(onnx.load_from_string(source))).eval()
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 - any converter complaint fails the export
        raise ConversionError(f"onnx2torch could not convert the model: {str(e)[:300]}") from e


def build(source: bytes, manifest: Manifest, flavor: str) -> Built:
    if flavor:
        raise ConversionError(f"CoreML has no flavor {flavor!r}")
    before_tensorflow()  # coremltools imports TensorFlow where it is installed
    try:
        import coremltools as ct
        import torch
    except ImportError as e:
        raise ConversionError("the CoreML converter (coremltools, onnx2torch) is not installed "
                              "in this job (make setup-exporters)") from e
    spec = manifest.preprocessing
    module = to_torch(source)
    images = golden_images()
    batch = served_batch(images, spec)
    reference = onnx_runner(source, spec.input_name)(batch)
    import onnx

    output_name = onnx.load_from_string(source).graph.output[0].name
    shape = tuple(ct.RangeDim(1, MAX_BATCH, 1) if d < 0 else d for d in spec.input_shape)
    chatter = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stderr(chatter), torch.no_grad():
        warnings.simplefilter("ignore")  # version-not-tested and tracer notices
        try:
            traced = torch.jit.trace(module, torch.from_numpy(batch[:1]))
            mlmodel = ct.convert(
                traced, inputs=[ct.TensorType(name=spec.input_name, shape=shape)],
                outputs=[ct.TensorType(name=output_name)], convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT32,
                minimum_deployment_target=ct.target.macOS13)
            mlmodel.save(str(Path(tmp, PACKAGE)))
        except Exception as e:  # noqa: BLE001 - any converter complaint fails the export
            raise ConversionError(f"coremltools could not convert the model: "
                                  f"{str(e)[:300]}") from e
        root = Path(tmp, PACKAGE)
        files = {f"{PACKAGE}/{p.relative_to(root).as_posix()}": p.read_bytes()
                 for p in sorted(root.rglob("*")) if p.is_file()}
    for line in chatter.getvalue().splitlines():
        log.debug("coremltools: %s", line)
    files.update(verification_files(batch, reference, spec.input_name, output_name,
                                    TOLERANCES[("CoreML", "")]))

    @torch.no_grad()
    def intermediate(images: list[bytes]) -> np.ndarray:
        return module(torch.from_numpy(served_batch(images, spec))).numpy().astype(np.float32)

    return Built(files, None, {"name": "coremltools", "version": ct.__version__,
                               "via": f"onnx2torch {version('onnx2torch')} -> torch.jit.trace "
                                      f"(torch {torch.__version__})",
                               "format": "mlprogram (.mlpackage), float32 compute precision",
                               "minimumDeploymentTarget": "macOS13 / iOS16"},
                 not_runnable=NOT_RUNNABLE, intermediate=intermediate,
                 intermediate_runtime=f"torch {torch.__version__} CPU: the onnx2torch graph "
                                      "coremltools converted",
                 verified_by=f"python {VERIFY_SCRIPT} (macOS, coremltools): the exported "
                             "package on the golden inputs against the served model's answers")


def verification_files(batch: np.ndarray, reference: np.ndarray, input_name: str,
                       output_name: str, tolerance: float) -> dict[str, bytes]:
    """What ``verify_coreml.py`` needs on a Mac: the golden inputs exactly as served (float32,
    so no preprocessing is re-implemented there), the served model's answers, the tolerance."""
    def npy(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array, np.float32))
        return buf.getvalue()

    settings = {"package": PACKAGE, "input": input_name, "output": output_name,
                "tolerance": tolerance, "computeUnits": "CPU_ONLY"}
    script = Path(__file__).with_name("verify_coreml.py").read_bytes()
    return {GOLDEN_INPUTS: npy(batch), GOLDEN_REFERENCE: npy(reference),
            VERIFY_SETTINGS: json.dumps(settings, indent=2).encode(), VERIFY_SCRIPT: script}
