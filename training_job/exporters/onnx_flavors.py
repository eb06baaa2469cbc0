"""visionpipe's ONNX flavors: older opsets (``ONNX10``/``ONNX12``, Custom Vision's names),
half precision (``ONNXFloat16``) and dynamically quantised INT8 weights (``ONNXInt8``).

Each is run back with ONNX Runtime (the serving runtime) for its parity proof. A model that cannot
be expressed in an older opset fails with the converter's reason rather than shipping a file that
claims an opset it does not keep.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from training_job.exporters.built import Built, ConversionError
from training_job.exporters.parity import onnx_outputs, onnx_runner, served_batch
from visionpipe.manifest import Manifest

#: The highest IR version each target opset's runtimes read (onnx's versioning table).
_IR_FOR_OPSET = {10: 5, 12: 7}
#: Operators whose float32 semantics have not changed since this opset (later versions only
#: added types such as bfloat16): where onnx's version converter has no down-adapter for them,
#: the node is valid as it is in any opset from this one on. Softmax qualifies on its last axis
#: of a 2-D input only (a classifier head), checked below; parity proves the result either way.
_SAME_SINCE = {
    "Flatten": 9, "MatMul": 9, "Gemm": 9, "Relu": 6, "Sigmoid": 6, "Add": 7, "Mul": 7,
    "Sub": 7, "Div": 7, "GlobalAveragePool": 1, "Identity": 1, "Transpose": 1, "Concat": 4,
    "HardSigmoid": 6, "Softmax": 1, "Constant": 9,
}


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def to_opset(source: bytes, target: int) -> tuple[bytes, dict[str, Any]]:
    import onnx
    from onnx import version_converter

    model = onnx.load_from_string(source)
    current = _opset(model)
    method = "unchanged"
    if current != target:
        try:
            model = version_converter.convert_version(model, target)
            method = "version_converter"
        except Exception as e:  # noqa: BLE001 - any converter complaint: try the relabel
            model = _relabel(onnx.load_from_string(source), target, str(e))
            method = "relabel (type-only operator changes)"
    model.ir_version = min(model.ir_version, _IR_FOR_OPSET[target])
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"the opset {target} model does not pass onnx.checker: "
                              f"{str(e)[:300]}") from e
    return model.SerializeToString(), {"name": "onnx.version_converter",
                                       "version": onnx.__version__, "fromOpset": current,
                                       "toOpset": target, "method": method}


def _relabel(model: Any, target: int, converter_error: str) -> Any:
    """Declare ``target`` when every node is valid there unchanged (:data:`_SAME_SINCE`)."""
    blocking = sorted({n.op_type for n in model.graph.node
                       if n.domain not in ("", "ai.onnx") or _SAME_SINCE.get(n.op_type, 99) > target
                       or (n.op_type == "Flatten" and _axis(n, 1) < 0)
                       or (n.op_type == "Softmax" and _axis(n, -1) not in (1, -1))})
    if blocking:
        raise ConversionError(f"the model cannot be expressed in ONNX opset {target}: "
                              f"{', '.join(blocking)} (onnx's converter: "
                              f"{converter_error.splitlines()[-1][:200]})")
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    return model


def _axis(node: Any, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), default)


def to_float16(source: bytes) -> tuple[bytes, dict[str, Any]]:
    import onnx
    import onnxconverter_common
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load_from_string(source), keep_io_types=True)
    return model.SerializeToString(), {"name": "onnxconverter-common float16",
                                       "version": onnxconverter_common.__version__,
                                       "keepIoTypes": True}


def to_int8(source: bytes) -> tuple[bytes, dict[str, Any]]:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "model.onnx"), Path(tmp, "model.int8.onnx")
        src.write_bytes(source)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        data = dst.read_bytes()
    return data, {"name": "onnxruntime.quantization.quantize_dynamic",
                  "version": onnxruntime.__version__, "weightType": "QInt8"}


def build(source: bytes, manifest: Manifest, flavor: str) -> Built:
    import onnxruntime

    if flavor in ("ONNX10", "ONNX12"):
        data, converter = to_opset(source, int(flavor[4:]))
    elif flavor == "ONNXFloat16":
        data, converter = to_float16(source)
    elif flavor == "ONNXInt8":
        data, converter = to_int8(source)
    else:
        raise ConversionError(f"unknown ONNX flavor {flavor!r}")
    spec = manifest.preprocessing
    try:
        run = onnx_runner(data, spec.input_name)
    except Exception as e:  # noqa: BLE001 - a file the runtime refuses is a failed export
        raise ConversionError(f"ONNX Runtime cannot load the {flavor} model: "
                              f"{str(e)[:300]}") from e
    return Built({"model.onnx": data}, lambda images: run(served_batch(images, spec)), converter,
                 runtime=f"onnxruntime {onnxruntime.__version__} CPU",
                 tensors=onnx_outputs(data, spec.input_name))
