"""Labelled datasets on disk in the formats people already keep, read and written.

Five formats, one in-memory shape (:class:`Item`: a file name, its bytes, its tags and its boxes):

``folder``  ``DIR/TAG/IMAGE``; an image with two tags sits in both folders (same bytes, so one
            image on upload). Untagged images cannot be said in this format: left out on export.
``csv``     ``DIR/labels.csv`` with rows ``path,tag[,tag...]`` (paths relative to the CSV; a row
            with no tag is an untagged image) and the images under ``DIR/images/``.
``coco``    ``DIR/annotations.json`` (COCO detection: ``images``, ``annotations`` with ``bbox`` in
            pixels, ``categories``) and ``DIR/images/``.
``voc``     Pascal VOC: ``DIR/NAME.xml`` beside ``DIR/NAME.jpg``.
``yolo``    ``DIR/images/NAME.jpg``, ``DIR/labels/NAME.txt`` (``class cx cy w h``, fractions) and
            ``DIR/classes.txt``.

The three detection formats have no image-level label. On export a classification image's tag
is written as a box covering the whole image (the convention several labelling tools use for
image-level labels), and boxes the API returns (``regions``) are written as they are. On import
the boxes are kept in :attr:`Item.regions`: an object detection project receives them as
regions, a classification project the tags of the boxes (:attr:`Item.tags`).

The parsing is :mod:`visionpipe.annotations` (the drop folder's hostile-input-safe parsers); this
module only walks folders and writes files. Nothing here speaks HTTP: the CLI moves the items.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import escape

from visionpipe.annotations import (
    CLASSES_TXT,
    DATA_YAML_NAMES,
    IMAGE_EXTENSIONS,
    ImageAnnotation,
    Region,
    parse_coco,
    parse_voc,
    parse_yolo,
    parse_yolo_classes,
    parse_yolo_data_yaml,
)
from visionpipe.rejections import Rejected

FORMATS = ("folder", "csv", "coco", "voc", "yolo")
#: the formats that hold boxes (an object detection project takes only these)
BOX_FORMATS = ("coco", "voc", "yolo")
CSV_NAME = "labels.csv"
COCO_NAME = "annotations.json"
IMAGES = "images"
LABELS = "labels"
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


@dataclass
class Item:
    """One image of a dataset: ``name`` is its path inside the dataset (POSIX)."""

    name: str
    data: bytes
    tags: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) when known


@dataclass
class Dataset:
    """What a folder held: the items, and the files refused with the reason."""

    items: list[Item] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; one of {', '.join(FORMATS)}")
    return fmt


def detect_format(folder: Path) -> str:
    """The format a dataset folder is in, from the files that only that format has (so
    ``upload`` needs no ``--format`` for a folder as a labelling tool wrote it).

    In order: a COCO file (``annotations.json``, or one ``*.json`` at the top), YOLO class
    names (``classes.txt`` / ``data.yaml``), a CSV of labels, a Pascal VOC ``.xml`` beside an
    image (or in ``Annotations/``); otherwise one sub-folder per tag. Two candidates at once
    (say a COCO file and YOLO classes) is ambiguous: refused, so ``--format`` must choose.
    """
    top = [p for p in folder.iterdir() if not p.name.startswith(".")]
    files = {p.name.lower(): p for p in top if p.is_file()}
    found = []
    if COCO_NAME in files or len([n for n in files if n.endswith(".json")]) == 1:
        found.append("coco")
    if CLASSES_TXT in files or any(n in files for n in DATA_YAML_NAMES):
        found.append("yolo")
    if CSV_NAME in files or len([n for n in files if n.endswith(".csv")]) == 1:
        found.append("csv")
    if not found and any(p.with_suffix(".xml").is_file()
                         or (p.parent.parent / "Annotations" / (p.stem + ".xml")).is_file()
                         for p in _images(folder)):
        found.append("voc")
    if len(found) > 1:
        raise ValueError(f"{folder} looks like {' and '.join(found)} at once: say which with "
                         "--format")
    return found[0] if found else "folder"


def extension(data: bytes) -> str:
    """The file extension the bytes call for (the API validates formats; this only names)."""
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"GIF8"):
        return ".gif"
    if data.startswith(b"BM"):
        return ".bmp"
    return ".img"


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header only (no full decode), None when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _rel(folder: Path, path: Path) -> str:
    return path.relative_to(folder).as_posix()


def _tags_of(regions: Iterable[Region]) -> list[str]:
    return list(dict.fromkeys(r.tag for r in regions))


# --- reading ------------------------------------------------------------------------------------
def read(folder: Path, fmt: str) -> Dataset:
    """The dataset in ``folder``; files that cannot be read are refused, not raised."""
    reader = {"folder": _read_folder, "csv": _read_csv, "coco": _read_coco, "voc": _read_voc,
              "yolo": _read_yolo}[check_format(fmt)]
    return reader(folder)


def _read_folder(folder: Path) -> Dataset:
    out = Dataset()
    for path in _images(folder):
        rel = path.relative_to(folder)
        if len(rel.parts) != 2:
            out.refused.append((rel.as_posix(), "not in a tag folder (DIR/TAG/FILE)"))
            continue
        out.items.append(Item(rel.as_posix(), path.read_bytes(), [rel.parts[0]]))
    return out


def _inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` when ``name`` is a relative path that stays inside ``folder``."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return None
    return folder.joinpath(*pure.parts)


def _read_csv(folder: Path) -> Dataset:
    out = Dataset()
    found = [folder / CSV_NAME] if (folder / CSV_NAME).is_file() else sorted(folder.glob("*.csv"))
    if len(found) != 1:
        raise ValueError(f"{folder} needs one {CSV_NAME} (path,tag[,tag...]) for --format csv")
    with found[0].open(newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.reader(f), 1):
            cells = [c.strip() for c in row]
            if not cells or not cells[0] or (n == 1 and cells[0].lower() in ("path", "file")):
                continue
            path = _inside(found[0].parent, cells[0])
            if path is None:
                out.refused.append((cells[0], f"row {n}: the path leaves the dataset folder"))
            elif not path.is_file():
                out.refused.append((cells[0], f"row {n}: no such file"))
            else:
                tags = list(dict.fromkeys(t for t in cells[1:] if t))
                out.items.append(Item(_rel(found[0].parent, path), path.read_bytes(), tags))
    return out


def _boxes_item(rel: str, data: bytes, annotation: ImageAnnotation) -> Item:
    regions = list(annotation.regions)
    return Item(rel, data, _tags_of(regions), regions)


def _read_coco(folder: Path) -> Dataset:
    out = Dataset()
    found = [folder / COCO_NAME] if (folder / COCO_NAME).is_file() else sorted(
        folder.glob("*.json"))
    if len(found) != 1:
        raise ValueError(f"{folder} needs one COCO {COCO_NAME} for --format coco")
    base = found[0].parent
    try:
        coco = parse_coco(found[0].read_bytes())
    except Rejected as e:
        raise ValueError(f"{found[0].name}: {e.rejection.message}") from None
    for name, why in coco.rejected.items():
        out.refused.append((name, why.message))
    for name, annotation in coco.images.items():
        path = next((p for p in (_inside(base, name), _inside(base / IMAGES, name)) if p
                     and p.is_file()), None)
        if path is None:
            out.refused.append((name, "declared in the COCO file but not found"))
            continue
        out.items.append(_boxes_item(_rel(base, path), path.read_bytes(), annotation))
    return out


def _read_voc(folder: Path) -> Dataset:
    out = Dataset()
    for path in _images(folder):
        rel = _rel(folder, path)
        xml = next((p for p in (path.with_suffix(".xml"),
                                path.parent.parent / "Annotations" / (path.stem + ".xml"))
                    if p.is_file()), None)
        data = path.read_bytes()
        if xml is None:
            out.items.append(Item(rel, data))  # no annotation file: an image with no objects
            continue
        try:
            annotation = parse_voc(xml.read_bytes(), rel, image_size(data))
        except Rejected as e:
            out.refused.append((rel, e.rejection.message))
            continue
        out.items.append(_boxes_item(rel, data, annotation))
    return out


def _yolo_names(folder: Path) -> tuple[str, ...]:
    for name in (CLASSES_TXT, *DATA_YAML_NAMES):
        path = folder / name
        if path.is_file():
            try:
                data = path.read_bytes()
                return (parse_yolo_classes(data) if name == CLASSES_TXT
                        else parse_yolo_data_yaml(data))
            except Rejected as e:
                raise ValueError(f"{name}: {e.rejection.message}") from None
    raise ValueError(f"{folder} needs {CLASSES_TXT} or data.yaml for --format yolo")


def _yolo_label(folder: Path, image: Path) -> Path | None:
    beside = image.with_suffix(".txt")
    rel = image.relative_to(folder).parts
    swapped = (folder.joinpath(*(LABELS if p == IMAGES else p for p in rel)).with_suffix(".txt")
               if IMAGES in rel else None)
    return next((p for p in (beside, swapped) if p is not None and p.is_file()), None)


def _read_yolo(folder: Path) -> Dataset:
    out = Dataset()
    names = _yolo_names(folder)
    for path in _images(folder):
        rel = _rel(folder, path)
        label = _yolo_label(folder, path)
        data = path.read_bytes()
        if label is None:
            out.items.append(Item(rel, data))
            continue
        try:
            annotation = parse_yolo(label.read_bytes(), rel, names)
        except Rejected as e:
            out.refused.append((rel, e.rejection.message))
            continue
        out.items.append(_boxes_item(rel, data, annotation))
    return out


# --- writing ------------------------------------------------------------------------------------
def boxes(item: Item) -> list[Region]:
    """The item's regions, or one whole-image box per tag (a classification label)."""
    if item.regions:
        return list(item.regions)
    return [Region(tag, *WHOLE_IMAGE) for tag in item.tags]


