"""A repository: one storage's layout — key names, the cached catalog, locks, orphan and temp detection.

Layout (docs/format.md)::

    snapshots/<id>.json     manifests (the commit markers)
    data/<id>/<source>.*    objects of snapshot <id>
    reports/<tier>/<id>.*   run reports
    locks/<uuid>.json       lock objects (see :mod:`backups.repository.locks`)
    verification/<app>/<stamp>-<token>.json   the verification record (:mod:`backups.repository.verification`)

The engine, the CLI and the DAG steps go through a :class:`Repository` to list ``data/``, to take locks and
to find leftovers, and read indexes (:mod:`backups.repository.index`); the key builders live in
:mod:`backups.catalog.manifest` (re-exported here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..catalog.manifest import ID_RE, Catalog, manifest_key, object_key
from ..storage.base import ObjectInfo, Storage
from .index import IndexEntry, iter_index
from .locks import LOCKS, HeldLock, LockInfo, Locks, overlap
from .verification import verification_key

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Repository", "IndexEntry", "iter_index", "Leftovers", "Locks", "HeldLock", "LockInfo", "LOCKS", "manifest_key", "object_key",
           "data_prefix", "report_key", "report_prefix", "repo_scope", "snapshot_scope", "verification_key"]

log = logging.getLogger(__name__)

DATA = "data/"
SNAPSHOTS = "snapshots/"


def data_prefix(snap_id: str, source: str | None = None) -> str:
    """``data/<id>/`` (every object of a snapshot) or ``data/<id>/<source>.`` (those of one source)."""
    return f"{DATA}{snap_id}/" + (f"{source}." if source else "")


def report_key(snap_id: str, ext: str) -> str:
    """``reports/<tier>/<id>.<ext>`` (the tier is the id's prefix: reports/manual/… for backup_manual)."""
    return f"{report_prefix(snap_id)}{ext}"


def report_prefix(snap_id: str) -> str:
    return f"reports/{snap_id.rsplit('-', 1)[0]}/{snap_id}."


def repo_scope() -> str:
    return "repo"


def snapshot_scope(snap_id: str, source: str | None = None) -> str:
    return f"snapshot/{snap_id}" + (f"/{source}" if source else "")


def run_scope(snap_id: str) -> str:
    """The lock of a whole `backupctl backup` run of ``snap_id``, held from its plan to its commit."""
    return f"run/{snap_id}"


def covers(lock_scope: str, snap_id: str) -> bool:
    """Whether a held lock protects ``data/<snap_id>/`` (an extraction, a commit, or a CLI run of that id)."""
    return overlap(lock_scope, snapshot_scope(snap_id)) or lock_scope == run_scope(snap_id)


@dataclass
class Leftovers:
    """What an interrupted run left behind, past the grace period (for prune)."""

    orphans: dict[str, list[ObjectInfo]]  #: snapshot id -> its objects (data/<id>/ without a manifest)
    temps: list[ObjectInfo]  #: ``.tmp-*`` objects of killed writers
    young: list[str]  #: orphan ids kept: inside the grace period
    locked: list[str]  #: orphan ids kept: a lock covers them


class Repository:
    """One storage seen as a repository. ``cfg`` provides ``application`` and ``locks`` (may be None in tests)."""

    def __init__(self, storage: Storage, cfg: Config | None = None, *, application: str | None = None) -> None:
        self.storage = storage
        self.cfg = cfg
        self.application = application or getattr(cfg, "application", None)
        self.locks = Locks.from_config(storage, cfg)
        self._catalog: Catalog | None = None

    @property
    def name(self) -> str:
        return self.storage.name

    # ---- keys -----------------------------------------------------------------------------------------
    manifest_key = staticmethod(manifest_key)
    object_key = staticmethod(object_key)
    #: ``verification/<application>/<stamp>-<token>.json``: one generation of the verification record
    verification_key = staticmethod(verification_key)

    # ---- catalog (loaded once per command; reload() after a commit or prune) ---------------------------
    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.storage, self.application)
        return self._catalog

    def committed(self, snap_id: str) -> bool:
        """True when the manifest of ``snap_id`` exists (read from the storage, not the cache)."""
        return self.storage.exists(manifest_key(snap_id))

    def manifest_ids(self) -> set[str]:
        """Ids of every manifest on the storage, of any application sharing it."""
        return {i.key[len(SNAPSHOTS):-len(".json")] for i in self.storage.list(SNAPSHOTS) if i.key.endswith(".json")}

    def data_sets(self) -> dict[str, list[ObjectInfo]]:
        """snapshot id -> its objects under ``data/<id>/``."""
        out: dict[str, list[ObjectInfo]] = {}
        for info in self.storage.list(DATA):
            parts = info.key.split("/")
            if len(parts) >= 3:
                out.setdefault(parts[1], []).append(info)
        return out

    def uncommitted(self) -> dict[str, list[ObjectInfo]]:
        """data/<id>/ sets without a manifest (an interrupted or running backup, or an interrupted prune)."""
        manifests = self.manifest_ids()
        return {sid: objs for sid, objs in self.data_sets().items() if sid not in manifests}

    # ---- verification record (monitoring's evidence; :mod:`backups.repository.verification`) -------------
    def verification(self) -> Any:
        """The newest verification record (a :class:`~backups.repository.verification.RecordRead`; never raises)."""
        from . import verification

        return verification.read(self.storage, self.application, self._legacy_failure())

    def _legacy_failure(self) -> dict[str, Any] | None:
        """A failed verification of this storage in the per-host file of earlier versions (see
        :func:`backups.repository.verification.legacy_failure`); None without a config."""
        if self.cfg is None or not hasattr(self.cfg, "storages"):
            return None
        from ..monitoring import status_dir
        from .verification import LEGACY_FILE, legacy_failure

        return legacy_failure(status_dir(self.cfg) / LEGACY_FILE, self.name)

    def record_verification(self, *, read_data: bool, checked: list[str], failed: dict[str, list[str]],
                            every: bool, by: str = "verify") -> str | None:
        """Add one verification's outcome to the record (a new generation); the key written, or None when a
        damaged record was left in place. Raises a storage error when the record cannot be written."""
        from . import verification

        return verification.record(self.storage, self.application, read_data=read_data, checked=checked,
                                   failed=failed, every=every, by=by, existing=self.manifest_ids(),
                                   legacy=self._legacy_failure())

    # ---- index I/O --------------------------------------------------------------------------------------
    def index(self, obj: dict[str, Any]) -> Iterator[tuple[str, IndexEntry]]:
        """The typed entries of one index object (a source's record ``objects.index``), validated as they stream."""
        return iter_index(self.storage, obj)

    # ---- locks ------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self, scope: str, *, exclusive: bool, operation: str, wait_seconds: float | None = None) -> Iterator[HeldLock]:
        held = self.locks.acquire(scope, exclusive=exclusive, operation=operation, wait_seconds=wait_seconds)
        try:
            yield held
        finally:
            held.release()

    @contextmanager
    def backup_lock(self, snap_id: str, source: str | None = None, *, operation: str = "backup") -> Iterator[list[HeldLock]]:
        """Shared repo lock + exclusive lock on the snapshot id (or on id + source, for one mapped extract)."""
        with self.lock(repo_scope(), exclusive=False, operation=operation) as repo, \
                self.lock(snapshot_scope(snap_id, source), exclusive=True, operation=operation) as snap:
            yield [repo, snap]

    # ---- leftovers --------------------------------------------------------------------------------------
    def leftovers(self, grace_seconds: float, now: float | None = None) -> Leftovers:
        """Orphaned data sets and temp objects older than the grace period — aged by the objects' modification
        time (never by the snapshot's logical date) — and not covered by any lock."""
        now = time.time() if now is None else now
        locks = self.locks.list()
        out = Leftovers({}, [], [], [])
        for sid, objs in sorted(self.uncommitted().items()):
            if ID_RE.match(sid) is None:
                continue
            if any(covers(lk.scope, sid) for lk in locks):
                out.locked.append(sid)
                continue
            newest = max((o.mtime or now) for o in objs)
            if now - newest <= grace_seconds:
                out.young.append(sid)
                continue
            out.orphans[sid] = objs
        out.temps = [t for t in self.storage.temps() if now - (t.mtime or now) > grace_seconds]
        return out

    def unexplained_data(self) -> list[str]:
        """Problems for ``verify --all``: data/<id>/ sets without a manifest that no lock covers — a deleted or
        lost manifest, or the leftover of a crashed run (``prune`` removes those past the grace period)."""
        locks = self.locks.list()
        out = []
        for sid, objs in sorted(self.uncommitted().items()):
            if any(covers(lk.scope, sid) for lk in locks):
                continue
            out.append(f"data/{sid}/: {len(objs)} object(s) but no manifest snapshots/{sid}.json (a deleted manifest, "
                       "or the leftover of an interrupted run: prune removes it after the grace period)")
        return out
