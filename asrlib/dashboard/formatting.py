"""Formatting of numbers, sizes, times and durations for tables and labels (no language-specific words)."""

from __future__ import annotations

import math
import time

EMPTY = "—"  # shown where a value is unknown


def format_bytes(size: int | float | None) -> str:
    """Return a size in binary units, e.g. 2.5 MiB; `EMPTY` for None."""
    if size is None:
        return EMPTY
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """Return m:ss or h:mm:ss; `EMPTY` for None, NaN or a negative value."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return EMPTY
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_seconds(seconds: float | None, digits: int = 2) -> str:
    """Return a time within a clip, e.g. 1.25 s."""
    if seconds is None or not math.isfinite(seconds):
        return EMPTY
    return f"{seconds:.{digits}f} s"


def format_percent(fraction: float | None, digits: int = 1) -> str:
    """Return an error rate given as a fraction (0.123) as a percentage (12.3 %)."""
    if fraction is None or not math.isfinite(fraction):
        return EMPTY
    return f"{100 * fraction:.{digits}f} %"


def format_number(value: float | int | None, digits: int = 4) -> str:
    """Return `digits` significant digits, switching to exponent notation for very small values."""
    if value is None:
        return EMPTY
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.{max(digits - 1, 0)}e}"
    return f"{value:.{digits}g}"


def format_timestamp(unix_seconds: float | None) -> str:
    """Return local time as YYYY-MM-DD HH:MM."""
    if unix_seconds is None:
        return EMPTY
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix_seconds))


def format_count(value: int | None) -> str:
    return EMPTY if value is None else f"{value:,}"
