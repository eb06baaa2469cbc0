"""Object detection training, export and serving-side decoding (issue 12).

Fast tests check the pure parts (box conversions, the flip, the split, the output reader, the
exported graph's interface) and run the real loop for a few steps (checkpoint and resume, the
command line). Training a detector that finds the objects on held-back scenes is
tests/test_sdk_detection_quickstart.py's business: the same code through the training job, once.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.detection_samples import TAGS, scenes
from training_job.detection_export import (
    PARITY_SCORE_TOL,
    ExportError,
    check_parity,
    compare,
    compare_all,
    export_detector,
    manifest_fields,
    onnx_session,
    run_onnx,
)
from training_job.detection_model import (
    DOMAIN_DETECTORS,
    DetectorSpec,
    build_detector,
    detector_for_domain,
)
from training_job.detection_train import (
    DetectionDataset,
    DetectionSample,
    DetectionTrainConfig,
    fit,
    hflip,
    regions_to_xyxy,
    split_samples,
    xyxy_to_ltwh,
)
from visionpipe.annotations import Region
from visionpipe.detection_decode import (
    OUTPUT_NAMES,
    DetectionPreprocessing,
    read_detections,
    to_detection_input,
)

log = logging.getLogger(__name__)


@pytest.fixture(autouse=True)
def _one_thread():
    """The box is shared: one torch thread keeps the tests from starving everything else."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- fast: geometry, augmentation, split -------------------------------------------------------
def test_region_box_round_trip():
    regions = [Region("a", 0.1, 0.2, 0.3, 0.4), Region("b", 0.0, 0.5, 1.0, 0.5)]
    boxes, labels = regions_to_xyxy(regions, {"a": 0, "b": 1}, 160)
    np.testing.assert_allclose(boxes, [[16, 32, 64, 96], [0, 80, 160, 160]], rtol=1e-6)
    assert labels.tolist() == [1, 2]  # 0 is torchvision's background class
    back = xyxy_to_ltwh(boxes, 160)
    np.testing.assert_allclose(back, [[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 1.0, 0.5]], atol=1e-6)


def test_degenerate_boxes_are_dropped_and_unknown_tags_refused():
    boxes, labels = regions_to_xyxy([Region("a", 0.5, 0.5, 0.001, 0.2)], {"a": 0}, 128)
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    with pytest.raises(ValueError, match="not one of"):
        regions_to_xyxy([Region("zzz", 0.1, 0.1, 0.2, 0.2)], {"a": 0}, 128)


def test_hflip_moves_boxes_with_the_pixels():
    image = torch.zeros(3, 8, 10)
    image[:, 2:4, 1:3] = 1.0  # an object at x 1..3, y 2..4
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    flipped, fboxes = hflip(image, boxes)
    assert fboxes.tolist() == [[7.0, 2.0, 9.0, 4.0]]
    ys, xs = torch.nonzero(flipped[0], as_tuple=True)
    assert (int(xs.min()), int(xs.max()) + 1) == (7, 9)
    twice, tboxes = hflip(flipped, fboxes)
    assert torch.equal(twice, image) and torch.equal(tboxes, boxes)


def test_training_flip_is_reproducible_and_keeps_boxes_on_objects():
    data, regions = scenes(1, seed=3, size=64)[0]
    prep = DetectionPreprocessing(input_size=64)
    ds = DetectionDataset([DetectionSample(data, regions)], TAGS, prep, train=True, seed=1)
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        image, target = ds[0]
        again, _ = ds[0]
        assert torch.equal(image, again)
        box = target["boxes"][0].round().int().tolist()
        inside = image[:, box[1]:box[3], box[0]:box[2]]
        # the object is saturated red or blue: its channels differ far more than the grey noise
        assert float((inside[0] - inside[2]).abs().mean()) > 2.0
        seen.add(tuple(box))
    assert len(seen) == 2  # both orientations happen


def test_dataset_input_is_the_serving_input():
    data, regions = scenes(1, seed=4, size=96)[0]
    prep = DetectionPreprocessing(input_size=64)
    ds = DetectionDataset([DetectionSample(data, regions)], TAGS, prep)
    from visionpipe.imaging import open_oriented

    served = to_detection_input(open_oriented(data), prep)
    assert served.shape == (1, 3, 64, 64) and served.dtype == np.float32
    assert np.array_equal(ds.input(0).numpy(), served[0])


