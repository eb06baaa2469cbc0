"""Bounding-box annotations in the formats people keep them in, read into one normalized shape.

Object detection needs boxes next to the images. People bring them as Pascal VOC XML (one
``name.xml`` beside ``name.jpg``), YOLO text (one ``name.txt`` per image plus ``classes.txt`` or
``data.yaml`` for the class names) or one COCO JSON file for many images. Every parser here turns
its format into :class:`ImageAnnotation` holding :class:`Region` boxes the way Custom Vision keeps
them: ``left, top, width, height`` as fractions of the image, from the top-left corner.

These files come from anyone who can write to a drop folder, so every parser is hostile-input
safe: inputs are size-bounded before parsing, XML is read with ``defusedxml`` with DTDs refused
(a billion-laughs or external-entity file is refused, never expanded), YAML only with the safe
loader, JSON without NaN/Infinity, and every number is checked to be finite and inside the image
(a tiny overshoot at an edge is clipped, anything more is refused). A refusal raises
:class:`~visionpipe.rejections.Rejected` with one of the annotation codes of
:class:`~visionpipe.rejections.Reason` and a message that names the file part at fault.

Nothing here touches storage: :func:`classify_blob` and :func:`annotation_blobs_for_image` tell
the ingest which blob names belong together, so pairs can be resolved whichever half arrives
first; :func:`parse_image_annotation` and :func:`parse_class_names` are the one call per file.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import yaml
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _xml_fromstring

from visionpipe.boxes import NormalizedBox
from visionpipe.rejections import Reason, Rejected, Rejection

MAX_REGIONS_PER_IMAGE = 300  # Custom Vision's limit of regions on one training image
MAX_ANNOTATION_FILE_BYTES = 1024 * 1024  # one per-image file (VOC, YOLO) or a class-name file
# One COCO file for many images is parsed whole (json.loads): 16 MiB of JSON (~150k boxes)
# costs about 10x that in Python objects, which a Function instance can afford; bigger datasets
# are split into several COCO files.
MAX_COCO_FILE_BYTES = 16 * 1024 * 1024
MAX_TAG_LENGTH = 256  # as a tag folder name in the training drop folder
MAX_CLASSES = 10_000  # entries of classes.txt / data.yaml names / COCO categories
MAX_IMAGE_SIDE = 1_000_000  # a declared image width or height over this is nonsense
# Box edges may overshoot the image by this fraction of a side (or by one pixel for formats in
# pixels, whichever is more) from rounding in the exporting tool; the overshoot is clipped.
EDGE_TOLERANCE = 1e-3

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
CLASSES_TXT = "classes.txt"
DATA_YAML_NAMES = ("data.yaml", "data.yml")


#: The annotation codes of :class:`~visionpipe.rejections.Reason` (kept under this name for
#: readers of this module).
AnnotationReason = Reason


def _refuse(reason: Reason, message: str) -> Rejected:
    return Rejected(reason, message)


def _bad(message: str) -> Rejected:
    return _refuse(AnnotationReason.BAD_ANNOTATION, message)


def _out(message: str) -> Rejected:
    return _refuse(AnnotationReason.BOX_OUT_OF_BOUNDS, message)


@dataclass(frozen=True)
class Region(NormalizedBox):
    """One box: a tag name and its edges as fractions of the image, from the top-left."""

    tag: str
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class ImageAnnotation:
    """All boxes of one image (none is a valid answer: an image with no objects)."""

    image_name: str
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class CocoAnnotations:
    """What one COCO file says, per image ``file_name`` (as written in the file).

    ``images`` holds every declared image whose boxes were all good (including images with no
    boxes); ``rejected`` holds the images refused and why. A problem that belongs to no single
    image (bad JSON, an annotation for an undeclared image id) refuses the whole file instead.
    """

    images: Mapping[str, ImageAnnotation]
    rejected: Mapping[str, Rejection] = field(default_factory=dict)
    #: The ``(width, height)`` each image's pixel boxes were measured against: the true size
    #: where one was given, else the declared one (a reader can tell whether a parse made with
    #: declared sizes holds for an image of a known true size).
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)


# --- numbers, sizes and boxes ----------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NAN = {"nan", "+nan", "-nan"}
_INF = {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def _show(value: object) -> str:
    """A value for a message, cut short so hostile input cannot blow up logs. Containers are
    named, never printed: a YAML alias bomb's repr is billions of characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return "a huge integer"
    if value is not None and not isinstance(value, str | int | float):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number_text(text: str | None, what: str) -> float:
    """A decimal number written as text (XML, YOLO): no NaN, infinity, hex or underscores."""
    if text is None:
        raise _bad(f"{what} is missing")
    stripped = text.strip()
    if stripped.lower() in _NAN:
        raise _bad(f"{what} is not a number ({_show(stripped)})")
    if stripped.lower() in _INF:
        raise _out(f"{what} is infinite")
    if len(stripped) > 64 or not _NUMBER.fullmatch(stripped):
        raise _bad(f"{what} is not a number ({_show(stripped)})")
    return _finite(float(stripped), what)


