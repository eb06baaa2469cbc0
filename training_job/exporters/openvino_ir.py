"""OpenVINO IR (``model.xml`` + ``model.bin``) from the served ONNX model, kept in FP32
(``compress_to_fp16=False``: OpenVINO's default halves the weights, which is a separate choice
a user can make on the IR later), and run back on OpenVINO's CPU runtime for its parity proof
with ``INFERENCE_PRECISION_HINT=f32`` (on CPUs with bf16/AMX units OpenVINO otherwise computes in
bf16, about 3e-3 off in probability: a runtime choice, not a property of the IR)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from training_job.exporters.built import Built, ConversionError
from training_job.exporters.parity import served_batch
from visionpipe.manifest import Manifest


def build(source: bytes, manifest: Manifest, flavor: str) -> Built:
    try:
        import openvino as ov
    except ImportError as e:
        raise ConversionError("the OpenVINO converter is not installed in this job "
                              "(make setup-exporters)") from e
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, xml = Path(tmp, "model.onnx"), Path(tmp, "model.xml")
        onnx_path.write_bytes(source)
        try:
            model = ov.convert_model(str(onnx_path))
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as e:  # noqa: BLE001 - any converter complaint fails the export
            raise ConversionError(f"OpenVINO could not convert the model: {str(e)[:300]}") from e
        files = {"model.xml": xml.read_bytes(), "model.bin": xml.with_suffix(".bin").read_bytes()}
    core = ov.Core()
    compiled = core.compile_model(core.read_model(files["model.xml"].decode(),
                                                  ov.Tensor(np.frombuffer(files["model.bin"],
                                                                          np.uint8))), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    output = compiled.output(0)
    spec = manifest.preprocessing

    def run(images: list[bytes]) -> np.ndarray:
        return np.asarray(compiled(served_batch(images, spec))[output], np.float32)

    def tensors(batch: np.ndarray) -> list[np.ndarray]:
        answer = compiled(batch)
        return [np.asarray(answer[o]) for o in compiled.outputs]

    return Built(files, run, {"name": "openvino.convert_model", "version": ov.__version__,
                              "compressToFp16": False},
                 runtime=f"openvino {ov.__version__} CPU, f32 inference precision",
                 tensors=tensors)
