"""``TensorFlow`` / ``TensorFlowLite``: ``model.tflite`` converted from the SavedModel by
TensorFlow's TFLite converter in float32 (no quantisation: a reduced-precision file is a
separate choice), run back for its parity proof with the LiteRT interpreter (``ai-edge-litert``,
the runtime a device uses; ``tf.lite.Interpreter`` where it is missing) through the
``serving_default`` signature, so the input and output keep the served model's names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training_job.exporters.built import Built, ConversionError
from training_job.exporters.parity import served_batch
from training_job.exporters.tensorflow_import import tensorflow
from visionpipe.manifest import Manifest

FILE = "model.tflite"


def interpreter(model: bytes) -> tuple[Any, str]:
    """A TFLite interpreter over ``model`` and the name of the runtime."""
    try:
        from ai_edge_litert import interpreter as litert

        return litert.Interpreter(model_content=model), "ai-edge-litert interpreter (XNNPACK CPU)"
    except ImportError:
        tf = tensorflow()
        return tf.lite.Interpreter(model_content=model), f"tf.lite.Interpreter {tf.__version__}"


def pack(saved_model: Path, manifest: Manifest, converter: dict[str, Any]) -> Built:
    tf = tensorflow()
    try:
        data = tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
    except Exception as e:  # noqa: BLE001 - any converter complaint fails the export
        raise ConversionError(f"the TFLite converter failed: {str(e)[:300]}") from e
    runner, runtime = interpreter(data)
    signature = runner.get_signature_runner(converter["signature"])
    spec = manifest.preprocessing

    def run(images: list[bytes]) -> np.ndarray:
        answer = signature(**{converter["input"]: served_batch(images, spec)})
        return np.asarray(answer[converter["output"]], np.float32)

    return Built({FILE: data}, run, {**converter, "tflite": "tf.lite.TFLiteConverter "
                                     "(float32, no quantisation)"}, runtime=runtime)