def test_split_is_deterministic_in_the_bytes():
    samples = [DetectionSample(d, r) for d, r in scenes(20, seed=5, size=32)]
    train, test = split_samples(samples, salt="p")
    assert len(test) == 2 and len(train) == 18
    train2, test2 = split_samples(list(reversed(samples)), salt="p")
    assert [s.sha256 for s in test] == [s.sha256 for s in test2]
    _, test3 = split_samples(samples, salt="other project")
    assert {s.sha256 for s in test3} != {s.sha256 for s in test} or len(samples) < 3


def test_domains_map_to_detectors():
    assert {"General", "General [A1]", "Logo", "Products on Shelves", "General (compact)",
            "General (compact) [S1]"} <= set(DOMAIN_DETECTORS)
    assert detector_for_domain("General (compact)").input_size == 320
    assert detector_for_domain("no such domain") == DOMAIN_DETECTORS["General"]
    spec = DetectorSpec().scaled(160)
    assert spec.input_size == 160 and spec.anchor_sizes[0] == 16
    assert DetectorSpec.from_dict(spec.to_dict()) == spec


def test_random_init_is_said_and_never_downloads(caplog, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    spec = replace(DetectorSpec().scaled(64), box_head_size=32)
    with caplog.at_level(logging.WARNING):
        built = build_detector(spec, 2, weights_dirs=(tmp_path,))
    assert built.pretrained == "" and "RANDOM INIT" in caplog.text
    bn = [m for m in built.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.momentum == 0.1 for m in bn)
    assert not (tmp_path / "hub").exists()  # nothing was fetched


def test_local_backbone_weights_are_used_with_frozen_batchnorm(tmp_path, monkeypatch):
    from torchvision.models import mobilenet_v3_large
    from torchvision.ops.misc import FrozenBatchNorm2d

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(1)
    state = mobilenet_v3_large(weights=None).state_dict()
    torch.save(state, tmp_path / "mobilenet_v3_large.pth")  # what `training_job.model bake` writes
    spec = replace(DetectorSpec().scaled(64), box_head_size=32)
    built = build_detector(spec, 3, weights_dirs=(tmp_path,))
    assert built.pretrained == "imagenet-backbone"
    assert built.weights == str(tmp_path / "mobilenet_v3_large.pth")
    body = built.model.backbone.body
    assert torch.equal(body.state_dict()["1.block.0.0.weight"],
                       state["features.1.block.0.0.weight"])
    assert any(isinstance(m, FrozenBatchNorm2d) for m in built.model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in built.model.modules())


def test_local_coco_detector_checkpoint_is_preferred(tmp_path, monkeypatch):
    from training_job.detection_model import COCO_CHECKPOINTS

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    spec = replace(DetectorSpec().scaled(64), box_head_size=32)
    coco = build_detector(spec, 90, pretrained=False).model.state_dict()  # 91 COCO classes
    (tmp_path / "checkpoints").mkdir()
    torch.save(coco, tmp_path / "checkpoints" / COCO_CHECKPOINTS[320])
    built = build_detector(spec, 2, weights_dirs=(tmp_path / "none",))
    assert built.pretrained == "coco"
    own = built.model.state_dict()
    assert torch.equal(own["rpn.head.conv.0.0.weight"], coco["rpn.head.conv.0.0.weight"])
    assert own["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3  # a new predictor


# --- fast: serving-side reading of the outputs -------------------------------------------------
def test_read_detections_clips_filters_sorts_and_caps():
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0.9, 0.9, 0.5, 0.5], [0.2, 0.2, 0.1, 0.1],
                      [np.nan, 0, 0.1, 0.1], [0.3, 0.3, 0.1, 0.1], [0.4, 0.4, 0.0, 0.1]],
                     dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.005, 0.99, 0.7, 0.8], dtype=np.float32)
    labels = np.array([0, 1, 0, 0, 5, 1])
    out = read_detections(boxes, scores, labels, num_tags=2)
    assert [round(p.probability, 2) for p in out] == [0.9, 0.5]  # nan, floor, label, area gone
    assert out[0].bounding_box() == pytest.approx({"left": 0.9, "top": 0.9, "width": 0.1,
                                                   "height": 0.1})
    many = read_detections(np.tile([[0.1, 0.1, 0.1, 0.1]], (300, 1)), np.linspace(1, 0.5, 300),
                           np.zeros(300, int), 1)
    assert len(many) == 200 and many[0].probability == 1.0
    with pytest.raises(ValueError):
        read_detections(boxes, scores[:2], labels, 2)


