"""Command line of the training job (torchvision references style: ``get_args_parser`` + ``main``).

    python -m training_job --once    # one Container Apps Job execution: one message, then exit
    python -m training_job --watch   # the local worker of `make up`: poll until SIGTERM

Storage comes from the visionpipe settings (``VISIONPIPE_STORAGE``, or identity-based
``VISIONPIPE_STORAGE__accountName``), exactly as the Function app reads it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from training_job.model import BACKBONES, DEFAULT_BACKBONE, DEFAULT_WEIGHTS_DIR
from training_job.worker import Outcome, Worker, WorkerOptions
from visionpipe import names
from visionpipe.training_rules import MIN_IMAGES_PER_TAG_DETECTION

if TYPE_CHECKING:
    from training_job.detection_pipeline import DetectionOptions
    from training_job.pipeline import JobOptions

log = logging.getLogger("training_job")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training_job",
        description="visionpipe training job: queued training request -> registered ONNX iteration",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", default=True,
                      help="handle one message and exit (a Container Apps Job execution)")
    mode.add_argument("--watch", action="store_true",
                      help="keep polling the queue (the local worker); stops on SIGTERM/SIGINT")

    q = p.add_argument_group("queue")
    # Default: the app settings the Bicep sets on the job and the Function app alike.
    q.add_argument("--queue", default=None,
                   help=f"training request queue (default: app setting "
                        f"{names.SETTING_TRAINING_REQUESTS_QUEUE}, else {names.TRAINING_REQUESTS})")
    q.add_argument("--events-queue", default=None,
                   help=f"training event queue (default: app setting "
                        f"{names.SETTING_TRAINING_EVENTS_QUEUE}, else {names.TRAINING_EVENTS})")
    q.add_argument("--visibility-timeout", type=int, default=300,
                   help="seconds a received request stays hidden; renewed every third of it")
    q.add_argument("--max-dequeue-count", type=int, default=5,
                   help="attempts before a request goes to {queue}-poison")
    q.add_argument("--retry-delay", type=int, default=10,
                   help="seconds before a rejected or transiently failed request is retried")
    q.add_argument("--poll-interval", type=float, default=1.0,
                   help="--watch: seconds between polls")

    m = p.add_argument_group("model")
    m.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=sorted(BACKBONES))
    m.add_argument("--weights", type=Path, default=None,
                   help="pretrained weights file (default: WEIGHTS_DIR/BACKBONE.pth if present, "
                        "else a random init)")
    m.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR,
                   help="where the container image bakes the pretrained weights")
    m.add_argument("--resize", type=int, default=256, help="shorter side before the centre crop")
    m.add_argument("--crop", type=int, default=224, help="model input size")
    m.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="torch.onnx exporter")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=10, help="Regular training: epochs")
    t.add_argument("--patience", type=int, default=3, help="Regular: early-stopping patience")
    t.add_argument("--regular-budget-minutes", type=float, default=30.0,
                   help="Regular: wall-clock budget of one iteration")
    t.add_argument("--advanced-epochs", type=int, default=60, help="Advanced training: epochs")
    t.add_argument("--advanced-patience", type=int, default=8)
    t.add_argument("--advanced-budget-hours", type=float, default=1.0,
                   help="Advanced: budget when the request reserves none (reservedBudgetInHours)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--workers", type=int, default=None,
                   help="data loader processes (default: by device and core count)")
    t.add_argument("--no-amp", dest="amp", action="store_false", help="CUDA: train in fp32")
    t.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's; on a box shared with other "
                        "busy processes, fewer threads stall less)")
    t.add_argument("--min-images-per-tag", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--kfold-below", type=int, default=None,
                   help="repeated k-fold on the training images when the rarest tag has fewer "
                        "images than this (0: never; default 20 on a GPU, off on a CPU); fills "
                        "precisionStdDeviation / recallStdDeviation")
    t.add_argument("--kfold-folds", type=int, default=3)
    t.add_argument("--kfold-repeats", type=int, default=2)
    t.add_argument("--no-checkpoints", dest="checkpoints", action="store_false",
                   help="do not keep per-epoch checkpoints (a killed job then starts over)")
    t.add_argument("--checkpoint-every", type=float, default=60.0,
                   help="seconds: at most one checkpoint save per this long (0: every epoch)")
    t.add_argument("--cache-dir", type=Path,
                   default=Path.home() / ".cache" / "visionpipe" / "images",
                   help="local cache of training images (keyed by sha256)")
    d = p.add_argument_group("object detection (projects with a detection domain)")
    d.add_argument("--detection-input-size", type=int, default=None,
                   help="detector input side in pixels (default: the domain's, 320-640)")
    d.add_argument("--detection-epochs", type=int, default=30, help="Regular: epochs")
    d.add_argument("--detection-patience", type=int, default=8)
    d.add_argument("--detection-advanced-epochs", type=int, default=80)
    d.add_argument("--detection-batch-size", type=int, default=8)
    d.add_argument("--detection-lr", type=float, default=3e-4)
    d.add_argument("--detection-box-head", type=int, default=None,
                   help="box head width (default: the domain's; smaller trains faster)")
    d.add_argument("--detection-roi-samples", type=int, default=None,
                   help="RoIs sampled per training picture (default: the domain's)")
    d.add_argument("--detection-rpn-proposals", type=int, default=None,
                   help="RPN proposals kept while training (default: the domain's)")
    d.add_argument("--detection-min-images-per-tag", type=int,
                   default=MIN_IMAGES_PER_TAG_DETECTION)
    p.add_argument("--log-level", default="INFO")
    return p


def detection_options(args: argparse.Namespace) -> DetectionOptions:
    from training_job.detection_pipeline import DetectionOptions

    return DetectionOptions(
        input_size=args.detection_input_size, epochs=args.detection_epochs,
        patience=args.detection_patience, advanced_epochs=args.detection_advanced_epochs,
        batch_size=args.detection_batch_size, lr=args.detection_lr,
        box_head_size=args.detection_box_head, roi_samples=args.detection_roi_samples,
        rpn_proposals=args.detection_rpn_proposals,
        min_images_per_tag=args.detection_min_images_per_tag,
    )


def job_options(args: argparse.Namespace) -> JobOptions:
    from training_job.pipeline import JobOptions

    return JobOptions(
        backbone=args.backbone, weights=args.weights, weights_dir=args.weights_dir,
        resize=args.resize, crop=args.crop, epochs=args.epochs, patience=args.patience,
        regular_budget_minutes=args.regular_budget_minutes, advanced_epochs=args.advanced_epochs,
        advanced_patience=args.advanced_patience, advanced_budget_hours=args.advanced_budget_hours,
        batch_size=args.batch_size, lr=args.lr, device=args.device, workers=args.workers,
        amp=args.amp, cache_dir=args.cache_dir, exporter=args.exporter,
        min_images_per_tag=args.min_images_per_tag, seed=args.seed,
        kfold_below=args.kfold_below, kfold_folds=args.kfold_folds,
        kfold_repeats=args.kfold_repeats, checkpoints=args.checkpoints,
        checkpoint_every_s=args.checkpoint_every, detection=detection_options(args),
    )


def worker_options(args: argparse.Namespace) -> WorkerOptions:
    return WorkerOptions(
        queue=args.queue, events_queue=args.events_queue,
        visibility_timeout=args.visibility_timeout, max_dequeue_count=args.max_dequeue_count,
        retry_delay=args.retry_delay, poll_interval=args.poll_interval,
    )


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(args: argparse.Namespace) -> int:
    """Run the job; exit status 0 when the request was handled (Completed or recorded Failed,
    rejected, poisoned) or there was none, 1 when it must be retried."""
    _configure_logging(args.log_level)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from visionpipe.settings import get_settings
    from visionpipe.storage import get_storage

    settings = get_settings()
    args.queue = args.queue or settings.training_requests_queue
    args.events_queue = args.events_queue or settings.training_events_queue
    worker = Worker(get_storage(), job_options(args), worker_options(args))
    previous = worker.install_signal_handlers()  # training_job.queue_worker
    try:
        if args.watch:
            worker.watch()
            return 0
        outcome = worker.run_once()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if outcome is None:
        log.info("no training request in %s", args.queue)
    return 1 if outcome in (Outcome.RETRY, Outcome.LEASE_LOST) else 0
