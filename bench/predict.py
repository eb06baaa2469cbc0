"""Benchmark: per-image prediction cost of the serving core vs a naive baseline and vs the floor.

Run from the repo root: ``.venv/bin/python bench/predict.py``. A MobileNetV3-Small classifier
(torchvision, random init: timing does not depend on the weights) is exported to ONNX the way the
training job does (softmax at the end, dynamic batch) and served three ways, on the same
photo-like 1024x768 JPEGs, interleaved round by round so a noisy shared machine hits all alike:

- serving core: :class:`visionpipe.serving.core.ModelSession.classify` (JPEG draft decode at the
  smallest covering scale, one-pass resize+crop, table-lookup normalisation, ORT session tuned
  for a Functions instance, ranked output);
- naive: PIL full decode + torchvision Resize/CenterCrop/ToTensor/Normalize + torch eager model;
- floor: ``session.run`` on a ready tensor, plus the draft decode alone ("floor + decode": what
  no serving code can beat on this machine).

Also reported: validation (the HTTP/drop paths run it first), batch-16 cost per image, and four
clients classifying at once under three ways of sharing the cores. Medians over
rounds; the last line is the JSON record ARCHITECTURE.md, "Benchmarks" asks for.
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
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from io import BytesIO  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from visionpipe.imaging import open_oriented  # noqa: E402
from visionpipe.local.samples import make_photo  # noqa: E402
from visionpipe.manifest import Manifest, TagOutput  # noqa: E402
from visionpipe.preprocessing import PreprocessingSpec  # noqa: E402
from visionpipe.serving.core import ModelSession, ServingConfig  # noqa: E402
from visionpipe.settings import MB, ImageLimits  # noqa: E402
from visionpipe.validation import validate_image  # noqa: E402

SIZE = (1024, 768)
TAGS = 5


def export_model(path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=TAGS).eval()

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(x), dim=1)

    torch.onnx.export(WithSoftmax(net).eval(), (torch.randn(1, 3, 224, 224),), str(path),
                      input_names=["input"], output_names=["probabilities"],
                      dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)
    torch.save(net.state_dict(), path.with_suffix(".pt"))


def naive_pipeline(weights: Path) -> Callable[[bytes], np.ndarray]:
    import torch
    import torchvision
    from torchvision import transforms

    net = torchvision.models.mobilenet_v3_small(num_classes=TAGS)
    net.load_state_dict(torch.load(weights))
    net.eval()
    spec = PreprocessingSpec()
    tf = transforms.Compose([
        transforms.Resize(spec.resize), transforms.CenterCrop(spec.crop), transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])

    def run(data: bytes) -> np.ndarray:
        img = Image.open(BytesIO(data)).convert("RGB")
        with torch.inference_mode():
            return torch.softmax(net(tf(img).unsqueeze(0)), dim=1)[0].numpy()

    return run


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def concurrent_per_image_ms(fn: Callable[[bytes], object], images: list[bytes],
                            threads: int) -> float:
    work = images * 4
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fn, images[:threads]))  # warm
        start = time.perf_counter()
        list(pool.map(fn, work))
        return (time.perf_counter() - start) * 1000 / len(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=12)
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
        export_model(onnx_path)
        model = onnx_path.read_bytes()
        naive = naive_pipeline(onnx_path.with_suffix(".pt"))
    spec = PreprocessingSpec()
    manifest = Manifest(
        project_id="bench", iteration_id="bench", classification_type="Multiclass",
        tags=tuple(TagOutput(f"t{i}", f"tag{i}") for i in range(TAGS)), preprocessing=spec,
        backbone="mobilenet_v3_small", pretrained=False, onnx_opset=17,
        model_sha256=hashlib.sha256(model).hexdigest(),
    )
    served = ModelSession(manifest, model, config)
    limits = ImageLimits(max_bytes=4 * MB)

    # Same answer from both sides (sanity, not a parity test: draft decode differs slightly).
    agree = sum(int(np.argmax(naive(d)) == np.argmax(served.classify(d).probabilities))
                for d in images)
    print(f"top-1 agreement serving vs naive: {agree}/{len(images)}")

    ready = np.stack([served.tensor(images[0])])
    batch16 = [images[i % len(images)] for i in range(16)]
    measures: dict[str, list[float]] = {k: [] for k in (
        "serving", "naive", "floor", "decode", "validate", "batch16")}
    # Round by round, the same images for all. The serving core, the floor, the decode and
    # validation alternate image by image (a load spike from elsewhere hits them alike); torch
    # gets a block of its own so its worker threads winding down never land in ORT's timings.
    for _ in range(args.rounds):
        for data in images:
            measures["serving"].append(median_ms(lambda d=data: served.classify(d), 1))
            measures["floor"].append(median_ms(lambda: served.run_batch(ready), 1))
            measures["decode"].append(median_ms(
                lambda d=data: open_oriented(d, spec.min_decode_size), 1))
            measures["validate"].append(median_ms(lambda d=data: validate_image(d, limits), 1))
        for data in images:
            measures["naive"].append(median_ms(lambda d=data: naive(d), 1))
        measures["batch16"].append(median_ms(
            lambda: served.run_batch(np.stack([served.tensor(d) for d in batch16])), 1) / 16)
    med = {k: statistics.median(v) for k, v in measures.items()}

    # Four clients at once, per image: the default configuration (a single-threaded run per
    # core, batching whatever waits for a free one), one run at a time on all cores (batching
    # the rest), and no coordination at all (every request runs at once, all cores each).
    default = ModelSession(manifest, model, ServingConfig())
    concurrent = {"default": default.classify, "one_run": served.classify,
                  "uncoordinated": lambda d: served.run_batch(served.tensor(d)[None])}
    conc: dict[str, list[float]] = {k: [] for k in concurrent}
    runs = items = 0
    for _ in range(max(1, args.rounds // 2)):
        for key, fn in concurrent.items():
            before = (default._batcher.batches, default._batcher.items)
            conc[key].append(concurrent_per_image_ms(fn, images, 4))
            if key == "default":
                runs += default._batcher.batches - before[0]
                items += default._batcher.items - before[1]
    conc_med = {k: statistics.median(v) for k, v in conc.items()}
    mean_batch = items / max(1, runs)

    floor_plus_decode = med["floor"] + med["decode"]
    for label, key in (("serving core (decode..ranked tags)", "serving"),
                       ("naive (PIL + torchvision + torch eager)", "naive"),
                       ("floor: session.run on a ready tensor", "floor"),
                       ("JPEG draft decode alone", "decode"),
                       ("validation (run before serving on HTTP/drop)", "validate"),
                       ("batch of 16, per image (decode included)", "batch16")):
        print(f"{label:<48} {med[key]:7.2f} ms")
    print(f"{'floor + decode':<48} {floor_plus_decode:7.2f} ms")
    dc = default.config
    print(f"{'4 clients, default':<48} {conc_med['default']:7.2f} ms  ({dc.concurrent_runs} runs "
          f"x {dc.intra_op_threads} thread, mean batch {mean_batch:.2f})")
    print(f"{'4 clients, one run at a time':<48} {conc_med['one_run']:7.2f} ms  (1 run x "
          f"{config.intra_op_threads} threads)")
    print(f"{'4 clients, uncoordinated runs':<48} {conc_med['uncoordinated']:7.2f} ms")
    ratio = med["naive"] / med["serving"]
    print(f"serving is {ratio:.1f}x faster than naive; {med['serving'] / floor_plus_decode:.2f}x "
          f"of floor + decode")
    print(json.dumps({
        "name": "predict_per_image_1024x768_jpeg",
        "value": round(med["serving"], 3),
        "unit": "ms",
        "baseline": "naive: PIL full decode + torchvision transforms + torch eager "
                    "(MobileNetV3-Small)",
        "baseline_value": round(med["naive"], 3),
        "ratio": round(ratio, 2),
        "floor_ms": round(med["floor"], 3),
        "decode_ms": round(med["decode"], 3),
        "vs_floor_plus_decode": round(med["serving"] / floor_plus_decode, 3),
        "validate_ms": round(med["validate"], 3),
        "batch16_per_image_ms": round(med["batch16"], 3),
        "concurrent4_default_ms": round(conc_med["default"], 3),
        "concurrent4_one_run_ms": round(conc_med["one_run"], 3),
        "concurrent4_uncoordinated_ms": round(conc_med["uncoordinated"], 3),
        "intra_op_threads": config.intra_op_threads,
    }))


if __name__ == "__main__":
    main()
