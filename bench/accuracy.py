"""Benchmark: few-shot top-1 accuracy of the training job's model at 5 and 10 images per tag.

Run from the repo root: ``.venv/bin/python bench/accuracy.py`` (``--quick``: one draw, fewer
epochs and test pictures, a few minutes on 2 cores). It generates its own data set, six shape
tags (circle, square, triangle, star, cross, ring) in which colour says nothing (every picture
draws its own colours), with random scale, rotation, aspect and position on a cluttered
background (a random gradient, noise, lines and dots), so neither colour nor size nor place tells
the tags apart: only shape does.

For each of 5 and 10 shots it trains what the job trains, with the job's code (training_job.model
``build_model``, training_job.train ``fit``, the job's augmentation and serving preprocessing):
from a random init, and again from the pretrained weights when they are in the weights cache the
job reads (the container's baked-in folder, else the user cache that ``make setup`` fills,
scripts/fetch_weights.py). Offline they are absent: the output says so, and the pretrained rows
are null. Only the k labelled pictures per tag are used (no validation pictures: the epoch is
picked on the training pictures themselves), and top-1 is measured on separate test pictures;
each figure is the mean (and standard deviation) over ``--draws`` different draws of the shots.

Baseline, in the same run: nearest class mean on raw 32 px pixels, with the same shots. Reference
(not comparable: real data sets, other models): Microsoft's published comparison over 22 data
sets gives Custom Vision 63.0 % top-1 at 5 shots and 69.0 % at 10, with pretrained weights.
The last line is the JSON record of docs/ARCHITECTURE.md, "Benchmarks".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
SHOTS = (5, 10)
#: Custom Vision's published few-shot top-1 (pretrained, real data, mean of 22 data sets)
REFERENCE = {5: 63.0, 10: 69.0}
TEST_SEED0 = 1_000_000  # test pictures never share a seed with training pictures


# --- the data set --------------------------------------------------------------------------------
def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _outline(kind: str, n: int = 60) -> list[tuple[float, float]]:
    """The shape's outline on the unit square centred at 0 (before scale and rotation)."""
    if kind in ("circle", "ring"):
        return [(math.cos(t) * 0.5, math.sin(t) * 0.5)
                for t in np.linspace(0, 2 * math.pi, n, endpoint=False)]
    if kind == "square":
        return [(-0.42, -0.42), (0.42, -0.42), (0.42, 0.42), (-0.42, 0.42)]
    if kind == "triangle":
        return [(math.cos(t) * 0.55, math.sin(t) * 0.55 + 0.08)
                for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if kind == "star":
        return [((0.55 if i % 2 == 0 else 0.22) * math.cos(-math.pi / 2 + i * math.pi / 5),
                 (0.55 if i % 2 == 0 else 0.22) * math.sin(-math.pi / 2 + i * math.pi / 5))
                for i in range(10)]
    if kind == "cross":
        a, b = 0.5, 0.15
        return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                (-a, b), (-a, -b), (-b, -b)]
    raise ValueError(kind)


def picture(kind: str, seed: int, size: int = 96) -> Image.Image:
    """One picture of ``kind``, deterministic in ``seed``: random colours, scale, aspect,
    rotation and place on a cluttered gradient background."""
    rng = np.random.default_rng([CLASSES.index(kind), seed])
    c0, c1 = np.array(_colour(rng), float), np.array(_colour(rng), float)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = np.clip((xx * math.cos(angle) + yy * math.sin(angle) + 1) / 2, 0, 1)[..., None]
    bg = c0 * (1 - t) + c1 * t + rng.normal(0, 10, (size, size, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):  # clutter: lines and dots of any colour
        p = rng.uniform(0, size, 4)
        draw.line([(p[0], p[1]), (p[2], p[3])], fill=_colour(rng), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(8, 25))):
        x, y, r = *rng.uniform(0, size, 2), rng.uniform(0.8, 2.2)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))
    mean_bg = tuple(int(v) for v in (c0 + c1) / 2)
    fg = _colour(rng)
    while abs(_luma(fg) - _luma(mean_bg)) < 50:  # visible, but in any colour
        fg = _colour(rng)
    scale = rng.uniform(0.3, 0.62) * size
    aspect = rng.uniform(0.8, 1.2)
    rot = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(scale * 0.6, size - scale * 0.6, 2)
    cos, sin = math.cos(rot), math.sin(rot)

    def place(pts: list[tuple[float, float]], s: float) -> list[tuple[float, float]]:
        return [(cx + s * (x * aspect * cos - y * sin), cy + s * (x * aspect * sin + y * cos))
                for x, y in pts]

    draw.polygon(place(_outline(kind), scale), fill=fg)
    if kind == "ring":  # a hole of the background's colour where the pixel is
        draw.polygon(place(_outline(kind), scale * 0.55), fill=mean_bg)
    return img


