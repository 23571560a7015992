"""Step 3, restore: a tier's planned snapshot restored into its scratch folder and scratch databases (after the
thaw wait of an archive storage), with the restore command's steps."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...errors import BackupError
from ..base import Result
from ..restore import Location, RestoredSource, RestoreRequest
from .common import admin_dsn, db_dsn_for, first_line, log, settings
from .isolation import Scratch
from .plan import DrillPlan

if TYPE_CHECKING:
    from ...storage import Resolver


# ------------------------------------------------------------------------------------------------ 3. restore
@dataclass
class TierRestore(Result):
    tier: str
    ok: bool
    snapshot_id: str | None = None
    storage: str | None = None
    target: str | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    thaw_seconds: float = 0.0
    restore_seconds: float = 0.0
    error: str | None = None
    #: the scratch it restored into (:class:`Scratch` ``.to_dict()``): what its verification reads
    scratch: dict[str, Any] | None = None


def restore_tier(cfg: Config, plan: DrillPlan, scratch: Scratch, tier: str, resolver: Resolver | None = None, *,
                 poll_seconds: float = 60.0, thaw_timeout: float | None = None,
                 hold: ExitStack | None = None) -> TierRestore:
    """Restore the tier's planned snapshot into its scratch folder (and PostgreSQL dumps into the scratch
    databases). A failure is returned as ``error`` naming the snapshot (and the object), not raised.

    ``hold``: after the thaw wait, the shared lock of the tier's storage is entered into it and stays held when
    this returns — the caller keeps it over :func:`verify_tier` (``locked=True``), so a prune waits until the
    restored data is verified. Without it each restore step takes and releases its own lock."""
    from .. import restore as restore_command

    tp = plan.tier(tier)
    out = TierRestore(tier=tier, ok=False, snapshot_id=tp.snapshot_id, storage=tp.storage, target=scratch.targets[tier],
                      scratch=scratch.to_dict())
    if tp.error or not tp.location:
        out.error = f"not restored: {tp.error}"
        return out
    loc = Location.from_dict(tp.location)
    try:
        if loc.archive:
            if not settings(cfg).approve_archive:
                out.error = (f"storage {loc.storage} is an archive storage: thawing {loc.objects} object(s) of "
                             f"{loc.snapshot_id} is billed and needs approval (set drill.approve_archive: true)")
                return out
            t0 = time.monotonic()
            restore_command.wait_for_archive(cfg, loc, resolver, poll_seconds=poll_seconds,
                                             timeout_seconds=thaw_timeout)
            out.thaw_seconds = round(time.monotonic() - t0, 3)
        if hold is not None:  # not over the thaw wait (hours): a prune may run then, the chain is re-read below
            hold.enter_context(restore_command.shared_lock(cfg, loc.storage, resolver, operation="drill"))
        t0 = time.monotonic()
        dbs = scratch.databases.get(tier, {})
        admin = admin_dsn(cfg, resolver) if dbs else None
        plain = [s for s in loc.sources if s not in dbs]
        merged: dict[str, RestoredSource] = {}
        steps: list[tuple[list[str], str | None]] = ([(plain, None)] if plain else []) + [
            ([s], db_dsn_for(admin, name)) for s, name in dbs.items() if admin]
        for i, (sources, pg_dsn) in enumerate(steps):
            part = Location.from_dict({**loc.to_dict(), "sources": sources,
                                       "kinds": {s: loc.kinds[s] for s in sources}})
            req = RestoreRequest(target=scratch.targets[tier], snapshot=loc.snapshot_id, tier=tier, storage=loc.storage,
                                 sources=sources, force=i > 0)
            if i == 0:
                restore_command.check_prerequisites(cfg, req, Location.from_dict({**loc.to_dict(), "sources": plain or sources}),
                                                    validate=False)
            res = restore_command.run_restore(cfg, req, part, resolver, pg_dsn, locked=hold is not None)
            merged.update(res.sources)
        out.restore_seconds = round(time.monotonic() - t0, 3)
        out.sources = {n: r.to_dict() for n, r in merged.items()}
        out.files = sum(r.files for r in merged.values())
        out.bytes = sum(r.bytes for r in merged.values())
        out.ok = True
    except BackupError as exc:
        out.error = f"restore of snapshot {loc.snapshot_id} (tier {tier}) from storage {loc.storage} failed: {first_line(exc)}"
        log.error("drill %s: %s", plan.drill_id, out.error)
    return out
