"""TensorFlow (SavedModel, TFLite) and CoreML exports (training_job.exporters.tensorflow_convert,
coreml_package), and detection export parity (boxes, not probabilities) for the ONNX flavors and
OpenVINO, with the platforms that cannot carry a detector refused.

The converters come from ``make setup-exporters`` (training_job/requirements-export.txt). Where
they are missing a test is skipped with that reason, except in CI (``CI=true``), which installs
them: there a missing converter fails the test instead of hiding it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import TEST_TRAINING_KEY
from tests.drops import wait_for
from tests.model_factory import SMALL_SPEC, TAGS, build_color_model, register_color_iteration
from training_job.export_worker import ExportWorker, ExportWorkerOptions
from training_job.exporters import DETECTION_REFUSED, export
from training_job.exporters.parity import (
    DETECTION_TOLERANCES,
    TOLERANCES,
    as_detections,
    compare,
    compare_detections,
    detection_inputs,
    golden_images,
    golden_scenes,
    onnx_outputs,
    onnx_runner,
    served_batch,
)
from visionpipe.detection_decode import DetectionPreprocessing, detection_manifest_fields
from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID
from visionpipe.manifest import Manifest, TagOutput
from visionpipe.storage import Storage
from visionpipe.stores.exports import ExportStore
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Registry

TENSORFLOW = ("tensorflow", "onnx2tf", "tf_keras", "ai_edge_litert")
COREML = ("coremltools", "onnx2torch")


def converters(*modules: str) -> None:
    """Skip (with the reason) where the converters are not installed; in CI, fail."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    why = f"{', '.join(missing)} not installed (make setup-exporters)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI installs the export converters, yet {why}")
    pytest.skip(why)


def color_manifest(model: bytes) -> Manifest:
    return Manifest("p", "i", "Multiclass", tuple(TagOutput(f"tag-{n}", n) for n in TAGS),
                    SMALL_SPEC, "color-test-model", False, 17, hashlib.sha256(model).hexdigest())


def unzip(archive: bytes | None, into: Path) -> dict:
    with zipfile.ZipFile(io.BytesIO(archive or b"")) as z:
        z.extractall(into)
        shipped = json.loads(z.read("export.json"))
        for f in shipped["files"]:
            assert hashlib.sha256(z.read(f["name"])).hexdigest() == f["sha256"]
    return shipped


# --- TensorFlow ---------------------------------------------------------------------------------
@pytest.mark.slow  # the first to load TensorFlow pays its import (about 10 s on an idle machine)
@pytest.mark.parametrize("flavor", ["TensorFlowNormal", "TensorFlowLite"])
def test_tensorflow_flavors_answer_like_the_served_model(flavor: str, tmp_path: Path) -> None:
    converters(*TENSORFLOW)
    model = build_color_model()
    result = export(model, color_manifest(model), "TensorFlow", flavor)
    assert result.passed, result.reason
    parity = result.manifest["parity"]
    assert parity["passed"] is True and parity["top1Agreement"] == 1.0
    assert parity["top1Compared"] == parity["images"] == 24
    assert parity["maxAbsProbDiff"] <= TOLERANCES[("TensorFlow", flavor)]
    assert result.manifest["converter"]["name"] == "onnx2tf"
    shipped = unzip(result.archive, tmp_path)
    assert shipped["parity"] == parity

    # The unpacked files, run by the user's own code, take the served input and name the output.
    batch = served_batch(golden_images(), SMALL_SPEC)
    reference = onnx_runner(model, "input")(batch)
    from training_job.exporters.tensorflow_import import tensorflow

    tf = tensorflow()
    if flavor == "TensorFlowNormal":
        serve = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
        answer = serve(input=tf.constant(batch))["probabilities"].numpy()
    else:
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(tmp_path / "model.tflite")).get_signature_runner(
            "serving_default")
        answer = runner(input=batch)["probabilities"]
    assert answer.shape == reference.shape
    assert (answer.argmax(axis=1) == reference.argmax(axis=1)).all()
    assert np.abs(answer - reference).max() <= TOLERANCES[("TensorFlow", flavor)]


def test_an_unknown_tensorflow_flavor_is_a_conversion_error() -> None:
    converters(*TENSORFLOW)
    from training_job.exporters import ConversionError

    model = build_color_model()
    with pytest.raises(ConversionError, match="unknown TensorFlow flavor"):
        export(model, color_manifest(model), "TensorFlow", "TensorFlowJs")


