"""The HTTP server inside a visionpipe ``DockerFile`` export (shipped as ``app/server.py``).

It answers Custom Vision's Docker-export routes, ``POST /image`` (the picture as the body, or as
the ``imageData`` part of a multipart form) and ``POST /url`` (``{"url": "..."}``), with
visionpipe's prediction shape (``{"id", "project", "iteration", "created", "predictions": [...]}``,
highest probability first). Standard library plus numpy, Pillow and onnxruntime only: no
visionpipe import, so the container carries nothing but this file, the model and its manifest.

The preprocessing below restates the manifest's spec (resize the shorter side, centre-crop,
scale, normalise, NCHW) exactly as visionpipe serving does it; the export's parity check runs this
very file against the served model before the export may be ``Done``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.request
import uuid
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

MAX_BODY = 6 * 1024 * 1024  # Custom Vision's prediction upload limit is 4 MB; a little slack
MAX_PIXELS = 40_000_000
URL_TIMEOUT_S = 10.0


class BadInput(ValueError):
    """The request can never succeed as sent (HTTP 400)."""


class Model:
    """The exported model and its manifest (tags in output order, preprocessing)."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        self.manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
        pre = self.manifest["preprocessing"]
        self.resize, self.crop = int(pre["resize"]), int(pre["crop"])
        mean = np.asarray(pre["mean"], np.float32)
        std = np.asarray(pre["std"], np.float32)
        levels = np.arange(256, dtype=np.float32)
        # The same float32 table serving uses: level * 1/(255 std) - mean/std, per channel.
        self.table = (levels[None, :] * (1.0 / (255.0 * std))[:, None]
                      - (mean / std)[:, None]).astype(np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("THREADS", "0") or 0)
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _crop_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        if w <= h:
            new_w, new_h = self.resize, int(self.resize * h / w)
        else:
            new_w, new_h = int(self.resize * w / h), self.resize
        left = int(round((new_w - self.crop) / 2.0))
        top = int(round((new_h - self.crop) / 2.0))
        sx, sy = w / new_w, h / new_h
        return (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)

    def tensor(self, data: bytes) -> np.ndarray:
        """Image bytes -> the (1, 3, crop, crop) float32 input."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                picture = ImageOps.exif_transpose(img).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise BadInput("the body is not an image this server can read") from e
        cropped = picture.resize((self.crop, self.crop), Image.Resampling.BILINEAR,
                                 box=self._crop_box(*picture.size))
        planes = np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1)
        out = np.empty((1, 3, self.crop, self.crop), np.float32)
        for c in range(3):
            np.take(self.table[c], planes[c], out=out[0, c])
        return out

    def probabilities(self, data: bytes) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: self.tensor(data)})[0])[0]

    def predict(self, data: bytes) -> dict[str, Any]:
        probs = self.probabilities(data)
        tags = self.manifest["tags"]
        ranked = sorted(zip(probs.tolist(), tags, strict=True), key=lambda pt: -pt[0])
        return {
            "id": str(uuid.uuid4()),
            "project": self.manifest.get("projectId", ""),
            "iteration": self.manifest.get("iterationId", ""),
            "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "predictions": [{"probability": float(p), "tagId": t["id"], "tagName": t["name"],
                             "boundingBox": None, "tagType": t.get("type", "Regular")}
                            for p, t in ranked],
        }


def image_from_form(content_type: str, body: bytes) -> bytes:
    """The ``imageData`` part (or the first file part) of a multipart form."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    parts = [p for p in message.iter_parts()] if message.is_multipart() else []
    for part in sorted(parts, key=lambda p: p.get_param("name", header="content-disposition")
                       != "imageData"):
        payload = part.get_payload(decode=True)
        if payload:
            return bytes(payload)
    raise BadInput("the form has no imageData part")


def fetch(url: Any) -> bytes:
    """``POST /url``: GET an http(s) URL, at most :data:`MAX_BODY` bytes."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise BadInput("url must be an http or https URL")
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:  # noqa: S310
            data = response.read(MAX_BODY + 1)
    except (OSError, ValueError) as e:
        raise BadInput("the image URL could not be fetched") from e
    if len(data) > MAX_BODY:
        raise BadInput("the image at the URL is too large")
    return data


class Handler(BaseHTTPRequestHandler):
    model: Model
    server_version = "visionpipe-export"

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.rstrip("/") in ("", "/health"):
            self._answer(200, {"status": "ok"})
        else:
            self._answer(404, {"code": "NotFound", "message": "POST /image or /url"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        route = self.path.split("?", 1)[0].rstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                raise BadInput(f"the body must be 1 to {MAX_BODY} bytes")
            body = self.rfile.read(length)
            content_type = self.headers.get("Content-Type") or ""
            if route == "/image":
                data = (image_from_form(content_type, body)
                        if content_type.startswith("multipart/") else body)
            elif route == "/url":
                try:
                    data = fetch(json.loads(body).get("url"))
                except (ValueError, AttributeError) as e:
                    raise BadInput('the body must be {"url": "..."}') from e
            else:
                self._answer(404, {"code": "NotFound", "message": "POST /image or /url"})
                return
            self._answer(200, self.model.predict(data))
        except BadInput as e:
            self._answer(400, {"code": "BadRequestImageFormat", "message": str(e)})
        except Exception:  # noqa: BLE001 - never a traceback to the client
            self._answer(500, {"code": "InternalServerError", "message": "prediction failed"})

    def log_message(self, fmt: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["--health"]:  # the Dockerfile's HEALTHCHECK
        port = os.environ.get("PORT", "80")
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4).close()  # noqa: S310
        return
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 - a container listens on all addresses
    port = int(args[0]) if args else int(os.environ.get("PORT", "80"))
    # Pillow's bomb guard, for the server process only: set here, not at import, so importing
    # this module (the exporter's parity check does) never changes a host process's Pillow.
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    Handler.model = Model(Path(__file__).resolve().parent)
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"listening on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
