"""Golden images and the parity proof every export carries (docs/ARCHITECTURE.md, "Exports").

Golden images are generated, not sampled: saturated colour fields across the hue circle,
gradients and stripes, each with seeded noise, encoded as PNG (lossless, so every runtime decodes
the very same pixels). They go through the serving preprocessing and the served ONNX model gives
the reference probabilities; the exported model must agree on the top-1 tag of every image whose
reference margin is clear of the flavor's tolerance (a near-tie cannot define a top-1: such images
are counted as ``tiesSkipped``, and their probabilities are still compared) and stay within the
tolerance in absolute probability everywhere.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from visionpipe.preprocessing import PreprocessingSpec, normalize, prepare_image

GOLDEN_COUNT = 24
GOLDEN_SIZE = (160, 120)  # not square, so the resize-and-crop path is exercised

#: Largest allowed |probability difference| per platform/flavor: exact conversions are held to
#: float32 rounding, reduced-precision ones to what their arithmetic can promise.
TOLERANCES: dict[tuple[str, str], float] = {
    ("ONNX", "ONNX10"): 1e-4,
    ("ONNX", "ONNX12"): 1e-4,
    ("ONNX", "ONNXFloat16"): 1e-2,
    ("ONNX", "ONNXInt8"): 5e-2,
    ("OpenVino", ""): 1e-3,
    ("DockerFile", "Linux"): 1e-4,
    ("DockerFile", "ARM"): 1e-4,
}


def golden_images(count: int = GOLDEN_COUNT, seed: int = 20260101) -> list[bytes]:
    """``count`` deterministic PNG pictures (the same bytes on every run and machine)."""
    rng = np.random.default_rng(seed)
    w, h = GOLDEN_SIZE
    out: list[bytes] = []
    for k in range(count):
        hue = (k * 0.61803398875) % 1.0
        rgb = np.asarray(colorsys.hsv_to_rgb(hue, 0.85, 0.9)) * 255.0
        kind = k % 3
        base = np.broadcast_to(rgb, (h, w, 3)).astype(np.float32)
        if kind == 1:  # a gradient towards a darker shade
            base = base * np.linspace(0.55, 1.0, w, dtype=np.float32)[None, :, None]
        elif kind == 2:  # stripes of the colour and a lighter tint
            stripes = (np.arange(w) // 12 % 2).astype(np.float32)[None, :, None]
            base = base * (1 - 0.3 * stripes) + 255.0 * 0.3 * stripes
        pixels = np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def served_batch(images: list[bytes], spec: PreprocessingSpec) -> np.ndarray:
    """Image bytes -> the input batch, exactly as serving prepares a picture."""
    return normalize(np.stack([prepare_image(data, spec) for data in images]), spec)


def onnx_runner(model: bytes | str, input_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Run an ONNX model (bytes or path) with ONNX Runtime on the CPU, as serving does."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return lambda batch: np.asarray(session.run(None, {input_name: batch})[0], np.float32)


def compare(reference: np.ndarray, candidate: np.ndarray, tolerance: float,
            runtime: str) -> dict[str, Any]:
    """The parity record: top-1 agreement, max |probability difference|, and the verdict."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if reference.shape != candidate.shape:
        return {"images": len(reference), "passed": False, "runtime": runtime,
                "tolerance": tolerance,
                "reason": f"output shape {candidate.shape} differs from {reference.shape}"}
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if reference.shape[1] > 1 else np.ones(len(reference))
    clear = margin > 2 * tolerance
    agree = reference.argmax(axis=1) == candidate.argmax(axis=1)
    compared = int(clear.sum())
    agreement = float(agree[clear].mean()) if compared else 0.0
    max_diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    finite = bool(np.isfinite(candidate).all())
    passed = finite and compared > 0 and agreement == 1.0 and max_diff <= tolerance
    record: dict[str, Any] = {
        "images": len(reference), "top1Compared": compared,
        "tiesSkipped": len(reference) - compared, "top1Agreement": agreement,
        "maxAbsProbDiff": max_diff, "tolerance": tolerance, "runtime": runtime, "passed": passed,
    }
    if not passed:
        record["reason"] = (
            "the exported model gives non-finite outputs" if not finite else
            "no golden image has a clear top-1" if compared == 0 else
            f"top-1 agreement {agreement:.1%} (needs 100%)" if agreement < 1.0 else
            f"max |prob diff| {max_diff:.3g} exceeds the tolerance {tolerance:g}")
    return record
