"""Timestamps as Custom Vision writes them: ISO-8601 in UTC with milliseconds and a ``Z``.

One formatter for the API bodies, the prediction results and the drop-folder JSON, so the same
moment is written the same way everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with milliseconds and a ``Z``, as the service writes timestamps."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso(moment: datetime | None = None) -> str:
    """``moment`` (default: now) as :func:`iso` writes it."""
    return iso(moment or datetime.now(UTC)) or ""
