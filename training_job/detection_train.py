"""Training an object detector (torchvision references style: ``train_one_epoch``, ``evaluate``,
``fit``, resumable checkpoints, ``get_args_parser`` + ``main``).

Input is what the label store holds for a detection project: image bytes and their regions
(:class:`visionpipe.annotations.Region`, fractions of the picture). Pictures are decoded as
serving decodes them (EXIF-oriented 8-bit RGB), then *stretched* to the detector's square input
(visionpipe.detection_decode: no crop, so no object is cut off; boxes stay the same fractions),
and normalised with the manifest's mean/std. The only augmentation is a horizontal flip with its
boxes: colour tells tags apart often enough that colour jitter is left out (as for
classification), and geometric jitter beyond a flip needs box clipping rules that a few epochs on
a CPU do not repay.

The validation metric is mAP at IoU 0.5 computed by visionpipe.detection_metrics (the same code
the Function app reports with) on the detections of :class:`NormalizedDetections`, the module
that is exported: the best epoch is chosen on what serving will answer.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training_job.detection_model import (
    SCORE_FLOOR,
    BuiltDetector,
    DetectorSpec,
    NormalizedDetections,
    build_detector,
    detector_for_domain,
)
from training_job.model import batchnorm_layers, recalibrate_batchnorm
from training_job.train import Interrupted
from visionpipe.annotations import Region
from visionpipe.detection_decode import DetectionPreprocessing, stretch_picture
from visionpipe.detection_metrics import Detection, DetectionReport, GroundTruth, evaluate
from visionpipe.imaging import open_oriented

log = logging.getLogger(__name__)

TEST_FRACTION = 0.1
CACHE_BYTES = 2 * 1024**3  # decoded training pictures kept in memory (320 px: ~7000 of them)
MIN_BOX_PIXELS = 1.0  # a box thinner than a pixel at the input size cannot be learned from




# --- samples, split, dataset -------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionSample:
    """One training picture: its bytes and its boxes (none: a picture with no objects)."""

    data: bytes
    regions: tuple[Region, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def split_samples(samples: Sequence[DetectionSample], salt: str = "",
                  test_fraction: float = TEST_FRACTION
                  ) -> tuple[list[DetectionSample], list[DetectionSample]]:
    """(train, test), deterministic in the image bytes (a hash of ``salt`` and the sha256, as
    training_job.dataset does): the same picture stays on the same side across iterations."""
    keyed = sorted(samples, key=lambda s: hashlib.sha256(f"{salt}:{s.sha256}".encode()).digest())
    n_test = 0 if len(keyed) < 2 else min(len(keyed) - 1,
                                          max(1, math.floor(len(keyed) * test_fraction + 0.5)))
    return keyed[n_test:], keyed[:n_test]


def regions_to_xyxy(regions: Sequence[Region], tag_index: dict[str, int], size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Regions -> (boxes ``(N, 4)`` in input pixels, x0 y0 x1 y1; labels ``(N,)`` 1-based, 0
    being torchvision's background). Boxes under a pixel wide or high at ``size`` are dropped
    (Faster R-CNN refuses degenerate boxes)."""
    boxes, labels = [], []
    for r in regions:
        if r.tag not in tag_index:
            raise ValueError(f"region tag {r.tag!r} is not one of the detector's tags")
        x0, y0 = r.left * size, r.top * size
        x1, y1 = (r.left + r.width) * size, (r.top + r.height) * size
        if x1 - x0 < MIN_BOX_PIXELS or y1 - y0 < MIN_BOX_PIXELS:
            continue
        boxes.append((x0, y0, x1, y1))
        labels.append(tag_index[r.tag] + 1)
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64))


