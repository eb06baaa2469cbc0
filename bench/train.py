"""Benchmark: the training job on the CPU — images/s per epoch and one whole 180-image iteration.

Run from the repo root: ``.venv/bin/python bench/train.py`` (``--quick`` for a smoke run). Starts
its own Azurite (in memory, free ports), stores 180 generated 320 px pictures (6 tags x 30) as the
drop folder and ingest would, enqueues one training request, and times ``python -m training_job
--once`` in-process from the request to the registered iteration (goal: <= 3 min on 2 cores), with
the job's defaults (MobileNetV3-Large, 224 px, Regular: 10 epochs; random init here, since the
pretrained weights are only baked into the container image).

Baseline, in the same run: the model-only step rate — the same model and optimiser stepping on
one real batch already in memory, no data pipeline — measured in alternation with steps that load
their batches through the job's loader (decode, augmentation), so both see the same machine
load. ``ratio = pipeline / model-only`` (<= 1): near 1 means loading keeps up and the model is
the bottleneck. Rates are medians over 5 alternating rounds; the per-epoch rates of the whole
iteration are printed too. The last line is the JSON record of ARCHITECTURE.md, "Benchmarks".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from visionpipe import names  # noqa: E402
from visionpipe.local.azurite import free_port, start_azurite  # noqa: E402
from visionpipe.local.samples import KINDS, make_image  # noqa: E402
from visionpipe.messages import TrainingRequest  # noqa: E402
from visionpipe.settings import reset_settings  # noqa: E402
from visionpipe.storage import Storage, get_storage  # noqa: E402
from visionpipe.stores.label_store import ImageFacts, LabelStore  # noqa: E402
from visionpipe.stores.registry import Registry  # noqa: E402

GOAL_SECONDS = 180.0


def seed(storage: Storage, name: str, per_tag: int) -> str:
    store = LabelStore(storage)
    project = store.create_project(name)
    container = storage.container(names.TRAINING_IMAGES)
    for kind in KINDS:
        tag = store.get_or_create_tag(project.id, kind)
        for i in range(per_tag):
            data = make_image(kind, i)
            path = f"{name}/{kind}/{i}.jpg"
            container.upload_blob(path, data, overwrite=True)
            store.add_image(project, tag, ImageFacts(hashlib.sha256(data).hexdigest(), 320, 320,
                                                     "JPEG", len(data)), path)
    return project.id


def alternating_rates(cache_dir: Path, options: object, steps: int, rounds: int
                      ) -> tuple[float, float]:
    """(pipeline, model-only) images/s, measured in alternation on one model and optimiser.

    Alternating short windows makes the two numbers see the same machine load (this runs on
    shared 2-core boxes), so their ratio says whether loading holds the step back.
    """
    import numpy as np
    import torch

    from training_job.dataset import CachedImages, train_transform
    from training_job.model import build_model
    from training_job.train import default_workers, make_loader

    spec = options.spec  # type: ignore[attr-defined]
    batch = options.batch_size  # type: ignore[attr-defined]
    files = sorted(p for p in cache_dir.glob("*/*") if not p.name.startswith("."))
    targets = np.eye(len(KINDS), dtype=np.float32)[np.arange(len(files)) % len(KINDS)]
    device = torch.device("cpu")
    loader = make_loader(CachedImages(files, targets, train_transform(spec), spec.min_decode_size),
                         batch, device, default_workers(device), shuffle=True)
    model = build_model(options.backbone, len(KINDS), None).model.train()  # type: ignore[attr-defined]
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    batches = iter(loader)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    fixed = next_batch()  # one real batch, kept in memory: the model-only baseline
    pipeline, model_only = [], []
    for r in range(rounds + 1):  # round 0 warms up
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*fixed)
        t1 = time.perf_counter()
        for _ in range(steps):
            step(*next_batch())
        t2 = time.perf_counter()
        if r:
            model_only.append(batch * steps / (t1 - t0))
            pipeline.append(batch * steps / (t2 - t1))
    return statistics.median(pipeline), statistics.median(model_only)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="MobileNetV3-Small, 112 px, 3 epochs, torchscript export")
    parser.add_argument("--per-tag", type=int, default=30, help="images per tag (6 tags)")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("azure", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from training_job.cli import get_args_parser, job_options
    from training_job.worker import Worker, WorkerOptions

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    job = ["--cache-dir", str(work / "cache"), "--weights-dir", str(work / "no-weights")]
    if ns.quick:
        job += ["--backbone", "mobilenet_v3_small", "--resize", "128", "--crop", "112",
                "--epochs", "3", "--exporter", "torchscript"]
    args = get_args_parser().parse_args(job)
    options = job_options(args)

    # a terminated bench still stops its Azurite (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    azurite = start_azurite(work / "azurite", free_port(), free_port(), free_port(),
                            in_memory=True)
    try:
        os.environ[names.STORAGE_CONNECTION] = azurite.connection_string
        reset_settings()
        storage = get_storage()
        storage.ensure_resources()
        images = ns.per_tag * len(KINDS)
        project_id = seed(storage, "bench-train", ns.per_tag)

        storage.queue(names.TRAINING_REQUESTS).send_message(
            TrainingRequest(project_id=project_id).to_json().encode())
        worker = Worker(storage, options, WorkerOptions(visibility_timeout=120))
        t0 = time.perf_counter()
        outcome = worker.run_once()
        e2e = time.perf_counter() - t0
        iteration = Registry(storage).list_iterations(project_id)[0]
        config = json.loads(Registry(storage).download_artifact(
            project_id, iteration.id, "training_config.json"))
        timings = Registry(storage).read_manifest(project_id, iteration.id).timings
        print(f"alternating pipeline / model-only steps: {options.backbone} at {options.crop} px,"
              f" batch {options.batch_size} ...", flush=True)
        value, baseline = alternating_rates(options.cache_dir, options, steps=2 if ns.quick
                                            else 3, rounds=5)
    finally:
        azurite.stop()

    history = config["fit"]["history"]
    per_epoch = [round(h["images_per_s"], 1) for h in history]
    waiting = [round(h["data_wait_s"] / max(h["seconds"], 1e-9), 3) for h in history]
    print(f"iteration {iteration.status} ({outcome}) in {e2e:.1f}s for {images} images "
          f"(goal <= {GOAL_SECONDS:.0f}s); timings {json.dumps(timings)}")
    print(f"images/s per epoch: {per_epoch}; share of epoch waiting for data: {waiting}")
    print(f"steady state: pipeline {value:.1f} images/s, model-only {baseline:.1f} images/s")
    print(f"metrics: precision {iteration.metrics.get('precision', 0):.3f}, "
          f"recall {iteration.metrics.get('recall', 0):.3f}, AP "
          f"{iteration.metrics.get('averagePrecision', 0):.3f} (random init)")
    print(json.dumps({
        "name": "train_images_per_second_cpu",
        "value": round(value, 2),
        "unit": "images/s",
        "baseline": "model-only step rate (same backbone and batch, no data pipeline)",
        "baseline_value": round(baseline, 2),
        "ratio": round(value / baseline, 3) if baseline else None,
        "e2e_seconds": round(e2e, 1),
        "epoch_images_per_s": per_epoch,
        "e2e_goal_seconds": GOAL_SECONDS,
        "images": images,
        "backbone": options.backbone,
        "crop": options.crop,
        "epochs": len(history),
        "exporter": options.exporter,
        "status": str(iteration.status),
        "device": config["fit"]["device"],
    }))


if __name__ == "__main__":
    main()
