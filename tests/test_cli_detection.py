"""The ``visionpipe`` CLI on object detection projects, through typer's runner against the real
local host over HTTP: ``upload`` of Pascal VOC / YOLO / COCO folders (format told by the files,
boxes sent as regions in the ``images/files`` entries), ``predict`` printing boxes and drawing
them, ``metrics`` at an overlap threshold.

The detector is tests/test_detection_api.py's fixed ONNX graph (known boxes, no training); the
datasets are written by visionpipe.client.datasets' own writers, so upload reads exactly what
``dataset export`` writes.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.cli_runner import invoke, rows_of
from tests.model_factory import color_image
from tests.test_detection_api import build_fixed_detector, register_detection_iteration
from visionpipe.annotations import Region
from visionpipe.client import datasets
from visionpipe.client.client import VisionpipeClient
from visionpipe.client.drawing import tag_colour
from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID
from visionpipe.manifest import METRICS_FILE
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Iteration, Registry

#: three pictures: two boxes, one box, none (an image with no objects goes up untagged)
BOXES = {
    "a.jpg": [Region("cat", 0.1, 0.1, 0.4, 0.4), Region("dog", 0.55, 0.5, 0.4, 0.45)],
    "b.jpg": [Region("dog", 0.25, 0.2, 0.5, 0.6)],
    "c.jpg": [],
}


pytestmark = pytest.mark.usefixtures("cli_env")


def items() -> list[datasets.Item]:
    colours = ("red", "green", "blue")
    return [datasets.Item(name, color_image(colours[n], size=(400, 300), seed=n),
                          sorted({r.tag for r in regions}), list(regions), (400, 300))
            for n, (name, regions) in enumerate(BOXES.items())]


def stored_regions(client: VisionpipeClient, project_id: str
                   ) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    """sha256 of each stored image -> its regions (tag, box), read back over HTTP."""
    out = {}
    for image in client.list_images(project_id):
        digest = hashlib.sha256(client.image_bytes(project_id, image["id"])).hexdigest()
        out[digest] = sorted((r["tagName"], tuple(round(r[k], 3) for k in
                                                  ("left", "top", "width", "height")))
                             for r in image.get("regions") or [])
    return out


def expected_regions() -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    return {hashlib.sha256(item.data).hexdigest():
            sorted((r.tag, (r.left, r.top, r.width, r.height)) for r in item.regions)
            for item in items()}


# --- upload ---------------------------------------------------------------------------------------
def test_the_format_is_told_by_the_files(tmp_path: Path) -> None:
    for fmt in datasets.FORMATS:
        datasets.write(items(), tmp_path / fmt, fmt)
        assert datasets.detect_format(tmp_path / fmt) == fmt
    voc_layout = tmp_path / "voc-dirs"  # VOCdevkit: JPEGImages/ beside Annotations/
    (voc_layout / "JPEGImages").mkdir(parents=True)
    (voc_layout / "Annotations").mkdir()
    (voc_layout / "JPEGImages" / "a.jpg").write_bytes(items()[0].data)
    (voc_layout / "Annotations" / "a.xml").write_text("<annotation/>")
    assert datasets.detect_format(voc_layout) == "voc"
    both = tmp_path / "coco"
    (both / "classes.txt").write_text("cat\n")  # a COCO file and YOLO class names at once
    with pytest.raises(ValueError, match="coco and yolo"):
        datasets.detect_format(both)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert datasets.detect_format(empty) == "folder"


@pytest.mark.parametrize("fmt", datasets.BOX_FORMATS)
def test_upload_sends_the_boxes_of_a_detection_dataset(
        fmt: str, tmp_path: Path, project_name: str, client: VisionpipeClient) -> None:
    folder = tmp_path / fmt
    datasets.write(items(), folder, fmt)
    out = invoke("upload", str(folder), "--project", project_name, "--detection")
    assert f"as {fmt}" in out and f"created object detection project {project_name}" in out
    assert "3 uploaded, 0 duplicate, 0 rejected, 3 boxes" in out
    assert "(no boxes)" in out  # c.jpg: an image with no objects, uploaded untagged
    project = client.project(project_name)
    assert project["settings"]["domainId"] == GENERAL_DETECTION_DOMAIN_ID
    assert stored_regions(client, project["id"]) == expected_regions()

    rows = rows_of("upload", str(folder), "--project", project_name)
    assert {r["outcome"] for r in rows} == {"duplicate"}  # the project's type is remembered
    a = next(r for r in rows if Path(r["file"]).name == "a.jpg")
    assert [(b["tagName"], round(b["left"], 3)) for b in a["regions"]] == [("cat", 0.1),
                                                                          ("dog", 0.55)]


def test_bad_annotations_are_refused_with_their_reason(
        tmp_path: Path, project_name: str, client: VisionpipeClient) -> None:
    voc = tmp_path / "voc"
    datasets.write(items()[:1], voc, "voc")
    (voc / "bad.jpg").write_bytes(color_image("blue", size=(400, 300), seed=9))
    (voc / "bad.xml").write_text(  # inverted box
        "<annotation><size><width>400</width><height>300</height></size><object><name>cat"
        "</name><bndbox><xmin>300</xmin><ymin>10</ymin><xmax>100</xmax><ymax>200</ymax>"
        "</bndbox></object></annotation>")
    (voc / "bomb.jpg").write_bytes(color_image("green", size=(400, 300), seed=10))
    (voc / "bomb.xml").write_text(  # an entity: never expanded
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">]><annotation><object>'
        "<name>&x;</name></object></annotation>")
    rows = rows_of("upload", str(voc), "--project", project_name, "--detection")
    by_file = {Path(r["file"]).name: r for r in rows}
    assert by_file["a.jpg"]["outcome"] == "uploaded"
    assert by_file["bad.jpg"]["status"] == "Skipped" and by_file["bad.jpg"]["reason"]
    assert by_file["bomb.jpg"]["status"] == "Skipped"
    assert len(client.list_images(client.project(project_name)["id"])) == 1

    coco = tmp_path / "coco"
    datasets.write(items()[:1], coco, "coco")
    doc = json.loads((coco / "annotations.json").read_text())
    doc["images"].append({"id": 99, "file_name": "../../outside.jpg", "width": 400,
                          "height": 300})
    doc["annotations"].append({"id": 99, "image_id": 99, "category_id": 1,
                               "bbox": [10, 10, 50, 50]})
    (coco / "annotations.json").write_text(json.dumps(doc))
    (tmp_path / "outside.jpg").write_bytes(color_image("red", size=(400, 300), seed=11))
    out = invoke("upload", str(coco), "--project", project_name, code=1)  # the whole file
    assert "not a safe relative file name" in out and "Traceback" not in out
    assert len(client.list_images(client.project(project_name)["id"])) == 1


def test_more_than_a_batch_of_boxed_images(tmp_path: Path, project_name: str,
                                           client: VisionpipeClient) -> None:
    """70 images go up in two ``images/files`` calls (the service takes at most 64)."""
    many = [datasets.Item(f"{n:02d}.jpg", color_image((n * 3, 90, 200 - n), size=(256, 256),
                                                      seed=n),
                          ["cat"], [Region("cat", 0.01 * (n % 50), 0.1, 0.3, 0.3)], (256, 256))
            for n in range(70)]
    datasets.write(many, tmp_path / "yolo", "yolo")
    rows = rows_of("upload", str(tmp_path / "yolo"), "--project", project_name, "--detection",
                   "--workers", "2")
    assert [r["outcome"] for r in rows] == ["uploaded"] * 70
    project_id = client.project(project_name)["id"]
    stored = client.list_images(project_id, take=100)
    assert len(stored) == 70 and all(len(i["regions"]) == 1 for i in stored)


def test_detection_projects_take_boxes_only(tmp_path: Path, project_name: str,
                                            label_store: LabelStore) -> None:
    tags = tmp_path / "tags"
    datasets.write(items(), tags, "folder")
    out = invoke("upload", str(tags), "--project", project_name, "--detection", code=1)
    assert "takes boxes" in out.strip().splitlines()[-1] and "Traceback" not in out
    assert label_store.find_project(project_name) is None  # refused before creating anything
    out = invoke("upload", str(tags), "--project", project_name, "--detection", "--multilabel",
                 code=1)
    assert "--multilabel" in out
    invoke("upload", str(tags), "--project", project_name)  # a classifier
    voc = tmp_path / "voc"
    datasets.write(items(), voc, "voc")
    out = invoke("upload", str(voc), "--project", project_name, "--detection", code=1)
    assert "exists as a classification project" in out


# --- predict --------------------------------------------------------------------------------------
@pytest.fixture
def detector(registry: Registry, label_store: LabelStore) -> tuple[Project, Iteration]:
    """A detection project with tests/test_detection_api.py's fixed detector published as
    ``prod``: cat 0.9 at (0.1, 0.2, 0.3, 0.4) and dog 0.6 at (0.5, 0.5, 0.25, 0.25)."""
    from visionpipe.pipeline.publishing import publish

    project = label_store.create_project(f"det-{uuid.uuid4().hex[:10]}",
                                         domain_id=GENERAL_DETECTION_DOMAIN_ID)
    iteration = register_detection_iteration(registry, label_store, project,
                                             build_fixed_detector())
    publish(registry, label_store, project.id, iteration.id, "prod")
    return project, iteration


def pictures(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "one.jpg").write_bytes(color_image("green", size=(400, 300), seed=1))
    (folder / "sub").mkdir()
    (folder / "sub" / "two.png").write_bytes(color_image("blue", (400, 300), "PNG", seed=2))
    return folder


def test_predict_prints_the_boxes_above_the_threshold(
        tmp_path: Path, detector: tuple[Project, Iteration]) -> None:
    project, iteration = detector
    folder = pictures(tmp_path / "in")
    out = invoke("predict", project.name, str(folder))
    assert out.count("cat") == 2 and out.count("dog") == 2 and "90.0%" in out
    assert "x 0.100  y 0.200  w 0.300  h 0.400" in out and "sub/two.png" in out
    out = invoke("predict", project.name, str(folder), "--threshold", "0.7")
    assert out.count("cat") == 2 and "dog" not in out
    out = invoke("predict", project.id, str(folder / "one.jpg"), "--threshold", "0.95")
    assert "(no box at or above 95%)" in out

    rows = rows_of("predict", project.name, str(folder), "--name", "prod")
    assert [Path(r["file"]).name for r in rows] == ["one.jpg", "two.png"]
    for row in rows:
        assert row["iteration"] == iteration.id and row["threshold"] == 0.5
        assert [(b["tagName"], round(b["probability"], 4), b["boundingBox"]) for b in
                row["boxes"]] == [("cat", 0.9, pytest.approx(
                    {"left": 0.1, "top": 0.2, "width": 0.3, "height": 0.4})),
                    ("dog", 0.6, pytest.approx(
                        {"left": 0.5, "top": 0.5, "width": 0.25, "height": 0.25}))]
        assert len(row["predictions"]) == 2  # the box under the service's floor is not answered
    invoke("predict", project.name, str(folder), "--threshold", "1.5", code=2)


def _near(pixel: Any, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


def test_predict_annotate_draws_the_boxes(tmp_path: Path, detector: tuple[Project, Iteration],
                                          project: Project) -> None:
    det, _ = detector
    folder = pictures(tmp_path / "in")
    rotated = io.BytesIO()  # EXIF orientation 6: stored 400x300, shown (and boxed) upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(io.BytesIO(color_image("red", size=(400, 300), seed=3))).save(
        rotated, "JPEG", exif=exif.tobytes())
    (folder / "turned.jpg").write_bytes(rotated.getvalue())
    drawn = folder / "drawn"  # inside the input folder: a re-run must not read it back
    for _ in range(2):
        out = invoke("predict", det.name, str(folder), "--annotate", str(drawn))
        assert "3 annotated image(s)" in out
    assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*") if p.is_file()) == [
        "one.jpg", "sub/two.png", "turned.jpg"]
    with Image.open(drawn / "sub" / "two.png") as two:
        assert two.format == "PNG" and two.size == (400, 300)
        rgb = two.convert("RGB")
        assert _near(rgb.getpixel((41, 120)), tag_colour("cat"), 0)  # cat's left edge
        assert _near(rgb.getpixel((201, 200)), tag_colour("dog"), 0)  # dog's left edge
        assert _near(rgb.getpixel((350, 30)), (40, 50, 220), 15)  # untouched: the picture
    with Image.open(drawn / "turned.jpg") as turned:
        assert turned.size == (300, 400)
        assert _near(turned.convert("RGB").getpixel((31, 160)), tag_colour("cat"))

    out = invoke("predict", det.name, str(folder), "--annotate", str(folder), code=1)
    assert "overwrite" in out
    out = invoke("predict", project.name, str(folder), "--annotate", str(drawn), code=1)
    assert "classification project" in out


# --- metrics --------------------------------------------------------------------------------------
#: what training recorded on the iteration row (the route's fallback without raw boxes)
RECORDED = {"overall": {"precision": 0.42, "recall": 0.42, "averagePrecision": 0.42},
            "perTag": [{"id": "x", "name": n, "precision": 0.42, "recall": 0.42,
                        "averagePrecision": 0.42} for n in ("cat", "dog")]}


@pytest.fixture
def evaluated(registry: Registry, label_store: LabelStore) -> Project:
    """A trained (not published) detection iteration with its raw test boxes in metrics.json:
    one image, a dog found exactly and a cat found at IoU 0.39 with its true box."""
    from visionpipe.metrics import DETECTIONS, detections_document

    project = label_store.create_project(f"det-{uuid.uuid4().hex[:10]}",
                                         domain_id=GENERAL_DETECTION_DOMAIN_ID)
    iteration = register_detection_iteration(registry, label_store, project,
                                             build_fixed_detector())
    manifest = registry.read_manifest(project.id, iteration.id)
    doc = detections_document(
        [t.id for t in manifest.tags], [t.name for t in manifest.tags],
        [("img", "0" * 64, [[0, 0.1, 0.1, 0.4, 0.4], [1, 0.5, 0.5, 0.4, 0.4]],
          [[1, 0.95, 0.5, 0.5, 0.4, 0.4], [0, 0.9, 0.2, 0.2, 0.4, 0.4]])])
    registry.upload_artifact(project.id, iteration.id, METRICS_FILE,
                             json.dumps({DETECTIONS: doc, "trainImages": 4}).encode(),
                             "application/json")
    registry.update_iteration(project.id, iteration.id, metrics=RECORDED)
    return project


def test_metrics_of_a_detector_name_the_overlap_and_the_map(tmp_path: Path,
                                                            evaluated: Project) -> None:
    out = invoke("metrics", evaluated.name, "--overlap", "0.3", "--out", str(tmp_path))
    assert "at threshold 0.5," in out and "overlap 0.3" in out and "overall (mAP)" in out
    assert "cat" in out and "dog" in out
    doc = rows_of("metrics", evaluated.id, "--out", str(tmp_path))
    assert doc["overlapThreshold"] == 0.5  # the default: the route's own
    assert [t["name"] for t in doc["perTagPerformance"]] == ["cat", "dog"]
    invoke("metrics", evaluated.name, "--overlap", "1.5", code=2)
    invoke("metrics", evaluated.name, "--overlap", "-0.1", code=2)


def test_metrics_ap_moves_with_the_overlap(tmp_path: Path, evaluated: Project) -> None:
    """At overlap 0.3 both boxes count (AP 100% each, mAP 100%); at 0.5 the cat's box is a miss
    (AP 0%, mAP 50%). Needs the performance route's ``overlapThreshold``."""
    loose = rows_of("metrics", evaluated.name, "--overlap", "0.3", "--out", str(tmp_path))
    strict = rows_of("metrics", evaluated.name, "--out", str(tmp_path))
    ap = {t["name"]: t["averagePrecision"] for t in loose["perTagPerformance"]}
    assert ap == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert loose["averagePrecision"] == pytest.approx(1.0)
    ap = {t["name"]: t["averagePrecision"] for t in strict["perTagPerformance"]}
    assert ap == pytest.approx({"cat": 0.0, "dog": 1.0})
    assert strict["averagePrecision"] == pytest.approx(0.5)