def xyxy_to_ltwh(boxes: np.ndarray, size: int) -> np.ndarray:
    """Input-pixel corners -> left, top, width, height as fractions (the inverse of
    :func:`regions_to_xyxy`'s geometry)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / size
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a ``(3, H, W)`` picture and its x0 y0 x1 y1 pixel boxes left to right."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


class DetectionDataset(Dataset):
    """(picture tensor, target dict) per sample, the target as torchvision detection models take
    it (``boxes`` x0 y0 x1 y1 in input pixels, ``labels`` 1-based). Stretched pictures are kept
    decoded in memory (``S*S*3`` bytes each, up to ``cache_bytes`` in all), so epochs after the
    first decode nothing."""

    def __init__(self, samples: Sequence[DetectionSample], tags: Sequence[str],
                 prep: DetectionPreprocessing, train: bool = False, seed: int = 0,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.samples = list(samples)
        self.tags = list(tags)
        self.tag_index = {t: i for i, t in enumerate(self.tags)}
        self.prep = prep
        self.train = train
        self.seed = seed
        self._pixels: dict[int, np.ndarray] = {}
        self._cache_slots = cache_bytes // (3 * prep.input_size**2)
        self._targets = [regions_to_xyxy(s.regions, self.tag_index, prep.input_size)
                         for s in self.samples]
        self._epoch = 0
        self._spec = prep.normalization()

    def set_epoch(self, epoch: int) -> None:
        """Flips are a function of (seed, epoch, index): reproducible and resumable."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, index: int) -> np.ndarray:
        cached = self._pixels.get(index)
        if cached is None:
            picture = open_oriented(self.samples[index].data, min_size=self.prep.min_decode_size)
            cached = stretch_picture(picture, self.prep)
            if len(self._pixels) < self._cache_slots:
                self._pixels[index] = cached
        return cached

    def input(self, index: int) -> torch.Tensor:
        """The ``(3, S, S)`` normalised picture, exactly as serving builds it."""
        from visionpipe.preprocessing import normalize

        return torch.from_numpy(normalize(self.pixels(index)[None], self._spec)[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = self.input(index)
        boxes, labels = self._targets[index]
        box_t, label_t = torch.from_numpy(boxes.copy()), torch.from_numpy(labels.copy())
        if self.train:
            coin = np.random.default_rng((self.seed, self._epoch, index)).random()
            if coin < 0.5:
                image, box_t = hflip(image, box_t)
        return image, {"boxes": box_t, "labels": label_t}

    def ground_truths(self, names: Sequence[str] | None = None) -> list[GroundTruth]:
        """Ground truth for visionpipe.detection_metrics, images named by position (or
        ``names``), boxes as the fractions the detector is trained on."""
        out = []
        for i, (boxes, labels) in enumerate(self._targets):
            image = names[i] if names else str(i)
            for box, label in zip(xyxy_to_ltwh(boxes, self.prep.input_size), labels, strict=True):
                out.append(GroundTruth(image, self.tags[int(label) - 1], *map(float, box)))
        return out


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
            ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return [b[0] for b in batch], [b[1] for b in batch]


# --- training ----------------------------------------------------------------------------------
@dataclass
class DetectionTrainConfig:
    epochs: int = 30
    patience: int = 8  # epochs without a better validation mAP before stopping early
    time_budget_s: float = 3600.0  # no epoch is started that would overrun it
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 5.0  # from-scratch detectors spike early; clipping keeps AdamW sane
    warmup_steps: int = 20
    eval_iou: float = 0.5
    recalibrate_bn: bool = True  # random init: exact BatchNorm statistics before each evaluation
    device: str = "cpu"
    seed: int = 0


@dataclass
class DetectionEpoch:
    epoch: int
    epochs: int
    train_loss: float
    val_map: float
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)


@dataclass
class DetectionFitResult:
    history: list[DetectionEpoch] = field(default_factory=list)
    best_epoch: int = 0
    best_map: float = 0.0
    stopped: str = "epochs"  # epochs | early_stop | budget

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_optimizer(model: nn.Module, config: DetectionTrainConfig, steps_per_epoch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no weight decay on norms and biases) with a linear warm-up and a cosine decay to
    5 % over the planned epochs."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    total = max(1, steps_per_epoch * config.epochs)
    warmup = max(1, min(config.warmup_steps, total // 5))

    def schedule(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loader: DataLoader,
                    device: torch.device, grad_clip: float,
                    should_stop: Callable[[], bool] = lambda: False
                    ) -> tuple[float, dict[str, float]]:
    """One pass; returns (mean total loss, mean of each loss term)."""
    model.train()
    total, parts, steps = 0.0, {}, 0
    for images, targets in loader:
        if should_stop():
            raise Interrupted("stop requested during training")
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k} {float(v):.4g}" for k, v in losses.items())
            raise FloatingPointError(f"loss is {float(loss)} ({terms})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
        for k, v in losses.items():
            parts[k] = parts.get(k, 0.0) + float(v.detach())
        steps += 1
    steps = max(1, steps)
    return total / steps, {k: v / steps for k, v in parts.items()}


@torch.inference_mode()
def predict(model: nn.Module, dataset: DetectionDataset,
            names: Sequence[str] | None = None, score_floor: float = SCORE_FLOOR
            ) -> list[Detection]:
    """Detections for every picture of ``dataset`` through :class:`NormalizedDetections` (what
    is exported), as visionpipe.detection_metrics takes them."""
    served = NormalizedDetections(model, dataset.prep.input_size, score_floor).eval()
    device = next(model.parameters()).device
    out = []
    for i in range(len(dataset)):
        boxes, scores, labels = served(dataset.input(i)[None].to(device))
        image = names[i] if names else str(i)
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(),
                                     strict=True):
            out.append(Detection(image, dataset.tags[label], float(score), *box))
    return out


def evaluate_detector(model: nn.Module, dataset: DetectionDataset, iou_threshold: float = 0.5,
                      probability_threshold: float = 0.5) -> DetectionReport:
    return evaluate(dataset.ground_truths(), predict(model, dataset),
                    probability_threshold=probability_threshold, iou_threshold=iou_threshold)


def _batches(dataset: DetectionDataset, size: int) -> Iterator[torch.Tensor]:
    """The un-augmented training pictures in batches (for BatchNorm recalibration)."""
    for i in range(0, len(dataset), size):
        yield torch.stack([dataset.input(j) for j in range(i, min(len(dataset), i + size))])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def checkpoint(built: BuiltDetector, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int,
               config: DetectionTrainConfig, result: DetectionFitResult,
               best_state: dict[str, torch.Tensor], tags: Sequence[str]) -> dict[str, Any]:
    """Everything needed to resume (torchvision references' checkpoint dict, plus the spec,
    tags and the best weights so far)."""
    return {
        "model": _state(built.model),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "args": asdict(config),
        "spec": built.spec.to_dict(),
        "tags": list(tags),
        "pretrained": built.pretrained,
        "result": result.to_dict(),
        "best_model": best_state,
    }


def fit(
    built: BuiltDetector,
    train_set: DetectionDataset,
    val_set: DetectionDataset,
    config: DetectionTrainConfig,
    on_epoch: Callable[[DetectionEpoch], None] = lambda r: None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_path: Path | None = None,
    resume: dict[str, Any] | None = None,
) -> tuple[nn.Module, DetectionFitResult]:
    """Train; keep the epoch of best validation mAP@0.5 (on a tie the earlier epoch stays); stop
    early after ``patience`` epochs without a better one or before overrunning the time budget.
    From a random init, BatchNorm statistics are recomputed over the training pictures after
    every epoch (as training_job.train does for classification): measured on the synthetic
    scenes, validation mAP rises epochs earlier than with running averages alone.
    ``checkpoint_path`` is rewritten after every epoch (atomically) and ``resume`` (such a dict,
    loaded) continues from it.

    Returns the best model on the CPU in eval mode (ready to export).
    """
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = built.model.to(device)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                        drop_last=len(train_set) > config.batch_size, collate_fn=collate,
                        generator=torch.Generator().manual_seed(config.seed))
    optimizer, scheduler = make_optimizer(model, config, len(loader))
    result = DetectionFitResult()
    best_state = _state(model)
    start_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["lr_scheduler"])
        start_epoch = int(resume["epoch"]) + 1
        best_state = resume.get("best_model") or best_state
        r = resume.get("result") or {}
        result = DetectionFitResult([DetectionEpoch(**e) for e in r.get("history", [])],
                                    r.get("best_epoch", 0), r.get("best_map", 0.0))
        # a new shuffle stream from here: resumed runs are reproducible, though not identical
        # to an uninterrupted one
        loader.generator.manual_seed(config.seed + start_epoch)  # type: ignore[union-attr]
        log.info("resuming at epoch %d (best so far: epoch %d, mAP %.3f)", start_epoch,
                 result.best_epoch, result.best_map)
    log.info("detector training on %s: %d train / %d validation pictures, %d tags, input %d px, "
             "%s", device, len(train_set), len(val_set), len(train_set.tags),
             built.spec.input_size, built.pretrained or "RANDOM INIT")
    # BatchNorm only lives in the backbone (the FPN, RPN and box heads have none), so its
    # statistics are recomputed by running the backbone alone over the training pictures
    recalibrate = config.recalibrate_bn and not built.pretrained and bool(
        batchnorm_layers(model.backbone))
    started = time.monotonic()
    for epoch in range(start_epoch, config.epochs + 1):
        t0 = time.perf_counter()
        train_set.set_epoch(epoch)
        loss, parts = train_one_epoch(model, optimizer, scheduler, loader, device,
                                      config.grad_clip, should_stop)
        if recalibrate:
            recalibrate_batchnorm(model.backbone, _batches(train_set, config.batch_size * 2),
                                  device)
        if should_stop():
            raise Interrupted("stop requested after an epoch")
        if len(val_set):
            report = evaluate_detector(model, val_set, config.eval_iou)
            metric = report.mean_average_precision or 0.0
        else:  # nothing held back (a tiny project): the last epoch is the one to keep
            metric = 0.0
        seconds = time.perf_counter() - t0
        record = DetectionEpoch(epoch, config.epochs, loss, metric, seconds, parts)
        result.history.append(record)
        if result.best_epoch == 0 or metric > result.best_map or not len(val_set):
            result.best_epoch, result.best_map, best_state = epoch, metric, _state(model)
        log.info("epoch %d/%d: loss %.4f (%s), val mAP@%.2f %.3f, %.1fs%s", epoch, config.epochs,
                 loss, ", ".join(f"{k} {v:.3f}" for k, v in parts.items()), config.eval_iou,
                 metric, seconds, " *best*" if result.best_epoch == epoch else "")
        if checkpoint_path is not None:
            tmp = checkpoint_path.with_suffix(".part")
            torch.save(checkpoint(built, optimizer, scheduler, epoch, config, result, best_state,
                                  train_set.tags), tmp)
            tmp.replace(checkpoint_path)
        on_epoch(record)
        if epoch == config.epochs:
            break
        if epoch - result.best_epoch >= config.patience:
            result.stopped = "early_stop"
            log.info("early stop: no better validation mAP for %d epochs", config.patience)
            break
        elapsed = time.monotonic() - started
        if elapsed + seconds > config.time_budget_s:
            result.stopped = "budget"
            log.info("time budget: %.0fs used of %.0fs", elapsed, config.time_budget_s)
            break
    model.load_state_dict(best_state)
    return model.to("cpu").eval(), result


