"""One unit system for every figure a person reads (CLI, notes, reports, the Backups page, alerts).

Sizes are decimal (SI), as disks, S3 and ``df -H`` count them: ``fmt_bytes(1_500_000) == "1.5 MB"``.
Durations have one format: ``fmt_duration(327) == "5m 27s"``, ``fmt_duration(4.25) == "4.2s"``,
``fmt_duration(11_100) == "3h 05m"``, ``fmt_duration(190_000) == "2d 4h"``. A value that is not a number prints
as ``"—"``; an infinite duration as ``"never"``. Machine-readable output (``--json``, Prometheus, result documents)
keeps raw bytes and seconds — these helpers are only for text.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt_bytes", "fmt_duration", "MISSING"]

MISSING = "—"
_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def fmt_bytes(n: Any) -> str:
    """``n`` bytes in decimal units with one decimal (whole bytes below 1 kB): ``"1.5 MB"``, ``"512 B"``."""
    size = _number(n)
    if size is None or math.isnan(size):
        return MISSING
    sign = "-" if size < 0 else ""
    size = abs(size)
    for unit in _SIZE_UNITS:
        if size < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{sign}{int(size)} B" if unit == "B" else f"{sign}{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def fmt_duration(seconds: Any) -> str:
    """A duration: ``"4.2s"`` (under 10 s), ``"42s"``, ``"5m 27s"``, ``"3h 05m"``, ``"2d 4h"``."""
    s = _number(seconds)
    if s is None or math.isnan(s):
        return MISSING
    if math.isinf(s):
        return "never"
    sign = "-" if s < 0 else ""
    s = abs(s)
    if s < 59.5:
        return f"{sign}{s:.1f}s" if s < 9.95 and s != int(s) else f"{sign}{s:.0f}s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    if d:
        return f"{sign}{d}d {h}h"
    if h:
        return f"{sign}{h}h {m:02d}m"
    return f"{sign}{m}m {sec:02d}s"