def _number_json(value: Any, what: str) -> float:
    """A JSON number (bool is not one, though Python says it is an int)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{what} is not a number ({_show(value)})")
    if isinstance(value, float) and math.isnan(value):
        raise _bad(f"{what} is not a number")
    try:
        return _finite(float(value), what)
    except OverflowError:  # an int too big for a float
        raise _out(f"{what} is huge") from None


def _finite(value: float, what: str) -> float:
    if math.isnan(value):
        raise _bad(f"{what} is not a number")
    if math.isinf(value):
        raise _out(f"{what} is infinite or huge")
    return value


def _side(value: float, what: str) -> int:
    """A declared image width or height in pixels."""
    if value <= 0 or value > MAX_IMAGE_SIDE or value != int(value):
        raise _bad(f"{what} must be a whole number of pixels from 1 to {MAX_IMAGE_SIDE} "
                   f"(found {_show(value)})")
    return int(value)


def _check_image_size(size: tuple[int, int], what: str) -> tuple[int, int]:
    width, height = size
    return _side(width, f"{what} width"), _side(height, f"{what} height")


def _tag(name: Any, what: str) -> str:
    """A tag name as Custom Vision would accept it: text, not blank, no control characters."""
    if isinstance(name, bool) or not isinstance(name, str | int):
        raise _bad(f"{what} is not a name ({_show(name)})")
    text = str(name).strip()
    if not text:
        raise _bad(f"{what} is empty")
    if len(text) > MAX_TAG_LENGTH:
        raise _bad(f"{what} is over {MAX_TAG_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise _bad(f"{what} {_show(text)} has a control character")
    return text


def _region(tag: str, x0: float, y0: float, x1: float, y1: float, *, tol_x: float, tol_y: float,
            what: str) -> Region:
    """A box from its corners as fractions of the image: checked, edge overshoot clipped."""
    for value in (x0, y0, x1, y1):
        _finite(value, what)
    if x1 == x0 or y1 == y0:
        raise _bad(f"{what} has zero width or height")
    if x1 < x0 or y1 < y0:
        raise _bad(f"{what} is inverted (its right or bottom edge is before its left or top)")
    if x0 < -tol_x or y0 < -tol_y or x1 > 1 + tol_x or y1 > 1 + tol_y:
        raise _out(f"{what} reaches outside the image "
                   f"(left {x0:.4g}, top {y0:.4g}, right {x1:.4g}, bottom {y1:.4g} "
                   "as fractions of the image)")
    left, top = min(max(x0, 0.0), 1.0), min(max(y0, 0.0), 1.0)
    right, bottom = min(max(x1, 0.0), 1.0), min(max(y1, 0.0), 1.0)
    if right <= left or bottom <= top:
        raise _out(f"{what} lies outside the image")
    return Region(tag, left, top, right - left, bottom - top)


def _pixel_region(tag: str, x0: float, y0: float, x1: float, y1: float, size: tuple[int, int],
                  what: str) -> Region:
    width, height = size
    return _region(tag, x0 / width, y0 / height, x1 / width, y1 / height,
                   tol_x=max(EDGE_TOLERANCE, 1.0 / width),
                   tol_y=max(EDGE_TOLERANCE, 1.0 / height), what=what)


def _too_many(count: int, max_regions: int, image_name: str) -> Rejected:
    return _refuse(AnnotationReason.TOO_MANY_REGIONS,
                   f"{image_name!r} has {count} regions; at most {max_regions} per image")


def _check_bytes(data: bytes, max_bytes: int, what: str) -> None:
    if len(data) > max_bytes:
        raise _bad(f"the {what} is {len(data)} bytes; at most {max_bytes} are read")
    if not data.strip():
        raise _bad(f"the {what} is empty")


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad(f"the {what} is not UTF-8 text") from None


# --- Pascal VOC ------------------------------------------------------------------------------


def parse_voc(data: bytes, image_name: str, image_size: tuple[int, int] | None = None, *,
              max_bytes: int = MAX_ANNOTATION_FILE_BYTES,
              max_regions: int = MAX_REGIONS_PER_IMAGE) -> ImageAnnotation:
    """One Pascal VOC ``<annotation>`` file: ``<object><name>`` and ``<bndbox>`` in pixels.

    ``image_size`` is the true ``(width, height)`` of the image and is preferred over the file's
    ``<size>`` (often stale or zero); without it ``<size>`` is needed. ``<filename>`` is ignored:
    the pairing is by blob name. Any DTD (so any entity) is refused: VOC files never need one.
    """
    _check_bytes(data, max_bytes, "Pascal VOC file")
    try:
        root = _xml_fromstring(data, forbid_dtd=True)
    except DefusedXmlException:
        raise _bad("the Pascal VOC file declares a DTD or entities, which are refused") from None
    except (ParseError, ValueError, LookupError):
        raise _bad("the Pascal VOC file is not well-formed XML") from None
    if root.tag != "annotation":
        raise _bad(f"the Pascal VOC root element is {_show(root.tag)}, not 'annotation'")
    size = (_check_image_size(image_size, "the image") if image_size is not None
            else _voc_declared_size(root))
    objects = root.findall("object")
    if len(objects) > max_regions:
        raise _too_many(len(objects), max_regions, image_name)
    regions = tuple(_voc_region(obj, size, f"object {i + 1}") for i, obj in enumerate(objects))
    return ImageAnnotation(image_name, regions)


def _voc_declared_size(root: Element) -> tuple[int, int]:
    node = root.find("size")
    if node is None:
        raise _bad("the Pascal VOC file has no <size> and the image size was not given")
    width = _number_text(node.findtext("width"), "<size><width>")
    height = _number_text(node.findtext("height"), "<size><height>")
    return _side(width, "<size><width>"), _side(height, "<size><height>")


def _voc_region(obj: Element, size: tuple[int, int], what: str) -> Region:
    tag = _tag(obj.findtext("name"), f"{what} <name>")
    box = obj.find("bndbox")
    if box is None:
        raise _bad(f"{what} ({tag!r}) has no <bndbox>")
    x0, y0, x1, y1 = (_number_text(box.findtext(edge), f"{what} <{edge}>")
                      for edge in ("xmin", "ymin", "xmax", "ymax"))
    return _pixel_region(tag, x0, y0, x1, y1, size, f"{what} ({tag!r})")


# --- YOLO ------------------------------------------------------------------------------------


def parse_yolo(data: bytes, image_name: str, class_names: Sequence[str], *,
               max_bytes: int = MAX_ANNOTATION_FILE_BYTES,
               max_regions: int = MAX_REGIONS_PER_IMAGE) -> ImageAnnotation:
    """One YOLO label file: a line ``class cx cy w h`` per box, all fractions of the image.

    ``class_names`` comes from :func:`parse_yolo_classes` or :func:`parse_yolo_data_yaml`. Lines
    with other field counts (YOLO segmentation polygons, confidences) are refused, not guessed.
    An empty file is a valid image with no objects.
    """
    if len(data) > max_bytes:
        raise _bad(f"the YOLO label file is {len(data)} bytes; at most {max_bytes} are read")
    text = _text(data, "YOLO label file")
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > max_regions:
        raise _too_many(len(lines), max_regions, image_name)
    regions = tuple(_yolo_region(fields, n, class_names) for n, fields in lines)
    return ImageAnnotation(image_name, regions)


def _yolo_region(fields: list[str], line: int, class_names: Sequence[str]) -> Region:
    what = f"line {line}"
    if len(fields) != 5:
        raise _bad(f"{what} has {len(fields)} fields; a YOLO box is 'class cx cy width height'")
    index_text = fields[0]
    if not index_text.isascii() or not index_text.isdigit() or len(index_text) > 9:
        raise _bad(f"{what}: the class {_show(index_text)} is not a class index")
    index = int(index_text)
    if index >= len(class_names):
        raise _bad(f"{what}: unknown class index {index} ({len(class_names)} class names known)")
    tag = class_names[index]
    cx, cy, w, h = (_number_text(f, f"{what} {name}")
                    for f, name in zip(fields[1:], ("cx", "cy", "width", "height"), strict=True))
    if w <= 0 or h <= 0:
        raise _bad(f"{what} ({tag!r}) has a zero or negative width or height")
    return _region(tag, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2,
                   tol_x=EDGE_TOLERANCE, tol_y=EDGE_TOLERANCE, what=f"{what} ({tag!r})")


def parse_yolo_classes(data: bytes, *, max_bytes: int = MAX_ANNOTATION_FILE_BYTES
                       ) -> tuple[str, ...]:
    """``classes.txt``: one class name per line, line ``i`` naming class index ``i``.

    Trailing blank lines are dropped; a blank line in the middle would shift every later index,
    so it is refused rather than guessed at.
    """
    _check_bytes(data, max_bytes, "classes.txt file")
    lines = _text(data, "classes.txt file").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > MAX_CLASSES:
        raise _bad(f"classes.txt names {len(lines)} classes; at most {MAX_CLASSES}")
    return tuple(_tag(line, f"classes.txt line {n}") for n, line in enumerate(lines, 1))


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yolo_data_yaml(data: bytes, *, max_bytes: int = MAX_ANNOTATION_FILE_BYTES
                         ) -> tuple[str, ...]:
    """The ``names`` of an Ultralytics ``data.yaml``: a list, or a dict ``{index: name}``.

    Read with YAML's safe loader only (no Python objects); aliases are shared, not copied, and
    only the top level of ``names`` is walked, so an alias bomb costs nothing. ``nc``, when
    present, must agree.
    """
    _check_bytes(data, max_bytes, "data.yaml file")
    text = _text(data, "data.yaml file")
    try:
        doc = yaml.load(text, Loader=_YAML_LOADER)  # a safe loader (CSafeLoader/SafeLoader)
    except (yaml.YAMLError, RecursionError, ValueError):
        raise _bad("the data.yaml file is not valid YAML (or uses non-safe tags)") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise _bad("the data.yaml file has no 'names' key")
    raw = doc["names"]
    if isinstance(raw, list):
        entries = raw
    elif isinstance(raw, dict):
        keys = list(raw)
        if any(isinstance(k, bool) or not isinstance(k, int) for k in keys) or \
                sorted(keys) != list(range(len(keys))):
            raise _bad("data.yaml 'names' as a mapping must have the keys 0, 1, ... n-1")
        entries = [raw[i] for i in range(len(keys))]
    else:
        raise _bad("data.yaml 'names' must be a list or a mapping of index to name")
    if len(entries) > MAX_CLASSES:
        raise _bad(f"data.yaml names {len(entries)} classes; at most {MAX_CLASSES}")
    names = tuple(_tag(entry, f"data.yaml names[{i}]") for i, entry in enumerate(entries))
    nc = doc.get("nc")
    if nc is not None and (isinstance(nc, bool) or nc != len(names)):
        raise _bad(f"data.yaml says nc: {_show(nc)} but names {len(names)} classes")
    return names


# --- COCO ------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> float:
    raise _bad(f"the COCO file contains {name}, which is not a number")


def parse_coco(data: bytes, *, image_sizes: Mapping[str, tuple[int, int]] | None = None,
               max_bytes: int = MAX_COCO_FILE_BYTES,
               max_regions: int = MAX_REGIONS_PER_IMAGE) -> CocoAnnotations:
    """One COCO detection file: ``images``, ``annotations`` (``bbox`` = x, y, w, h in pixels)
    and ``categories`` (their ``name`` is the tag).

    Bounded to ``max_bytes`` and parsed whole. ``image_sizes`` (true sizes by ``file_name``)
    is preferred over the declared ``width``/``height``. Crowd annotations (``iscrowd: 1``) mark
    regions to ignore in COCO and are skipped. An annotation whose ``image_id`` is not declared
    refuses the whole file with ``unknown_image``; a bad box refuses only its image.
    """
    _check_bytes(data, max_bytes, "COCO file")
    text = _text(data, "COCO file")
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except Rejected:
        raise
    except (ValueError, RecursionError):
        raise _bad("the COCO file is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise _bad("the COCO file has no 'images' list")
    annotations = doc.get("annotations", [])
    categories = doc.get("categories", [])
    if not isinstance(annotations, list) or not isinstance(categories, list):
        raise _bad("the COCO 'annotations' and 'categories' must be lists")
    tags = _coco_categories(categories)
    images = _coco_images(doc["images"], image_sizes or {})

    boxes: dict[Any, list[Region]] = {key: [] for key in images}
    counts: Counter[Any] = Counter()  # non-crowd annotations per image, for the message
    over_limit: list[Any] = []
    rejected: dict[str, Rejection] = {}
    for n, ann in enumerate(annotations):
        what = f"annotation {n}"
        if not isinstance(ann, dict):
            raise _bad(f"{what} is not an object")
        image_key = _coco_id(ann.get("image_id"), f"{what} image_id")
        if image_key not in images:
            raise _refuse(AnnotationReason.UNKNOWN_IMAGE,
                          f"{what} refers to image_id {_show(ann.get('image_id'))}, which the "
                          "file's 'images' list does not declare")
        if ann.get("iscrowd") in (1, True):
            continue
        counts[image_key] += 1
        file_name, size = images[image_key]
        if file_name in rejected:
            continue
        if counts[image_key] > max_regions:
            over_limit.append(image_key)
            rejected[file_name] = _too_many(counts[image_key], max_regions, file_name).rejection
            continue
        try:
            boxes[image_key].append(_coco_region(ann, tags, size, what))
        except Rejected as e:
            rejected[file_name] = e.rejection
    for key in over_limit:  # the message gives the image's full count, known only now
        file_name = images[key][0]
        rejected[file_name] = _too_many(counts[key], max_regions, file_name).rejection
    good = {name: ImageAnnotation(name, tuple(boxes[key]))
            for key, (name, _) in images.items() if name not in rejected}
    return CocoAnnotations(good, rejected, {name: size for name, size in images.values()})


def _coco_id(value: Any, what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _bad(f"{what} must be an integer or a string (found {_show(value)})")
    return value


def _coco_categories(categories: list[Any]) -> dict[Any, str]:
    if len(categories) > MAX_CLASSES:
        raise _bad(f"the COCO file has {len(categories)} categories; at most {MAX_CLASSES}")
    tags: dict[Any, str] = {}
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict):
            raise _bad(f"category {n} is not an object")
        key = _coco_id(cat.get("id"), f"category {n} id")
        if key in tags:
            raise _bad(f"category id {_show(key)} is declared twice")
        tags[key] = _tag(cat.get("name"), f"category {n} name")
    return tags


def _coco_images(entries: list[Any], true_sizes: Mapping[str, tuple[int, int]]
                 ) -> dict[Any, tuple[str, tuple[int, int]]]:
    images: dict[Any, tuple[str, tuple[int, int]]] = {}
    names: set[str] = set()
    for n, img in enumerate(entries):
        what = f"image {n}"
        if not isinstance(img, dict):
            raise _bad(f"{what} is not an object")
        key = _coco_id(img.get("id"), f"{what} id")
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not _safe_relative_name(file_name):
            raise _bad(f"{what} file_name {_show(file_name)} is not a safe relative file name")
        if key in images or file_name in names:
            raise _bad(f"{what}: id {_show(key)} or file_name {file_name!r} is declared twice")
        if file_name in true_sizes:
            size = _check_image_size(true_sizes[file_name], f"{file_name!r}")
        else:
            size = (_side(_number_json(img.get("width"), f"{what} width"), f"{what} width"),
                    _side(_number_json(img.get("height"), f"{what} height"), f"{what} height"))
        images[key] = (file_name, size)
        names.add(file_name)
    return images


def _coco_region(ann: dict[str, Any], tags: Mapping[Any, str], size: tuple[int, int],
                 what: str) -> Region:
    category = ann.get("category_id")
    if isinstance(category, bool) or not isinstance(category, int | str) or category not in tags:
        raise _bad(f"{what}: unknown category_id {_show(category)}")
    tag = tags[category]
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise _bad(f"{what} ({tag!r}): bbox must be [x, y, width, height]")
    x, y, w, h = (_number_json(v, f"{what} ({tag!r}) bbox") for v in bbox)
    if w <= 0 or h <= 0:
        raise _bad(f"{what} ({tag!r}) has a zero or negative width or height")
    return _pixel_region(tag, x, y, x + w, y + h, size, f"{what} ({tag!r})")


def _safe_relative_name(name: str) -> bool:
    """A file name that resolves inside the COCO file's folder (as the drop folder's rules)."""
    if not name or len(name) > 1024 or name.startswith("/") or "\\" in name:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


# --- which blob is what, and what pairs with what --------------------------------------------


class AnnotationKind(StrEnum):
    PASCAL_VOC = "pascal_voc"  # name.xml, one image
    YOLO = "yolo"  # name.txt, one image
    YOLO_CLASSES = "yolo_classes"  # classes.txt, the class names of its folder
    YOLO_DATA_YAML = "yolo_data_yaml"  # data.yaml / data.yml, the class names of its folder
    COCO = "coco"  # *.json, many images of its folder

    @property
    def per_image(self) -> bool:
        return self in (AnnotationKind.PASCAL_VOC, AnnotationKind.YOLO)


@dataclass(frozen=True)
class AnnotationBlob:
    """What a blob name says about an annotation file.

    ``images`` lists, for a per-image file, the blob names of the image it may annotate (same
    folder and stem, each image extension in lower and upper case): normally exactly one of
    them exists. Folder-wide files (class names, COCO) have none: they apply to ``folder``.
    """

    kind: AnnotationKind
    path: str
    folder: str  # "" for the container's root
    images: tuple[str, ...] = ()


def _split(path: str) -> tuple[str, str, str]:
    folder, name = posixpath.split(path)
    stem, ext = posixpath.splitext(name)
    return folder, stem, ext.lower()


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def is_image_blob(path: str) -> bool:
    """A blob name with one of the image extensions (any case) that boxes can pair with."""
    return _split(path)[2] in IMAGE_EXTENSIONS


def classify_blob(path: str) -> AnnotationBlob | None:
    """Whether ``path`` is an annotation file, of which kind, and what it pairs with.

    ``None``: not an annotation file (an image, or anything else). ``classes.txt`` is always the
    class-name file, never the YOLO labels of an image named ``classes.*``.
    """
    folder, stem, ext = _split(path)
    name = posixpath.basename(path).lower()
    if not stem or not ext:
        return None
    if name == CLASSES_TXT:
        return AnnotationBlob(AnnotationKind.YOLO_CLASSES, path, folder)
    if name in DATA_YAML_NAMES:
        return AnnotationBlob(AnnotationKind.YOLO_DATA_YAML, path, folder)
    if ext == ".json":
        return AnnotationBlob(AnnotationKind.COCO, path, folder)
    kind = {".xml": AnnotationKind.PASCAL_VOC, ".txt": AnnotationKind.YOLO}.get(ext)
    if kind is None:
        return None
    images = tuple(_join(folder, stem + e) for e in IMAGE_EXTENSIONS) + \
        tuple(_join(folder, stem + e.upper()) for e in IMAGE_EXTENSIONS)
    return AnnotationBlob(kind, path, folder, images)


def annotation_blobs_for_image(image_path: str) -> tuple[str, ...]:
    """The per-image annotation files that would annotate this image, in the order to try:
    ``name.xml`` then ``name.txt`` (each in lower and upper case). Folder-wide files are found
    with :func:`folder_annotation_blobs`."""
    folder, stem, _ = _split(image_path)
    names = [stem + ".xml", stem + ".XML", stem + ".txt", stem + ".TXT"]
    return tuple(_join(folder, n) for n in names if n.lower() != CLASSES_TXT)


def class_name_blobs(folder: str) -> tuple[str, ...]:
    """Where a YOLO label file's class names may be, in the order to try."""
    return tuple(_join(folder, n) for n in (CLASSES_TXT, *DATA_YAML_NAMES))