# --- command line ------------------------------------------------------------------------------
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training_job.detection_train",
        description="Train an object detector on a folder of pictures with Pascal VOC XML or "
                    "YOLO labels beside them, export it to ONNX and check it",
        add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="folder of pictures, each with name.xml (VOC) or name.txt (YOLO, with "
                        "classes.txt)")
    p.add_argument("--output", type=Path, required=True, help="folder for model.onnx etc.")
    p.add_argument("--domain", default="General", help="Custom Vision detection domain name")
    p.add_argument("--input-size", type=int, default=None, help="override the domain's")
    p.add_argument("--box-head-size", type=int, default=None,
                   help="override the domain's box head width (smaller: faster, a smaller file)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--time-budget-s", type=float, default=3600.0)
    p.add_argument("--resume", type=Path, default=None, help="checkpoint.pth to continue from")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-level", default="INFO")
    return p


def load_folder(folder: Path) -> list[DetectionSample]:
    """Pictures and their VOC/YOLO label files from a local folder (visionpipe.annotations)."""
    from PIL import Image

    from visionpipe.annotations import IMAGE_EXTENSIONS, parse_voc, parse_yolo, parse_yolo_classes

    classes_file = folder / "classes.txt"
    classes = parse_yolo_classes(classes_file.read_bytes()) if classes_file.is_file() else None
    samples = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        data = path.read_bytes()
        size = Image.open(path).size
        voc, yolo = path.with_suffix(".xml"), path.with_suffix(".txt")
        if voc.is_file():
            regions = parse_voc(voc.read_bytes(), path.name, size).regions
        elif yolo.is_file() and classes is not None:
            regions = parse_yolo(yolo.read_bytes(), path.name, classes).regions
        else:
            continue
        samples.append(DetectionSample(data, regions))
    return samples


