"""The iteration manifest (ARCHITECTURE.md, "Iteration manifest"): everything needed to serve a
model without training code.

Written by the training job to ``models/{projectId}/{iterationId}/manifest.json``; read by serving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visionpipe import tag_types
from visionpipe.detection_decode import DOMAIN_TYPE as OBJECT_DETECTION
from visionpipe.detection_decode import DetectionPreprocessing
from visionpipe.preprocessing import PreprocessingSpec

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
PR_CURVE_FILE = "pr_curve.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
#: An object detection iteration's picture of predicted vs true boxes on test images.
DETECTIONS_FILE = "detections.png"
CLASSIFICATION = "Classification"
#: Custom Vision's tag types (visionpipe/tag_types.py). A manifest written before tags had a type
#: names none: every tag of it reads as Regular.
REGULAR_TAG_TYPE = tag_types.REGULAR
NEGATIVE_TAG_TYPE = tag_types.NEGATIVE
TAG_OUTPUT_TYPES = tag_types.STORED


@dataclass(frozen=True)
class TagOutput:
    id: str
    name: str
    # The tag's type when the iteration was trained, so a prediction answers its ``tagType``
    # from the model it came from (not from the tag as it is today).
    type: str = REGULAR_TAG_TYPE

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "type": self.type}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TagOutput:
        kind = d.get("type") or REGULAR_TAG_TYPE
        if kind not in TAG_OUTPUT_TYPES:
            raise ValueError(f"unknown tag type {str(kind)[:64]!r} in the manifest")
        return cls(d["id"], d["name"], kind)


@dataclass(frozen=True)
class Manifest:
    project_id: str
    iteration_id: str
    classification_type: str  # Multiclass (softmax) | Multilabel (sigmoid)
    tags: tuple[TagOutput, ...]  # in the model's output order
    preprocessing: PreprocessingSpec
    backbone: str
    pretrained: bool  # False: trained from a random init (no weights were available)
    onnx_opset: int
    model_sha256: str
    output_name: str = "probabilities"  # the graph ends in softmax/sigmoid
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    # Object detection (visionpipe.detection_decode.detection_manifest_fields): the domain type,
    # the detector's own preprocessing (stretch, no crop; ``preprocessing`` then holds only its
    # normalisation) and the ``detection`` block describing the graph's outputs.
    domain_type: str = CLASSIFICATION
    detection_preprocessing: DetectionPreprocessing | None = None
    detection: dict[str, Any] | None = None

    @property
    def is_detection(self) -> bool:
        return self.domain_type == OBJECT_DETECTION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": self.schema_version,
            "projectId": self.project_id,
            "iterationId": self.iteration_id,
            "classificationType": self.classification_type,
            "tags": [t.to_dict() for t in self.tags],
            "preprocessing": self.preprocessing.to_dict(),
            "backbone": self.backbone,
            "pretrained": self.pretrained,
            "onnx": {
                "file": MODEL_FILE,
                "opset": self.onnx_opset,
                "sha256": self.model_sha256,
                "inputName": self.preprocessing.input_name,
                "outputName": self.output_name,
            },
            "metrics": self.metrics,
            "timings": self.timings,
            "created": self.created,
            "domainType": self.domain_type,
            **self._detection_fields(),
        }

    def _detection_fields(self) -> dict[str, Any]:
        if not self.is_detection or self.detection_preprocessing is None:
            return {}
        return {"preprocessing": self.detection_preprocessing.to_dict(),
                "detection": self.detection or {}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if int(d.get("schemaVersion", 0)) != SCHEMA_VERSION:
            raise ValueError(f"unsupported manifest schema version {d.get('schemaVersion')!r}")
        onnx = d["onnx"]
        domain_type = d.get("domainType") or CLASSIFICATION
        detection_prep = None
        if domain_type == OBJECT_DETECTION:
            detection_prep = DetectionPreprocessing.from_dict(d["preprocessing"])
            if not isinstance(d.get("detection"), dict):
                raise ValueError("a detection manifest needs its detection block")
        elif domain_type != CLASSIFICATION:
            raise ValueError(f"unknown domain type {domain_type!r}")
        return cls(
            project_id=d["projectId"],
            iteration_id=d["iterationId"],
            classification_type=d["classificationType"],
            tags=tuple(TagOutput.from_dict(t) for t in d["tags"]),
            preprocessing=(detection_prep.normalization() if detection_prep is not None
                           else PreprocessingSpec.from_dict(d["preprocessing"])),
            backbone=d["backbone"],
            pretrained=bool(d["pretrained"]),
            onnx_opset=int(onnx["opset"]),
            model_sha256=onnx["sha256"],
            output_name=onnx.get("outputName", "probabilities"),
            metrics=d.get("metrics", {}),
            timings=d.get("timings", {}),
            created=d.get("created", ""),
            domain_type=domain_type,
            detection_preprocessing=detection_prep,
            detection=d.get("detection") if detection_prep is not None else None,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.from_dict(json.loads(text))


def overall_section(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    """The overall figures of an iteration's metrics: the training job writes
    ``{"overall": {...}, "perTag": [...]}``; older rows and Custom Vision's IterationPerformance
    are flat. The one reader of both shapes (the performance route and the auto-publish gate)."""
    overall = metrics.get("overall")
    return overall if isinstance(overall, Mapping) else metrics
