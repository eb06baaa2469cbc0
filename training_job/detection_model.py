"""The object detector: torchvision's Faster R-CNN on a MobileNetV3-Large FPN backbone.

Why this one (measured on the shared 2-core CPU box, torch 2.14.1, torchvision 0.29.1):

* It learns from a random init on a CPU. A field note measured
  ``fasterrcnn_mobilenet_v3_large_320_fpn`` from scratch (BatchNorm momentum 0.1, AdamW 3e-4,
  gradient clipping at 5): the right class with IoU >= 0.5 on 9 of 12 held-back synthetic scenes
  after 30 epochs, ~10 s/epoch on 2 cores. Measured here on one thread of the shared box
  (tests/test_detection_training.py, 64 scenes of 128 px, 2 tags, 1-3 objects each, batch 4,
  AdamW 1e-3, BatchNorm recalibrated after each epoch, best of 22 epochs by mAP on 16
  validation scenes): ~120 s of training on a quiet box (240-340 s while five other sessions
  loaded it), best box right on 12 of 16 held-back scenes (0.75), mAP@0.5 0.56 on them. Without
  the recalibration, 18 epochs reached mAP@0.5 0.37 on held-back scenes; at 96 px, or with AdamW
  2e-3, it learned far less (0.07 / 0.18 mAP). The two-stage design is forgiving when the
  backbone knows nothing yet: the RPN only has to find "something", the box head sorts the
  classes, and both see balanced positive/negative samples, where SSD's hard-negative mining
  over thousands of anchors needs hundreds of epochs from scratch (torchvision's SSDlite recipe
  trains 600; not measured here).
* It exports. The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset 17)
  traces the whole model *with* its post-processing (box decoding, per-class NMS, top-k) at a
  fixed input size, and ONNX Runtime agrees with torch to ~3e-6 in score, IoU >= 0.9998 in boxes
  (and answers on a blank picture: see NormalizedDetections for the tracing trap). The
  dynamo exporter of torch 2.14.1 refuses it: ``torch.export`` fails in strict and non-strict
  mode on the data-dependent shapes of the RoI post-processing. So detection uses TorchScript,
  and serving needs onnxruntime + numpy only: the graph already answers boxes, scores, labels.
* It is affordable on a CPU at 320 px: ~2.2 s per training step of 4 pictures on one thread,
  ~0.1 s per picture in ONNX Runtime on one thread (with the 150-proposal RPN budget of
  torchvision's 320 model), a 76 MB model file (the compact domains' smaller box head: 33 MB).

CPU training cost is dominated by RoIAlign's backward and the box head (a 12544 -> 1024 fully
connected layer on every sampled RoI), so training samples fewer RoIs and proposals than the
COCO recipe (``roi_samples_train`` 128 instead of 512, 300 RPN proposals instead of 2000); on a
few objects per picture that loses nothing. (At 128 px a step costs 0.4 s with 64 RoIs and 300
proposals, 0.25 s with 32 and 100.)

Pretrained weights are files on disk, never downloads (as in training_job.model): the COCO
detector checkpoint when it sits in torch's hub cache, else ImageNet MobileNetV3 backbone weights
(the file ``python -m training_job.model bake`` writes, or torch's hub cache); otherwise a random
init, said loudly in the log. With pretrained weights BatchNorm is frozen (torchvision's choice
for small detection batches); from a random init BatchNorm trains, with momentum 0.1 instead of
MobileNetV3's 0.01 so its running statistics keep up with a short training.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from training_job.model import DEFAULT_WEIGHTS_DIR, USER_WEIGHTS_DIR, weights_file

log = logging.getLogger(__name__)

ARCHITECTURE = "fasterrcnn_mobilenet_v3_large_fpn"
BACKBONE = "mobilenet_v3_large"
#: torchvision's COCO checkpoint files (only ever read from the local hub cache)
COCO_CHECKPOINTS = {
    320: "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth",
    800: "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
}
#: torchvision's ImageNet backbone checkpoint file name in the hub cache
IMAGENET_BACKBONE_CHECKPOINT = "mobilenet_v3_large-8738ca79.pth"
RANDOM_INIT_BN_MOMENTUM = 0.1
SCORE_FLOOR = 0.01  # the service answers every box down to this probability
RPN_TRAIN_SCORE_THRESH = 0.05  # torchvision's 320 model's; inference uses 0 (NormalizedDetections)
MAX_DETECTIONS = 200


@dataclass(frozen=True)
class DetectorSpec:
    """The detector of one domain: architecture, input size and detection budgets.

    The input is a fixed ``input_size`` x ``input_size`` square (pictures are stretched to it,
    see training_job.detection_train), so the exported graph has one static shape.
    """

    architecture: str = ARCHITECTURE
    input_size: int = 320
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    max_detections: int = MAX_DETECTIONS
    score_floor: float = SCORE_FLOOR
    nms_iou: float = 0.5
    rpn_proposals_test: int = 150  # the 320 model's inference budget
    rpn_proposals_train: int = 300
    roi_samples_train: int = 128
    box_head_size: int = 1024  # torchvision's (and the COCO checkpoint's); smaller trains faster

    def scaled(self, input_size: int) -> DetectorSpec:
        """The same detector at another input size (anchors scale with it)."""
        factor = input_size / self.input_size
        anchors = tuple(max(8, int(round(a * factor))) for a in self.anchor_sizes)
        return replace(self, input_size=input_size, anchor_sizes=anchors)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> DetectorSpec:
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        for name in ("anchor_sizes", "aspect_ratios"):
            if name in known:
                known[name] = tuple(known[name])  # type: ignore[arg-type]
        return cls(**known)  # type: ignore[arg-type]


_GENERAL = DetectorSpec()
_COMPACT = DetectorSpec(box_head_size=256)  # a smaller model file; COCO's box head does not fit
_LARGE = DetectorSpec(input_size=512, rpn_proposals_test=300)
_SHELF = DetectorSpec(input_size=640, anchor_sizes=(16, 32, 64, 128, 256),
                      aspect_ratios=(0.5, 1.0, 2.0, 3.0), rpn_proposals_test=600,
                      rpn_proposals_train=600, roi_samples_train=256)

#: Custom Vision's object detection domains (by name) -> the detector trained for them. Compact
#: domains get the 320 px model with a smaller box head (fast everywhere, a smaller file);
#: General [A1] and Logo trade speed for detail (logos are often small); Products on Shelves
#: sees many small, tall, dense objects.
DOMAIN_DETECTORS: dict[str, DetectorSpec] = {
    "General": _GENERAL,
    "General [A1]": _LARGE,
    "Logo": _LARGE,
    "Products on Shelves": _SHELF,
    "General (compact)": _COMPACT,
    "General (compact) [S1]": _COMPACT,
}
DEFAULT_DOMAIN = "General"


def detector_for_domain(domain_name: str) -> DetectorSpec:
    """The detector of a detection domain; unknown names get General's (and a log line)."""
    spec = DOMAIN_DETECTORS.get(domain_name)
    if spec is None:
        log.warning("no detector for domain %r; using %r's", domain_name, DEFAULT_DOMAIN)
        return DOMAIN_DETECTORS[DEFAULT_DOMAIN]
    return spec


