"""What a platform converter hands back: the files of the export and a way to run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ConversionError(Exception):
    """The model cannot be converted to this platform/flavor (the export is ``Failed``)."""


@dataclass
class Built:
    """``files``: name in the export zip -> bytes. ``run``: golden image bytes -> outputs (the
    exported model on its own runtime, or ``None`` where that runtime cannot run here).
    ``converter``: which tool made it (name and version), for the export manifest.

    ``tensors``: a prepared input batch -> every output of the exported model, in the ONNX
    graph's output order. Detection parity needs it (boxes, scores and labels, one picture at a
    time); a builder that cannot give it cannot export a detector.

    ``intermediate``: where ``run`` is ``None`` (Core ML runs only on Apple platforms), the graph
    the converter actually compiled from (e.g. the torch module coremltools traced), run here on
    the golden images. Its agreement with the served model is recorded as such and is never
    reported as the exported model's parity: it proves the conversion's input, not its output."""

    files: dict[str, bytes]
    run: Callable[[list[bytes]], np.ndarray] | None
    converter: dict[str, Any] = field(default_factory=dict)
    runtime: str = ""
    not_runnable: str = ""  # why ``run`` is None
    tensors: Callable[[np.ndarray], list[np.ndarray]] | None = None
    intermediate: Callable[[list[bytes]], np.ndarray] | None = None
    intermediate_runtime: str = ""
    verified_by: str = ""  # how a user proves parity where ``run`` is None