# --- one call per file, for the ingest -------------------------------------------------------


def parse_class_names(blob: AnnotationBlob, data: bytes) -> tuple[str, ...]:
    """The class names in a ``classes.txt`` or ``data.yaml`` blob."""
    if blob.kind is AnnotationKind.YOLO_CLASSES:
        return parse_yolo_classes(data)
    if blob.kind is AnnotationKind.YOLO_DATA_YAML:
        return parse_yolo_data_yaml(data)
    raise ValueError(f"{blob.kind} is not a class-name file")


def parse_image_annotation(blob: AnnotationBlob, data: bytes, *, image_name: str,
                           image_size: tuple[int, int] | None,
                           class_names: Sequence[str] | None = None) -> ImageAnnotation:
    """The boxes of a per-image annotation blob, for the image ``image_name`` of the true
    ``image_size`` ``(width, height)``. YOLO needs ``class_names``."""
    if blob.kind is AnnotationKind.PASCAL_VOC:
        return parse_voc(data, image_name, image_size)
    if blob.kind is AnnotationKind.YOLO:
        if class_names is None:
            raise _bad(f"{blob.path!r}: YOLO labels need a classes.txt or data.yaml beside them")
        return parse_yolo(data, image_name, class_names)
    raise ValueError(f"{blob.kind} is not a per-image annotation file")
