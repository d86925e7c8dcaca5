"""Values made ready for strict JSON and for people to read: NaN and Infinity become null, file
names of any bytes valid UTF-8 (escaped, `names.display_name`), times ISO 8601 UTC, durations
`1d 02:03:04`. The store's snapshot, its history, the SSE events and the checkpoint metadata use
them, so one odd value can never break a file or the panel.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from vsr_async.names import display_name
from vsr_async.records import ValidationResult


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_utc(unix_seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC (`2026-01-02T03:04:05Z`), as `utc_now_iso` writes them."""
    return (
        datetime.fromtimestamp(unix_seconds, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def format_duration(seconds: float | None) -> str | None:
    """`1d 02:03:04` / `02:03:04`; None while unknown (no step timed yet)."""
    if seconds is None or not math.isfinite(seconds):
        return None
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def finite_or_none(value: Any) -> Any:
    """Deep copy of JSON-ready data with NaN/Infinity replaced by None (strict JSON) and every
    string valid UTF-8 (a file name of any bytes is shown escaped, never breaks a write)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return display_name(value)
    if isinstance(value, dict):
        return {finite_or_none(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return copy.deepcopy(value)


def with_display_names(result: ValidationResult) -> ValidationResult:
    """The result with its image names valid UTF-8 (escaped where a file name was not)."""
    images = tuple(replace(m, name=display_name(m.name)) for m in result.images)
    return replace(result, images=images)
