"""Exports: conversion time and size per platform/flavor for a small model, and each exported
model's per-image latency on this machine next to the served ONNX model (both timed from the
image bytes: decoding and preprocessing included, as a client would see it).

The model is torchvision's MobileNetV3-Small (random init, 224 px, exported as the training job
exports it) when torch is installed, else the tests' tiny colour model. Prints one line per
export, then the JSON summary last (docs/ARCHITECTURE.md, "Benchmarks"): ``value`` is the slowest
exported model's median per-image latency, ``baseline_value`` the served ONNX model's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training_job.exporters import BUILDERS, ConversionError  # noqa: E402
from training_job.exporters.parity import golden_images, onnx_runner, served_batch  # noqa: E402
from visionpipe.manifest import Manifest, TagOutput  # noqa: E402
from visionpipe.messages import EXPORT_FLAVORS  # noqa: E402
from visionpipe.preprocessing import PreprocessingSpec  # noqa: E402

RUNS = 30


def small_model() -> tuple[bytes, PreprocessingSpec, str]:
    if importlib.util.find_spec("torch") is None:
        from tests.model_factory import SMALL_SPEC, build_color_model

        return build_color_model(), SMALL_SPEC, "color-test-model"
    import torch
    import torchvision

    from training_job.export import export_onnx
    from training_job.exporters.parity import golden_images
    from training_job.model import recalibrate_batchnorm
    from visionpipe.preprocessing import normalize, prepare_image

    spec = PreprocessingSpec()
    torch.manual_seed(0)
    backbone = torchvision.models.mobilenet_v3_small(num_classes=5)
    # A random init answers near-uniformly in eval mode (BatchNorm statistics at their initial
    # values), so no golden image would have a clear top-1 and every parity check would refuse:
    # recompute the statistics over the golden pictures, as the training job does after training,
    # then sharpen the classifier so the pictures get distinct top-1s.
    pictures = torch.from_numpy(normalize(np.stack([prepare_image(b, spec)
                                                    for b in golden_images()]), spec))
    recalibrate_batchnorm(backbone, [pictures], torch.device("cpu"))
    backbone.eval()
    with torch.no_grad():
        backbone.classifier[-1].weight.mul_(40.0)
    net = torch.nn.Sequential(backbone, torch.nn.Softmax(dim=1)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "model.onnx")
        export_onnx(net, spec, path, exporter="torchscript")
        return path.read_bytes(), spec, "mobilenet_v3_small"


def median_ms(run, image: bytes) -> float:  # noqa: ANN001 - a runner: list[bytes] -> outputs
    run([image])
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        run([image])
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    import importlib

    from training_job.exporters import export

    source, spec, backbone = small_model()
    manifest = Manifest("p", "i", "Multiclass",
                        tuple(TagOutput(f"t{k}", f"tag{k}") for k in range(5 if backbone !=
                                                                        "color-test-model" else 3)),
                        spec, backbone, False, 17, hashlib.sha256(source).hexdigest(),
                        created=datetime.now(UTC).isoformat())
    image = golden_images(1)[0]
    served = onnx_runner(source, spec.input_name)
    served_ms = median_ms(lambda images: served(served_batch(images, spec)), image)
    print(f"{backbone}: served ONNX {len(source):,} bytes, {served_ms:.2f} ms/image")
    results: dict[str, dict[str, object]] = {}
    for platform, flavors in EXPORT_FLAVORS.items():
        for flavor in flavors:
            if platform == "ONNX" and not flavor:
                continue
            key = f"{platform}/{flavor or '-'}"
            try:
                result = export(source, manifest, platform, flavor)
            except ConversionError as e:
                results[key] = {"status": "Failed", "reason": str(e)[:160]}
                print(f"{key}: Failed: {str(e)[:160]}")
                continue
            built = importlib.import_module(BUILDERS[platform]).build(source, manifest, flavor)
            ms = median_ms(built.run, image) if built.run else None
            parity = result.manifest["parity"]
            results[key] = {"status": "Done" if result.passed else "Failed",
                            "conversionSeconds": result.manifest["conversionSeconds"],
                            "archiveBytes": result.manifest.get("archiveBytes"),
                            "msPerImage": round(ms, 3) if ms is not None else None,
                            "maxAbsProbDiff": parity.get("maxAbsProbDiff"),
                            "top1Agreement": parity.get("top1Agreement"),
                            "tolerance": parity.get("tolerance")}
            print(f"{key}: {json.dumps(results[key])}")
    timed = [r["msPerImage"] for r in results.values() if isinstance(r.get("msPerImage"), float)]
    slowest = max(timed) if timed else 0.0
    print(json.dumps({"name": f"export_latency_{backbone}", "value": round(slowest, 3),
                      "unit": "ms", "baseline": "served ONNX model (onnxruntime)",
                      "baseline_value": round(served_ms, 3),
                      "ratio": round(served_ms / slowest, 3) if slowest else None,
                      "platforms": results}))


if __name__ == "__main__":
    main()
