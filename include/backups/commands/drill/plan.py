"""Step 1, planning: the request checked against the config, and per tier the snapshot to restore (the newest
whose chain is complete on the drill storage, opened read-only)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from ...config import Config, same_database
from ...errors import BackupError, ConfigError, RefusedError
from ..base import Result
from ..restore import RestoreRequest
from .common import admin_dsn, drill_id_for, iso_utc, log, scratch_root, settings, utc_now

if TYPE_CHECKING:
    from ...storage import Resolver


# ------------------------------------------------------------------------------------------------ request
@dataclass
class DrillRequest(Result):
    """What to drill: the storage (None: ``drill.storage``, else each tier's last storage), the tiers (None:
    ``drill.tiers``, else all), who runs it. ``started_at`` / ``drill_id`` default to now."""

    storage: str | None = None
    tiers: list[str] | None = None
    started_at: str | None = None
    drill_id: str | None = None
    door: str = "cli"
    run_id: str = ""


def check_request(cfg: Config, req: DrillRequest) -> DrillRequest:
    d = settings(cfg)
    storage = req.storage or d.storage
    if storage and storage not in cfg.storages:
        raise ConfigError(f"drill: unknown storage {storage!r}", hint=f"choose from: {', '.join(cfg.storages)}")
    tiers = [t for t in (req.tiers or d.tiers or list(cfg.tiers)) if t]
    for t in tiers:
        if t not in cfg.tiers:
            raise ConfigError(f"drill: unknown tier {t!r}", hint=f"choose from: {', '.join(cfg.tiers)}")
        if storage and storage not in cfg.tiers[t].storages:
            raise ConfigError(f"drill: tier {t!r} does not write to storage {storage!r}",
                              hint=f"its storages: {', '.join(cfg.tiers[t].storages)}; drill it from one of them "
                                   "(or leave the storage unset: each tier's last storage)")
    started = datetime.fromisoformat(req.started_at) if req.started_at else utc_now()
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    started = started.replace(microsecond=0)
    return DrillRequest(storage=storage, tiers=tiers, started_at=iso_utc(started),
                        drill_id=req.drill_id or drill_id_for(started), door=req.door, run_id=req.run_id or "")


# ------------------------------------------------------------------------------------------------ 1. plan
@dataclass
class TierPlan(Result):
    tier: str
    storage: str
    snapshot_id: str | None = None
    logical_date: str | None = None
    #: when its data was read (:func:`backups.catalog.data_time`): what the RPO counts from
    data_time: str | None = None
    location: dict[str, Any] | None = None
    passed_over: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class DrillPlan(Result):
    drill_id: str
    started_at: str
    door: str
    run_id: str
    storage: str | None
    tiers: list[dict[str, Any]]
    seconds: float

    def tier(self, name: str) -> TierPlan:
        for t in self.tiers:
            if t["tier"] == name:
                return TierPlan.from_dict(t)
        raise ConfigError(f"drill {self.drill_id}: tier {name!r} is not in its plan")

    @property
    def names(self) -> list[str]:
        return [t["tier"] for t in self.tiers]


def _plan_tier(cfg: Config, req: DrillRequest, tier: str, resolver: Resolver | None) -> TierPlan:
    from ...catalog import Catalog, data_time
    from ...storage import open_storage
    from .. import restore as restore_command

    storage = req.storage or cfg.tiers[tier].storages[-1]
    out = TierPlan(tier=tier, storage=storage)
    try:
        st = open_storage(cfg, storage, resolver, read_only=True)
        st.check()
        cat = Catalog(st, cfg.application)
        chosen = None
        now = datetime.now(UTC)
        for snap in sorted(cat.ordered(tier), key=lambda s: s.newness(), reverse=True):  # the newest data first
            if snap.in_future(now):
                out.passed_over.append(f"{snap.id}: dated in the future (a mistyped --logical-date or a host clock "
                                       f"ahead): not the newest data")
                continue
            try:
                missing = cat.missing_objects(snap)
            except BackupError as exc:
                out.passed_over.append(f"{snap.id}: {exc.message}")
                continue
            if missing:
                out.passed_over.append(f"{snap.id}: {len(missing)} object(s) of its chain missing or damaged, e.g. {missing[0]}")
                continue
            chosen = snap
            break
        # damaged manifests of the tier newer than the chosen snapshot (ids sort by their logical date)
        out.passed_over = [f"{sid}: manifest damaged: {msg}" for sid, msg in sorted(cat.broken.items(), reverse=True)
                           if sid.startswith(f"{tier}-") and (chosen is None or sid > chosen.id)] + out.passed_over
        if chosen is None:
            why = f" ({len(out.passed_over)} incomplete: {out.passed_over[0]})" if out.passed_over else ""
            out.error = f"no restorable snapshot of tier {tier} on storage {storage}{why}"
            return out
        target = str(scratch_root(cfg, req.drill_id or "") / tier)
        loc = restore_command.locate(cfg, RestoreRequest(target=target, snapshot=chosen.id, tier=tier, storage=storage),
                                     resolver)
        out.snapshot_id, out.logical_date, out.location = chosen.id, loc.logical_date, loc.to_dict()
        out.data_time = iso_utc(data_time(chosen))
    except BackupError as exc:
        out.error = f"tier {tier}: storage {storage}: {exc.message}"
    if out.passed_over:
        log.warning("drill: tier %s: passed over %d newer snapshot(s) whose chain is incomplete on %s: %s", tier,
                    len(out.passed_over), storage, "; ".join(out.passed_over))
    return out


def plan_drill(cfg: Config, req: DrillRequest, resolver: Resolver | None = None) -> DrillPlan:
    """Per tier the snapshot to restore (newest with a complete chain on the drill storage), from a storage opened
    read-only. A tier without one is planned with its ``error`` (a finding), not raised. Refuses a scratch
    PostgreSQL server that is a source's live database."""
    t0 = time.monotonic()
    req = check_request(cfg, req)
    tiers = [_plan_tier(cfg, req, t, resolver) for t in req.tiers or []]
    plan = DrillPlan(drill_id=req.drill_id or "", started_at=req.started_at or "", door=req.door, run_id=req.run_id,
                     storage=req.storage, tiers=[t.to_dict() for t in tiers], seconds=round(time.monotonic() - t0, 3))
    if any("postgres" in (t.location or {}).get("kinds", {}).values() for t in tiers):
        guard_scratch_server(cfg, resolver)
    for t in tiers:
        log.info("drill %s: tier %s: %s", plan.drill_id, t.tier, t.error or
                 f"{t.snapshot_id} (logical date {t.logical_date}, data read {t.data_time}) from {t.storage}")
    return plan


def guard_scratch_server(cfg: Config, resolver: Resolver | None = None) -> None:
    """RefusedError when the scratch server's DSN is the live database of a postgres source."""
    admin = admin_dsn(cfg, resolver)
    if not admin:
        return
    for name, src in cfg.sources.items():
        if src.type != "postgres":
            continue
        try:
            live = src.dsn or (resolver.postgres_dsn(cast(str, src.conn_id)) if resolver is not None else None)
        except BackupError:
            live = None
        if live and same_database(admin, live):
            raise RefusedError(f"drill: the scratch PostgreSQL server is the live database of source {name!r}",
                               hint="point drill.postgres at an admin database (e.g. dbname=postgres) of a server where "
                                    "the drill may create and drop its own drill_* databases")
