"""Find a storage that can serve a snapshot: the named one, or the first (config order) that is reachable and
holds the snapshot with its whole chain — the CLI's ``restore`` and the ``restore_snapshot`` DAG share it."""

from __future__ import annotations

import logging
from typing import Any

from ..catalog.manifest import Catalog, Snapshot
from ..errors import BackupError, IntegrityError, StorageError
from ..storage import Storage, open_storage

log = logging.getLogger(__name__)


def find_snapshot(cfg: Any, ref: str, tier: str | None = None, *, storage: str | None = None,
                  resolver: Any = None) -> tuple[Storage, Catalog, Snapshot, dict[str, str]]:
    """(storage opened read-only, its catalog, the snapshot, {skipped storage: why})."""
    names = [storage] if storage else list(cfg.storages)
    skipped: dict[str, str] = {}
    errors: list[BackupError] = []
    for n in names:
        try:
            st = open_storage(cfg, n, resolver, read_only=True)
            st.check()
            cat = Catalog(st, cfg.application)
            snap = cat.get(ref, tier)
            missing = cat.missing_objects(snap)  # also raises when a snapshot of the chain is missing
            if missing:
                raise IntegrityError(f"storage {n}: {len(missing)} object(s) of {snap.id}'s chain are missing or damaged, "
                                     f"e.g. {missing[0]}", hint="restore from another storage (or leave the storage unset)")
            return st, cat, snap, skipped
        except BackupError as exc:
            if storage:
                raise
            skipped[n] = exc.message
            errors.append(exc)
            log.warning("storage %s cannot serve %s: %s", n, ref, exc.message)
    if len(errors) == 1:
        raise errors[0]
    kind = type(errors[0]) if len({type(e) for e in errors}) == 1 else StorageError
    raise kind(f"no storage can serve snapshot {ref!r}:\n  " + "\n  ".join(f"{n}: {m}" for n, m in skipped.items()),
               hint="check `backupctl list --storage NAME` for each storage")