def write(items: Sequence[Item], folder: Path, fmt: str) -> list[str]:
    """Write ``items`` (their ``name`` is a bare file name) as ``fmt``; notes for the user."""
    writer = {"folder": _write_folder, "csv": _write_csv, "coco": _write_coco,
              "voc": _write_voc, "yolo": _write_yolo}[check_format(fmt)]
    folder.mkdir(parents=True, exist_ok=True)
    return writer(items, folder)


def _tag_folder(tag: str) -> str:
    if tag in ("", ".", "..") or "/" in tag or "\\" in tag:
        raise ValueError(f"the tag {tag!r} cannot name a folder")
    return tag


def _write_folder(items: Sequence[Item], folder: Path) -> list[str]:
    untagged = 0
    for item in items:
        if not item.tags:
            untagged += 1
        for tag in item.tags:
            target = folder / _tag_folder(tag) / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.data)
    if untagged:
        return [f"{untagged} untagged image(s) left out: folder-per-tag cannot hold an image "
                "without a tag (use --format csv)"]
    return []


def _write_images(items: Sequence[Item], folder: Path) -> None:
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    for item in items:
        (folder / IMAGES / item.name).write_bytes(item.data)


def _write_csv(items: Sequence[Item], folder: Path) -> list[str]:
    _write_images(items, folder)
    with (folder / CSV_NAME).open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        for item in items:
            out.writerow([f"{IMAGES}/{item.name}", *item.tags])
    return []