def test_preprocessing_round_trips_through_the_manifest():
    prep = DetectionPreprocessing(input_size=320)
    fields = manifest_fields(DetectorSpec(), prep)
    assert fields["domainType"] == "ObjectDetection"
    assert fields["detection"]["boxFormat"] == "ltwh-normalized"
    assert fields["detection"]["scoreFloor"] == 0.01
    assert fields["detection"]["maxDetections"] == 200
    assert fields["preprocessing"]["resizeMode"] == "stretch"
    assert DetectionPreprocessing.from_dict(fields["preprocessing"]) == prep
    with pytest.raises(ValueError):
        DetectionPreprocessing.from_dict({**fields["preprocessing"], "resizeMode": "letterbox"})


def test_parity_compare_tolerates_ties_and_floor_but_not_drift():
    b = np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]], dtype=np.float32)
    s = np.array([0.8, 0.8 - PARITY_SCORE_TOL / 2], dtype=np.float32)
    lab = np.array([0, 1])
    swapped = (b[::-1].copy(), s[::-1].copy(), lab[::-1].copy())
    assert compare((b, s, lab), swapped, 0.01)[0] == pytest.approx(1.0)
    floor_box = (np.vstack([b, [[0, 0, 0.1, 0.1]]]), np.append(s, 0.0105), np.append(lab, 0))
    compare(floor_box, (b, s, lab), 0.01)
    with pytest.raises(ExportError):
        compare((b, s, lab), (b + np.float32(0.02), s, lab), 0.01)
    with pytest.raises(ExportError):
        compare((b, s, lab), (b, s - np.float32(0.01), lab), 0.01)
    with pytest.raises(ExportError):
        compare((b, s, lab), (b[:1], s[:1], lab[:1]), 0.01)
    # weak boxes of near-tied proposals may differ between runtimes; strong ones may not
    weak = (np.vstack([b, [[0.6, 0.0, 0.1, 0.1]]]), np.append(s, 0.099), np.append(lab, 0))
    other_weak = (np.vstack([b, [[0.0, 0.6, 0.1, 0.1]]]), np.append(s, 0.101), np.append(lab, 0))
    compare(weak, other_weak, 0.01)
    strong = (np.vstack([b, [[0.6, 0.0, 0.1, 0.1]]]), np.append(s, 0.6), np.append(lab, 0))
    with pytest.raises(ExportError):
        compare(strong, other_weak, 0.01)
    with pytest.raises(ExportError):  # either side's strong box needs its counterpart
        compare(other_weak, strong, 0.01)
    edge = (np.vstack([b, [[0.6, 0.0, 0.1, 0.1]]]), np.append(s, 0.4995), np.append(lab, 0))
    compare(edge, (edge[0], np.append(s, 0.5004), edge[2]), 0.01)  # either side of the cut


def test_parity_tolerates_a_flipped_proposal_on_few_pictures_only():
    b = np.array([[0.1, 0.1, 0.2, 0.2]], dtype=np.float32)
    good = (b, np.array([0.9], np.float32), np.array([0]))
    flipped = (b + np.float32(0.3), good[1], good[2])  # a strong box elsewhere: disagreement
    report = compare_all([(good, good)] * 9 + [(good, flipped)], 0.01)
    assert report.pictures == 10 and report.disagreeing == 1 and report.min_iou == 1.0
    assert compare_all([(good, flipped)], 0.01).disagreeing == 1  # one is always allowed
    with pytest.raises(ExportError, match="disagree on 2 of 10"):
        compare_all([(good, good)] * 8 + [(good, flipped)] * 2, 0.01)
    with pytest.raises(ExportError):
        compare_all([(good, flipped)] * 20 + [(good, good)] * 20, 0.01)


