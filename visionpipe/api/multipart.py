"""Reading image bytes out of request bodies as Custom Vision clients send them.

The SDK posts ``multipart/form-data`` (field ``imageData``); curl users and the REST docs also
send the bytes as ``application/octet-stream``. The multipart reader splits on the boundary and
never re-encodes, so image bytes come out exactly as sent (the ``email`` package would normalise
line endings and headers, and is slow on megabytes).
"""

from __future__ import annotations

from dataclasses import dataclass


class BadBody(ValueError):
    """The body does not hold what its Content-Type announces."""


@dataclass(frozen=True)
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def header_params(header_value: str) -> tuple[str, dict[str, str]]:
    """``type/sub; a=1; b="x y"`` -> ("type/sub", {"a": "1", "b": "x y"})."""
    head, *rest = header_value.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.strip().partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            params[key.strip().lower()] = value
    return head.strip().lower(), params


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """The parts of a ``multipart/form-data`` body, in order."""
    _, params = header_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise BadBody("multipart body without a boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise BadBody("multipart body has no parts")
    parts: list[Part] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        # Each part: CRLF, headers, CRLF CRLF, data, CRLF (before the next delimiter).
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, data = chunk.partition(b"\n\n")
            if not sep:
                raise BadBody("multipart part without a header/body separator")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip().lower()] = value.strip()
        _, disposition = header_params(headers.get("content-disposition", ""))
        parts.append(Part(disposition.get("name"), disposition.get("filename"),
                          headers.get("content-type"), data))
    return parts


def image_from_body(body: bytes, content_type: str | None, field: str = "imageData") -> bytes:
    """The image bytes of a prediction request: the ``field`` part of a multipart body (or its
    only part), otherwise the body itself."""
    media = header_params(content_type or "")[0]
    if media != "multipart/form-data":
        return body
    parts = parse_multipart(body, content_type or "")
    named = [p for p in parts if p.name == field]
    if named:
        return named[0].data
    files = [p for p in parts if p.filename is not None] or parts
    if len(files) != 1:
        raise BadBody(f"multipart body has {len(files)} parts and none is named {field!r}")
    return files[0].data
