"""visionpipe.annotations: each format good and bad, and the hostile files a drop folder gets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from visionpipe.annotations import (
    MAX_ANNOTATION_FILE_BYTES,
    MAX_COCO_FILE_BYTES,
    AnnotationKind,
    ImageAnnotation,
    Region,
    annotation_blobs_for_image,
    class_name_blobs,
    classify_blob,
    is_image_blob,
    parse_class_names,
    parse_coco,
    parse_image_annotation,
    parse_voc,
    parse_yolo,
    parse_yolo_classes,
    parse_yolo_data_yaml,
)
from visionpipe.rejections import Rejected

BAD, OUT, UNKNOWN, TOO_MANY = ("bad_annotation", "box_out_of_bounds", "unknown_image",
                               "too_many_regions")


def refused(reason: str, parse: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """Assert ``parse`` refuses with ``reason``; return the message for further checks."""
    with pytest.raises(Rejected) as caught:
        parse(*args, **kwargs)
    rejection = caught.value.rejection
    assert rejection.reason == reason, rejection
    assert rejection.to_dict()["reason"] == reason
    assert 0 < len(rejection.message) < 400
    return rejection.message


# --- Pascal VOC ------------------------------------------------------------------------------


def voc(objects: str, size: str = "<size><width>200</width><height>100</height>"
        "<depth>3</depth></size>", prolog: str = "") -> bytes:
    return (f"{prolog}<annotation><folder>x</folder><filename>stale.jpg</filename>{size}"
            f"{objects}</annotation>").encode()


def obj(name: str, xmin: str, ymin: str, xmax: str, ymax: str) -> str:
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def test_voc_good() -> None:
    ann = parse_voc(voc(obj("dog", "20", "10", "120", "60") + obj(" cat ", "0", "0", "200", "100")),
                    "a.jpg")
    assert ann == ImageAnnotation("a.jpg", (Region("dog", 0.1, 0.1, 0.5, 0.5),
                                            Region("cat", 0.0, 0.0, 1.0, 1.0)))
    assert ann.regions[0].bounding_box() == {"left": 0.1, "top": 0.1, "width": 0.5, "height": 0.5}
    assert parse_voc(voc(""), "empty.jpg").regions == ()


def test_voc_prefers_the_true_image_size() -> None:
    stale = voc(obj("dog", "20", "10", "120", "60"), size="<size><width>0</width>"
                "<height>0</height></size>")
    assert parse_voc(stale, "a.jpg", (400, 200)).regions == (Region("dog", 0.05, 0.05, 0.25, 0.25),)
    assert "size" in refused(BAD, parse_voc, stale, "a.jpg")  # 0 x 0 and no true size
    assert "size" in refused(BAD, parse_voc, voc(obj("d", "1", "1", "2", "2"), size=""), "a.jpg")
    refused(BAD, parse_voc, voc(""), "a.jpg", (0, 10))


def test_voc_clips_a_one_pixel_overshoot_and_refuses_more() -> None:
    ann = parse_voc(voc(obj("dog", "-1", "0", "201", "101")), "a.jpg")
    assert ann.regions == (Region("dog", 0.0, 0.0, 1.0, 1.0),)
    assert "outside" in refused(OUT, parse_voc, voc(obj("dog", "0", "0", "203", "50")), "a.jpg")


def test_voc_with_declared_latin1_encoding() -> None:
    data = voc(obj("café", "0", "0", "10", "10")).decode().encode("latin-1")
    data = b'<?xml version="1.0" encoding="ISO-8859-1"?>' + data
    assert parse_voc(data, "a.jpg").regions[0].tag == "café"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><size><width>10</width><height>10</height></size>
<object><name>&lol9;</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>5</xmax><ymax>5</ymax>
</bndbox></object></annotation>"""


