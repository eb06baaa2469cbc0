"""Exports of an iteration to other platforms, each with a parity proof (docs/ARCHITECTURE.md,
"Exports").

:func:`export` converts the served ONNX model to one platform/flavor, runs the result on its own
runtime over the golden images (:mod:`training_job.exporters.parity`), compares with the served
model, and packs a zip: the platform's files, ``labels.txt``, and ``export.json`` (the export
manifest: source model hash, converter, file hashes and sizes, conversion time, parity). An export
whose parity fails is reported as failed and never packed for download.
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
from training_job.exporters.parity import TOLERANCES, compare, golden_images, served_batch
from visionpipe.manifest import Manifest

EXPORT_MANIFEST = "export.json"
SCHEMA_VERSION = 1
#: Platform -> the module whose ``build(source, manifest, flavor)`` makes it (imported on use:
#: a converter that is not installed fails only its own platform).
BUILDERS = {
    "ONNX": "training_job.exporters.onnx_flavors",
    "OpenVino": "training_job.exporters.openvino_ir",
    "DockerFile": "training_job.exporters.dockerfile",
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
    started = time.perf_counter()
    builder = importlib.import_module(BUILDERS[platform])
    built: Built = builder.build(source, manifest, flavor)
    seconds = time.perf_counter() - started
    images = images if images is not None else golden_images()
    tolerance = TOLERANCES[(platform, flavor)]
    if built.run is None:
        parity: dict[str, Any] = {"images": len(images), "passed": None,
                                  "runtime": built.not_runnable, "tolerance": tolerance}
    else:
        from training_job.exporters.parity import onnx_runner

        reference = onnx_runner(source, manifest.preprocessing.input_name)(
            served_batch(images, manifest.preprocessing))
        try:
            candidate = built.run(images)
        except Exception as e:  # noqa: BLE001 - an export that cannot run cannot pass
            candidate = None
            parity = {"images": len(images), "passed": False, "runtime": built.runtime,
                      "tolerance": tolerance,
                      "reason": f"the exported model failed to run: {str(e)[:300]}"}
        if candidate is not None:
            parity = compare(reference, candidate, tolerance, built.runtime)
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