def test_exported_graph_interface(tmp_path):
    """An untrained tiny detector exports with the promised names, shapes and post-processing."""
    import onnx

    spec = replace(DetectorSpec().scaled(64), box_head_size=32, rpn_proposals_test=20)
    built = build_detector(spec, 2, pretrained=False)
    prep = DetectionPreprocessing(input_size=64)
    path = tmp_path / "model.onnx"
    opset = export_detector(built.model, spec, prep, path)
    assert opset == 17
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    session = onnx_session(path.read_bytes())
    x = np.random.default_rng(0).normal(size=prep.input_shape).astype(np.float32)
    boxes, scores, labels = run_onnx(session, x)
    assert len(boxes) > 0  # an untrained head still scores every class above the 0.01 floor
    assert boxes.shape[1:] == (4,) and boxes.dtype == np.float32
    assert scores.shape == labels.shape == (len(boxes),)
    assert len(boxes) <= spec.max_detections and (scores >= spec.score_floor).all()
    assert (np.diff(scores) <= 0).all()  # best first
    assert ((labels >= 0) & (labels < 2)).all()
    assert (boxes >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 1 + 1e-6).all()
    parity = check_parity(session, built.model, spec, [x])
    assert parity.detections == len(boxes) and parity.min_iou >= 0.99


# --- tiny: a few steps of the real loop -------------------------------------------------------
# Training to a useful detector, export, parity and serving are proven end to end (the training
# job's queue, the SDK, the prediction routes) by tests/test_sdk_detection_quickstart.py.
def _tiny_setup(n: int = 4):
    spec = replace(DetectorSpec().scaled(64), box_head_size=32, roi_samples_train=16,
                   rpn_proposals_train=30, rpn_proposals_test=20)
    prep = DetectionPreprocessing(input_size=64)
    samples = [DetectionSample(d, r) for d, r in scenes(n, seed=6, size=64)]
    return spec, prep, DetectionDataset(samples, TAGS, prep, train=True), \
        DetectionDataset(samples[:2], TAGS, prep)


def test_checkpoint_resumes_where_it_stopped(tmp_path):
    spec, _, train, val = _tiny_setup()
    config = DetectionTrainConfig(epochs=1, batch_size=2, warmup_steps=1)
    torch.manual_seed(0)
    built = build_detector(spec, 2, pretrained=False)
    fit(built, train, val, config, checkpoint_path=tmp_path / "ckpt.pth")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=False)
    assert saved["epoch"] == 1 and saved["tags"] == list(TAGS)
    assert DetectorSpec.from_dict(saved["spec"]) == spec
    assert saved["lr_scheduler"]["last_epoch"] == 2  # two steps of two pictures

    epochs: list[int] = []
    fresh = build_detector(DetectorSpec.from_dict(saved["spec"]), 2, pretrained=False)
    _, result = fit(fresh, train, val, replace(config, epochs=2),
                    on_epoch=lambda r: epochs.append(r.epoch), resume=saved)
    assert epochs == [2]  # only the missing epoch ran
    assert [e.epoch for e in result.history] == [1, 2]


@pytest.mark.slow
def test_command_line_trains_from_a_pascal_voc_folder(tmp_path):
    """`python -m training_job.detection_train` end to end on a folder (one short epoch)."""
    import json

    from training_job.detection_train import get_args_parser, main

    data = tmp_path / "data"
    data.mkdir()
    for i, (png, regions) in enumerate(scenes(12, seed=7, size=64)):
        (data / f"s{i}.png").write_bytes(png)
        objects = "".join(
            f"<object><name>{r.tag}</name><bndbox><xmin>{r.left * 64}</xmin>"
            f"<ymin>{r.top * 64}</ymin><xmax>{(r.left + r.width) * 64}</xmax>"
            f"<ymax>{(r.top + r.height) * 64}</ymax></bndbox></object>" for r in regions)
        (data / f"s{i}.xml").write_text(f"<annotation>{objects}</annotation>")
    out = tmp_path / "out"
    args = get_args_parser().parse_args(
        ["--data", str(data), "--output", str(out), "--input-size", "64", "--epochs", "1",
         "--box-head-size", "64", "--batch-size", "4", "--no-pretrained", "--threads", "1"])
    assert main(args) == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["tags"] == ["circle", "square"] and summary["parity"]["min_iou"] >= 0.99
    assert summary["spec"]["box_head_size"] == 64 and summary["spec"]["input_size"] == 64
    assert (out / "model.onnx").is_file() and (out / "checkpoint.pth").is_file()


def test_serving_side_decoding_is_torch_free():
    """The Function app serves without torch: visionpipe.detection_decode must not pull it in."""
    import subprocess
    import sys

    code = ("import sys, visionpipe.detection_decode, visionpipe.detection_metrics; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
