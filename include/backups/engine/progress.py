"""Progress on long work: a bar on a terminal, a periodic log line elsewhere (Airflow task logs, cron mail).

With a known total (a backup: the sources' estimated size from the system-state check) the bar and the log line
show a percentage. While a bar is shown, console log lines are routed through it
(``tqdm.contrib.logging.logging_redirect_tqdm``): they print above the bar instead of into the middle of it.
One :class:`Progress` may be shared by threads (a backup extracts two sources at a time)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import ExitStack

log = logging.getLogger("backups.progress")


def mb(n: int | float | None) -> str:
    """``12.3 MB`` (``?`` when the size is unknown) — the one size format of logs, reports and the CLI."""
    return "?" if n is None else f"{n / 1e6:,.1f} MB"


class Progress:
    def __init__(self, label: str, total_bytes: int | None = None, *, interval: float = 10.0, tty: bool | None = None) -> None:
        self.label = label
        self.total = total_bytes
        self.done = 0
        self.skipped = 0
        self.files = 0
        self.interval = interval
        self._last = time.monotonic()
        self._start = self._last
        self._bar = None
        self._lock = threading.Lock()
        self._redirect = ExitStack()
        if tty is None:
            tty = sys.stderr.isatty()
        if tty:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc=label, leave=False, file=sys.stderr)
            self._redirect.enter_context(logging_redirect_tqdm())

    @classmethod
    def null(cls) -> Progress:
        p = cls.__new__(cls)
        p.label, p.total, p.done, p.skipped, p.files, p.interval = "", None, 0, 0, 0, float("inf")
        p._last = p._start = time.monotonic()
        p._bar = None
        p._lock = threading.Lock()
        p._redirect = ExitStack()
        return p

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            else:
                self._tick()

    def skip(self, n: int) -> None:
        with self._lock:
            self.skipped += n
            if self._bar is not None:
                self._bar.update(n)

    def file_done(self) -> None:
        with self._lock:
            self.files += 1

    def percent(self) -> float | None:
        """How far along, from the total (None when unknown); capped at 100 (an estimate can be low)."""
        if not self.total:
            return None
        return min(100.0, 100.0 * (self.done + self.skipped) / self.total)

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            rate = self.done / max(now - self._start, 1e-6)
            pct = self.percent()
            total = f" of ~{mb(self.total)} ({pct:.0f}%)" if pct is not None else ""
            log.info("%s: %s read%s (%s unchanged), %d files stored, %s/s", self.label, mb(self.done), total,
                     mb(self.skipped), self.files, mb(rate))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._redirect.close()
