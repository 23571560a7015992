"""Build the status document (the contract in :mod:`backups.monitoring`) from the storages, the manifests, the
verification and drill records and — when given — Airflow's run metadata.

Algorithm: open every storage (one failing storage is recorded — reachable false, its error — and never fails the
whole status), probe it (list, write and delete a probe object, free space, total size of its objects, locks),
load its catalog; merge the catalogs (a snapshot id is one snapshot, wherever it is stored); per tier (every
configured tier and ``manual``) take the newest committed snapshot, its age against the tier's RPO, its size and
duration, and the tier's recent history. The RPO is ``monitoring.rpo_hours[tier]`` or two intervals of the tier's
cron (the largest gap between two consecutive runs over a year, so a Monday-to-Saturday daily is not overdue on
Sunday). The problems are added by :func:`backups.monitoring.health.evaluate`.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from . import SCHEMA_VERSION
from .store import iso, last_drill, now_utc, parse_iso, verifications

log = logging.getLogger("backups.monitoring")

MANUAL = "manual"
#: how many snapshots of a tier the status keeps in ``history`` (plots, anomaly medians)
HISTORY_LENGTH = 30
PROBE_PREFIX = "monitoring/probe-"


@lru_cache(maxsize=64)
def cron_max_gap_seconds(cron: str) -> float:
    """The largest gap between two consecutive fire times of ``cron`` over the next year (at most 2000 runs)."""
    from croniter import croniter

    start = datetime(2026, 1, 1)
    it = croniter(cron, start)
    prev = it.get_next(datetime)
    gap = 0.0
    for _ in range(2000):
        nxt = it.get_next(datetime)
        gap = max(gap, (nxt - prev).total_seconds())
        prev = nxt
        if nxt - start > timedelta(days=366):
            break
    return gap


def rpo_seconds(cfg: Any, tier: str) -> float | None:
    """The tier's recovery point objective in seconds; None for an unscheduled tier without ``rpo_hours``."""
    mon = cfg.monitoring
    if tier in mon.rpo_hours:
        return float(mon.rpo_hours[tier]) * 3600
    sched = cfg.tiers[tier].schedule if tier in cfg.tiers else None
    return 2 * cron_max_gap_seconds(sched) if sched else None


def tier_state(age: float | None, rpo: float | None) -> tuple[bool, str]:
    """(overdue, state): no snapshot at all is critical for a scheduled tier; past the RPO warning; past 2 x critical."""
    if rpo is None:
        return False, "ok"
    if age is None:
        return True, "critical"
    if age > 2 * rpo:
        return True, "critical"
    if age > rpo:
        return True, "warning"
    return False, "ok"


def worst(*states: str) -> str:
    order = {"ok": 0, "warning": 1, "critical": 2}
    return max(states, key=lambda s: order.get(s, 0), default="ok") if states else "ok"


# -------------------------------------------------------------------------------------------------- storages
def probe_storage(cfg: Any, name: str, resolver: Any = None, *, write_probe: bool = True) -> tuple[dict[str, Any], Any]:
    """The storage's entry of the status, and its catalog (None when unreachable). Never raises."""
    from ..errors import BackupError
    from ..repository import Repository
    from ..storage import open_storage

    sc = cfg.storages[name]
    entry: dict[str, Any] = {"storage": name, "type": sc.type, "reachable": False, "writable": None, "used_bytes": None,
                             "free_bytes": None, "snapshots": 0, "error": None, "describe": None, "locks": [],
                             "objects": None, "corrupt": [], "oldest_committed_at": None}
    try:
        storage = open_storage(cfg, name, resolver)
        entry["describe"] = storage.describe()
        storage.check()
        repo = Repository(storage, cfg)
        catalog = repo.catalog
        entry["reachable"] = True
    except BackupError as exc:
        entry["error"] = exc.message
        entry["hint"], entry["exit_code"] = exc.hint, exc.exit_code  # for `backupctl status` (not --check)
        return entry, None
    except Exception as exc:  # noqa: BLE001 - a driver error must not take the whole status down
        entry["error"] = f"{exc.__class__.__name__}: {exc}"
        entry["hint"], entry["exit_code"] = None, 5
        return entry, None
    entry["snapshots"] = len(catalog.snapshots)
    entry["oldest_committed_at"] = min((s.doc["finished_at"] for s in catalog.snapshots.values()), default=None)
    entry["corrupt"] = sorted(catalog.broken)
    try:
        used = count = 0
        frozen = FrozenObjects(storage, catalog) if storage.archive else None
        for info in storage.list(""):
            used += info.size or 0
            count += 1
            if frozen is not None:
                frozen.add(info)
        entry["used_bytes"], entry["objects"] = used, count
        entry["frozen"] = frozen.to_dict() if frozen is not None else None
        entry["free_bytes"] = storage.free_bytes()
        if entry["free_bytes"] is not None and sc.type == "local":
            import shutil

            p = storage.unwrap().root if hasattr(storage, "unwrap") else None
            if p is not None:
                entry["total_bytes"] = shutil.disk_usage(p).total
    except Exception as exc:  # noqa: BLE001
        entry["error"] = f"listing failed: {exc}"
    try:
        entry["locks"] = repo.locks.report()
    except Exception as exc:  # noqa: BLE001
        log.warning("monitoring: cannot list the locks of %s: %s", name, exc)
    if write_probe and not storage.archive:  # no probe into an archive class (minimum storage charges)
        key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        try:
            storage.put_bytes(key, b"backup monitoring write probe\n")
            storage.delete(key)
            entry["writable"] = True
        except Exception as exc:  # noqa: BLE001
            entry["writable"] = False
            entry["error"] = f"not writable: {getattr(exc, 'message', None) or exc}"
    return entry, catalog


