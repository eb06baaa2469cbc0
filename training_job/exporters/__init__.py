"""Exports of an iteration to other platforms, each with a parity proof (docs/ARCHITECTURE.md,
"Exports").

:func:`export` converts the served ONNX model to one platform/flavor, runs the result on its own
runtime over the golden images (:mod:`training_job.exporters.parity`), compares with the served
model, and packs a zip: the platform's files, ``labels.txt``, and ``export.json`` (the export
manifest: source model hash, converter, file hashes and sizes, conversion time, parity). An export
whose parity fails is reported as failed and never packed for download.

Classification parity compares probabilities (parity.compare); an object detection iteration's
compares boxes, scores and tags (parity.compare_detections), and the platforms that cannot carry
a detector's in-graph NMS are refused (:data:`DETECTION_REFUSED`). Where the exported file's
runtime does not exist here (Core ML), ``parity.passed`` stays ``None``: the record says how the
user verifies it, and the graph the converter compiled from must agree with the served model
(``parity.intermediate``) or the export fails.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import time
import zipfile
from dataclasses import dataclass
from typing import Any

from training_job.exporters.built import Built, ConversionError
from training_job.exporters.parity import (
    DETECTION_TOLERANCES,
    TOLERANCES,
    as_detections,
    compare,
    compare_detections,
    detection_inputs,
    golden_images,
    golden_scenes,
    onnx_outputs,
    served_batch,
)
from visionpipe.manifest import Manifest

EXPORT_MANIFEST = "export.json"
SCHEMA_VERSION = 1
#: Platform -> the module whose ``build(source, manifest, flavor)`` makes it (imported on use:
#: a converter that is not installed fails only its own platform).
BUILDERS = {
    "ONNX": "training_job.exporters.onnx_flavors",
    "OpenVino": "training_job.exporters.openvino_ir",
    "DockerFile": "training_job.exporters.dockerfile",
    "TensorFlow": "training_job.exporters.tensorflow_convert",
    "CoreML": "training_job.exporters.coreml_package",
}
#: Platforms that cannot carry an object detector's graph (its in-graph box decoding,
#: NonMaxSuppression and the data-dependent shapes after it) with a parity proof, and why: the
#: export is refused before any conversion. Measured on tests/test_exports_tf_coreml.py's tiny
#: NMS detector: onnx2tf 1.28.8 fails inside its NMS layer (boxes [4, 32] against scores [16]);
#: coremltools converts the traced torch graph, but nothing here can run the package, and the
#: torch graph's agreement proves nothing about how Core ML sizes NMS's output.
#: Detection parity compares boxes (parity.compare_detections).
DETECTION_REFUSED = {
    "TensorFlow": "TensorFlow and TensorFlow Lite exports of object detectors are not offered: "
                  "onnx2tf cannot convert the detector's in-graph NonMaxSuppression",
    "CoreML": "CoreML exports of object detectors are not offered: the package cannot be run "
              "outside Apple platforms, and the detector's in-graph NonMaxSuppression (an "
              "output whose size depends on the picture) cannot be proven through the torch "
              "graph coremltools traces",
    "DockerFile": "DockerFile exports of object detectors are not offered: the exported server "
                  "classifies only",
}
#: Measured: onnxconverter-common 1.16's float16 pass gives the tiny NMS detector two Casts that
#: write one tensor (ONNX Runtime rejects the file) and crashes on torchvision's Faster R-CNN
#: (``AttributeError`` inside its ``If`` subgraph handling).
DETECTION_REFUSED_FLAVORS = {
    ("ONNX", "ONNXFloat16"): "ONNXFloat16 exports of object detectors are not offered: the float16 "
                             "converter breaks the detector's NonMaxSuppression and If subgraphs",
}

__all__ = ["ConversionError", "ExportResult", "export"]


@dataclass(frozen=True)
class ExportResult:
    """``archive`` is the zip (None when the export failed); ``manifest`` is ``export.json``."""

    archive: bytes | None
    manifest: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.archive is not None

    @property
    def reason(self) -> str:
        return str(self.manifest.get("reason", ""))


def export(source: bytes, manifest: Manifest, platform: str, flavor: str,
           images: list[bytes] | None = None) -> ExportResult:
    """Convert, prove parity, pack. Raises :class:`ConversionError` when conversion itself is
    impossible; a conversion whose parity fails comes back with ``archive=None`` and a reason."""
    if hashlib.sha256(source).hexdigest() != manifest.model_sha256:
        raise ConversionError("model.onnx does not match the sha256 its manifest records")
    if platform not in BUILDERS:
        raise ConversionError(f"unknown export platform {platform!r}")
    if manifest.is_detection and (platform in DETECTION_REFUSED
                                  or (platform, flavor) in DETECTION_REFUSED_FLAVORS):
        raise ConversionError(DETECTION_REFUSED.get(platform)
                              or DETECTION_REFUSED_FLAVORS[(platform, flavor)])
    started = time.perf_counter()
    builder = importlib.import_module(BUILDERS[platform])
    built: Built = builder.build(source, manifest, flavor)
    seconds = time.perf_counter() - started
    if manifest.is_detection:
        parity = _detection_parity(source, manifest, platform, flavor, built, images)
    else:
        parity = _classification_parity(source, manifest, platform, flavor, built, images)
    files = dict(built.files)
    files["labels.txt"] = "".join(f"{t.name}\n" for t in manifest.tags).encode()
    record: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "platform": platform,
        "flavor": flavor or None,
        "projectId": manifest.project_id,
        "iterationId": manifest.iteration_id,
        "source": {"file": "model.onnx", "sha256": manifest.model_sha256, "bytes": len(source),
                   "opset": manifest.onnx_opset},
        "converter": built.converter,
        "conversionSeconds": round(seconds, 3),
        "files": [{"name": n, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                  for n, d in sorted(files.items())],
        "parity": parity,
    }
    if parity.get("passed") is False:
        record["reason"] = f"parity check failed: {parity.get('reason', '')}"
        return ExportResult(None, record)
    import json

    files[EXPORT_MANIFEST] = json.dumps(record, indent=2).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(files.items()):
            z.writestr(name, data)
    record["archiveBytes"] = len(buf.getvalue())
    return ExportResult(buf.getvalue(), record)


def _classification_parity(source: bytes, manifest: Manifest, platform: str, flavor: str,
                           built: Built, images: list[bytes] | None) -> dict[str, Any]:
    images = images if images is not None else golden_images()
    tolerance = TOLERANCES[(platform, flavor)]
    batch = served_batch(images, manifest.preprocessing)
    from training_job.exporters.parity import onnx_runner

    reference = onnx_runner(source, manifest.preprocessing.input_name)(batch)
    if built.run is None:
        return _not_run_here(built, images, reference, tolerance)
    try:
        started = time.perf_counter()
        candidate = built.run(images)
        per_image = (time.perf_counter() - started) * 1000 / max(len(images), 1)
    except Exception as e:  # noqa: BLE001 - an export that cannot run cannot pass
        return {"images": len(images), "passed": False, "runtime": built.runtime,
                "tolerance": tolerance,
                "reason": f"the exported model failed to run: {str(e)[:300]}"}
    parity = compare(reference, candidate, tolerance, built.runtime)
    parity["msPerImage"] = round(per_image, 3)  # the whole batch at once, this machine's CPU
    return parity


def _not_run_here(built: Built, images: list[bytes], reference: Any,
                  tolerance: float) -> dict[str, Any]:
    """The record of an export whose runtime does not exist here (Core ML): ``passed`` stays
    ``None`` (nothing was measured on the exported file), and the graph the converter compiled
    from must agree with the served model, or the export fails."""
    parity: dict[str, Any] = {"images": len(images), "passed": None,
                              "runtime": built.not_runnable, "tolerance": tolerance}
    if built.verified_by:
        parity["verifiedBy"] = built.verified_by
    if built.intermediate is not None:
        try:
            candidate = built.intermediate(images)
        except Exception as e:  # noqa: BLE001 - the converted graph must run
            candidate, record = None, {"passed": False, "runtime": built.intermediate_runtime,
                                       "reason": f"failed to run: {str(e)[:300]}"}
        if candidate is not None:
            record = compare(reference, candidate, tolerance, built.intermediate_runtime)
        parity["intermediate"] = record
        if record["passed"] is False:
            parity["passed"] = False
            parity["reason"] = (f"the graph the converter compiled from disagrees with the "
                                f"served model: {record.get('reason', '')}")
    return parity


def _detection_parity(source: bytes, manifest: Manifest, platform: str, flavor: str,
                      built: Built, images: list[bytes] | None) -> dict[str, Any]:
    prep = manifest.detection_preprocessing
    tolerance = DETECTION_TOLERANCES.get((platform, flavor))
    if prep is None or tolerance is None or built.tensors is None:
        raise ConversionError(f"{' '.join(filter(None, (platform, flavor)))} exports of object "
                              "detectors are not offered: there is no box parity check for it")
    scenes = images if images is not None else golden_scenes()
    inputs = detection_inputs(scenes, prep)
    served = onnx_outputs(source, prep.input_name)
    reference = [as_detections(served(x)) for x in inputs]
    block = manifest.detection or {}
    floor = float(block.get("scoreFloor", 0.0))
    try:
        started = time.perf_counter()
        candidate = [as_detections(built.tensors(x)) for x in inputs]
        per_image = (time.perf_counter() - started) * 1000 / max(len(inputs), 1)
    except Exception as e:  # noqa: BLE001 - an export that cannot run cannot pass
        return {"kind": "detection", "images": len(inputs), "passed": False,
                "runtime": built.runtime, "reason": f"the exported model failed to run: "
                                                    f"{str(e)[:300]}"}
    parity = compare_detections(reference, candidate, tolerance, floor, built.runtime,
                                nms_iou=float(block.get("nmsIou", 0.5)),
                                max_detections=int(block.get("maxDetections", 0)))
    parity["msPerImage"] = round(per_image, 3)
    return parity
