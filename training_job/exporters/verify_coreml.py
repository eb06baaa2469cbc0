"""Prove a visionpipe CoreML export on a Mac: run ``model.mlpackage`` on the golden inputs
shipped beside it and compare with the served ONNX model's answers (shipped too).

Core ML runs only on Apple platforms, so the export job could not measure the package itself;
this script measures it with the same rule as every other export (training_job.exporters.parity:
top-1 agreement 100% on every image with a clear margin, and max |probability difference| within
the tolerance), prints the figures as JSON and exits 1 when they fail.

Usage (macOS, Python with ``pip install coremltools numpy``), from the unpacked zip::

    python verify_coreml.py

It is copied into every CoreML export zip as it is, and imports nothing from visionpipe.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def compare(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> dict[str, object]:
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if reference.shape[1] > 1 else np.ones(len(reference))
    clear = margin > 2 * tolerance
    agree = reference.argmax(axis=1) == candidate.argmax(axis=1)
    agreement = float(agree[clear].mean()) if clear.any() else 0.0
    max_diff = float(np.abs(reference - candidate).max())
    passed = bool(np.isfinite(candidate).all()) and bool(clear.any()) and agreement == 1.0 \
        and max_diff <= tolerance
    return {"images": len(reference), "top1Compared": int(clear.sum()),
            "top1Agreement": agreement, "maxAbsProbDiff": max_diff, "tolerance": tolerance,
            "passed": passed}


def main(root: Path) -> int:
    import coremltools as ct

    settings = json.loads((root / "verify" / "settings.json").read_text())
    inputs = np.load(root / "verify" / "golden_inputs.npy")
    reference = np.load(root / "verify" / "golden_reference.npy")
    model = ct.models.MLModel(str(root / settings["package"]),
                              compute_units=getattr(ct.ComputeUnit, settings["computeUnits"]))
    answers = [np.asarray(model.predict({settings["input"]: x[None]})[settings["output"]])
               for x in inputs]
    record = compare(reference, np.concatenate([a.reshape(1, -1) for a in answers]),
                     float(settings["tolerance"]))
    record["runtime"] = f"coremltools {ct.__version__}, {settings['computeUnits']}"
    print(json.dumps(record, indent=2))
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().parent))
