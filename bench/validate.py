"""Benchmark: image validation vs a naive full-decode validator, plus function_app cold import.

Run from the repo root: ``.venv/bin/python bench/validate.py``. Photo-like JPEGs (smooth colour
fields, soft shapes, mild noise) at 1024x768 and 4000x3000; each repeat times visionpipe and the
baseline back to back on the same bytes, and the medians are reported, so a noisy shared machine
affects both alike. The last line is the JSON record ARCHITECTURE.md, "Benchmarks" asks for.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from visionpipe.local.samples import make_photo  # noqa: E402
from visionpipe.settings import MB, ImageLimits  # noqa: E402
from visionpipe.validation import ValidImage, validate_image  # noqa: E402

# Big enough for a 12 MP JPEG: this measures decode work, not the byte limit.
LIMITS = ImageLimits(max_bytes=32 * MB)
CASES = [((1024, 768), 60), ((4000, 3000), 15)]  # (size, repeats)
SEEDS = (1, 2, 3)  # several pictures per size, so one lucky image cannot decide the result
IMPORT_RUNS = 7


def full_decode(data: bytes) -> None:
    """What a naive validator does: decode every pixel and convert, to prove the file is fine."""
    with Image.open(BytesIO(data)) as img:
        img.load()
        img.convert("RGB")


def visionpipe_validate(data: bytes) -> None:
    result = validate_image(data, LIMITS)
    if not isinstance(result, ValidImage):
        raise SystemExit(f"benchmark image was rejected: {result}")


def _time_ms(fn: Callable[[bytes], None], data: bytes) -> float:
    start = time.perf_counter()
    fn(data)
    return (time.perf_counter() - start) * 1000


def bench_size(size: tuple[int, int], repeats: int) -> tuple[float, float, int]:
    """Median ms per image for (visionpipe, baseline), and the mean file size in bytes."""
    files = [make_photo(size, seed=seed, quality=90) for seed in SEEDS]
    for data in files:  # warm-up: plugin registration, first-call allocations
        visionpipe_validate(data)
        full_decode(data)
    ours: list[float] = []
    base: list[float] = []
    for _ in range(repeats):
        for data in files:
            ours.append(_time_ms(visionpipe_validate, data))
            base.append(_time_ms(full_decode, data))
    return statistics.median(ours), statistics.median(base), sum(map(len, files)) // len(files)


def _run_python(code: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(tail)
    return elapsed


def cold_import_ms() -> float | str:
    """Median wall time of ``import function_app`` in a fresh interpreter, less bare start-up."""
    if not (ROOT / "function_app.py").exists():
        return "skipped: function_app.py does not exist yet"
    try:
        imports = [_run_python("import function_app") for _ in range(IMPORT_RUNS)]
    except RuntimeError as exc:
        return f"skipped: importing function_app failed ({exc})"
    bare = [_run_python("pass") for _ in range(IMPORT_RUNS)]
    return statistics.median(imports) - statistics.median(bare)


def main() -> None:
    print(f"validation of photo-like JPEGs, median ms per image ({len(SEEDS)} images per size)")
    header = f"{'image':<16}{'file':>10}{'visionpipe':>13}{'full decode':>14}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    results: dict[tuple[int, int], tuple[float, float]] = {}
    for size, repeats in CASES:
        ours, base, nbytes = bench_size(size, repeats)
        results[size] = (ours, base)
        label = f"{size[0]}x{size[1]}"
        speedup = base / ours
        print(f"{label:<16}{nbytes / 1024:>8.0f}KB{ours:>10.2f} ms{base:>11.2f} ms{speedup:>9.2f}x")

    cold = cold_import_ms()
    if isinstance(cold, str):
        print(f"function_app cold import: {cold}")
    else:
        print(
            f"function_app cold import: {cold:.0f} ms (median of {IMPORT_RUNS} fresh processes, "
            "minus bare interpreter start-up)"
        )

    ours, base = results[(4000, 3000)]
    record = {
        "name": "validate_12mp_jpeg",
        "value": round(ours, 3),
        "unit": "ms",
        "baseline": "pillow full decode",
        "baseline_value": round(base, 3),
        "ratio": round(base / ours, 3),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
