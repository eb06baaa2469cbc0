"""Backbones, heads and weights: transfer learning from a torchvision classifier.

Pretrained weights are files on disk, never downloads at run time: the container image bakes them
in at build time (``python -m training_job.model bake DIR``), and ``--weights`` names any other
file. Without weights the backbone starts from a random init; that works (slowly, and worse),
and it is said loudly, because a user comparing accuracy with Custom Vision must know.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

#: backbone name -> the attribute path of its final ``nn.Linear`` (replaced by our head)
BACKBONES: dict[str, str] = {
    "mobilenet_v3_large": "classifier.3",
    "mobilenet_v3_small": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "resnet18": "fc",
    "resnet50": "fc",
}
DEFAULT_BACKBONE = "mobilenet_v3_large"
#: where the container image keeps the baked-in weights (training_job/Dockerfile)
DEFAULT_WEIGHTS_DIR = Path("/opt/visionpipe/weights")
#: where a developer may bake them for the local worker (`python -m training_job.model bake DIR`)
USER_WEIGHTS_DIR = Path.home() / ".cache" / "visionpipe" / "weights"


@dataclass
class BuiltModel:
    model: nn.Module
    backbone: str
    pretrained: bool
    weights: str  # the file the weights came from, or "" for a random init


def weights_file(weights_dir: Path, backbone: str) -> Path:
    return Path(weights_dir) / f"{backbone}.pth"


def _head(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    """(parent module, attribute name, the head) for a dotted path such as ``classifier.3``."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return parent, attr, parent.get_submodule(attr)


def _load_backbone_weights(model: nn.Module, path: Path, head: str) -> None:
    """Load a state dict; entries of the classification head may differ in shape (another task's
    head, e.g. ImageNet's 1000 classes) and are skipped, everything else must match exactly."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint rather than a bare state dict
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith(head + ".")]
    if missing:
        raise ValueError(f"{path} does not fit this backbone: {len(missing)} tensors missing, "
                         f"e.g. {missing[:3]}")
    model.load_state_dict(usable, strict=False)


def build_model(backbone: str, num_classes: int, weights: Path | None) -> BuiltModel:
    """The backbone with a fresh ``num_classes`` head, from ``weights`` when that file exists."""
    import torchvision

    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    model = torchvision.models.get_model(backbone, weights=None)
    head = BACKBONES[backbone]
    pretrained = weights is not None and Path(weights).is_file()
    if pretrained:
        assert weights is not None
        _load_backbone_weights(model, Path(weights), head)
        log.info("backbone %s: pretrained weights from %s", backbone, weights)
    else:
        log.warning(
            "RANDOM INIT: no pretrained weights for backbone %s (looked for %s). The model is "
            "trained from scratch: expect much lower accuracy than transfer learning. Build the "
            "container image (it bakes the weights in), run `make setup` with network access "
            "(scripts/fetch_weights.py) or pass --weights.",
            backbone, weights or "nothing",
        )
    parent, attr, old = _head(model, head)
    assert isinstance(old, nn.Linear), f"{backbone}: {head} is {type(old).__name__}, not Linear"
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))  # Sequential keys "3" too
    return BuiltModel(model, backbone, pretrained, str(weights) if pretrained else "")


def head_parameters(model: nn.Module, backbone: str) -> list[nn.Parameter]:
    return list(_head(model, BACKBONES[backbone])[2].parameters())


class WithProbabilities(nn.Module):
    """The exported graph: logits -> softmax (Multiclass) or sigmoid (Multilabel), so serving
    reads probabilities and never needs to know which."""

    def __init__(self, model: nn.Module, multilabel: bool) -> None:
        super().__init__()
        self.model = model
        self.multilabel = multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> int:
    """Recompute BatchNorm running statistics as exact averages over ``batches``.

    torchvision's MobileNetV3 uses BatchNorm momentum 0.01, so after the few hundred steps of a
    small fine-tune from a random init the running statistics are still near their initial
    values and eval-mode predictions sit at chance. Resetting them and averaging
    over the training pictures fixes that. Each batch is weighted by its size (momentum
    n / seen-so-far), so a ragged last batch of one picture does not count as much as a full one.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
    model.train()
    seen = 0
    for x in batches:
        n = int(x.shape[0])
        if n < 2:  # a batch of one has no batch variance worth averaging in
            continue
        seen += n
        for bn in layers:
            bn.momentum = n / seen
        model(x.to(device, non_blocking=True, memory_format=memory_format))
    for bn, momentum in zip(layers, momenta, strict=True):
        bn.momentum = momentum
    model.train(was_training)
    return seen


def bake(out_dir: Path, backbones: Iterable[str]) -> None:
    """Download torchvision's default ImageNet weights once (image build time) into ``out_dir``."""
    import torchvision

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in backbones:
        enum = torchvision.models.get_model_weights(name).DEFAULT
        state = enum.get_state_dict(progress=False)
        torch.save(state, weights_file(out_dir, name))
        meta = {"backbone": name, "weights": str(enum), "url": enum.url}
        (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2))
        print(f"baked {enum} -> {weights_file(out_dir, name)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Bake pretrained backbone weights into a folder")
    parser.add_argument("command", choices=["bake"])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("backbones", nargs="*", default=[DEFAULT_BACKBONE, "mobilenet_v3_small"])
    ns = parser.parse_args()
    bake(ns.out_dir, ns.backbones)
