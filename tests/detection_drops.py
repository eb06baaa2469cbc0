"""Helpers for detection drop-folder tests: write boxes as Pascal VOC, YOLO and COCO files, drop
blobs through the ingest library, and read back what the label store holds."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tests.drops import typed, upload
from visionpipe import names
from visionpipe.annotations import Region
from visionpipe.pipeline.ingest import IngestResult, ingest_training_blob
from visionpipe.settings import get_settings
from visionpipe.storage import Storage
from visionpipe.stores.label_store import LabelStore, Project

SIZE = 256  # the scenes' side: at the drop folder's minimum, so nothing is upscaled


def voc(regions: Sequence[Region], width: int = SIZE, height: int = SIZE,
        declared: tuple[int, int] | None = None) -> bytes:
    """A Pascal VOC file in pixels (two decimals, as some tools write them)."""
    w, h = declared or (width, height)
    objects = "".join(
        f"<object><name>{r.tag}</name><bndbox><xmin>{r.left * width:.2f}</xmin>"
        f"<ymin>{r.top * height:.2f}</ymin><xmax>{(r.left + r.width) * width:.2f}</xmax>"
        f"<ymax>{(r.top + r.height) * height:.2f}</ymax></bndbox></object>" for r in regions)
    return (f"<annotation><filename>ignored.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>").encode()


def yolo(regions: Sequence[Region], classes: Sequence[str]) -> bytes:
    return "".join(
        f"{classes.index(r.tag)} {r.left + r.width / 2:.6f} {r.top + r.height / 2:.6f} "
        f"{r.width:.6f} {r.height:.6f}\n" for r in regions).encode()


def coco(images: Sequence[tuple[str, Sequence[Region]]], classes: Sequence[str],
         size: int = SIZE) -> bytes:
    """A COCO file for ``(file_name, regions)`` images, boxes in pixels."""
    doc: dict[str, list[dict[str, object]]] = {
        "images": [], "annotations": [],
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    for n, (file_name, regions) in enumerate(images):
        doc["images"].append({"id": n + 1, "file_name": file_name, "width": size,
                              "height": size})
        for r in regions:
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "image_id": n + 1,
                "category_id": classes.index(r.tag) + 1, "iscrowd": 0,
                "bbox": [r.left * size, r.top * size, r.width * size, r.height * size]})
    return json.dumps(doc).encode()


def drop(storage: Storage, path: str, data: bytes, times: int = 1) -> list[IngestResult]:
    """Upload one training blob and run the ingest on its event ``times`` times."""
    event = typed(upload(storage, names.TRAINING_IMAGES, path, data), names.TRAINING_IMAGES)
    return [ingest_training_blob(event, storage, get_settings()) for _ in range(times)]


def boxes_of(label_store: LabelStore, project: Project, path: str
             ) -> list[tuple[str, float, float, float, float]] | None:
    """The (tag name, left, top, width, height) regions of the image stored from ``path``,
    sorted; None when no image record names that path."""
    names_ = {t.id: t.name for t in label_store.list_tags(project.id)}
    for record in label_store.list_images(project.id):
        if path in record.blob_paths:
            return sorted((names_[g.tag_id], *g.box) for g in record.regions)
    return None


def truth(regions: Sequence[Region]) -> list[tuple[str, float, float, float, float]]:
    return sorted((r.tag, r.left, r.top, r.width, r.height) for r in regions)


def close(found: list[tuple[str, float, float, float, float]] | None,
          expected: list[tuple[str, float, float, float, float]], tol: float = 1e-4) -> bool:
    """Same tags and boxes, each edge within ``tol`` (files round what they write)."""
    if found is None or len(found) != len(expected):
        return False
    return all(a[0] == b[0] and all(abs(x - y) <= tol for x, y in zip(a[1:], b[1:], strict=True))
               for a, b in zip(found, expected, strict=True))