def main(args: argparse.Namespace) -> int:
    import json

    from training_job.detection_export import check_parity, export_detector, onnx_session

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = load_folder(args.data)
    tags = sorted({r.tag for s in samples for r in s.regions})
    if not samples or not tags:
        log.error("no annotated pictures in %s", args.data)
        return 2
    spec: DetectorSpec = detector_for_domain(args.domain)
    if args.input_size:
        spec = spec.scaled(args.input_size)
    if args.box_head_size:
        spec = replace(spec, box_head_size=args.box_head_size)
    resume = (torch.load(args.resume, map_location="cpu", weights_only=False)
              if args.resume else None)
    if resume is not None:
        spec, tags = DetectorSpec.from_dict(resume["spec"]), resume["tags"]
    built = build_detector(spec, len(tags), pretrained=args.pretrained)
    prep = DetectionPreprocessing(input_size=spec.input_size)
    train, test = split_samples(samples)
    config = DetectionTrainConfig(epochs=args.epochs, patience=args.patience,
                                  batch_size=args.batch_size, lr=args.lr,
                                  time_budget_s=args.time_budget_s, seed=args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    model, fitted = fit(built, DetectionDataset(train, tags, prep, train=True, seed=args.seed),
                        DetectionDataset(test, tags, prep), config,
                        checkpoint_path=args.output / "checkpoint.pth", resume=resume)
    onnx_path = args.output / "model.onnx"
    export_detector(model, spec, prep, onnx_path)
    val = DetectionDataset(test, tags, prep)
    worst = check_parity(onnx_session(onnx_path.read_bytes()), model, spec,
                         [val.input(i)[None].numpy() for i in range(len(val))])
    report = evaluate_detector(model, val)
    summary = {"tags": tags, "fit": fitted.to_dict(), "parity": asdict(worst),
               "mAP50": report.mean_average_precision, "spec": spec.to_dict()}
    (args.output / "training.json").write_text(json.dumps(summary, indent=2))
    log.info("done: best epoch %d, val mAP@0.5 %.3f, parity %s", fitted.best_epoch,
             fitted.best_map, worst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