def _size(item: Item) -> tuple[int, int]:
    size = item.size or image_size(item.data)
    if size is None:
        raise ValueError(f"{item.name}: cannot read the image size")
    return size


def _classes(items: Sequence[Item]) -> list[str]:
    return sorted({r.tag for item in items for r in boxes(item)})


def _write_coco(items: Sequence[Item], folder: Path) -> list[str]:
    _write_images(items, folder)
    classes = _classes(items)
    category = {name: n for n, name in enumerate(classes, 1)}
    images, annotations = [], []
    for image_id, item in enumerate(items, 1):
        width, height = _size(item)
        images.append({"id": image_id, "file_name": item.name, "width": width, "height": height})
        for r in boxes(item):
            w, h = r.width * width, r.height * height
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category[r.tag], "iscrowd": 0, "area": w * h,
                                "bbox": [r.left * width, r.top * height, w, h]})
    doc = {"info": {"description": "exported by visionpipe"}, "images": images,
           "annotations": annotations,
           "categories": [{"id": n, "name": name, "supercategory": ""}
                          for name, n in category.items()]}
    (folder / COCO_NAME).write_text(json.dumps(doc, indent=1))
    return []


def _write_voc(items: Sequence[Item], folder: Path) -> list[str]:
    for item in items:
        width, height = _size(item)
        (folder / item.name).write_bytes(item.data)
        objects = "".join(
            f"<object><name>{escape(r.tag)}</name><pose>Unspecified</pose><truncated>0"
            f"</truncated><difficult>0</difficult><bndbox><xmin>{r.left * width:g}</xmin>"
            f"<ymin>{r.top * height:g}</ymin><xmax>{(r.left + r.width) * width:g}</xmax>"
            f"<ymax>{(r.top + r.height) * height:g}</ymax></bndbox></object>"
            for r in boxes(item))
        xml = (f"<annotation><folder>{escape(folder.name)}</folder><filename>"
               f"{escape(item.name)}</filename><size><width>{width}</width><height>{height}"
               f"</height><depth>3</depth></size>{objects}</annotation>\n")
        (folder / Path(item.name).with_suffix(".xml").name).write_text(xml, encoding="utf-8")
    return []


def _write_yolo(items: Sequence[Item], folder: Path) -> list[str]:
    _write_images(items, folder)
    classes = _classes(items)
    index = {name: n for n, name in enumerate(classes)}
    (folder / CLASSES_TXT).write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    (folder / LABELS).mkdir(parents=True, exist_ok=True)
    for item in items:
        lines = [f"{index[r.tag]} {r.left + r.width / 2:.6f} {r.top + r.height / 2:.6f} "
                 f"{r.width:.6f} {r.height:.6f}\n" for r in boxes(item)]
        (folder / LABELS / Path(item.name).with_suffix(".txt").name).write_text(
            "".join(lines), encoding="utf-8")
    return []
