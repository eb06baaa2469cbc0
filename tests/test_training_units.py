"""Fast tests of the training job's pure parts: metrics, the split, message decoding."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training_job.dataset import TEST, TRAIN, VALIDATION, DatasetError, build_snapshot
from training_job.worker import decode_body, is_transient
from visionpipe.metrics import (
    arrays_from_predictions,
    average_precision,
    metrics_at_threshold,
    pr_curve,
    predictions_document,
    recompute,
)
from visionpipe.stores.label_store import MULTILABEL, ImageRecord, Project, Tag

NOW = datetime(2026, 11, 1, tzinfo=UTC)


# --- metrics -------------------------------------------------------------------------------------
def test_average_precision_matches_hand_computed_values() -> None:
    assert average_precision([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1]) == 1.0
    # ranking: 1 (hit), 0, 1 (hit): AP = 0.5 * 1/1 + 0.5 * 2/3
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([0, 0], [0.9, 0.1]) == 0.0  # no positive: defined as 0


def test_pr_curve_treats_tied_scores_as_one_point() -> None:
    precision, recall, thresholds = pr_curve([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.1])
    assert thresholds.tolist() == [0.5, 0.1]
    assert precision.tolist() == pytest.approx([2 / 3, 0.5])
    assert recall.tolist() == [1.0, 1.0]
    # order of tied rows does not matter
    assert average_precision([0, 1, 0, 1], [0.5, 0.5, 0.1, 0.5]) == pytest.approx(2 / 3)


def test_metrics_at_threshold_shape_and_values() -> None:
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    m = metrics_at_threshold(labels, probs, ["a", "b"], ["cat", "dog"], 0.5, train_images=36)
    assert set(m) == {"threshold", "precision", "recall", "averagePrecision", "perTag",
                      "testImages", "trainImages"}
    cat, dog = m["perTag"]
    assert set(cat) == {"id", "name", "precision", "recall", "averagePrecision", "count"}
    assert (cat["id"], cat["name"], cat["count"]) == ("a", "cat", 2)
    assert cat["precision"] == 0.5 and cat["recall"] == 0.5  # predicted rows 0 and 3
    assert dog["precision"] == 0.5 and dog["recall"] == 0.5  # predicted rows 1 and 2
    assert m["precision"] == 0.5 and m["recall"] == 0.5
    assert m["testImages"] == 4 and m["trainImages"] == 36
    # stricter threshold: fewer predictions, precision up, recall down
    strict = metrics_at_threshold(labels, probs, ["a", "b"], ["cat", "dog"], 0.85)
    assert strict["perTag"][0]["precision"] == 1.0 and strict["perTag"][0]["recall"] == 0.5
    assert strict["perTag"][1]["precision"] == 0.0  # nothing predicted
    json.dumps(m)  # plain JSON types only


def test_recompute_from_stored_predictions_round_trips() -> None:
    rng = np.random.default_rng(0)
    labels = np.eye(3)[rng.integers(0, 3, 20)]
    probs = rng.dirichlet(np.ones(3), 20)
    ids, tag_names = ["t1", "t2", "t3"], ["a", "b", "c"]
    metrics = metrics_at_threshold(labels, probs, ids, tag_names, 0.5, train_images=5)
    rows = [(f"img{i}", f"sha{i}", [ids[int(np.argmax(labels[i]))]], probs[i]) for i in range(20)]
    stored = json.loads(json.dumps({**metrics, "predictions":
                                    predictions_document(ids, tag_names, rows)}))
    y, p = arrays_from_predictions(stored["predictions"])
    assert np.array_equal(y, labels)
    again = recompute(stored, 0.5)
    assert again["precision"] == pytest.approx(metrics["precision"])
    assert again["averagePrecision"] == pytest.approx(metrics["averagePrecision"], abs=1e-5)
    assert recompute(stored, 0.9)["recall"] <= again["recall"]


# --- the snapshot split --------------------------------------------------------------------------
def _project(multilabel: bool = False) -> Project:
    return Project("p1", "proj", MULTILABEL if multilabel else "Multiclass", created=NOW)


def _records(counts: dict[str, int], multi: int = 0) -> list[ImageRecord]:
    out = []
    for tag, n in counts.items():
        for i in range(n):
            sha = hashlib.sha256(f"{tag}{i}".encode()).hexdigest()
            out.append(ImageRecord("p1", sha, (tag,), (f"proj/{tag}/{i}.jpg",), 256, 256,
                                   "JPEG", 1000, NOW))
    for i in range(multi):
        sha = hashlib.sha256(f"both{i}".encode()).hexdigest()
        out.append(ImageRecord("p1", sha, tuple(counts), (f"proj/x/{i}.jpg",), 256, 256,
                               "JPEG", 1000, NOW))
    return out


TAGS = [Tag("a", "p1", "apple", created=NOW), Tag("b", "p1", "banana", created=NOW),
        Tag("c", "p1", "cherry", created=NOW)]


def test_split_is_stratified_deterministic_and_order_independent() -> None:
    records = _records({"a": 20, "b": 12, "c": 5})
    snap = build_snapshot(_project(), TAGS, records)
    test_per_tag = {t.id: sum(1 for s in snap.test if t.id in s.tag_ids) for t in TAGS}
    assert test_per_tag == {"a": 2, "b": 1, "c": 1}  # 10 % half-up, at least one per tag
    val_per_tag = {t.id: sum(1 for s in snap.validation if t.id in s.tag_ids) for t in TAGS}
    assert val_per_tag == {"a": 2, "b": 1, "c": 1}  # the same rule for the validation side
    assert len(snap.train) + len(snap.validation) + len(snap.test) == 37
    sides = [{s.sha256 for s in side} for side in (snap.train, snap.validation, snap.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])  # disjoint
    again = build_snapshot(_project(), TAGS, list(reversed(records)))
    assert again.samples == snap.samples
    # adding images does not move existing ones across the split
    more = build_snapshot(_project(), TAGS, records + _records({"a": 30})[20:])
    moved = {s.sha256 for s in snap.test} - {s.sha256 for s in more.test}
    assert len(moved) <= 1  # only the "a" group's quota changed (2 -> 3 of 30)
    lines = [json.loads(x) for x in snap.to_jsonl().decode().splitlines()]
    assert {x["split"] for x in lines} == {TRAIN, VALIDATION, TEST}
    assert set(lines[0]) == {"imageId", "sha256", "blobPath", "tagIds", "split"}


def test_too_few_images_per_tag_names_the_tags() -> None:
    with pytest.raises(DatasetError, match=r"at least 5 images.*'cherry' \(4\)"):
        build_snapshot(_project(), TAGS, _records({"a": 10, "b": 10, "c": 4}))
    with pytest.raises(DatasetError, match="at least 2 tags"):
        build_snapshot(_project(), TAGS, _records({"a": 10}), selected_tag_ids=["a"])
    with pytest.raises(DatasetError, match="not in project"):
        build_snapshot(_project(), TAGS, _records({"a": 10}), selected_tag_ids=["zzz"])


def test_selected_tags_restrict_images_and_labels() -> None:
    records = _records({"a": 6, "b": 6, "c": 6}, multi=3)
    snap = build_snapshot(_project(multilabel=True), TAGS, records, selected_tag_ids=["c", "a"])
    assert [t.id for t in snap.tags] == ["c", "a"]  # output order = selection order
    assert all(set(s.tag_ids) <= {"a", "c"} for s in snap.samples)
    assert sum(1 for s in snap.samples if len(s.tag_ids) == 2) == 3
    assert snap.targets(snap.samples).shape == (15, 2)


# --- messages ------------------------------------------------------------------------------------
def test_decode_body_accepts_base64_and_plain_json() -> None:
    body = '{"projectName": "x"}'
    assert decode_body(base64.b64encode(body.encode()).decode()) == body
    assert decode_body(body) == body  # hand-enqueued from a portal: no base64
    assert decode_body("not json at all") == "not json at all"


def test_transient_errors_are_told_apart() -> None:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

    assert is_transient(ServiceRequestError("connection refused"))
    throttled = HttpResponseError("busy")
    throttled.status_code = 503
    assert is_transient(throttled)
    assert not is_transient(ResourceNotFoundError("gone"))
    assert not is_transient(ValueError("bug"))


# --- export --------------------------------------------------------------------------------------
def _tiny_model() -> Any:
    from torch import nn

    from training_job.model import WithProbabilities

    body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return WithProbabilities(body, multilabel=False).eval()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_has_the_promised_interface_and_parity(exporter: str, tmp_path: Path) -> None:
    from training_job.export import export_onnx, onnx_session, parity
    from visionpipe.preprocessing import PreprocessingSpec

    spec = PreprocessingSpec(resize=40, crop=32, input_shape=(-1, 3, 32, 32))
    model = _tiny_model()
    opset = export_onnx(model, spec, tmp_path / "m.onnx", exporter)
    assert opset >= 17
    session = onnx_session((tmp_path / "m.onnx").read_bytes())
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch
    batch = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    diff, probs = parity(session, model, batch)
    assert diff <= 1e-5 and probs.shape == (5, 3)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_check_onnx_refuses_a_model_without_the_promised_interface(tmp_path: Path) -> None:
    import torch

    from training_job.export import ExportError, check_onnx
    from visionpipe.preprocessing import PreprocessingSpec

    spec = PreprocessingSpec(resize=40, crop=32, input_shape=(-1, 3, 32, 32))
    path = tmp_path / "m.onnx"
    torch.onnx.export(_tiny_model(), (torch.zeros(2, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}})
    with pytest.raises(ExportError, match="outputs are"):
        check_onnx(path, spec)
    torch.onnx.export(_tiny_model(), (torch.zeros(2, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["input"], output_names=["probabilities"])
    with pytest.raises(ExportError, match="batch axis is not dynamic"):
        check_onnx(path, spec)


def test_batchnorm_recalibration_weights_batches_by_size() -> None:
    import torch
    from torch import nn

    from training_job.model import recalibrate_batchnorm

    bn = nn.BatchNorm1d(1, momentum=0.01)
    data = [torch.full((4, 1), 2.0), torch.full((2, 1), 5.0), torch.full((1, 1), 100.0)]
    seen = recalibrate_batchnorm(nn.Sequential(bn), data, torch.device("cpu"))
    assert seen == 6  # the batch of one is skipped
    assert bn.running_mean.item() == pytest.approx((4 * 2.0 + 2 * 5.0) / 6)
    assert bn.momentum == 0.01 and bn.training  # restored


# --- budgets -------------------------------------------------------------------------------------
def test_regular_and_advanced_budgets() -> None:
    from training_job.pipeline import EXPORT_RESERVE_S, JobOptions
    from visionpipe.messages import TrainingRequest

    options = JobOptions(epochs=7, advanced_epochs=40, advanced_budget_hours=1.0)
    regular = options.train_config(TrainingRequest(project_name="p"), seconds_used=10)
    assert (regular.epochs, regular.patience) == (7, 3)
    assert regular.time_budget_s == 30 * 60 - 10 - EXPORT_RESERVE_S
    advanced = options.train_config(
        TrainingRequest(project_name="p", training_type="Advanced", reserved_budget_in_hours=2), 0)
    assert (advanced.epochs, advanced.patience) == (40, 8)
    assert advanced.time_budget_s == 2 * 3600 - EXPORT_RESERVE_S
    default = options.train_config(TrainingRequest(project_name="p", training_type="Advanced"), 0)
    assert default.time_budget_s == 3600 - EXPORT_RESERVE_S


def test_fit_stops_before_overrunning_the_time_budget() -> None:
    import torch
    from torch.utils.data import TensorDataset

    from training_job.model import build_model
    from training_job.train import TrainConfig, fit

    x = torch.randn(12, 3, 32, 32)
    y = torch.eye(2)[torch.arange(12) % 2]
    built = build_model("mobilenet_v3_small", 2, None)
    seen: list[int] = []
    config = TrainConfig(epochs=5, patience=5, time_budget_s=0.0, batch_size=4, workers=0)
    model, result = fit(built, False, TensorDataset(x, y), TensorDataset(x[:4], y[:4]),
                        TensorDataset(x, y), config, on_epoch=lambda r: seen.append(r.epoch))
    assert result.stopped == "budget" and seen == [1] and result.best_epoch == 1
    assert not model.training and next(model.parameters()).device.type == "cpu"


def test_advanced_training_augments_harder_and_knows_its_budget() -> None:
    from torchvision.transforms import RandomErasing

    from training_job.dataset import train_transform
    from training_job.pipeline import JobOptions
    from visionpipe.messages import TrainingRequest

    options = JobOptions(regular_budget_minutes=30.0, advanced_budget_hours=1.0)
    advanced = TrainingRequest(project_name="p", training_type="Advanced",
                               reserved_budget_in_hours=3)
    assert options.budget_seconds(advanced) == 3 * 3600
    assert options.budget_seconds(TrainingRequest(project_name="p")) == 30 * 60
    weak, strong = train_transform(options.spec), train_transform(options.spec, strong=True)
    assert any(isinstance(t, RandomErasing) for t in strong.transforms)  # type: ignore[attr-defined]
    assert not any(isinstance(t, RandomErasing) for t in weak.transforms)  # type: ignore[attr-defined]


def test_cross_validation_default_is_on_for_gpus_only() -> None:
    from training_job.pipeline import KFOLD_BELOW, JobOptions

    assert JobOptions(device="cpu").kfold_threshold() == 0  # it would triple a CPU training
    assert JobOptions(device="cpu", kfold_below=7).kfold_threshold() == 7
    assert KFOLD_BELOW == 20
