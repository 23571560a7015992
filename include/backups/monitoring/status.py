"""Build the status document (the contract in :mod:`backups.monitoring`) from the storages, the manifests, the
verification and drill records and — when given — Airflow's run metadata.

Algorithm: open every storage (one failing storage is recorded — reachable false, its error — and never fails the
whole status), probe it (list, write and delete a probe object, free space, total size of its objects, locks),
load its catalog; merge the catalogs (a snapshot id is one snapshot, wherever it is stored); per tier (every
configured tier and ``manual``) take the newest committed snapshot, its age against the tier's RPO, its size and
duration, and the tier's recent history; then the evidence that the newest snapshot can be restored: its whole
chain present with the recorded sizes on each storage holding it (:func:`presence`, from the one listing the probe
does anyway) and the storage's verification record (:func:`tier_verification`). The RPO is
``monitoring.rpo_hours[tier]`` or two intervals of the tier's cron (the largest gap between two consecutive runs
over a year, so a Monday-to-Saturday daily is not overdue on Sunday). The problems are added by :func:`backups.monitoring.health.evaluate`.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from ..catalog import data_time
from . import SCHEMA_VERSION
from .store import iso, last_drill, now_utc, parse_iso

if TYPE_CHECKING:
    from ..config import Config
    from ..storage import Resolver

log = logging.getLogger("backups.monitoring")

MANUAL = "manual"
#: how many snapshots of a tier the status keeps in ``history`` (plots, anomaly medians)
HISTORY_LENGTH = 30
PROBE_PREFIX = "monitoring/probe-"
#: presence problems kept per storage and tier in the document (the rest are counted in ``omitted``)
MAX_PRESENCE_PROBLEMS = 20


@lru_cache(maxsize=64)
def cron_max_gap_seconds(cron: str) -> float:
    """The largest gap between two consecutive fire times of ``cron`` over the year after
    :data:`~backups.config.CRON_REFERENCE` (at most 2000 runs). Config validation guarantees two fire times within
    ``CRON_HORIZON_YEARS`` of that date; a cron that stops firing later ends the scan (never an exception)."""
    from croniter import CroniterError, croniter

    from ..config import CRON_REFERENCE

    start = CRON_REFERENCE
    it = croniter(cron, start)
    prev = it.get_next(datetime)
    gap = 0.0
    for _ in range(2000):
        try:
            nxt = it.get_next(datetime)
        except CroniterError:
            break
        gap = max(gap, (nxt - prev).total_seconds())
        prev = nxt
        if nxt - start > timedelta(days=366):
            break
    return gap


def rpo_seconds(cfg: Config, tier: str) -> float | None:
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
def probe_storage(cfg: Config, name: str, resolver: Resolver | None = None, *, write_probe: bool = True) -> tuple[dict[str, Any], Any]:
    """The storage's entry of the status, and its catalog (None when unreachable). Never raises."""
    from ..errors import BackupError
    from ..repository import Repository
    from ..storage import open_storage

    sc = cfg.storages[name]
    entry: dict[str, Any] = {"storage": name, "type": sc.type, "reachable": False, "writable": None, "used_bytes": None,
                             "free_bytes": None, "snapshots": 0, "error": None, "describe": None, "locks": [],
                             "objects": None, "corrupt": [], "oldest_committed_at": None, "_sizes": None,
                             "verification_record": None, "_record": None, "frozen": None}
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
        sizes: dict[str, int] = {}
        frozen = FrozenObjects(storage, catalog) if storage.archive else None
        for info in storage.list(""):
            used += info.size or 0
            count += 1
            sizes[info.key] = info.size
            if frozen is not None:
                frozen.add(info)
        entry["used_bytes"], entry["objects"], entry["_sizes"] = used, count, sizes
        entry["frozen"] = frozen.to_dict() if frozen is not None else None
        entry["free_bytes"] = storage.free_bytes()
        if entry["free_bytes"] is not None and sc.type == "local":
            import shutil

            p = storage.unwrap().root if hasattr(storage, "unwrap") else None
            if p is not None:
                entry["total_bytes"] = shutil.disk_usage(p).total
    except Exception as exc:  # noqa: BLE001
        entry["error"] = f"listing failed: {exc}"
    rec = repo.verification()
    entry["_record"] = rec.doc if rec.problem is None else None
    entry["verification_record"] = {"state": rec.state, "key": rec.key, "problem": rec.problem}
    if rec.problem is None:
        sizes = entry["_sizes"]
        held = None if sizes is None else {k.split("/")[1] for k in sizes if k.startswith("data/") and k.count("/") >= 2}
        # a failure of a snapshot that is gone altogether (pruned: no manifest, no data) went with it; one whose
        # manifest alone vanished stays (its data is still there)
        entry["open_failures"] = {sid: {"since": f.get("since"), "at": f.get("at"), "read_data": f.get("read_data"),
                                        "problems": f["problems"][:5], "problem_count": len(f["problems"])}
                                  for sid, f in sorted(rec.doc["open"].items())
                                  if sid == "*" or held is None or sid in held or sid in catalog.snapshots
                                  or sid in catalog.broken}
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


