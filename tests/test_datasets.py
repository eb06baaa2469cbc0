"""Datasets on disk: ``visionpipe dataset export`` and ``visionpipe upload --format`` round trips
through the real local host, and the readers on hand-written files of each format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli_runner import invoke
from tests.model_factory import color_image
from visionpipe.client import datasets
from visionpipe.client.client import VisionpipeClient

pytestmark = pytest.mark.usefixtures("cli_env")


def contents(client: VisionpipeClient, project_id: str) -> dict[str, list[str]]:
    """sha256 of each image's bytes -> its sorted tag names, read back over HTTP."""
    out: dict[str, list[str]] = {}
    for image in client.list_images(project_id):
        digest = hashlib.sha256(client.image_bytes(project_id, image["id"])).hexdigest()
        out[digest] = sorted(t["tagName"] for t in image.get("tags") or [])
    return out


@pytest.fixture
def source(client: VisionpipeClient, project_name: str) -> dict[str, Any]:
    """A multilabel project: single-tagged, double-tagged (one a PNG) and untagged images."""
    project = client.create_project(project_name, multilabel=True)
    tag = {n: client.create_tag(project["id"], n)["id"] for n in ("red", "green", "sky & sea")}
    files = [(f"r{i}.jpg", color_image("red", seed=i), [tag["red"]]) for i in range(2)]
    files += [("g.jpg", color_image("green", seed=1), [tag["green"]])]
    files += [("b.png", color_image("blue", (300, 400), "PNG", seed=2), [tag["sky & sea"]])]
    files += [("rg.jpg", color_image("blue", seed=7), [tag["red"], tag["green"]])]
    files += [("u.jpg", color_image("green", seed=30), [])]
    assert {r["status"] for r in client.upload_files(project["id"], files)} == {"OK"}
    return project


@pytest.mark.parametrize("fmt", datasets.FORMATS)
def test_export_then_upload_round_trips(fmt: str, client: VisionpipeClient,
                                        source: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / fmt
    said = invoke("dataset", "export", source["name"], "--format", fmt, "--out", str(out))
    assert "wrote 6 images" in said
    target = f"{source['name']}-{fmt}"
    invoke("upload", str(out), "--project", target, "--format", fmt, "--multilabel")
    expected = contents(client, source["id"])
    if fmt == "folder":  # the format cannot hold an untagged image, and says so
        assert "1 untagged image(s) left out" in said
        expected = {h: t for h, t in expected.items() if t}
    assert contents(client, client.project(target)["id"]) == expected


def test_readers_take_boxes_as_tags(tmp_path: Path) -> None:
    """Hand-written files with real boxes: tags from the boxes, boxes kept for the report."""
    jpg = color_image("red", (400, 200))
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "images" / "a.jpg").write_bytes(jpg)
    (coco / "annotations.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 400, "height": 200}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [40, 20, 200, 100]}],
        "categories": [{"id": 3, "name": "apple"}]}))
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.jpg").write_bytes(jpg)
    (voc / "a.xml").write_text("<annotation><object><name>apple</name><bndbox><xmin>40</xmin>"
                               "<ymin>20</ymin><xmax>240</xmax><ymax>120</ymax></bndbox></object>"
                               "</annotation>")
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    (yolo / "images" / "a.jpg").write_bytes(jpg)
    (yolo / "labels" / "a.txt").write_text("0 0.35 0.35 0.5 0.5\n")
    (yolo / "classes.txt").write_text("apple\n")
    for folder, fmt in ((coco, "coco"), (voc, "voc"), (yolo, "yolo")):
        found = datasets.read(folder, fmt)
        assert not found.refused, (fmt, found.refused)
        (item,) = found.items
        assert item.tags == ["apple"] and item.data == jpg
        (box,) = item.regions
        assert (box.left, box.top, box.width, box.height) == pytest.approx((0.1, 0.1, 0.5, 0.5))


def test_csv_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    (tmp_path / "outside.jpg").write_bytes(color_image("red"))
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "in.jpg").write_bytes(color_image("green"))
    (folder / "labels.csv").write_text("path,tag\nin.jpg,green\n../outside.jpg,red\n"
                                       "/etc/passwd,red\nmissing.jpg,red\n")
    found = datasets.read(folder, "csv")
    assert [i.name for i in found.items] == ["in.jpg"]
    assert [why.split(": ")[1] for _, why in found.refused] == [
        "the path leaves the dataset folder", "the path leaves the dataset folder",
        "no such file"]


def test_upload_with_boxes_says_they_are_not_stored(client: VisionpipeClient, tmp_path: Path,
                                                    project_name: str) -> None:
    yolo = tmp_path / "yolo"
    yolo.mkdir()
    (yolo / "a.jpg").write_bytes(color_image("red", seed=3))
    (yolo / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n")
    (yolo / "classes.txt").write_text("apple\npear\n")
    out = invoke("upload", str(yolo), "--project", project_name, "--format", "yolo",
                 "--multilabel")
    assert "2 box(es) read" in out and "1 uploaded" in out
    assert list(contents(client, client.project(project_name)["id"]).values()) == [
        ["apple", "pear"]]