def test_hostile_voc_billion_laughs_is_refused_not_expanded() -> None:
    started = time.monotonic()
    assert "DTD" in refused(BAD, parse_voc, BILLION_LAUGHS, "a.jpg")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file://{path}">]>',
    '<!DOCTYPE annotation [<!ENTITY % p SYSTEM "file://{path}"> %p;]>',
    '<!DOCTYPE annotation SYSTEM "file://{path}">',
], ids=["external-entity", "parameter-entity", "external-dtd"])
def test_hostile_voc_xxe_never_reads_the_local_file(tmp_path: Path, doctype: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-TOKEN")
    data = voc(obj("&xxe;" if "xxe" in doctype else "dog", "0", "0", "5", "5"),
               prolog=doctype.format(path=secret))
    message = refused(BAD, parse_voc, data, "a.jpg")
    assert "TOP-SECRET" not in message and str(tmp_path) not in message


@pytest.mark.parametrize("edges,reason", [
    (("nan", "0", "10", "10"), BAD),
    (("NaN", "0", "10", "10"), BAD),
    (("0", "0", "inf", "10"), OUT),
    (("0", "0", "1e999", "10"), OUT),  # parses to infinity
    (("0", "0", "1e308", "10"), OUT),  # huge but finite
    (("-50", "0", "10", "10"), OUT),  # negative
    (("0", "-0.5e3", "10", "10"), OUT),
    (("0", "0", "10", "500"), OUT),  # past the bottom
    (("300", "0", "301", "10"), OUT),  # wholly outside
    (("50", "0", "10", "10"), BAD),  # inverted
    (("10", "10", "10", "20"), BAD),  # zero width
    (("0x10", "0", "20", "10"), BAD),  # hex is not a decimal
    (("1_0", "0", "20", "10"), BAD),  # float() would take it
    (("abc", "0", "20", "10"), BAD),
    (("", "0", "20", "10"), BAD),
    (("1" * 5000, "0", "20", "10"), BAD),  # over-long number text
], ids=lambda v: str(v)[:30])
def test_hostile_voc_bad_boxes(edges: tuple[str, str, str, str], reason: str) -> None:
    refused(reason, parse_voc, voc(obj("dog", *edges)), "a.jpg")


@pytest.mark.parametrize("data", [
    b"<annotation><object>",  # not well-formed
    b"<notvoc/>",
    b"",
    b"   \n",
    voc("<object><name>dog</name></object>"),  # no bndbox
    voc("<object><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>1</xmax><ymax>1</ymax></bndbox>"
        "</object>"),  # no name
    voc(obj("   ", "0", "0", "10", "10")),  # blank name
    voc(obj("x" * 257, "0", "0", "10", "10")),  # over-long name
    voc(obj("a&#1;b", "0", "0", "10", "10")),  # XML 1.0 forbids the control char reference
    voc(obj("a&#127;b", "0", "0", "10", "10")),  # DEL in a tag name
    voc(obj("dog", "0", "0", "10", "10")).replace(b"dog", b"d\xffg"),  # not UTF-8, undeclared
], ids=["unclosed", "wrong-root", "empty", "blank", "no-bndbox", "no-name", "blank-name",
        "long-name", "control-char-ref", "del-char", "non-utf8"])
def test_hostile_voc_malformed(data: bytes) -> None:
    refused(BAD, parse_voc, data, "a.jpg")


def test_hostile_voc_region_limit_and_file_size() -> None:
    assert len(parse_voc(voc(obj("d", "0", "0", "1", "1") * 300), "a.jpg").regions) == 300
    assert "301" in refused(TOO_MANY, parse_voc, voc(obj("d", "0", "0", "1", "1") * 301), "a.jpg")
    padding = b"<!--" + b"x" * MAX_ANNOTATION_FILE_BYTES + b"-->"
    assert "bytes" in refused(BAD, parse_voc, voc(obj("d", "0", "0", "1", "1")) + padding, "a.jpg")


# --- YOLO ------------------------------------------------------------------------------------

NAMES = ("dog", "cat")


def test_yolo_good() -> None:
    data = b"0 0.5 0.5 0.2 0.4\n\n1 0.1 0.1 0.2 0.2\r\n"
    ann = parse_yolo(data, "a.jpg", NAMES)
    assert ann.image_name == "a.jpg"
    assert [r.tag for r in ann.regions] == ["dog", "cat"]
    assert ann.regions[0].left == pytest.approx(0.4) and ann.regions[0].height == pytest.approx(0.4)
    assert ann.regions[1].left == pytest.approx(0.0) and ann.regions[1].width == pytest.approx(0.2)
    assert parse_yolo(b"", "a.jpg", NAMES).regions == ()  # an image with no objects
    assert len(parse_yolo(b"\xef\xbb\xbf0 0.5 0.5 1 1\n", "a.jpg", NAMES).regions) == 1  # BOM


def test_yolo_clips_rounding_overshoot() -> None:
    (region,) = parse_yolo(b"0 0.5 0.5 1.0008 1.0008", "a.jpg", NAMES).regions
    assert (region.left, region.top, region.width, region.height) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("line,reason", [
    (b"2 0.5 0.5 0.1 0.1", BAD),  # unknown class index
    (b"-1 0.5 0.5 0.1 0.1", BAD),
    (b"1.0 0.5 0.5 0.1 0.1", BAD),
    (b"dog 0.5 0.5 0.1 0.1", BAD),
    (b"99999999999999999999 0.5 0.5 0.1 0.1", BAD),
    (b"0 0.5 0.5 0.1", BAD),  # four fields
    (b"0 0.5 0.5 0.1 0.1 0.9", BAD),  # a confidence or a polygon
    (b"0 nan 0.5 0.1 0.1", BAD),
    (b"0 0.5 0.5 inf 0.1", OUT),
    (b"0 0.5 0.5 1e400 0.1", OUT),
    (b"0 0.5 0.5 -0.1 0.1", BAD),  # negative width: inverted
    (b"0 0.5 0.5 0 0.1", BAD),  # zero width
    (b"0 1.2 0.5 0.1 0.1", OUT),
    (b"0 -0.2 0.5 0.1 0.1", OUT),
    (b"0 0.5 0.5 3 0.1", OUT),
    (b"0 0.5 0.5 0.1 0.1\xff", BAD),  # not UTF-8
], ids=lambda v: v.decode("latin-1")[:24] if isinstance(v, bytes) else v)
def test_hostile_yolo_bad_lines(line: bytes, reason: str) -> None:
    refused(reason, parse_yolo, b"0 0.5 0.5 0.1 0.1\n" + line + b"\n", "a.jpg", NAMES)


def test_hostile_yolo_region_limit_and_file_size() -> None:
    assert len(parse_yolo(b"0 0.5 0.5 0.1 0.1\n" * 300, "a.jpg", NAMES).regions) == 300
    refused(TOO_MANY, parse_yolo, b"0 0.5 0.5 0.1 0.1\n" * 301, "a.jpg", NAMES)
    refused(BAD, parse_yolo, b" " * (MAX_ANNOTATION_FILE_BYTES + 1), "a.jpg", NAMES)


def test_yolo_classes_txt() -> None:
    assert parse_yolo_classes(b"dog\ncat\n\n\n") == ("dog", "cat")
    assert parse_yolo_classes("chat\r\nélan noir\r\n".encode()) == ("chat", "élan noir")
    refused(BAD, parse_yolo_classes, b"dog\n\ncat\n")  # a hole would shift the indices
    refused(BAD, parse_yolo_classes, b"")
    refused(BAD, parse_yolo_classes, b"d\xe9g\n")  # latin-1, not UTF-8
    refused(BAD, parse_yolo_classes, b"dog\n" * (MAX_ANNOTATION_FILE_BYTES // 4 + 1))


def test_yolo_data_yaml() -> None:
    assert parse_yolo_data_yaml(b"path: .\ntrain: images\nnc: 2\nnames: [dog, cat]\n") == NAMES
    assert parse_yolo_data_yaml(b"names:\n  0: dog\n  1: cat\n") == NAMES
    assert parse_yolo_data_yaml(b"names:\n  - dog\n  - 7\n") == ("dog", "7")
    refused(BAD, parse_yolo_data_yaml, b"nc: 3\nnames: [dog, cat]\n")
    refused(BAD, parse_yolo_data_yaml, b"names:\n  0: dog\n  2: cat\n")  # a hole
    refused(BAD, parse_yolo_data_yaml, b"names: dog\n")
    refused(BAD, parse_yolo_data_yaml, b"train: images\n")
    refused(BAD, parse_yolo_data_yaml, b"names: [dog, [cat]]\n")
    refused(BAD, parse_yolo_data_yaml, b"names: [dog\n")  # not YAML


def test_hostile_yaml_python_tags_are_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = f"names: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    refused(BAD, parse_yolo_data_yaml, data)
    assert not marker.exists()


def test_hostile_yaml_alias_bomb_is_cheap() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ",".join([f"*{prev}"] * 9)
                     + "]")
    lines.append("names: *j")
    started = time.monotonic()
    refused(BAD, parse_yolo_data_yaml, "\n".join(lines).encode())
    assert time.monotonic() - started < 1.0


def test_hostile_yaml_deep_nesting() -> None:
    refused(BAD, parse_yolo_data_yaml, b"names: " + b"[" * 50_000 + b"]" * 50_000)


# --- COCO ------------------------------------------------------------------------------------


def coco(annotations: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "sub/b.png", "width": 50, "height": 50},
                   {"id": 3, "file_name": "c.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 7, "name": "cat"}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 100, 50]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 200, 100]},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [25.0, 25.0, 25.0, 25.0]},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        ]}
    doc.update(extra)
    return doc


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_coco_good() -> None:
    result = parse_coco(dump(coco()))
    assert result.rejected == {}
    assert list(result.images) == ["a.jpg", "sub/b.png", "c.jpg"]
    assert result.images["a.jpg"].regions == (Region("dog", 0.1, 0.1, 0.5, 0.5),
                                              Region("cat", 0.0, 0.0, 1.0, 1.0))
    assert result.images["sub/b.png"].regions == (Region("cat", 0.5, 0.5, 0.5, 0.5),)  # no crowd
    assert result.images["c.jpg"].regions == ()  # declared, no boxes


def test_coco_prefers_true_image_sizes() -> None:
    result = parse_coco(dump(coco()), image_sizes={"a.jpg": (400, 200)})
    assert result.images["a.jpg"].regions[0] == Region("dog", 0.05, 0.05, 0.25, 0.25)


def test_coco_a_bad_box_refuses_only_its_image() -> None:
    anns = [{"image_id": 1, "category_id": 1, "bbox": [20, 10, 100, 50]},
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 500, 10]},
            {"image_id": 3, "category_id": 99, "bbox": [0, 0, 5, 5]}]
    result = parse_coco(dump(coco(anns)))
    assert list(result.images) == ["a.jpg"]
    assert result.rejected["sub/b.png"].reason == OUT
    assert result.rejected["c.jpg"].reason == BAD
    assert "category" in result.rejected["c.jpg"].message


def test_hostile_coco_unknown_image_refuses_the_file() -> None:
    anns = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]},
            {"image_id": 42, "category_id": 1, "bbox": [0, 0, 5, 5]}]
    assert "42" in refused(UNKNOWN, parse_coco, dump(coco(anns)))