# --- training and evaluating with the job's code -------------------------------------------------
class Pictures:
    """A torch Dataset of PIL pictures and one-hot targets through a transform."""

    def __init__(self, images: list[Image.Image], labels: list[int], transform: Any) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.eye = np.eye(len(CLASSES), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        return self.transform(self.images[i]), torch.from_numpy(self.eye[self.labels[i]])


@dataclass
class Setup:
    backbone: str
    resize: int
    crop: int
    epochs: int
    batch_size: int
    lr: float


def weights_path(backbone: str) -> Path | None:
    """Where the job would find pretrained weights (baked-in folder, then the user cache)."""
    from training_job.model import DEFAULT_WEIGHTS_DIR, USER_WEIGHTS_DIR, weights_file

    for folder in (DEFAULT_WEIGHTS_DIR, USER_WEIGHTS_DIR):
        if weights_file(folder, backbone).is_file():
            return weights_file(folder, backbone)
    return None


def train_and_test(setup: Setup, shots: list[tuple[Image.Image, int]],
                   test: list[tuple[Image.Image, int]], weights: Path | None, seed: int) -> float:
    """Top-1 (%) on ``test`` of the job's model trained on ``shots``."""
    import torch

    from training_job.dataset import EvalTransform, train_transform
    from training_job.model import build_model
    from training_job.train import TrainConfig, fit
    from visionpipe.preprocessing import PreprocessingSpec

    spec = PreprocessingSpec(resize=setup.resize, crop=setup.crop,
                             input_shape=(-1, 3, setup.crop, setup.crop))
    images, labels = [p for p, _ in shots], [c for _, c in shots]
    train = Pictures(images, labels, train_transform(spec))
    seen = Pictures(images, labels, EvalTransform(spec))  # the epoch is picked on these
    torch.manual_seed(seed)
    built = build_model(setup.backbone, len(CLASSES), weights)
    config = TrainConfig(epochs=setup.epochs, patience=setup.epochs, batch_size=setup.batch_size,
                         lr=setup.lr, device="cpu", workers=0, amp=False, seed=seed)
    model, _ = fit(built, False, train, seen, seen, config)
    model.eval()
    evaluate = EvalTransform(spec)
    right = 0
    with torch.inference_mode():
        for start in range(0, len(test), 64):
            chunk = test[start:start + 64]
            x = torch.stack([evaluate(p) for p, _ in chunk])
            predicted = model(x).argmax(1).tolist()
            right += sum(int(p == c) for p, (_, c) in zip(predicted, chunk, strict=True))
    return 100.0 * right / len(test)


def nearest_mean(shots: list[tuple[Image.Image, int]], test: list[tuple[Image.Image, int]]
                 ) -> float:
    """Top-1 (%) of the nearest class mean on raw 32 px pixels: the same-run baseline."""
    def vec(p: Image.Image) -> np.ndarray:
        return np.asarray(p.resize((32, 32)), np.float32).ravel() / 255.0

    means = np.stack([np.mean([vec(p) for p, c in shots if c == k], axis=0)
                      for k in range(len(CLASSES))])
    right = sum(int(np.argmin(((means - vec(p)) ** 2).sum(1)) == c) for p, c in test)
    return 100.0 * right / len(test)


def draw_shots(k: int, draw: int, size: int) -> list[tuple[Image.Image, int]]:
    return [(picture(kind, draw * 1000 + i, size), c)
            for c, kind in enumerate(CLASSES) for i in range(k)]


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": round(statistics.fmean(values), 1),
            "std": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0,
            "runs": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one draw, 20 epochs, 25 test pictures per tag (a few minutes)")
    parser.add_argument("--draws", type=int, default=3, help="draws of the shots per figure")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--test-per-tag", type=int, default=60)
    parser.add_argument("--backbone", default=None, help="default: the job's default backbone")
    parser.add_argument("--size", type=int, default=96, help="generated picture side (px)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a pretrained weights file (default: the job's weights cache)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--samples", type=Path, default=None,
                        help="write a few generated pictures to this folder and exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.draws, args.epochs, args.test_per_tag = 1, 20, 25

    if args.samples is not None:
        args.samples.mkdir(parents=True, exist_ok=True)
        for kind in CLASSES:
            for i in range(4):
                picture(kind, i, args.size).save(args.samples / f"{kind}-{i}.png")
        print(f"wrote {4 * len(CLASSES)} pictures to {args.samples}")
        return 0

    import logging

    import torch
    from tqdm import tqdm

    from training_job.model import DEFAULT_BACKBONE, DEFAULT_WEIGHTS_DIR, USER_WEIGHTS_DIR

    logging.basicConfig(level=logging.ERROR)  # the job's RANDOM INIT warning, once per run
    torch.set_num_threads(max(1, args.threads))
    backbone = args.backbone or DEFAULT_BACKBONE
    setup = Setup(backbone, resize=int(args.size * 80 / 96), crop=int(args.size * 64 / 96),
                  epochs=args.epochs, batch_size=8, lr=1e-3)
    weights = args.weights if args.weights and args.weights.is_file() else weights_path(backbone)
    if weights is None:
        print(f"pretrained weights: absent for {backbone} (looked in {DEFAULT_WEIGHTS_DIR} and "
              f"{USER_WEIGHTS_DIR}); run scripts/fetch_weights.py with network access. "
              "Pretrained figures are null.", flush=True)
    else:
        print(f"pretrained weights: {weights}", flush=True)

    t0 = time.perf_counter()
    test = [(picture(kind, TEST_SEED0 + i, args.size), c)
            for c, kind in enumerate(CLASSES) for i in range(args.test_per_tag)]
    inits: list[tuple[str, Path | None]] = [("random", None)]
    if weights is not None:
        inits.append(("pretrained", weights))
    runs = [(k, d, init) for k in SHOTS for d in range(args.draws) for init in inits]
    scores: dict[tuple[int, str], list[float]] = {}
    baseline: dict[int, list[float]] = {}
    bar = tqdm(runs, desc="few-shot", unit="run", file=sys.stderr)
    for k, d, (name, path) in bar:
        shots = draw_shots(k, d, args.size)
        if name == "random":
            baseline.setdefault(k, []).append(nearest_mean(shots, test))
        top1 = train_and_test(setup, shots, test, path, seed=d)
        scores.setdefault((k, name), []).append(top1)
        bar.set_postfix_str(f"{k}-shot {name}: {top1:.1f}%")
    bar.close()
    seconds = time.perf_counter() - t0

    results: dict[str, Any] = {}
    for k in SHOTS:
        results[f"{k}shot"] = {
            "randomInit": summary(scores.get((k, "random"), [])),
            "pretrained": summary(scores.get((k, "pretrained"), [])),
            "nearestMeanPixels": summary(baseline.get(k, [])),
            "customVisionReference": REFERENCE[k],
        }
        r = results[f"{k}shot"]
        print(f"{k:2d} shots/tag: random init {r['randomInit']['mean']:5.1f}% "
              f"(sd {r['randomInit']['std']:.1f}), pretrained "
              f"{'n/a' if r['pretrained'] is None else format(r['pretrained']['mean'], '5.1f')}"
              f"{'' if r['pretrained'] is None else '%'}, nearest-mean pixels "
              f"{r['nearestMeanPixels']['mean']:5.1f}%, chance {100 / len(CLASSES):.1f}%, "
              f"Custom Vision reference {REFERENCE[k]:.1f}% (real data, pretrained)")
    best = results["10shot"]["pretrained"] or results["10shot"]["randomInit"]
    base = results["10shot"]["nearestMeanPixels"]["mean"]
    print(json.dumps({
        "name": "few_shot_top1_10_per_tag",
        "value": best["mean"],
        "unit": "%",
        "baseline": "nearest class mean on raw 32 px pixels, same shots, same run",
        "baseline_value": base,
        "ratio": round(best["mean"] / base, 2) if base else None,
        "init": "pretrained" if results["10shot"]["pretrained"] else "random",
        "weights": str(weights) if weights else "absent",
        "backbone": backbone,
        "classes": len(CLASSES),
        "testPerTag": args.test_per_tag,
        "draws": args.draws,
        "epochs": args.epochs,
        "input": setup.crop,
        "results": results,
        "seconds": round(seconds, 1),
        "quick": args.quick,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
