"""Archive tiers (S3 GLACIER / DEEP_ARCHIVE): make the objects a restore or verify needs readable first.

Requests a restore of every needed object that is not readable yet, then polls until all are, logging progress
(the CLI's loop; the DAGs use a deferrable sensor over :func:`pending`). Manifests stay in an instant class,
so planning and listing never wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..catalog.manifest import Catalog, Snapshot
from ..errors import StorageError
from ..storage.base import Storage

log = logging.getLogger(__name__)

#: how long a restore or drill waits for archived objects by default (S3 GLACIER bulk retrievals take up to 12 h,
#: DEEP_ARCHIVE up to 48 h); the CLI's ``--thaw-timeout`` changes it
THAW_TIMEOUT_SECONDS = 48 * 3600.0


def needed_keys(catalog: Catalog, snap: Snapshot) -> list[str]:
    """Every object key a restore of ``snap`` reads: the objects of each snapshot of its chain."""
    return [o["key"] for s in catalog.chain_of(snap) for o in s.objects()]


def pending(storage: Storage, keys: Iterable[str], days: int = 2) -> list[str]:
    """Request restores; return the keys that are not readable yet."""
    if not storage.archive:
        return []
    return [k for k in keys if not storage.restore_request(k, days)]


@dataclass
class ThawPoll:
    """One archive wait, polled: :meth:`poll` requests the restores of what is still frozen and says whether every
    key is readable. **The one poll** of every archive wait: :func:`wait_readable` (the CLI's loop), the DAG's
    ``WaitForArchiveSensor.poke`` and its deferrable ``WaitForArchiveTrigger.run`` all call it."""

    storage: Storage
    keys: list[str]
    days: int = 2
    left: list[str] | None = None  #: the keys not readable at the last poll (None: not polled yet)
    polls: int = 0
    started: float = field(default_factory=time.monotonic)

    def poll(self) -> bool:
        """Request restores of the keys still frozen; True when every key is readable (at once for a storage that
        is not an archive). Storage errors propagate (a transient one: the caller polls again later)."""
        if not self.storage.archive:
            self.left = []
            return True
        self.polls += 1
        self.left = pending(self.storage, self.keys if self.left is None else self.left, self.days)
        return not self.left

    @property
    def waited(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def progress(self) -> str:
        return (f"{self.storage.name}: {len(self.left or [])} of {len(self.keys)} archived object(s) still being "
                f"restored by S3 ({self.waited / 60:.0f} min so far)")

    def expired(self, timeout_seconds: float) -> StorageError:
        left = self.left or ["?"]
        return StorageError(f"{self.storage.name}: {len(left)} of {len(self.keys)} archived object(s) still not thawed "
                            f"after {_duration(self.waited)} (thaw timeout {_duration(timeout_seconds)}), e.g. {left[0]}",
                            hint="the thaw requests stay active: run the same command again later, with a longer "
                                 "--thaw-timeout (restore, drill), or restore from an instant storage (--storage); "
                                 "GLACIER takes minutes to hours, DEEP_ARCHIVE up to 48 h")


def wait_readable(storage: Storage, keys: list[str], *, poll_seconds: float = 60.0,
                  timeout_seconds: float = THAW_TIMEOUT_SECONDS) -> None:
    """Request the restores of ``keys`` and poll (:class:`ThawPoll`) every ``poll_seconds`` until all are readable
    (at once for a storage that is not an archive); StorageError after ``timeout_seconds``."""
    p = ThawPoll(storage, list(keys))
    while not p.poll():
        if p.waited > timeout_seconds:
            raise p.expired(timeout_seconds)
        log.info("%s", p.progress())
        time.sleep(max(0.0, min(poll_seconds, timeout_seconds - p.waited + 0.01)))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
