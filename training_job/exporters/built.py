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
    ``converter``: which tool made it (name and version), for the export manifest."""

    files: dict[str, bytes]
    run: Callable[[list[bytes]], np.ndarray] | None
    converter: dict[str, Any] = field(default_factory=dict)
    runtime: str = ""
    not_runnable: str = ""  # why ``run`` is None
