"""The fine-tuning loop (torchvision references style): ``train_one_epoch``, ``evaluate``, ``fit``.

One code path for both devices. On CUDA it uses AMP (bf16 where the GPU has it, else fp16 with a
grad scaler), channels_last, pinned memory and several loader workers; on the CPU the same loop
runs in fp32 with the loader in-process or in a few workers.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training_job.model import BuiltModel, head_parameters, recalibrate_batchnorm
from visionpipe.metrics import average_precision

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training was asked to stop (SIGTERM, lost lease, a cancel); nothing is registered."""


class Checkpoints:
    """Where :func:`fit` keeps its state after every epoch and finds it again after a kill.

    ``load`` answers None when there is nothing to resume (or what is there belongs to another
    dataset or configuration); ``save`` must not raise for a transient failure that the next
    epoch's save can make good (the pipeline's blob implementation logs and goes on).
    """

    def load(self) -> dict[str, Any] | None:
        return None

    def due(self) -> bool:
        """Whether to save after this epoch (saving costs a copy and an upload of the model and
        the optimiser: an implementation may space saves out in time)."""
        return True

    def save(self, state: dict[str, Any]) -> None:
        return None


@dataclass
class TrainConfig:
    epochs: int = 10
    patience: int = 3  # epochs without a better validation metric before stopping early
    time_budget_s: float = 3600.0  # training stops before an epoch that would overrun it
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    backbone_lr_factor: float = 0.1  # pretrained backbones move slower than the new head
    label_smoothing: float = 0.1
    device: str = "auto"
    workers: int | None = None  # None: chosen for the device
    amp: bool = True  # CUDA only
    recalibration_images: int = 2048  # BatchNorm recalibration sample (random init only)
    seed: int = 0


@dataclass
class EpochResult:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_metric: float  # mean average precision on the validation side
    images_per_s: float
    seconds: float
    data_wait_s: float  # time the step waited for the loader (is loading the bottleneck?)


@dataclass
class FitResult:
    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = 0.0
    stopped: str = "epochs"  # epochs | early_stop | budget
    device: str = "cpu"
    amp_dtype: str = ""
    resumed_from: int = 0  # the first epoch this run trained after a checkpoint (0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    return device


def default_workers(device: torch.device) -> int:
    """Loader processes: enough to keep a GPU fed; on a small CPU box the step itself needs the
    cores, so decode in-process (measured by bench/train.py)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device.type == "cuda":
        return max(2, min(8, cpus - 1))
    return 0 if cpus <= 2 else min(4, cpus // 2)


def make_loader(dataset: Dataset, batch_size: int, device: torch.device, workers: int,
                shuffle: bool, seed: int = 0) -> DataLoader:
    size = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and size > batch_size,  # no ragged last step (and no BN batch of 1)
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def _amp(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a grad scaler is needed)."""
    if device.type != "cuda" or not enabled:
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


