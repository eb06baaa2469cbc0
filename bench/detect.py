"""Benchmark: per-image object detection cost of the serving core vs a naive baseline and the floor.

Run from the repo root: ``.venv/bin/python bench/detect.py``. The General domain's detector
(training_job.detection_model: Faster R-CNN MobileNetV3-Large FPN at 320 px, random init: the
cost of a forward pass does not depend on the weights) is exported the way the training job does
(training_job.detection_export: box decoding, NMS, score floor and top 200 inside the graph) and
served three ways on the same photo-like 1024x768 JPEGs, interleaved round by round so a noisy
shared machine hits all alike:

- serving core: :meth:`visionpipe.serving.core.DetectionSession.detect` (JPEG draft decode at the
  smallest covering scale, stretch to the input square, table-lookup normalisation, one ORT
  ``session.run``, the outputs re-checked and ranked: visionpipe.detection_decode);
- naive: PIL full decode + torchvision ``Resize``/``ToTensor``/``Normalize`` + the torch model
  in eager mode (the same module the export traces, so the same boxes);
- floor: ``session.run`` on a ready tensor plus reading its boxes (what no serving code can
  beat on this machine), and the JPEG draft decode alone ("floor + decode").

Also reported: validation (the HTTP/drop paths run it first) and the boxes answered per picture.
Medians over rounds; the last line is the JSON record ARCHITECTURE.md, "Benchmarks" asks for.
"""

from __future__ import annotations

import os

# torch's OpenMP workers spin after each call by default; on two cores that spinning steals the
# CPU from whatever runs next (ONNX Runtime here), so both sides would measure each other.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from io import BytesIO  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.predict import median_ms  # noqa: E402  (one timing for every bench)
from visionpipe.detection_decode import DetectionPreprocessing, read_detections  # noqa: E402
from visionpipe.imaging import decode_for_model  # noqa: E402
from visionpipe.local.samples import make_photo  # noqa: E402
from visionpipe.manifest import Manifest, TagOutput  # noqa: E402
from visionpipe.serving.core import DetectionSession, ServingConfig  # noqa: E402
from visionpipe.settings import MB, ImageLimits  # noqa: E402
from visionpipe.validation import validate_image  # noqa: E402

SIZE = (1024, 768)
TAGS = 3


def build(path: Path) -> tuple[Any, Any, DetectionPreprocessing]:
    """(torch model, its spec, preprocessing) with the ONNX export written to ``path``."""
    import torch

    from training_job.detection_export import export_detector
    from training_job.detection_model import DEFAULT_DOMAIN, build_detector, detector_for_domain

    torch.manual_seed(0)
    spec = detector_for_domain(DEFAULT_DOMAIN)
    built = build_detector(spec, TAGS, pretrained=False)
    prep = DetectionPreprocessing(input_size=spec.input_size)
    export_detector(built.model, spec, prep, path)
    return built.model.eval(), spec, prep


def manifest_for(model: bytes, spec: Any, prep: DetectionPreprocessing) -> Manifest:
    from training_job.detection_export import manifest_fields

    fields = manifest_fields(spec, prep)
    return Manifest(
        project_id="bench", iteration_id="bench", classification_type="Multiclass",
        tags=tuple(TagOutput(f"t{i}", f"tag{i}") for i in range(TAGS)),
        preprocessing=prep.normalization(), backbone=spec.architecture, pretrained=False,
        onnx_opset=17, model_sha256=hashlib.sha256(model).hexdigest(),
        domain_type=fields["domainType"], detection_preprocessing=prep,
        detection=fields["detection"],
    )


