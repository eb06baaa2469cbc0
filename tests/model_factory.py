"""A tiny, deterministic, torch-free ONNX classifier registered like the training job would.

The graph follows the training job's contract (input named per the preprocessing spec, dynamic
batch, output ``probabilities``): GlobalAveragePool over the normalised input -> MatMul by a fixed
channel-to-tag matrix -> Softmax. It classifies by colour, so a red picture is predictably "red";
``permutation`` wires channels to other tags, which makes a second iteration answer differently
(hot-swap tests see which iteration answered): output k is tag ``TAGS[k]`` and reads channel
``permutation[k]``, so with (1, 2, 0) a red picture is called "blue".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from visionpipe.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, TagOutput
from visionpipe.preprocessing import PreprocessingSpec
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Iteration, IterationStatus, Registry

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 40),
    "green": (30, 200, 50),
    "blue": (40, 50, 220),
}
TAGS: tuple[str, ...] = ("red", "green", "blue")  # channel order R, G, B
SMALL_SPEC = PreprocessingSpec(resize=64, crop=56, input_shape=(-1, 3, 56, 56))


def build_color_model(
    spec: PreprocessingSpec = SMALL_SPEC,
    permutation: Sequence[int] = (0, 1, 2),
    scale: float = 4.0,
    output_name: str = "probabilities",
) -> bytes:
    """Output k is the softmax of ``scale`` x the mean of channel ``permutation[k]``."""
    k = len(permutation)
    weights = np.zeros((3, k), dtype=np.float32)
    for out, channel in enumerate(permutation):
        weights[channel, out] = scale
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [spec.input_name], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
            helper.make_node("MatMul", ["features", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [output_name], axis=1),
        ],
        "color_classifier",
        [helper.make_tensor_value_info(spec.input_name, TensorProto.FLOAT,
                                       ["batch", 3, spec.crop, spec.crop])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor("weights", TensorProto.FLOAT, weights.shape,
                            weights.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="visionpipe-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def color_image(color: str | tuple[int, int, int], size: tuple[int, int] = (320, 320),
                fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A flat picture of one colour with a little seeded noise (so bytes differ per seed)."""
    rgb = COLORS[color] if isinstance(color, str) else color
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(rgb, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3)),
                     0, 255).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def register_color_iteration(
    registry: Registry,
    label_store: LabelStore,
    project: Project,
    *,
    permutation: Sequence[int] = (0, 1, 2),
    metrics: dict[str, Any] | None = None,
    spec: PreprocessingSpec = SMALL_SPEC,
    status: IterationStatus = IterationStatus.COMPLETED,
    model: bytes | None = None,
) -> Iteration:
    """Create an iteration whose artifacts are the colour model, as the training job would."""
    tags = [label_store.get_or_create_tag(project.id, name) for name in TAGS]
    iteration = registry.create_iteration(project.id)
    model = model if model is not None else build_color_model(spec, permutation)
    manifest = Manifest(
        project_id=project.id,
        iteration_id=iteration.id,
        classification_type=project.classification_type,
        tags=tuple(TagOutput(t.id, t.name, t.type) for t in tags),  # as the training job
        preprocessing=spec,
        backbone="color-test-model",
        pretrained=False,
        onnx_opset=17,
        model_sha256=hashlib.sha256(model).hexdigest(),
        metrics=metrics or {},
        created=datetime.now(UTC).isoformat(),
    )
    registry.upload_artifact(project.id, iteration.id, MODEL_FILE, model,
                             "application/octet-stream")
    registry.upload_artifact(project.id, iteration.id, MANIFEST_FILE, manifest.to_json().encode(),
                             "application/json")
    columns: dict[str, Any] = {"status": status}
    if metrics:
        columns["metrics"] = metrics
    if status == IterationStatus.COMPLETED:
        columns["trainedAt"] = datetime.now(UTC)
    return registry.update_iteration(project.id, iteration.id, **columns)


def rewrite_manifest_tag_types(registry: Registry, project_id: str, iteration_id: str,
                               types: dict[str, str] | None) -> None:
    """Rewrite an iteration's manifest: each tag named in ``types`` gets that type; with
    ``None`` every ``type`` key is dropped, which is how a manifest written before tags had
    types reads. Do it before the iteration first serves (sessions are cached)."""
    raw = json.loads(registry.download_artifact(project_id, iteration_id, MANIFEST_FILE))
    for tag in raw["tags"]:
        if types is None:
            tag.pop("type", None)
        elif tag["name"] in types:
            tag["type"] = types[tag["name"]]
    registry.upload_artifact(project_id, iteration_id, MANIFEST_FILE,
                             json.dumps(raw).encode(), "application/json")


def overall(ap: float, precision: float = 0.9, recall: float = 0.9) -> dict[str, Any]:
    """Metrics in the manifest's shape with the given overall figures."""
    return {"overall": {"averagePrecision": ap, "precision": precision, "recall": recall},
            "perTag": []}