# --- CoreML -------------------------------------------------------------------------------------
@pytest.mark.slow  # coremltools and onnx2torch load torch's compiler stack and TensorFlow
def test_coreml_claims_no_parity_it_did_not_measure_and_ships_its_proof(tmp_path: Path) -> None:
    converters(*COREML)
    model = build_color_model()
    result = export(model, color_manifest(model), "CoreML", "")
    assert result.passed, result.reason
    parity = result.manifest["parity"]
    # Core ML cannot run here: no verdict on the package, the torch graph it came from is proven.
    assert parity["passed"] is None and "Apple" in parity["runtime"]
    assert "maxAbsProbDiff" not in parity and "verify_coreml.py" in parity["verifiedBy"]
    assert parity["intermediate"]["passed"] is True
    assert parity["intermediate"]["maxAbsProbDiff"] <= TOLERANCES[("CoreML", "")]
    shipped = unzip(result.archive, tmp_path)
    assert (tmp_path / "model.mlpackage" / "Manifest.json").is_file()
    assert shipped["converter"]["name"] == "coremltools"
    settings = json.loads((tmp_path / "verify" / "settings.json").read_text())
    assert settings == {"package": "model.mlpackage", "input": "input",
                        "output": "probabilities", "tolerance": TOLERANCES[("CoreML", "")],
                        "computeUnits": "CPU_ONLY"}
    inputs = np.load(tmp_path / "verify" / "golden_inputs.npy")
    reference = np.load(tmp_path / "verify" / "golden_reference.npy")
    batch = served_batch(golden_images(), SMALL_SPEC)
    assert np.array_equal(inputs, batch)
    assert np.array_equal(reference, onnx_runner(model, "input")(batch))

    # The script a Mac user runs gives the very figures of the parity record.
    spec = importlib.util.spec_from_file_location("verify_coreml", tmp_path / "verify_coreml.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    other = onnx_runner(build_color_model(permutation=(1, 2, 0)), "input")(batch)
    for candidate in (reference + 2e-4, other):
        mine = compare(reference, candidate, settings["tolerance"], "x")
        theirs = script.compare(reference, candidate, settings["tolerance"])
        for key in ("top1Compared", "top1Agreement", "maxAbsProbDiff", "passed"):
            assert theirs[key] == mine[key]


def test_coreml_fails_when_the_graph_it_compiles_from_disagrees() -> None:
    converters(*COREML)
    from training_job.exporters import Built, _not_run_here

    images = golden_images()
    batch = served_batch(images, SMALL_SPEC)
    reference = onnx_runner(build_color_model(), "input")(batch)
    wrong = onnx_runner(build_color_model(permutation=(1, 2, 0)), "input")
    built = Built({}, None, not_runnable="not here",
                  intermediate=lambda imgs: wrong(served_batch(imgs, SMALL_SPEC)),
                  intermediate_runtime="onnxruntime")
    parity = _not_run_here(built, images, reference, 1e-3)
    assert parity["passed"] is False and "disagrees with the served model" in parity["reason"]


# --- the asynchronous flow over HTTP ------------------------------------------------------------
@pytest.fixture(scope="module")
def client(local_host: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_host + "/customvision/v3.4-preview/training",
                      headers={"Training-Key": TEST_TRAINING_KEY}, timeout=30) as c:
        yield c


@pytest.mark.slow
def test_tensorflow_lite_export_through_the_routes(client: httpx.Client, storage: Storage,
                                                   registry: Registry, label_store: LabelStore,
                                                   project: Project) -> None:
    converters(*TENSORFLOW)
    it = register_color_iteration(registry, label_store, project)
    url = f"/projects/{project.id}/iterations/{it.id}/export"
    # Any spelling of the names; TensorFlow without a flavor is the SavedModel.
    r = client.post(url, params={"platform": "tensorflow", "flavor": "tensorflowlite"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["flavor"]) == ("Exporting", "TensorFlowLite")
    assert client.post(url, params={"platform": "TensorFlow"}).json()["flavor"] == \
        "TensorFlowNormal"
    worker = ExportWorker(storage, ExportWorkerOptions(visibility_timeout=60, retry_delay=1))
    rows = ExportStore(storage)

    def settled() -> str | None:
        worker.run_once()
        row = rows.get(project.id, it.id, "TensorFlow", "TensorFlowLite")
        return row.status if row and row.status != "Exporting" else None

    assert wait_for(settled, timeout=120) == "Done"
    listed = {(e["platform"], e["flavor"]): e for e in client.get(url).json()}
    done = listed[("TensorFlow", "TensorFlowLite")]
    assert done["parity"]["passed"] is True
    with zipfile.ZipFile(io.BytesIO(httpx.get(done["downloadUri"]).content)) as z:
        assert {"model.tflite", "labels.txt", "export.json"} <= set(z.namelist())
    r = client.post(url, params={"platform": "CoreML", "flavor": "mlmodel"})
    assert (r.status_code, r.json()["code"]) == (400, "BadRequestExportValidationFailed")


# --- detection ----------------------------------------------------------------------------------
TINY = DetectionPreprocessing(input_size=32)
DETECTION_TAGS = ("square", "circle")


def build_nms_detector(box_shift: float = 0.05, swap_tags: bool = False) -> bytes:
    """A tiny detector with the exported detector's interface *and* its in-graph NMS: 2 anchors
    per cell of a 4 x 4 grid (the two overlap by IoU 0.56, so NMS suppresses), colour-driven
    class scores and box offsets, NonMaxSuppression, then sorted best first and answered as
    ``boxes`` (left, top, width, height), ``scores``, ``labels``."""
    centres = (np.arange(4) + 0.5) / 4
    anchors = [[x - s / 2, y - s / 2, x + s / 2, y + s / 2]
               for s in (0.3, 0.4) for y in centres for x in centres]
    w_scores = np.array([[3, -1.5, -1.5], [-1.5, -1.5, 3]], np.float32)[::-1 if swap_tags else 1]
    w_shift = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(np.array(array, copy=True, order="C"), name)

    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[8, 8],
                         strides=[8, 8]),
        helper.make_node("Conv", ["pooled", "w_scores"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["cell_scores"]),
        helper.make_node("Reshape", ["cell_scores", "shape_scores"], ["s1"]),
        helper.make_node("Mul", ["s1", "second_anchor"], ["s2"]),
        helper.make_node("Concat", ["s1", "s2"], ["all_scores"], axis=2),
        helper.make_node("Conv", ["pooled", "w_shift"], ["raw_shift"]),
        helper.make_node("Tanh", ["raw_shift"], ["t"]),
        helper.make_node("Mul", ["t", "shift_scale"], ["t2"]),
        helper.make_node("Reshape", ["t2", "shape_shift"], ["t3"]),
        helper.make_node("Transpose", ["t3"], ["t4"], perm=[0, 2, 1]),
        helper.make_node("Concat", ["t4", "t4"], ["shifts"], axis=1),
        helper.make_node("Add", ["anchors", "shifts"], ["corners"]),
        helper.make_node("NonMaxSuppression", ["corners", "all_scores", "max_out", "iou",
                                               "floor"], ["selected"]),
        helper.make_node("Gather", ["selected", "one"], ["cls"], axis=1),
        helper.make_node("Gather", ["selected", "two"], ["idx"], axis=1),
        helper.make_node("GatherND", ["all_scores", "selected"], ["sel_scores"]),
        helper.make_node("Squeeze", ["corners", "zero_axis"], ["corners0"]),
        helper.make_node("Gather", ["corners0", "idx"], ["sel_corners"], axis=0),
        helper.make_node("Slice", ["sel_corners", "s0", "s2i", "ax1"], ["lt"]),
        helper.make_node("Slice", ["sel_corners", "s2i", "s4", "ax1"], ["rb"]),
        helper.make_node("Sub", ["rb", "lt"], ["wh"]),
        helper.make_node("Concat", ["lt", "wh"], ["ltwh"], axis=1),
        helper.make_node("Shape", ["sel_scores"], ["count"]),
        helper.make_node("TopK", ["sel_scores", "count"], ["scores", "order"], largest=1,
                         sorted=1),
        helper.make_node("Gather", ["ltwh", "order"], ["boxes"], axis=0),
        helper.make_node("Gather", ["cls", "order"], ["labels"], axis=0),
    ]
    inits = [
        init("w_scores", w_scores.reshape(2, 3, 1, 1)),
        init("w_shift", w_shift.reshape(4, 3, 1, 1)),
        init("shape_scores", np.array([1, 2, 16], np.int64)),
        init("shape_shift", np.array([1, 4, 16], np.int64)),
        init("second_anchor", np.array(0.9, np.float32)),
        init("shift_scale", np.array(box_shift, np.float32)),
        init("anchors", np.array(anchors, np.float32)[None]),
        init("max_out", np.array([20], np.int64)),
        init("iou", np.array([0.5], np.float32)),
        init("floor", np.array([0.01], np.float32)),
        init("one", np.array(1, np.int64)), init("two", np.array(2, np.int64)),
        init("zero_axis", np.array([0], np.int64)),
        init("s0", np.array([0], np.int64)), init("s2i", np.array([2], np.int64)),
        init("s4", np.array([4], np.int64)), init("ax1", np.array([1], np.int64)),
    ]
    graph = helper.make_graph(
        nodes, "nms_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(TINY.input_shape))],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["n"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="visionpipe-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def detection_manifest(model: bytes) -> Manifest:
    fields = detection_manifest_fields(TINY, architecture="test-nms-detector")
    return Manifest("p", "i", "Multiclass",
                    tuple(TagOutput(f"tag-{n}", n) for n in DETECTION_TAGS),
                    TINY.normalization(), "test-nms-detector", False, 17,
                    hashlib.sha256(model).hexdigest(), domain_type=fields["domainType"],
                    detection_preprocessing=TINY, detection=fields["detection"])


def test_the_tiny_detector_really_suppresses_and_sorts() -> None:
    run = onnx_outputs(build_nms_detector(), "input")
    found = [as_detections(run(x)) for x in detection_inputs(golden_scenes(), TINY)]
    for boxes, scores, labels in found:
        assert 0 < len(scores) < 2 * 32  # NMS dropped overlapping anchors
        assert (np.diff(scores) <= 0).all() and set(labels) <= {0, 1}
        assert (boxes[:, 2:] > 0).all()


DETECTION_FLAVORS = [("ONNX", "ONNXInt8"), ("OpenVino", "")]


@pytest.mark.parametrize(("platform", "flavor"), DETECTION_FLAVORS)
def test_detector_exports_compare_boxes(platform: str, flavor: str) -> None:
    if platform == "OpenVino":
        converters("openvino")
    model = build_nms_detector()
    result = export(model, detection_manifest(model), platform, flavor)
    assert result.passed, result.reason
    parity = result.manifest["parity"]
    min_iou, score_tol = DETECTION_TOLERANCES[(platform, flavor)]
    assert parity["kind"] == "detection" and parity["passed"] is True
    assert parity["images"] == len(golden_scenes()) and parity["detectionsMatched"] >= 20
    assert parity["minIoU"] >= min_iou and parity["maxScoreDiff"] <= score_tol
    assert "top1Agreement" not in parity


@pytest.mark.parametrize("platform", sorted(DETECTION_REFUSED))
def test_platforms_that_cannot_carry_nms_refuse_detectors(platform: str) -> None:
    from training_job.exporters import ConversionError

    model = build_nms_detector()
    flavor = {"TensorFlow": "TensorFlowLite", "DockerFile": "Linux"}.get(platform, "")
    with pytest.raises(ConversionError, match="object detectors are not offered"):
        export(model, detection_manifest(model), platform, flavor)


@pytest.mark.parametrize("flavor", ["ONNX10", "ONNX12"])
def test_older_opsets_refuse_a_detector_they_cannot_express(flavor: str) -> None:
    """onnx's version converter has no down-adapter for Shape-15 (and GatherND is opset 11):
    the export fails with the converter's reason instead of shipping a mislabelled file."""
    from training_job.exporters import ConversionError

    model = build_nms_detector()
    with pytest.raises(ConversionError, match=f"cannot be expressed in ONNX opset {flavor[4:]}"):
        export(model, detection_manifest(model), "ONNX", flavor)


def test_float16_refuses_detectors_up_front() -> None:
    """onnxconverter-common 1.16 breaks a detector's graph (measured: two Casts writing one tensor
    around NonMaxSuppression/TopK here; a crash on Faster R-CNN's If subgraphs)."""
    from training_job.exporters import ConversionError

    model = build_nms_detector()
    with pytest.raises(ConversionError, match="ONNXFloat16 exports of object detectors are not"):
        export(model, detection_manifest(model), "ONNX", "ONNXFloat16")


def test_detection_parity_sees_moved_boxes_swapped_tags_and_extra_boxes() -> None:
    inputs = detection_inputs(golden_scenes(), TINY)
    served = onnx_outputs(build_nms_detector(), "input")
    reference = [as_detections(served(x)) for x in inputs]
    same = compare_detections(reference, reference, (0.999, 1e-4), 0.01, "same")
    assert same["passed"] is True and same["minIoU"] == 1.0 and same["maxScoreDiff"] == 0.0
    assert same["tiesSkipped"] == 0

    # Boxes moved with their scores kept: single boxes could pass for NMS ties, not all of them.
    for other, words in ((build_nms_detector(box_shift=0.06), "differ (more than 20%"),
                         (build_nms_detector(box_shift=0.2), "has no match"),
                         (build_nms_detector(swap_tags=True), "has no match")):
        run = onnx_outputs(other, "input")
        record = compare_detections(reference, [as_detections(run(x)) for x in inputs],
                                    (0.99, 1e-3), 0.01, "other")
        assert record["passed"] is False and words in record["reason"], record

    boxes, scores, labels = reference[0]
    far = [[0.9, 0.9, 0.05, 0.05]]  # overlaps nothing
    added = (np.vstack([boxes, far]), np.append(scores, 0.5), np.append(labels, 0))
    record = compare_detections(reference[:1], [added], (0.99, 1e-3), 0.01, "extra")
    assert record["passed"] is False and "made only by the exported model" in record["reason"]
    # A box at the floor may fall on either side of it.
    edge = (np.vstack([boxes, far]), np.append(scores, 0.0105), np.append(labels, 0))
    at_floor = compare_detections(reference[:1], [edge], (0.99, 1e-3), 0.01, "edge")
    assert at_floor["passed"] and at_floor["tiesSkipped"] == 1
    # NMS kept the other box of an overlapping pair with equal scores: a tie, not a difference.
    i = int(np.argmax(scores))
    left, top, w, h = boxes[i]
    twin = [left + w * 0.2, top, w, h]  # IoU 0.67 with box i: NMS keeps one of the two
    swapped = (np.vstack([np.delete(boxes, i, 0), [twin]]),
               np.append(np.delete(scores, i), scores[i]),
               np.append(np.delete(labels, i), labels[i]))
    tie = compare_detections(reference[:1], [swapped], (0.99, 1e-3), 0.01, "tie")
    assert tie["passed"] is True and tie["tiesSkipped"] == 2, tie
    nothing = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    empty = compare_detections([nothing], [nothing], (0.99, 1e-3), 0.01, "empty")
    assert empty["passed"] is False and "no golden scene" in empty["reason"]


def test_detection_exports_through_the_routes_compare_boxes_or_say_why_not(
        client: httpx.Client, storage: Storage, registry: Registry,
        label_store: LabelStore) -> None:
    from tests.test_detection_api import register_detection_iteration

    project = label_store.create_project(f"det-exports-{uuid.uuid4().hex[:10]}",
                                         domain_id=GENERAL_DETECTION_DOMAIN_ID)
    it = register_detection_iteration(registry, label_store, project, build_nms_detector(),
                                      TINY, DETECTION_TAGS)
    url = f"/projects/{project.id}/iterations/{it.id}/export"
    worker = ExportWorker(storage, ExportWorkerOptions(visibility_timeout=60, retry_delay=1))
    rows = ExportStore(storage)
    for platform, flavor in (("ONNX", "ONNXInt8"), ("TensorFlow", "TensorFlowLite")):
        r = client.post(url, params={"platform": platform, "flavor": flavor})
        assert r.json()["status"] == "Exporting", r.text

        def settled(platform: str = platform, flavor: str = flavor) -> str | None:
            worker.run_once()
            row = rows.get(project.id, it.id, platform, flavor)
            return row.status if row and row.status != "Exporting" else None

        wait_for(settled, timeout=60)
    listed = {(e["platform"], e["flavor"]): e for e in client.get(url).json()}
    done, refused = listed[("ONNX", "ONNXInt8")], listed[("TensorFlow", "TensorFlowLite")]
    assert done["status"] == "Done" and done["parity"]["kind"] == "detection"
    assert done["parity"]["passed"] is True and done["parity"]["minIoU"] >= 0.9
    assert refused["status"] == "Failed" and refused["downloadUri"] is None
    assert "object detectors are not offered" in refused["reason"]
