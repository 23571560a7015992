"""Health checks: turn a status document into problems with stable keys.

A problem is ``{"key", "severity": "warning" | "critical", "summary", "since", "runs"}``. The key names the
check and its object (``stale:daily``, ``storage-unreachable:offsite``, ``shrink:daily:app_db.orders``) and never
contains a value that changes from run to run, so the alert state machine (:mod:`.alerts`) recognises an open
problem across runs. Checks:

* freshness — a scheduled tier past its RPO (warning) or past 2 x RPO / without any snapshot (critical);
* storages — unreachable (critical), not writable (critical), free space under ``min_free_percent`` (warning),
  corrupt manifests (critical), locks that look stale or dead (warning);
* verification — the storage's verification record (in the repository) unreadable, damaged or foreign
  (``verify-record:<storage>``, critical); open verification failures (``verify-failed:<storage>``, critical,
  naming the snapshots and those depending on them); a storage holding snapshots without a passed read-data
  verification (``verify --read-data`` or a backup's integrity check) within ``verify_within_days`` (warning); a tier whose newest chain has no passed
  verification within ``verify_max_age_days`` (``unverified:<tier>``, warning);
* presence — every object of each tier's newest chain on each storage holding it, with its recorded size
  (``presence:<tier>:<storage>``, critical, naming the snapshot, the object and the snapshots needing it);
* drill history — damaged lines, and drills dated in the future (``drill-history``, warning; the other lines
  still count);
* drills — when a drill history exists: the last drill failed (critical) or none passed within
  ``drill_within_days`` (warning);
* anomalies — the newest snapshot's size or duration beyond ``size_anomaly_factor`` x the median of the tier's
  previous snapshots (or size below median / factor); a source or table that shrank more than
  ``max_shrink_percent`` since the tier's previous snapshot; a tier whose newest snapshot was promoted to full
  although earlier snapshots existed (its parent was unusable);
* replication — the newest snapshot of a tier missing from one of the tier's storages (warning).
"""

from __future__ import annotations

from statistics import median
from typing import TYPE_CHECKING, Any

from ..catalog.manifest import FUTURE_TOLERANCE
from ..units import fmt_bytes, fmt_duration
from .status import MANUAL, worst
from .store import drill_history_path, drill_history_problems, iso, now_utc, parse_iso

if TYPE_CHECKING:
    from datetime import datetime

    from ..config import Config, Monitoring

DAY = 86400.0


def _p(key: str, severity: str, summary: str) -> dict[str, Any]:
    return {"key": key, "severity": severity, "summary": summary}


_hours = fmt_duration  # the one unit system (backups.units)


