"""Write infra/names.json from visionpipe/names.py (the single source of truth).

The Bicep cannot import Python, so it loads this JSON mirror with ``loadJsonContent``;
``tests/test_infra.py`` fails when the mirror and ``visionpipe.names`` disagree.
Run from the repository root:  python scripts/sync_infra_names.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAMES_JSON = ROOT / "infra" / "names.json"


def names_mirror() -> dict[str, Any]:
    """Every UPPER_CASE constant of visionpipe.names, tuples as lists, keys sorted."""
    sys.path.insert(0, str(ROOT))
    from visionpipe import names

    mirror: dict[str, Any] = {}
    for key in sorted(vars(names)):
        if not key.isupper():
            continue
        value = getattr(names, key)
        mirror[key] = list(value) if isinstance(value, tuple) else value
    return mirror


def render() -> str:
    return json.dumps(names_mirror(), indent=2) + "\n"


def main() -> int:
    NAMES_JSON.write_text(render(), encoding="utf-8")
    print(f"wrote {NAMES_JSON.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
