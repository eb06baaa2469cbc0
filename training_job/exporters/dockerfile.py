"""The ``DockerFile`` export (flavors ``Linux`` and ``ARM``): a build context with a Dockerfile,
the served ONNX model unchanged, its manifest and a small HTTP server
(:mod:`training_job.exporters.docker_server`) answering Custom Vision's Docker-export routes.

Its parity proof runs the shipped ``server.py`` itself (its own decoding and preprocessing, on
ONNX Runtime) on the golden images' bytes, so what is proven is what the container will do.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from training_job.exporters import docker_server
from training_job.exporters.built import Built, ConversionError
from visionpipe.manifest import Manifest

#: The base image per flavor: a slim CPython for the target architecture.
BASE_IMAGES = {"Linux": "python:3.11-slim", "ARM": "arm64v8/python:3.11-slim"}
PLATFORMS = {"Linux": "linux/amd64", "ARM": "linux/arm64"}
RUNTIME_PACKAGES = ("onnxruntime", "numpy", "pillow")


def requirements() -> str:
    """The server's runtime, pinned to the versions the parity check ran with."""
    return "".join(f"{name}=={metadata.version(name)}\n" for name in RUNTIME_PACKAGES)


def dockerfile(flavor: str) -> str:
    return f"""# visionpipe export: the model behind Custom Vision's Docker-export routes.
#   docker build -t visionpipe-model . && docker run -p 8080:80 visionpipe-model
#   curl -X POST http://127.0.0.1:8080/image --data-binary @picture.jpg
FROM --platform={PLATFORMS[flavor]} {BASE_IMAGES[flavor]}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PORT=80
WORKDIR /app
COPY requirements.txt /app/requirements.txt
RUN python -m pip install --no-cache-dir -r /app/requirements.txt
COPY server.py model.onnx manifest.json export.json /app/
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin model
USER 10001
EXPOSE 80
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "/app/server.py", "--health"]
CMD ["python", "/app/server.py"]
"""


def build(source: bytes, manifest: Manifest, flavor: str) -> Built:
    if flavor not in BASE_IMAGES:
        raise ConversionError(f"unknown DockerFile flavor {flavor!r}")
    server = Path(docker_server.__file__).read_bytes()
    files = {"Dockerfile": dockerfile(flavor).encode(), "server.py": server,
             "requirements.txt": requirements().encode(), "model.onnx": source,
             "manifest.json": manifest.to_json().encode()}

    loaded: list[object] = []  # the server's Model, loaded once from its own copy of the files

    def run(images: list[bytes]) -> np.ndarray:
        if not loaded:
            folder = Path(tempfile.mkdtemp(prefix="visionpipe-docker-export-"))
            for name in ("server.py", "model.onnx", "manifest.json"):
                (folder / name).write_bytes(files[name])
            loaded.append(load_server(folder / "server.py").Model(folder))  # type: ignore[attr-defined]
        model = loaded[0]
        return np.stack([model.probabilities(data) for data in images]).astype(  # type: ignore[attr-defined]
            np.float32)

    import onnxruntime

    return Built(files, run, {"name": "visionpipe DockerFile", "baseImage": BASE_IMAGES[flavor],
                              "platform": PLATFORMS[flavor]},
                 runtime=f"server.py on onnxruntime {onnxruntime.__version__} CPU "
                         f"({sys.platform}, not in Docker)")


def load_server(path: Path) -> object:
    """Import a shipped ``server.py`` as its own module (not the package's copy)."""
    spec = importlib.util.spec_from_file_location(f"visionpipe_export_server_{id(path)}", path)
    if spec is None or spec.loader is None:
        raise ConversionError("the shipped server.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