@dataclass
class BuiltDetector:
    model: nn.Module  # torchvision FasterRCNN; class 0 is background, tag j is class j + 1
    spec: DetectorSpec
    num_tags: int
    pretrained: str  # "" (random init) | "coco" | "imagenet-backbone"
    weights: str  # the file the weights came from, or ""


def _hub_checkpoint(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def find_weights(spec: DetectorSpec, weights_dirs: tuple[Path, ...] = ()
                 ) -> tuple[str, Path | None]:
    """(kind, file) of the best pretrained weights already on disk; never downloads.

    Order: the COCO detector in torch's hub cache (same input size family), then backbone
    weights in ``weights_dirs`` (default: the baked-in folder, then the developer's), then
    torch's hub cache of the ImageNet backbone.
    """
    coco = COCO_CHECKPOINTS[320 if spec.input_size <= 512 else 800]
    if _hub_checkpoint(coco).is_file():
        return "coco", _hub_checkpoint(coco)
    for folder in weights_dirs or (DEFAULT_WEIGHTS_DIR, USER_WEIGHTS_DIR):
        if weights_file(folder, BACKBONE).is_file():
            return "imagenet-backbone", weights_file(folder, BACKBONE)
    if _hub_checkpoint(IMAGENET_BACKBONE_CHECKPOINT).is_file():
        return "imagenet-backbone", _hub_checkpoint(IMAGENET_BACKBONE_CHECKPOINT)
    return "", None


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint rather than a bare state dict
    return state


def _load_matching(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> int:
    """Load the entries whose names and shapes match; return how many did. The class-specific
    box predictor (another label set) is expected not to."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{what}: no tensor fits this detector")
    module.load_state_dict(usable, strict=False)
    return len(usable)


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> int:
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in layers:
        bn.momentum = momentum
    return len(layers)


def build_detector(
    spec: DetectorSpec,
    num_tags: int,
    *,
    pretrained: bool = True,
    weights_dirs: tuple[Path, ...] = (),
) -> BuiltDetector:
    """A Faster R-CNN for ``num_tags`` tags, from local weights when ``pretrained`` finds any.

    The model normalises nothing itself (its internal mean 0, std 1): the input is already
    normalised by the manifest's preprocessing, so serving and training share one definition.
    """
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import misc as misc_nn_ops

    if spec.architecture != ARCHITECTURE:
        raise ValueError(f"unknown detector architecture {spec.architecture!r}")
    if num_tags < 1:
        raise ValueError("a detector needs at least one tag")
    kind, path = find_weights(spec, weights_dirs) if pretrained else ("", None)
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if kind else nn.BatchNorm2d
    body = mobilenet_v3_large(weights=None, norm_layer=norm_layer)
    if kind == "imagenet-backbone":
        assert path is not None
        _load_matching(body, _load_state(path), str(path))
    # all 6 stages train from scratch; 3 (torchvision's default) when the backbone is pretrained
    backbone = _mobilenet_extractor(body, True, 3 if kind else 6)
    anchors = AnchorGenerator((spec.anchor_sizes,) * 3, (spec.aspect_ratios,) * 3)
    size = spec.input_size
    resolution = 7  # MultiScaleRoIAlign's output size in torchvision's FasterRCNN
    box_head = TwoMLPHead(backbone.out_channels * resolution**2, spec.box_head_size)
    model = FasterRCNN(
        backbone, None, rpn_anchor_generator=anchors, box_head=box_head,
        box_predictor=FastRCNNPredictor(spec.box_head_size, num_tags + 1),
        min_size=size, max_size=size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
        rpn_pre_nms_top_n_train=spec.rpn_proposals_train,
        rpn_post_nms_top_n_train=spec.rpn_proposals_train,
        rpn_pre_nms_top_n_test=spec.rpn_proposals_test,
        rpn_post_nms_top_n_test=spec.rpn_proposals_test,
        # Training keeps the 320 model's RPN score threshold (early on, it lets only the ground
        # truth boxes through to the box head); served inference runs without thresholds inside
        # torchvision's post-processing and applies the floor last: see NormalizedDetections.
        rpn_score_thresh=RPN_TRAIN_SCORE_THRESH,
        box_batch_size_per_image=spec.roi_samples_train,
        box_score_thresh=-1.0, box_nms_thresh=spec.nms_iou,
        box_detections_per_img=spec.max_detections,
    )
    if kind == "coco":
        assert path is not None
        n = _load_matching(model, _load_state(path), str(path))
        log.info("detector %s@%d: COCO weights from %s (%d tensors; new box predictor)",
                 spec.architecture, size, path, n)
    elif kind:
        log.info("detector %s@%d: ImageNet backbone weights from %s", spec.architecture, size,
                 path)
    else:
        set_batchnorm_momentum(model, RANDOM_INIT_BN_MOMENTUM)
        log.warning(
            "RANDOM INIT: no pretrained detector or backbone weights on disk for %s@%d (looked in "
            "torch's hub cache %s and %s; nothing is downloaded). Trained from scratch: expect "
            "much lower accuracy than transfer learning.", spec.architecture, size,
            Path(torch.hub.get_dir()) / "checkpoints",
            ", ".join(str(d) for d in (weights_dirs or (DEFAULT_WEIGHTS_DIR, USER_WEIGHTS_DIR))),
        )
    return BuiltDetector(model, spec, num_tags, kind, str(path) if path else "")


class NormalizedDetections(nn.Module):
    """The served interface around a trained detector: one normalised ``1 x 3 x S x S`` picture
    -> ``boxes`` (N, 4: left, top, width, height as fractions), ``scores`` (N, best first, all >=
    ``score_floor``) and ``labels`` (N, the tag index: torchvision's class minus its background
    class 0).

    Training evaluation (training_job.detection_train) and the export use this same module, so
    the metrics describe exactly what the ONNX graph answers.

    The score floor is applied here, after torchvision's post-processing, not inside it: tracing
    records the Python branches torchvision takes on the example input, and its "no boxes"
    branches (``if box_sum > 0`` in the box decoder) leave a graph that cannot reshape when a
    later picture does have boxes (measured: ONNX Runtime failed with "cannot reshape {17, 11} to
    {-1, 4}" on a trained model traced on a blank picture), while a graph traced with boxes fails
    on pictures without any. With no thresholds inside (RPN score threshold 0 while this module
    runs, box score threshold -1) there are always proposals and candidates, whatever the
    picture; filtering afterwards gives the same boxes (NMS never lets a box under the floor
    suppress one above it).
    """

    def __init__(self, model: nn.Module, input_size: int, score_floor: float = SCORE_FLOOR
                 ) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.score_floor = score_floor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rpn = self.model.rpn
        trained_thresh = rpn.score_thresh
        rpn.score_thresh = 0.0  # a Python attribute: traced as a constant, restored for training
        try:
            out = self.model(list(x.unbind(0)))[0]
        finally:
            rpn.score_thresh = trained_thresh
        keep = out["scores"] >= self.score_floor
        xyxy = out["boxes"][keep] / float(self.input_size)
        ltwh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1)
        return ltwh, out["scores"][keep], out["labels"][keep] - 1