@pytest.mark.parametrize("bbox,reason", [
    ([0, 0, -5, 5], BAD),
    ([0, 0, 0, 5], BAD),
    ([-30, 0, 5, 5], OUT),
    ([0, 0, 1e308, 5], OUT),
    ([0, 0, 10 ** 400, 5], OUT),  # an int too big for a float
    ([True, 0, 5, 5], BAD),
    (["0", 0, 5, 5], BAD),
    ([0, 0, 5], BAD),
    ("0 0 5 5", BAD),
    (None, BAD),
], ids=lambda v: str(v)[:24])
def test_hostile_coco_bad_boxes(bbox: Any, reason: str) -> None:
    result = parse_coco(dump(coco([{"image_id": 1, "category_id": 1, "bbox": bbox}])))
    assert result.rejected["a.jpg"].reason == reason
    assert "a.jpg" not in result.images and "c.jpg" in result.images


@pytest.mark.parametrize("literal,reason", [
    (b"NaN", BAD), (b"Infinity", BAD), (b"-Infinity", BAD),
])
def test_hostile_coco_non_numbers(literal: bytes, reason: str) -> None:
    data = dump(coco([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 12345, 5]}]))
    refused(reason, parse_coco, data.replace(b"12345", literal))


def test_hostile_coco_overflowing_float_literal() -> None:
    data = dump(coco([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 12345, 5]}]))
    result = parse_coco(data.replace(b"12345", b"1e999"))
    assert result.rejected["a.jpg"].reason == OUT