class Trainer:
    """Owns the model on its device, the optimiser, the schedule and the loss."""

    def __init__(self, built: BuiltModel, multilabel: bool, config: TrainConfig,
                 steps_per_epoch: int) -> None:
        self.config = config
        self.built = built
        self.multilabel = multilabel
        self.device = resolve_device(config.device)
        self.memory_format = (torch.channels_last if self.device.type == "cuda"
                              else torch.contiguous_format)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = built.model.to(self.device, memory_format=self.memory_format)
        self.amp_dtype, use_scaler = _amp(self.device, config.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        head = head_parameters(self.model, built.backbone)
        head_ids = {id(p) for p in head}
        body = [p for p in self.model.parameters() if id(p) not in head_ids]
        body_lr = config.lr * (config.backbone_lr_factor if built.pretrained else 1.0)
        self.optimizer = torch.optim.AdamW(
            [{"params": body, "lr": body_lr}, {"params": head, "lr": config.lr}],
            weight_decay=config.weight_decay,
        )
        total = max(1, steps_per_epoch * config.epochs)
        warmup = max(1, min(steps_per_epoch, total // 10))

        def schedule(step: int) -> float:  # linear warm-up, then cosine down to 5 %
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.criterion: nn.Module = (
            nn.BCEWithLogitsLoss() if multilabel
            else nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        )

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x.to(self.device, non_blocking=True, memory_format=self.memory_format),
                y.to(self.device, non_blocking=True))

    def train_one_epoch(self, loader: DataLoader, should_stop: Callable[[], bool]
                        ) -> tuple[float, int, float]:
        """One pass; returns (mean loss, images, seconds spent waiting for data)."""
        self.model.train()
        seen, waited = 0, 0.0
        total_loss = torch.zeros((), device=self.device)  # summed on the device: no sync per step
        t_wait = time.perf_counter()
        for x, y in loader:
            waited += time.perf_counter() - t_wait
            if should_stop():
                raise Interrupted("stop requested during training")
            x, y = self._to_device(x, y)
            with self._autocast():
                loss = self.criterion(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total_loss += loss.detach().float() * x.shape[0]
            seen += int(x.shape[0])
            t_wait = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return float(total_loss) / max(1, seen), seen, waited

    @torch.inference_mode()
    def evaluate(self, loader: DataLoader) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean loss, probabilities, targets) over ``loader`` in eval mode."""
        self.model.eval()
        losses, probs, targets = 0.0, [], []
        for x, y in loader:
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = self.model(x)
            logits = logits.float()
            losses += float(self.criterion(logits, y)) * x.shape[0]
            p = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)
            probs.append(p.cpu().numpy())
            targets.append(y.cpu().numpy())
        if not probs:
            return 0.0, np.zeros((0, 0)), np.zeros((0, 0))
        y_all = np.concatenate(targets)
        return losses / len(y_all), np.concatenate(probs), y_all

    def recalibrate(self, loader: DataLoader) -> int:
        return recalibrate_batchnorm(self.model, (x for x, _ in loader), self.device,
                                     self.memory_format)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def training_state(self) -> dict[str, Any]:
        """Everything but the model weights that the next epoch depends on."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def restore(self, model: dict[str, torch.Tensor], training: dict[str, Any]) -> None:
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.scaler.load_state_dict(training["scaler"])


def _finished(result: FitResult, config: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` is the last one: the epochs are spent, or no better validation metric
    for ``patience`` epochs (early stop)."""
    if epoch >= config.epochs:
        return True
    if epoch - result.best_epoch >= config.patience:
        log.info("early stop: no better validation metric for %d epochs", config.patience)
        result.stopped = "early_stop"
        return True
    return False


def mean_ap(targets: np.ndarray, probs: np.ndarray) -> float:
    """The validation metric: mean AP over tags that have validation images."""
    aps = [average_precision(targets[:, j], probs[:, j])
           for j in range(targets.shape[1]) if targets[:, j].sum() > 0]
    return float(np.mean(aps)) if aps else 0.0


def fit(
    built: BuiltModel,
    multilabel: bool,
    train_set: Dataset,
    val_set: Dataset,
    recalibration_set: Dataset | None,
    config: TrainConfig,
    on_epoch: Callable[[EpochResult], None] = lambda r: None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoints: Checkpoints | None = None,
) -> tuple[nn.Module, FitResult]:
    """Train, keep the best epoch by validation metric (ties: lower validation loss), stop early
    after ``patience`` epochs without improvement or before overrunning the time budget.

    ``val_set`` must be the validation side, never the test side: the epoch chosen here is the
    model whose test metrics are reported. With ``checkpoints`` the state after every epoch is
    saved, and a run that finds one (a killed job's) continues after its last epoch: every epoch
    reseeds the shuffling and augmentation from ``seed + epoch``, so a resumed run sees the same
    batches an uninterrupted one would have.

    Returns the best model on the CPU in eval mode, in fp32 and contiguous layout (ready to export).
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    workers = default_workers(device) if config.workers is None else config.workers
    train_loader = make_loader(train_set, config.batch_size, device, workers, True, config.seed)
    val_loader = make_loader(val_set, config.batch_size * 2, device, workers, False)
    recal_loader = None
    if not built.pretrained and recalibration_set is not None:
        n = min(len(recalibration_set), config.recalibration_images)  # type: ignore[arg-type]
        subset = torch.utils.data.Subset(recalibration_set, range(n))
        recal_loader = make_loader(subset, config.batch_size * 2, device, workers, False)
    trainer = Trainer(built, multilabel, config, steps_per_epoch=len(train_loader))
    result = FitResult(device=str(device), amp_dtype=str(trainer.amp_dtype or ""))
    log.info("training on %s (amp %s, %d loader workers), %d train / %d validation images",
             device, trainer.amp_dtype or "off", workers, len(train_set),  # type: ignore[arg-type]
             len(val_set))  # type: ignore[arg-type]
    best_key: tuple[float, float] | None = None
    best_state = trainer.state()
    first = 1
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        trainer.restore(saved["model"], saved["training"])
        best_state = saved.get("best") or trainer.state()
        best_key = tuple(saved["bestKey"]) if saved.get("bestKey") else None  # type: ignore[assignment]
        result.history = [EpochResult(**h) for h in saved["history"]]
        result.best_epoch, result.best_metric = saved["bestEpoch"], saved["bestMetric"]
        result.resumed_from = first = int(saved["epoch"]) + 1
        log.info("resuming from the checkpoint of epoch %d", saved["epoch"])
        if _finished(result, config, first - 1):
            first = config.epochs + 1  # the kill came after the last epoch was saved
    started = time.monotonic()
    for epoch in range(first, config.epochs + 1):
        torch.manual_seed(config.seed + epoch)
        if train_loader.generator is not None:
            train_loader.generator.manual_seed(config.seed + epoch)
        t0 = time.perf_counter()
        train_loss, seen, waited = trainer.train_one_epoch(train_loader, should_stop)
        train_seconds = time.perf_counter() - t0
        if recal_loader is not None:
            trainer.recalibrate(recal_loader)
        if should_stop():
            raise Interrupted("stop requested after an epoch")
        if len(val_set):  # type: ignore[arg-type]
            val_loss, probs, targets = trainer.evaluate(val_loader)
            metric = mean_ap(targets, probs) if len(targets) else 0.0
        else:  # nothing to select on (cross-validation folds): the newest epoch is kept
            val_loss, metric = -float(epoch), 0.0
        seconds = time.perf_counter() - t0
        epoch_result = EpochResult(epoch, config.epochs, train_loss, val_loss, metric,
                                   seen / train_seconds if train_seconds else 0.0, seconds, waited)
        result.history.append(epoch_result)
        key = (round(metric, 6), -val_loss)
        if best_key is None or key > best_key:
            best_key, best_state = key, trainer.state()
            result.best_epoch, result.best_metric = epoch, metric
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val mAP %.3f, %.1f img/s, "
                 "%.1fs (%.1fs waiting for data)%s", epoch, config.epochs, train_loss, val_loss,
                 metric, epoch_result.images_per_s, seconds, waited,
                 " *best*" if result.best_epoch == epoch else "")
        if checkpoints is not None and (checkpoints.due() or epoch == config.epochs):
            checkpoints.save({
                "epoch": epoch, "model": trainer.state(), "training": trainer.training_state(),
                "best": None if result.best_epoch == epoch else best_state,
                "bestKey": list(best_key) if best_key else None,
                "bestEpoch": result.best_epoch, "bestMetric": result.best_metric,
                "history": [asdict(h) for h in result.history],
            })
        on_epoch(epoch_result)
        if _finished(result, config, epoch):
            break
        elapsed = time.monotonic() - started
        if elapsed + seconds > config.time_budget_s:
            result.stopped = "budget"
            log.info("time budget: %.0fs used of %.0fs, another epoch would overrun it",
                     elapsed, config.time_budget_s)
            break
    model = trainer.model
    model.load_state_dict(best_state)
    model = model.to("cpu", dtype=torch.float32, memory_format=torch.contiguous_format).eval()
    return model, result