def naive_pipeline(model: Any, spec: Any, prep: DetectionPreprocessing
                   ) -> Callable[[bytes], np.ndarray]:
    import torch
    from torchvision import transforms

    from training_job.detection_model import NormalizedDetections

    served = NormalizedDetections(model, spec.input_size, spec.score_floor).eval()
    tf = transforms.Compose([
        transforms.Resize((prep.input_size, prep.input_size)), transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])

    def run(data: bytes) -> np.ndarray:
        img = Image.open(BytesIO(data)).convert("RGB")
        with torch.inference_mode():
            boxes, _scores, _labels = served(tf(img).unsqueeze(0))
        return boxes.numpy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()

    import torch

    # One request alone: both sides may use every core the instance has.
    config = ServingConfig(concurrent_runs=1)
    torch.set_num_threads(config.intra_op_threads)
    images = [make_photo(SIZE, seed=i) for i in range(args.images)]
    print(f"{len(images)} photo-like {SIZE[0]}x{SIZE[1]} JPEGs, mean "
          f"{statistics.mean(map(len, images)) / 1024:.0f} KB; {config.intra_op_threads} "
          f"intra-op threads (torch: {torch.get_num_threads()})")

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        started = time.perf_counter()
        model, spec, prep = build(onnx_path)
        model_bytes = onnx_path.read_bytes()
    print(f"{spec.architecture}@{spec.input_size} (random init, {spec.rpn_proposals_test} "
          f"proposals), {len(model_bytes) / MB:.0f} MB ONNX, built and exported in "
          f"{time.perf_counter() - started:.0f} s")
    served = DetectionSession(manifest_for(model_bytes, spec, prep), model_bytes, config)
    naive = naive_pipeline(model, spec, prep)
    limits = ImageLimits(max_bytes=4 * MB)
    ready = served.input_for(images[0])[None]
    names = list(served.output_names)

    def floor() -> object:
        boxes, scores, labels = served.session.run(names, {prep.input_name: ready})
        return read_detections(boxes, scores, labels, TAGS)

    counts = {"serving": [len(served.detect(d).boxes) for d in images],
              "naive": [len(naive(d)) for d in images]}
    print(f"boxes per picture (random init, floor {spec.score_floor}): serving "
          f"{statistics.mean(counts['serving']):.0f}, naive {statistics.mean(counts['naive']):.0f}")

    measures: dict[str, list[float]] = {k: [] for k in (
        "serving", "naive", "floor", "decode", "validate")}
    # Round by round, the same images for all. The serving core, the floor, the decode and
    # validation alternate image by image (a load spike from elsewhere hits them alike); torch
    # gets a block of its own so its worker threads winding down never land in ORT's timings.
    for _ in range(args.rounds):
        for data in images:
            measures["serving"].append(median_ms(lambda d=data: served.detect(d), 1))
            measures["floor"].append(median_ms(floor, 1))
            measures["decode"].append(median_ms(
                lambda d=data: decode_for_model(d, prep.min_decode_size), 1))
            measures["validate"].append(median_ms(lambda d=data: validate_image(d, limits), 1))
        for data in images:
            measures["naive"].append(median_ms(lambda d=data: naive(d), 1))
    med = {k: statistics.median(v) for k, v in measures.items()}

    floor_plus_decode = med["floor"] + med["decode"]
    for label, key in (("serving core (decode..ranked boxes)", "serving"),
                       ("naive (PIL + torchvision + torch eager)", "naive"),
                       ("floor: session.run on a ready tensor + boxes", "floor"),
                       ("JPEG draft decode alone", "decode"),
                       ("validation (run before serving on HTTP/drop)", "validate")):
        print(f"{label:<48} {med[key]:8.2f} ms")
    print(f"{'floor + decode':<48} {floor_plus_decode:8.2f} ms")
    ratio = med["naive"] / med["serving"]
    print(f"serving is {ratio:.2f}x faster than naive; {med['serving'] / floor_plus_decode:.3f}x "
          f"of floor + decode")
    print(json.dumps({
        "name": "detect_per_image_1024x768_jpeg",
        "value": round(med["serving"], 3),
        "unit": "ms",
        "baseline": "naive: PIL full decode + torchvision transforms + torch eager "
                    f"({spec.architecture}@{spec.input_size})",
        "baseline_value": round(med["naive"], 3),
        "ratio": round(ratio, 2),
        "floor_ms": round(med["floor"], 3),
        "decode_ms": round(med["decode"], 3),
        "vs_floor_plus_decode": round(med["serving"] / floor_plus_decode, 3),
        "validate_ms": round(med["validate"], 3),
        "input_size": spec.input_size,
        "rpn_proposals": spec.rpn_proposals_test,
        "intra_op_threads": config.intra_op_threads,
    }))


if __name__ == "__main__":
    main()