def test_hostile_coco_region_limit() -> None:
    anns = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}] * 305
    anns += [{"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5]}] * 300
    result = parse_coco(dump(coco(anns)))
    assert result.rejected["a.jpg"].reason == TOO_MANY
    assert "305" in result.rejected["a.jpg"].message
    assert len(result.images["c.jpg"].regions) == 300


@pytest.mark.parametrize("data", [
    b"",
    b"{",
    b"[]",
    b'{"annotations": []}',
    dump(coco(images="nope")),
    dump(coco(annotations="nope")),
    dump(coco(categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])),
    dump(coco(categories=[{"id": 1, "name": ""}])),
    dump(coco(images=[{"id": 1, "file_name": "../../etc/passwd", "width": 5, "height": 5}])),
    dump(coco(images=[{"id": 1, "file_name": "/abs.jpg", "width": 5, "height": 5}])),
    dump(coco(images=[{"id": 1, "file_name": "a\\b.jpg", "width": 5, "height": 5}])),
    dump(coco(images=[{"id": 1, "file_name": "a.jpg", "width": 5, "height": 5}] * 2)),
    dump(coco(images=[{"id": 1, "file_name": "a.jpg", "width": 0, "height": 5}])),
    dump(coco(images=[{"id": 1, "file_name": "a.jpg", "width": 5.5, "height": 5}])),
    dump(coco(images=[{"id": 1, "file_name": "a.jpg", "width": 10 ** 9, "height": 5}])),
    dump(coco(images=[{"id": None, "file_name": "a.jpg", "width": 5, "height": 5}])),
    dump(coco(annotations=[7])),
    b"[" * 200_000 + b"]" * 200_000,  # nesting deeper than the parser's recursion
    b'{"images": [], "x": ' + b"1" * 5000 + b"}",  # an int with too many digits
    dump(coco()).replace(b'"dog"', b'"d\xffg"'),  # not UTF-8
], ids=["empty", "truncated", "list", "no-images", "images-not-list", "annotations-not-list",
        "duplicate-category", "blank-category", "traversal", "absolute", "backslash",
        "duplicate-image", "zero-width", "fractional-width", "huge-width", "null-id",
        "annotation-not-object", "deep-nesting", "huge-int", "non-utf8"])
def test_hostile_coco_malformed_files(data: bytes) -> None:
    refused(BAD, parse_coco, data)


def test_hostile_coco_oversized_file_is_refused_before_parsing() -> None:
    data = dump(coco())
    refused(BAD, parse_coco, data + b" " * (MAX_COCO_FILE_BYTES - len(data) + 1))
    refused(BAD, parse_coco, data, max_bytes=len(data) - 1)
    assert parse_coco(data, max_bytes=len(data)).images


# --- which blob pairs with what --------------------------------------------------------------


def test_classify_blob() -> None:
    voc_blob = classify_blob("proj/dog/a.xml")
    assert voc_blob is not None and voc_blob.kind is AnnotationKind.PASCAL_VOC
    assert voc_blob.kind.per_image and voc_blob.folder == "proj/dog"
    assert voc_blob.images[:5] == ("proj/dog/a.jpg", "proj/dog/a.jpeg", "proj/dog/a.png",
                                   "proj/dog/a.bmp", "proj/dog/a.gif")
    assert "proj/dog/a.JPG" in voc_blob.images
    yolo_blob = classify_blob("a.TXT")
    assert yolo_blob is not None and yolo_blob.kind is AnnotationKind.YOLO
    assert yolo_blob.folder == "" and "a.jpg" in yolo_blob.images
    kinds = {p: getattr(classify_blob(p), "kind", None) for p in (
        "x/classes.txt", "x/Classes.TXT", "x/data.yaml", "x/data.yml", "x/coco.json",
        "x/a.jpg", "x/README", "x/notes.md", "x/.xml", "x/other.yaml")}
    assert kinds == {
        "x/classes.txt": AnnotationKind.YOLO_CLASSES, "x/Classes.TXT": AnnotationKind.YOLO_CLASSES,
        "x/data.yaml": AnnotationKind.YOLO_DATA_YAML, "x/data.yml": AnnotationKind.YOLO_DATA_YAML,
        "x/coco.json": AnnotationKind.COCO, "x/a.jpg": None, "x/README": None,
        "x/notes.md": None, "x/.xml": None, "x/other.yaml": None}
    for path in ("x/classes.txt", "x/data.yaml", "x/coco.json"):
        blob = classify_blob(path)
        assert blob is not None and blob.images == () and not blob.kind.per_image
    assert is_image_blob("x/a.JPEG") and not is_image_blob("x/a.xml")


def test_pairs_resolve_in_any_arrival_order() -> None:
    """Whichever half arrives second finds the first among the blobs already there."""
    arrived = {"p/t/a.JPG", "p/t/b.png", "p/t/b.xml", "p/t/classes.txt", "p/t/c.txt"}
    # the image a.JPG is there; its VOC file arrives now
    blob = classify_blob("p/t/a.xml")
    assert blob is not None and [i for i in blob.images if i in arrived] == ["p/t/a.JPG"]
    # b.xml is there; its image arrives now
    assert [a for a in annotation_blobs_for_image("p/t/b.png") if a in arrived] == ["p/t/b.xml"]
    # c.txt waits for its image: none yet
    blob = classify_blob("p/t/c.txt")
    assert blob is not None and not [i for i in blob.images if i in arrived]
    assert [c for c in class_name_blobs("p/t") if c in arrived] == ["p/t/classes.txt"]
    assert annotation_blobs_for_image("d.gif") == ("d.xml", "d.XML", "d.txt", "d.TXT")
    assert "f/classes.txt" not in annotation_blobs_for_image("f/classes.jpg")


def test_one_call_per_file() -> None:
    classes = classify_blob("p/classes.txt")
    yolo = classify_blob("p/a.txt")
    voc_blob = classify_blob("p/a.xml")
    assert classes is not None and yolo is not None and voc_blob is not None
    names = parse_class_names(classes, b"dog\ncat\n")
    ann = parse_image_annotation(yolo, b"1 0.5 0.5 1 1", image_name="p/a.jpg",
                                 image_size=(10, 10), class_names=names)
    assert ann == ImageAnnotation("p/a.jpg", (Region("cat", 0.0, 0.0, 1.0, 1.0),))
    ann = parse_image_annotation(voc_blob, voc(obj("dog", "0", "0", "5", "5"), size=""),
                                 image_name="p/a.jpg", image_size=(10, 10))
    assert ann.regions == (Region("dog", 0.0, 0.0, 0.5, 0.5),)
    assert "classes.txt" in refused(BAD, parse_image_annotation, yolo, b"0 0.5 0.5 1 1",
                                    image_name="p/a.jpg", image_size=(10, 10))
    with pytest.raises(ValueError):
        parse_class_names(yolo, b"")
    with pytest.raises(ValueError):
        parse_image_annotation(classes, b"", image_name="x", image_size=None)


def test_regions_and_detector_boxes_share_one_box_shape() -> None:
    """An annotation's region and a detector's answer are the same Custom Vision box
    (visionpipe.boxes): one ``bounding_box`` shape, one ``corners``."""
    from visionpipe.boxes import NormalizedBox
    from visionpipe.detection_decode import BoxPrediction

    region = Region("dog", 0.1, 0.2, 0.3, 0.4)
    answer = BoxPrediction(0, 0.9, 0.1, 0.2, 0.3, 0.4)
    assert isinstance(region, NormalizedBox) and isinstance(answer, NormalizedBox)
    assert region.bounding_box() == answer.bounding_box() == {
        "left": 0.1, "top": 0.2, "width": 0.3, "height": 0.4}
    assert region.corners == pytest.approx((0.1, 0.2, 0.4, 0.6))
    assert answer.corners == region.corners