class FrozenObjects:
    """Objects of an archive storage in an archive class (GLACIER, DEEP_ARCHIVE): unreadable until thawed by a
    restore or drill. Counted per tier (from the snapshot id in ``data/<id>/``) from the status's one listing."""

    def __init__(self, storage: Any, catalog: Any) -> None:
        from ..config import ARCHIVE_CLASSES

        self.classes, self.catalog = ARCHIVE_CLASSES, catalog
        self.objects = self.bytes = 0
        self.tiers: dict[str, int] = {}

    def add(self, info: Any) -> None:
        if info.storage_class not in self.classes:
            return
        self.objects += 1
        self.bytes += info.size or 0
        parts = info.key.split("/")
        snap = self.catalog.snapshots.get(parts[1]) if len(parts) > 2 and parts[0] == "data" else None
        tier = snap.tier if snap is not None else "unreferenced"
        self.tiers[tier] = self.tiers.get(tier, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "bytes": self.bytes, "tiers": dict(sorted(self.tiers.items()))}


# -------------------------------------------------------------------------------------------------- tiers
def _snap_record(s: Any) -> dict[str, Any]:
    d = s.doc
    return {"id": d["id"], "logical_date": d["logical_date"], "size_bytes": int(d["totals"]["bytes"]),
            "stored_bytes": int(d["totals"]["stored_bytes"]),
            "duration_seconds": d.get("duration_seconds"), "type": d["type"], "finished_at": d["finished_at"]}