def evaluate(cfg: Config, status: dict[str, Any], *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every problem the status shows (without ``since``/``runs``: :func:`annotate` adds them)."""
    mon = cfg.monitoring
    now = now or parse_iso(status.get("generated_at")) or now_utc()
    out = _freshness(status)
    for s in status["storages"]:
        out += _storage_problems(mon, s, now)
    out += _chain_problems(status) + _drill_problems(cfg, status, now) + _anomalies(mon, status)
    out += shrink_problems(cfg, status.get("_tables") or {})
    seen: set[str] = set()
    unique = []
    for p in out:
        if p["key"] not in seen:
            seen.add(p["key"])
            unique.append(p)
    return unique


def _freshness(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Tiers past their RPO or without a snapshot, future-dated snapshots, missing replicas."""
    out: list[dict[str, Any]] = []
    for t in status["tiers"]:
        if t["rpo_seconds"] is None:
            continue
        tier = t["tier"]
        if t["newest_id"] is None:
            out.append(_p(f"stale:{tier}", "critical", f"tier {tier} has no snapshot at all (RPO {_hours(t['rpo_seconds'])})"))
        elif t.get("freshness", t["state"]) != "ok":
            fresh = t.get("freshness", t["state"])
            out.append(_p(f"stale:{tier}", fresh,
                          f"tier {tier}: newest snapshot {t['newest_id']} is {_hours(t['age_seconds'])} old, RPO "
                          f"{_hours(t['rpo_seconds'])}" + (" (more than twice the RPO)" if fresh == "critical" else "")))
        if t.get("future_dated"):
            ids = t["future_dated"]
            out.append(_p(f"future-dated:{tier}", "warning",
                          f"tier {tier}: {len(ids)} snapshot(s) dated in the future ({', '.join(ids[:3])}): a mistyped "
                          f"--logical-date or a host clock ahead; they never count as the newest (freshness and verification "
                          f"are judged on the newest snapshot dated up to now), and prune keeps them until their date "
                          f"has passed; fix: correct the clock of the host that took them (the snapshots stay restorable by id)"))
        missing = [s for s in t.get("expected_storages", []) if s not in t["storages"]]
        if t["newest_id"] and missing and tier != MANUAL:
            reachable = {s["storage"] for s in status["storages"] if s["reachable"]}
            gone = [s for s in missing if s in reachable]
            if gone:
                out.append(_p(f"replica-missing:{tier}", "warning",
                              f"tier {tier}: newest snapshot {t['newest_id']} is not on storage(s) {', '.join(gone)}"))
    return out


def _storage_problems(mon: Monitoring, s: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """One storage: reachable, writable, space, damaged manifests, stale locks, its verification record."""
    out: list[dict[str, Any]] = []
    name = s["storage"]
    if not s["reachable"]:
        out.append(_p(f"storage-unreachable:{name}", "critical", f"storage {name} is unreachable: {s['error']}"))
        return out
    if s["writable"] is False:
        out.append(_p(f"storage-readonly:{name}", "critical", f"storage {name} is not writable: {s['error']}"))
    total = s.get("total_bytes")
    if s["free_bytes"] is not None and total:
        pct = 100.0 * s["free_bytes"] / total
        if pct < mon.min_free_percent:
            out.append(_p(f"storage-space:{name}", "warning",
                          f"storage {name}: {pct:.1f}% free ({fmt_bytes(s['free_bytes'])}), under "
                          f"{mon.min_free_percent:g}%"))
    if s.get("corrupt"):
        out.append(_p(f"corrupt:{name}", "critical",
                      f"storage {name}: {len(s['corrupt'])} damaged manifest(s): {', '.join(s['corrupt'][:5])}"))
    bad = [lk for lk in s.get("locks") or [] if lk.get("state") != "live"]
    if bad:
        lk = bad[0]
        out.append(_p(f"lock-stale:{name}", "warning",
                      f"storage {name}: {len(bad)} stale or dead lock(s), e.g. {lk['operation']} by {lk['host']} pid "
                      f"{lk['pid']} (heartbeat {lk['heartbeat_age_seconds']:.0f}s old): `backupctl unlock --stale`"))
    # ---- the verification record (in the repository) and its open failures
    rec = s.get("verification_record") or {}
    if rec.get("problem"):
        out.append(_p(f"verify-record:{name}", "critical", rec["problem"]))
        return out
    opened = s.get("open_failures") or {}
    if opened:
        out.append(_p(f"verify-failed:{name}", "critical", _failed_summary(name, opened, s.get("dependents") or {})))
    if s["snapshots"]:
        good = s.get("last_read_data_ok") or {}
        at = parse_iso(s.get("last_read_data_at") or good.get("at"))
        if at is not None and at > now + FUTURE_TOLERANCE:  # a host clock ahead: no evidence of a recent one
            at = None
        oldest = parse_iso(s.get("oldest_committed_at"))
        held_long = oldest is None or (now - oldest).total_seconds() > mon.verify_within_days * DAY
        if held_long and (at is None or (now - at).total_seconds() > mon.verify_within_days * DAY):
            out.append(_p(f"verify-overdue:{name}", "warning",
                          f"storage {name}: no successful read-data verification within {mon.verify_within_days:g} "
                          f"days (last: {s.get('last_read_data_at') or good.get('at') or 'never'}); fix: "
                          f"`backupctl verify --all --read-data --storage {name}`"))
    return out


def _chain_problems(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Presence and verification of each tier's newest chain."""
    out: list[dict[str, Any]] = []
    for t in status["tiers"]:
        tier = t["tier"]
        for name, probs in _by_storage((t.get("presence") or {}).get("problems") or []).items():
            omitted = ((t.get("presence") or {}).get("omitted") or {}).get(name, 0)
            out.append(_p(f"presence:{tier}:{name}", "critical", _presence_summary(t, name, probs, omitted)))
        v = t.get("verification") or {}
        if v.get("state") in ("never", "overdue"):
            when = f"the last one passed {v.get('at')}" if v.get("at") else "never verified"
            out.append(_p(f"unverified:{tier}", "warning",
                          f"tier {tier}: newest snapshot {t['newest_id']} has no passed verification of its whole "
                          f"chain within {v.get('max_age_days'):g} days ({when}); fix: `backupctl verify "
                          f"{t['newest_id']} --read-data`"))
    return out


def _drill_problems(cfg: Config, status: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """A damaged drill history, a failed last drill, no passed drill recently."""
    mon = cfg.monitoring
    out: list[dict[str, Any]] = []
    hist = drill_history_problems(cfg, now)
    if hist:
        out.append(_p("drill-history", "warning",
                      f"the drill history {drill_history_path(cfg)} has {len(hist)} damaged line(s) (skipped, the others "
                      f"count): {'; '.join(hist[:3])}; fix: remove or repair those lines"))
    drill = status.get("last_drill")
    if drill is not None or getattr(cfg, "drill", None) is not None:
        from .store import last_passed_drill

        if drill is not None and not drill["passed"]:
            out.append(_p("drill-failed", "critical", f"the last DR drill {drill['id']} ({drill['at']}) failed"))
        passed = last_passed_drill(cfg, now)
        at = parse_iso(passed.get("at")) if passed else None
        if at is None or (now - at).total_seconds() > mon.drill_within_days * DAY:
            out.append(_p("drill-overdue", "warning", f"no passed DR drill within {mon.drill_within_days:g} days "
                                                      f"(last passed: {passed.get('at') if passed else 'never'})"))
    return out


def _anomalies(mon: Monitoring, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Size or duration beyond the factor x the median, an unexpected promotion to full."""
    out: list[dict[str, Any]] = []
    factor = mon.size_anomaly_factor
    for t in status["tiers"]:
        hist = t.get("history") or []
        tier = t["tier"]
        if len(hist) >= 3:
            newest, before = hist[-1], hist[:-1][-10:]
            med = median(h["size_bytes"] for h in before)
            if med > 0 and (newest["size_bytes"] > factor * med or newest["size_bytes"] * factor < med):
                out.append(_p(f"anomaly-size:{tier}", "warning",
                              f"tier {tier}: {newest['id']} is {fmt_bytes(newest['size_bytes'])}, the median of the "
                              f"previous {len(before)} is {fmt_bytes(med)} (factor {factor:g})"))
            durs = [h["duration_seconds"] for h in before if h.get("duration_seconds")]
            if len(durs) >= 2 and newest.get("duration_seconds"):
                dmed = median(durs)
                if dmed > 0 and newest["duration_seconds"] > factor * max(dmed, 1.0):
                    out.append(_p(f"anomaly-duration:{tier}", "warning",
                                  f"tier {tier}: {newest['id']} took {fmt_duration(newest['duration_seconds'])}, the median "
                                  f"of the previous {len(durs)} is {fmt_duration(dmed)} (factor {factor:g})"))
        if t.get("promoted_unexpectedly"):
            out.append(_p(f"promoted:{tier}", "warning",
                          f"tier {tier}: {t['newest_id']} was requested as {t['requested_type']} but promoted to full: "
                          f"{t['promoted_reason']}"))
    return out


FIX_VERIFY = "`backupctl verify --all --read-data --storage {storage}` (lists every damaged object)"


def _by_storage(problems: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in problems:
        out.setdefault(str(p.get("storage")), []).append(p)
    return out


def _presence_summary(t: dict[str, Any], storage: str, probs: list[dict[str, Any]], omitted: int = 0) -> str:
    tier, first = t["tier"], probs[0]
    if first.get("object"):
        what = (f"object {first['object']} of snapshot {first['snapshot']} is {first['problem']}"
                if first["problem"] == "missing" else f"object {first['object']} of snapshot {first['snapshot']}: "
                f"{first['problem']}")
        more = f" (and {len(probs) - 1 + omitted} more object(s))" if len(probs) + omitted > 1 else ""
        needed = ", ".join(first.get("needed_by") or []) or first["snapshot"]
        return (f"tier {tier}: newest snapshot {t['newest_id']} on storage {storage} cannot be restored: {what}{more}; "
                f"needed by {needed}; fix: put the object back if you have it and run "
                f"{FIX_VERIFY.format(storage=storage)}; else take a new full: `backupctl backup --tier {tier} --type full`")
    return (f"tier {tier}: newest snapshot {t['newest_id']} on storage {storage}: {first['problem']}; fix: "
            f"{FIX_VERIFY.format(storage=storage)}; take a new full: `backupctl backup --tier {tier} --type full`")


def _failed_summary(storage: str, opened: dict[str, Any], dependents: dict[str, list[str]]) -> str:
    parts = []
    for sid, f in sorted(opened.items())[:3]:
        first = (f.get("problems") or ["?"])[0]
        since = f" (since {f['since']})" if f.get("since") else ""
        if sid == "*":
            parts.append(f"the repository{since}: {first}")
            continue
        deps = [d for d in dependents.get(sid) or [] if d != sid]
        parts.append(f"snapshot {sid}{since}: {first}"
                     + (f"; snapshots depending on it: {', '.join(deps)}" if deps else ""))
    more = f" (and {len(opened) - 3} more)" if len(opened) > 3 else ""
    return (f"storage {storage}: open verification failure(s) — {' | '.join(parts)}{more}; fix: "
            f"{FIX_VERIFY.format(storage=storage)}; repair or take a new full, then a passing "
            "`backupctl verify SNAPSHOT --read-data` (or `--all --read-data`) closes it")


def shrink_problems(cfg: Config, tables: dict[str, Any]) -> list[dict[str, Any]]:
    """A source (bytes) or a table (rows) that shrank more than ``max_shrink_percent`` between a tier's two newest
    snapshots."""
    limit = cfg.monitoring.max_shrink_percent
    out = []
    for tier, rec in sorted(tables.items()):
        if len(rec.get("ids", [])) < 2:
            continue
        (old_id, new_id), (old, new) = rec["ids"], rec["sources"]
        for src in sorted(set(old) & set(new)):
            a, b = old[src].get("bytes"), new[src].get("bytes")
            if a and b is not None and a > 0 and 100.0 * (a - b) / a > limit:
                out.append(_p(f"shrink:{tier}:{src}", "warning",
                              f"tier {tier}: source {src} shrank {100.0 * (a - b) / a:.0f}% ({a:,} -> {b:,} bytes) "
                              f"from {old_id} to {new_id} (limit {limit:g}%)"))
            for table in sorted(set(old[src]["tables"]) & set(new[src]["tables"])):
                ra, rb = old[src]["tables"][table], new[src]["tables"][table]
                if isinstance(ra, int) and isinstance(rb, int) and ra > 0 and 100.0 * (ra - rb) / ra > limit:
                    out.append(_p(f"shrink:{tier}:{src}.{table}", "warning",
                                  f"tier {tier}: table {table} of {src} shrank {100.0 * (ra - rb) / ra:.0f}% "
                                  f"({ra:,} -> {rb:,} rows) from {old_id} to {new_id} (limit {limit:g}%)"))
    return out


def annotate(problems: list[dict[str, Any]], alert_state: dict[str, Any] | None, now: datetime | None = None) -> list[dict[str, Any]]:
    """Add ``since`` and ``runs`` from the alert state (a problem not yet in it: since now, first run)."""
    open_ = (alert_state or {}).get("problems") or {}
    stamp = iso(now or now_utc())
    out = []
    for p in problems:
        known = open_.get(p["key"]) or {}
        out.append({**p, "since": known.get("since") or stamp, "runs": int(known.get("runs") or 0) or 1})
    return out


#: the checks whose key names a tier (``<check>:<tier>`` or ``<check>:<tier>:<object>``): their problems are the
#: tier's own — a tier never shows OK while one of them is open (a size or duration anomaly included)
TIER_CHECKS = ("stale", "future-dated", "replica-missing", "presence", "unverified", "anomaly-size",
               "anomaly-duration", "promoted", "shrink")


def problem_tier(key: Any) -> str | None:
    """The tier a problem key names (``anomaly-size:daily`` → ``daily``), None for a storage or global problem."""
    check, _, rest = str(key).partition(":")
    return rest.split(":", 1)[0] or None if check in TIER_CHECKS and rest else None


def apply_tier_problems(status: dict[str, Any]) -> None:
    """Each tier's ``state`` raised to the worst severity of its own open problems (in place)."""
    by_tier: dict[str, list[str]] = {}
    for p in status.get("problems") or []:
        tier = problem_tier(p.get("key"))
        if tier:
            by_tier.setdefault(tier, []).append(p.get("severity", "warning"))
    for t in status.get("tiers") or []:
        if by_tier.get(t.get("tier")):
            t["state"] = worst(t.get("state") or "ok", *by_tier[t["tier"]])


def overall_state(status: dict[str, Any]) -> str:
    return worst(*[t["state"] for t in status["tiers"]],
                 *["critical" for s in status["storages"] if not s["reachable"]],
                 *[p["severity"] for p in status.get("problems", [])])
