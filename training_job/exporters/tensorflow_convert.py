"""The ``TensorFlow`` platform: the served ONNX model rebuilt in TensorFlow by onnx2tf, then
packed as a SavedModel (``TensorFlowNormal``, training_job.exporters.tensorflow_savedmodel) or
a TensorFlow Lite flatbuffer (``TensorFlowLite``, training_job.exporters.tensorflow_lite).

onnx2tf is asked to keep the input NCHW (``keep_ncw_or_nchw_or_ncdhw_input_names``): the
exported model takes exactly the tensor the served model takes (same name, layout and
preprocessing, see ``export.json``), so one preprocessing definition serves every platform and
the parity proof compares like with like. Its own model files are not used
(``disable_model_save``): the Keras model it returns is wrapped in a ``serving_default``
signature whose input and output carry the ONNX graph's names (``input`` ->
``probabilities``), which the TFLite file then inherits.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from training_job.exporters.built import Built, ConversionError
from training_job.exporters.tensorflow_import import before_tensorflow
from visionpipe.manifest import Manifest

log = logging.getLogger(__name__)

FLAVORS = ("TensorFlowNormal", "TensorFlowLite")
SIGNATURE = "serving_default"


def _interface(source: bytes) -> tuple[str, str, list[int | None]]:
    """(input name, output name, input shape with ``None`` for symbolic axes)."""
    import onnx

    graph = onnx.load_from_string(source).graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ConversionError("TensorFlow exports take a model with one input and one output")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, graph.output[0].name, dims


def saved_model_dir(source: bytes, out: Path) -> dict[str, Any]:
    """Convert ``source`` and write a SavedModel to ``out``; return the converter record."""
    before_tensorflow()
    try:
        import onnx
        import onnx2tf
        import tensorflow as tf
    except ImportError as e:
        raise ConversionError("the TensorFlow converter (onnx2tf, tensorflow) is not installed "
                              "in this job (make setup-exporters)") from e
    input_name, output_name, dims = _interface(source)
    chatter = io.StringIO()
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(chatter):
            keras_model = onnx2tf.convert(
                onnx_graph=onnx.load_from_string(source), output_folder_path=tmp,
                keep_ncw_or_nchw_or_ncdhw_input_names=[input_name], not_use_onnxsim=True,
                disable_model_save=True, non_verbose=True)
    except Exception as e:  # noqa: BLE001 - any converter complaint fails the export
        raise ConversionError(f"onnx2tf could not convert the model: {str(e)[:300]}") from e
    finally:
        for line in chatter.getvalue().splitlines():
            log.debug("onnx2tf: %s", line)

    class Served(tf.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec(dims, tf.float32, name=input_name)])
        def serve(self, x: Any) -> dict[str, Any]:
            return {output_name: self.model(x)}

    served = Served()
    tf.saved_model.save(served, str(out), signatures={SIGNATURE: served.serve})
    return {"name": "onnx2tf", "version": onnx2tf.__version__, "tensorflow": tf.__version__,
            "layout": "NCHW (kept as the served model's)", "signature": SIGNATURE,
            "input": input_name, "output": output_name}


def build(source: bytes, manifest: Manifest, flavor: str) -> Built:
    if flavor not in FLAVORS:
        raise ConversionError(f"unknown TensorFlow flavor {flavor!r}; one of {FLAVORS}")
    from training_job.exporters import tensorflow_lite, tensorflow_savedmodel

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "saved_model")
        converter = saved_model_dir(source, out)
        if flavor == "TensorFlowNormal":
            return tensorflow_savedmodel.pack(out, manifest, converter)
        return tensorflow_lite.pack(out, manifest, converter)
