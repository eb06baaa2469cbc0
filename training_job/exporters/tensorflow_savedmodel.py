"""``TensorFlow`` / ``TensorFlowNormal``: the SavedModel directory, zipped under
``saved_model/``, and run back for its parity proof by loading those very files again with
``tf.saved_model.load`` (not the in-memory model the converter made)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from training_job.exporters.built import Built
from training_job.exporters.parity import served_batch
from training_job.exporters.tensorflow_import import tensorflow
from visionpipe.manifest import Manifest

PREFIX = "saved_model/"


def read_tree(root: Path, prefix: str) -> dict[str, bytes]:
    """Every file under ``root`` as ``prefix + relative path`` -> bytes."""
    return {prefix + p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_tree(files: dict[str, bytes], prefix: str, root: Path) -> Path:
    for name, data in files.items():
        if name.startswith(prefix):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return root / prefix.rstrip("/")


def pack(saved_model: Path, manifest: Manifest, converter: dict[str, Any]) -> Built:
    tf = tensorflow()
    files = read_tree(saved_model, PREFIX)
    keep = tempfile.TemporaryDirectory()  # the loaded model reads its variables lazily
    loaded = tf.saved_model.load(str(write_tree(files, PREFIX, Path(keep.name))))
    signature = loaded.signatures[converter["signature"]]
    spec = manifest.preprocessing

    def run(images: list[bytes]) -> np.ndarray:
        answer = signature(**{converter["input"]: tf.constant(served_batch(images, spec))})
        return np.asarray(answer[converter["output"]], np.float32)

    run.keep = (keep, loaded)  # type: ignore[attr-defined]  # alive as long as ``run``
    return Built(files, run, converter, runtime=f"tensorflow {tf.__version__} CPU "
                                                "(tf.saved_model.load of the zipped files)")