def build_status(cfg: Any, resolver: Any = None, *, now: datetime | None = None, write_probe: bool = True,
                 airflow_runs: dict[str, dict[str, Any]] | None = None,
                 previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status document without its problems (see :func:`backups.monitoring.health.evaluate`).

    ``airflow_runs``: dag_id -> {"last_run": ..., "last_failure": ...} from Airflow's metadata (REST API);
    without it, the values of ``previous`` (the last status the monitoring DAG wrote) are carried over."""
    now = now or now_utc()
    storages: list[dict[str, Any]] = []
    snaps: dict[str, Any] = {}  # id -> Snapshot (first storage in config order that holds it)
    holders: dict[str, list[str]] = {}
    for name in cfg.storages:
        entry, catalog = probe_storage(cfg, name, resolver, write_probe=write_probe)
        storages.append(entry)
        if catalog is None:
            continue
        for sid, s in catalog.snapshots.items():
            snaps.setdefault(sid, s)
            holders.setdefault(sid, []).append(name)
    verified = verifications(cfg)
    prev_tiers = {t.get("tier"): t for t in (previous or {}).get("tiers", []) if isinstance(t, dict)}
    tiers = []
    for tier in [*cfg.tiers, MANUAL]:
        tier_snaps = sorted((s for s in snaps.values() if s.tier == tier), key=lambda s: (s.logical_date, s.id))
        newest = tier_snaps[-1] if tier_snaps else None
        rpo = rpo_seconds(cfg, tier)
        committed = parse_iso(newest.doc["finished_at"]) if newest else None
        age = max(0.0, (now - committed).total_seconds()) if committed else None
        overdue, state = tier_state(age, rpo)
        dag_id = f"backup_{tier}"  # the DAG factory's naming (orchestration.dags), manual included
        runs = (airflow_runs or {}).get(dag_id)
        if runs is None:
            runs = {k: prev_tiers.get(tier, {}).get(k) for k in ("last_run", "last_failure")}
        tier_storages = list(cfg.tiers[tier].storages) if tier in cfg.tiers else list(cfg.storages)
        last_ver = None
        for sto in tier_storages:
            rec = (verified.get(sto) or {}).get("last")
            if rec and (last_ver is None or (parse_iso(rec.get("at")) or now) > (parse_iso(last_ver["at"]) or now)):
                last_ver = {"at": rec.get("at"), "ok": bool(rec.get("ok")), "storage": sto,
                            "read_data": bool(rec.get("read_data"))}
        unexpected = False
        if newest is not None and newest.doc.get("promoted_reason"):
            req = newest.doc.get("requested_type")
            unexpected = any(s.logical_date < newest.logical_date and (req == "incremental" or s.type == "full")
                             for s in snaps.values())
        tiers.append({
            "tier": tier, "dag_id": dag_id,
            "schedule": cfg.tiers[tier].schedule if tier in cfg.tiers else None,
            "configured_type": cfg.tiers[tier].type if tier in cfg.tiers else "full",
            "newest_id": newest.id if newest else None,
            "newest_type": newest.type if newest else None,
            "newest_logical_date": newest.doc["logical_date"] if newest else None,
            "newest_committed_at": iso(committed),
            "requested_type": newest.doc.get("requested_type") if newest else None,
            "promoted_reason": newest.doc.get("promoted_reason") if newest else None,
            "promoted_unexpectedly": unexpected,  # an earlier snapshot could have been its parent
            "age_seconds": round(age, 1) if age is not None else None,
            "rpo_seconds": rpo,
            "overdue": overdue,
            "state": state,
            "size_bytes": int(newest.doc["totals"]["bytes"]) if newest else None,
            "stored_bytes": int(newest.doc["totals"]["stored_bytes"]) if newest else None,
            "duration_seconds": newest.doc.get("duration_seconds") if newest else None,
            "snapshots": len(tier_snaps),
            "storages": holders.get(newest.id, []) if newest else [],
            "expected_storages": tier_storages,
            "last_run": runs.get("last_run"),
            "last_failure": runs.get("last_failure"),
            "last_verification": last_ver,
            "history": [_snap_record(s) for s in tier_snaps[-HISTORY_LENGTH:]],
        })
    for entry in storages:
        entry["last_verification"] = (verified.get(entry["storage"]) or {}).get("last")
        entry["last_read_data_ok"] = (verified.get(entry["storage"]) or {}).get("last_read_data_ok")
    doc = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(now),
        "application": cfg.application,
        "state": "ok",
        "tiers": tiers,
        "storages": storages,
        "last_drill": last_drill(cfg),
        "problems": [],
        "reports": {"html": None, "json": None},
        "locks": [{"storage": s["storage"], **lk} for s in storages for lk in s.get("locks") or []],
    }
    doc["_tables"] = _table_rows(snaps)
    return doc


def _table_rows(snaps: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per tier: the newest snapshot's and its predecessor's per-source bytes and per-table row counts (for the
    shrink check). Internal (``_tables``), dropped from the published document."""
    out: dict[str, dict[str, Any]] = {}
    by_tier: dict[str, list[Any]] = {}
    for s in snaps.values():
        by_tier.setdefault(s.tier, []).append(s)
    for tier, lst in by_tier.items():
        lst.sort(key=lambda s: (s.logical_date, s.id))
        pair = lst[-2:]
        out[tier] = {"ids": [s.id for s in pair], "sources": [_source_sizes(s) for s in pair]}
    return out


def _source_sizes(s: Any) -> dict[str, Any]:
    res = {}
    for name, rec in s.sources.items():
        tables = (rec.get("details") or {}).get("tables") or {}
        res[name] = {"bytes": rec.get("bytes"),
                     "tables": {t: v.get("rows") for t, v in tables.items() if isinstance(v, dict)}}
    return res


def published(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as written and read by others (internal keys starting with ``_`` dropped)."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}