def build_status(cfg: Config, resolver: Resolver | None = None, *, now: datetime | None = None, write_probe: bool = True,
                 airflow_runs: dict[str, dict[str, Any]] | None = None,
                 previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status document without its problems (see :func:`backups.monitoring.health.evaluate`).

    ``airflow_runs``: dag_id -> {"last_run": ..., "last_failure": ...} from Airflow's metadata (REST API);
    without it, the values of ``previous`` (the last status the monitoring DAG wrote) are carried over."""
    now = now or now_utc()
    storages, snaps, holders, catalogs = _probe_storages(cfg, resolver, write_probe)
    record_rollbacks(storages, previous)
    by_storage = {e["storage"]: e for e in storages}
    prev_tiers = {t.get("tier"): t for t in (previous or {}).get("tiers", []) if isinstance(t, dict)}
    tiers = []
    for tier in [*cfg.tiers, MANUAL]:
        tier_snaps = sorted((s for s in snaps.values() if s.tier == tier), key=lambda s: (s.logical_date, s.id))
        # a snapshot dated (or committed, by a host's clock) in the future would look fresh for ever: it never counts
        # as the newest, and is a problem of its own (health: ``future-dated:<tier>``)
        future = [s for s in tier_snaps if s.in_future(now)]
        current = [s for s in tier_snaps if s not in future]
        newest = max(current, key=lambda s: s.newness()) if current else None  # the newest data (docs/format.md)
        rpo = rpo_seconds(cfg, tier)
        committed = parse_iso(newest.doc["finished_at"]) if newest else None
        # the age counts from when the data was read (catalog.data_time), the basis of the drill's RPO too
        age = max(0.0, (now - data_time(newest)).total_seconds()) if newest else None
        overdue, state = tier_state(age, rpo)
        dag_id = f"backup_{tier}"  # the DAG factory's naming (orchestration.backup_dags), manual included
        runs = (airflow_runs or {}).get(dag_id)
        if runs is None:
            runs = {k: prev_tiers.get(tier, {}).get(k) for k in ("last_run", "last_failure")}
        tier_storages = list(cfg.tiers[tier].storages) if tier in cfg.tiers else list(cfg.storages)
        where = holders.get(newest.id, []) if newest else []
        present = presence(newest, where, catalogs, by_storage)
        last_ver, verification = tier_verification(cfg, newest, where, catalogs, by_storage, now)
        freshness = state
        if newest is not None:  # OK only when fresh, present and verified
            state = worst(state, "critical" if present["problems"] else "ok", verification["severity"])
        unexpected = _promoted_unexpectedly(newest, snaps)
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
            "freshness": freshness,  # the state by age alone (``state`` adds presence and verification)
            "size_bytes": int(newest.doc["totals"]["bytes"]) if newest else None,
            "stored_bytes": int(newest.doc["totals"]["stored_bytes"]) if newest else None,
            "duration_seconds": newest.doc.get("duration_seconds") if newest else None,
            "snapshots": len(tier_snaps),
            "future_dated": [s.id for s in future],
            "storages": holders.get(newest.id, []) if newest else [],
            "expected_storages": tier_storages,
            "last_run": runs.get("last_run"),
            "last_failure": runs.get("last_failure"),
            "last_verification": last_ver,
            "verification": verification,
            "presence": present,
            "history": [_snap_record(s) for s in tier_snaps[-HISTORY_LENGTH:]],
        })
    for entry in storages:
        rec = entry.pop("_record", None) or {}
        entry.pop("_sizes", None)
        entry["last_verification"] = rec.get("last")
        entry["last_read_data_ok"] = rec.get("last_read_data_ok")
        # the newest passed re-hash of anything on the storage (a verify --read-data, a backup's integrity check)
        stamps = [v.get("at") for v in (rec.get("verified") or {}).values() if v.get("read_data")]
        stamps += [(rec.get("last_read_data_ok") or {}).get("at")]
        entry["last_read_data_at"] = max((a for a in stamps if isinstance(a, str) and _not_future(parse_iso(a), now)),
                                         key=lambda a: cast(datetime, parse_iso(a)), default=None)
        entry["dependents"] = _dependents(catalogs.get(entry["storage"]), entry.get("open_failures") or {})
    doc = _document(cfg, now, tiers, storages)
    doc["_tables"] = _table_rows(snaps)
    return doc


def _probe_storages(cfg: Config, resolver: Resolver | None, write_probe: bool) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                          dict[str, list[str]], dict[str, Any]]:
    """(storage entries, snapshots by id, the storages holding each snapshot, catalogs of the reachable storages)."""
    storages: list[dict[str, Any]] = []
    snaps: dict[str, Any] = {}  # id -> Snapshot (first storage in config order that holds it)
    holders: dict[str, list[str]] = {}
    catalogs: dict[str, Any] = {}
    for name in cfg.storages:
        entry, catalog = probe_storage(cfg, name, resolver, write_probe=write_probe)
        storages.append(entry)
        if catalog is None:
            continue
        catalogs[name] = catalog
        for sid, s in catalog.snapshots.items():
            snaps.setdefault(sid, s)
            holders.setdefault(sid, []).append(name)
    return storages, snaps, holders, catalogs


def _promoted_unexpectedly(newest: Any, snaps: dict[str, Any]) -> bool:
    """A newest snapshot promoted to a full although an earlier snapshot could have been its parent."""
    unexpected = False
    if newest is not None and newest.doc.get("promoted_reason"):
        req = newest.doc.get("requested_type")
        unexpected = any(s.newness() < newest.newness() and (req == "incremental" or s.type == "full")
                         for s in snaps.values())
    return unexpected


def _document(cfg: Config, now: datetime, tiers: list[dict[str, Any]], storages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(now),
        "application": cfg.application,
        "state": "ok",
        "tiers": tiers,
        "storages": storages,
        "last_drill": last_drill(cfg, now),
        "problems": [],
        "reports": {"html": None, "json": None},
        "locks": [{"storage": s["storage"], **lk} for s in storages for lk in s.get("locks") or []],
    }


# -------------------------------------------------------------------------------------------------- evidence
def _not_future(at: datetime | None, now: datetime) -> datetime | None:
    """``at``, or None when it lies more than ``FUTURE_TOLERANCE`` after ``now`` (written by a host whose clock ran
    ahead: it would count as a recent verification until that date had passed)."""
    from ..catalog.manifest import FUTURE_TOLERANCE

    return None if at is not None and at > now + FUTURE_TOLERANCE else at


def _dependents(catalog: Any, ids: Any) -> dict[str, list[str]]:
    """id -> the snapshots (on the same storage) whose restore needs it, itself included, oldest first."""
    out: dict[str, list[str]] = {}
    if catalog is None:
        return out
    ordered = catalog.ordered()
    for sid in ids:
        out[sid] = [s.id for s in ordered if sid in s.chain]
    return out


def record_rollbacks(storages: list[dict[str, Any]], previous: dict[str, Any] | None) -> None:
    """The previous status (the monitoring's memory) against each storage's verification record, in place:

    * a record older than the one the previous status saw (its newest generation deleted, or replaced by an older
      copy) is a problem of the record (``verify-record:<storage>``), never a silent OK — generations' keys sort by
      their time (docs/format.md);
    * an open failure the previous status saw that the record no longer lists, with no passed verification of that
      snapshot since, and whose snapshot still has data on the storage (not pruned), stays open (``carried``): a
      record deleted and started afresh by the next backup must not close it."""
    prev = {s.get("storage"): s for s in (previous or {}).get("storages") or [] if isinstance(s, dict)}
    for entry in storages:
        rec, old = entry.get("verification_record"), prev.get(entry["storage"]) or {}
        if not isinstance(rec, dict) or rec.get("problem") or not entry.get("reachable"):
            continue
        before = (old.get("verification_record") or {}).get("key") if isinstance(old.get("verification_record"), dict) else None
        if isinstance(before, str) and before and (rec.get("key") is None or rec["key"] < before):
            what = f"went back to {rec['key']}" if rec.get("key") else "is gone"
            rec["problem"] = (f"storage {entry['storage']}: the verification record {what} (the last status saw "
                              f"{before}): its newest generation was removed or replaced, so open failures may have "
                              f"been lost; fix: `backupctl verify --all --read-data --storage {entry['storage']}` "
                              f"writes a new record")
            entry["_record"] = None
            continue
        doc, sizes = entry.get("_record"), entry.get("_sizes")
        was_open = old.get("open_failures") if isinstance(old.get("open_failures"), dict) else {}
        if doc is None or sizes is None or not was_open:
            continue
        held = {k.split("/")[1] for k in sizes if k.startswith("data/") and k.count("/") >= 2}
        for sid, f in was_open.items():
            if not isinstance(f, dict) or sid in doc["open"] or (sid != "*" and sid not in held):
                continue
            failed_at = parse_iso(f.get("at"))  # stamps have whole seconds: a pass in the same second is later
            passes = [doc["verified"].get(sid) or {}, doc["verified"].get("*") or {}]
            if any((passed_at := parse_iso(v.get("at"))) and failed_at and passed_at >= failed_at
                   and (v.get("read_data") or not f.get("read_data")) for v in passes):
                continue  # verified since: closed for good
            carried = {"since": f.get("since"), "at": f.get("at"), "read_data": f.get("read_data"),
                       "problems": [str(p) for p in (f.get("problems") or [])][:5], "carried": True}
            doc["open"][sid] = carried
            entry.setdefault("open_failures", {})[sid] = {**carried, "problem_count": f.get("problem_count")}


def presence(newest: Any, where: list[str], catalogs: dict[str, Any], by_storage: dict[str, Any]) -> dict[str, Any]:
    """Is every object the restore of ``newest`` needs on each storage holding it, with the recorded size?

    Uses the listing the probe made (one listing per storage, no extra request). ``problems``: one entry per
    storage and damaged object — {"storage", "snapshot", "object", "problem", "needed_by"}, ``needed_by`` the
    snapshots whose chains include that snapshot (the newest one included)."""
    out: dict[str, Any] = {"checked": [], "objects": 0, "problems": [], "omitted": {}}
    if newest is None:
        return out
    from ..errors import BackupError

    for name in where:
        cat, sizes = catalogs.get(name), by_storage[name].get("_sizes")
        if cat is None or sizes is None:
            out["problems"].append({"storage": name, "snapshot": newest.id, "object": None, "needed_by": [newest.id],
                                    "problem": "not checked: the storage could not be listed"})
            continue
        try:
            chain = cat.chain_of(cat.snapshots[newest.id])
        except BackupError as exc:
            out["problems"].append({"storage": name, "snapshot": newest.id, "object": None, "needed_by": [newest.id],
                                    "problem": exc.message})
            continue
        out["checked"].append(name)
        for s in chain:
            bad = []
            for obj in s.objects():
                out["objects"] += 1
                size = sizes.get(obj["key"])
                if size is None:
                    bad.append((obj["key"], "missing"))
                elif size != obj["size"]:
                    bad.append((obj["key"], f"size {size}, the manifest says {obj['size']}"))
            needed = _dependents(cat, [s.id])[s.id] if bad else []
            for key, problem in bad:
                if sum(p["storage"] == name for p in out["problems"]) >= MAX_PRESENCE_PROBLEMS:
                    out["omitted"][name] = out["omitted"].get(name, 0) + 1  # the document stays small (XCom)
                    continue
                out["problems"].append({"storage": name, "snapshot": s.id, "object": key, "problem": problem,
                                        "needed_by": needed})
    return out


def tier_verification(cfg: Config, newest: Any, where: list[str], catalogs: dict[str, Any], by_storage: dict[str, Any],
                      now: datetime) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(last_verification, verdict) of a tier's newest snapshot, from the verification records of the storages
    holding it. The chain's verification time is the oldest of its snapshots' last passed verifications.

    verdict ``state``: ``none`` (no snapshot: no verdict), ``ok``, ``never`` / ``overdue`` (no passed verification
    of the whole chain within ``monitoring.verify_max_age_days``: warning), ``failed`` (an open failure in the chain:
    critical on every storage holding it, else warning), ``unknown`` (the record is unreadable: critical)."""
    verdict: dict[str, Any] = {"state": "none", "severity": "ok", "failures": [], "storage": None, "at": None,
                               "max_age_days": cfg.monitoring.verify_max_age_days}
    if newest is None:
        return None, verdict
    from ..errors import BackupError

    best: dict[str, Any] | None = None
    failed_on: list[str] = []
    unknown: list[str] = []
    for name in where:
        entry, cat = by_storage[name], catalogs.get(name)
        rec = entry.get("_record")
        if rec is None or cat is None:
            unknown.append(name)
            continue
        try:
            chain = [s.id for s in cat.chain_of(cat.snapshots[newest.id])]
        except BackupError:
            chain = list(newest.chain)
        open_ = {sid: f for sid, f in rec["open"].items() if sid in chain or sid == "*"}
        for sid, f in sorted(open_.items()):
            verdict["failures"].append({"storage": name, "snapshot": sid, "since": f.get("since"),
                                        "problems": list(f.get("problems") or [])[:5]})
        if open_:
            failed_on.append(name)
            continue
        # a verification dated in the future (a host clock ahead) is no evidence of a recent one
        times = [_not_future(parse_iso((rec["verified"].get(sid) or {}).get("at")), now) for sid in chain]
        at = None if any(t is None for t in times) else min(t for t in times if t is not None)
        cand = {"at": iso(at), "ok": at is not None, "storage": name,
                "read_data": at is not None and all(rec["verified"][sid].get("read_data") for sid in chain)}
        if best is None or (at is not None and ((best_at := parse_iso(best["at"])) is None or at > best_at)):
            best = cand
    limit = cfg.monitoring.verify_max_age_days * 86400.0
    if unknown:
        verdict.update(state="unknown", severity="critical", storage=unknown[0])
        return {"at": None, "ok": False, "storage": unknown[0], "read_data": False}, verdict
    if failed_on:
        sev = "critical" if best is None or not best["ok"] else "warning"
        verdict.update(state="failed", severity=sev, storage=failed_on[0])
        return {"at": verdict["failures"][0]["since"], "ok": False, "storage": failed_on[0], "read_data": False}, verdict
    at = parse_iso(best["at"]) if best else None
    if at is None:
        verdict.update(state="never", severity="warning", storage=best["storage"] if best else None)
        return None, verdict
    assert best is not None  # at came from best
    verdict.update(storage=best["storage"], at=best["at"])
    if (now - at).total_seconds() > limit:
        verdict.update(state="overdue", severity="warning")
        return {**best, "ok": False}, verdict
    verdict.update(state="ok")
    return best, verdict


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
