"""Find a storage that can serve a snapshot: the named one, or the first (config order) that is reachable and
holds the snapshot with its whole chain — the CLI's ``restore`` and the ``restore_snapshot`` DAG share it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..catalog.manifest import Catalog, Snapshot
from ..errors import IntegrityError
from ..storage import Storage
from ..storage.reach import first_serving

if TYPE_CHECKING:
    from ..config import Config
    from ..storage import Resolver


def find_snapshot(cfg: Config, ref: str, tier: str | None = None, *, storage: str | None = None,
                  resolver: Resolver | None = None) -> tuple[Storage, Catalog, Snapshot, dict[str, str]]:
    """(storage opened read-only, its catalog, the snapshot, {skipped storage: why}) — the rule of
    :func:`backups.storage.reach.first_serving`: a storage that is unreachable or lacks part of the chain is
    skipped and named; the named ``storage`` must serve."""

    def serve(st: Storage) -> tuple[Catalog, Snapshot]:
        cat = Catalog(st, cfg.application)
        snap = cat.get(ref, tier)
        missing = cat.missing_objects(snap)  # also raises when a snapshot of the chain is missing
        if missing:
            raise IntegrityError(f"storage {st.name}: {len(missing)} object(s) of {snap.id}'s chain are missing or "
                                 f"damaged, e.g. {missing[0]}",
                                 hint="restore from another storage (or leave the storage unset)")
        return cat, snap

    st, (cat, snap), skipped = first_serving(cfg, [storage] if storage else None, resolver, serve,
                                             what=f"serve snapshot {ref!r}",
                                             hint="check `backupctl list --storage NAME` for each storage")
    return st, cat, snap, skipped
