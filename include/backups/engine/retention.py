"""Retention (rotation) and orphan cleanup for one storage.

Policy per tier (restic's ``forget`` rules, by logical date): ``keep_last`` N newest; ``keep_within_days`` N —
every snapshot dated within N days before **now** (the clock, never a snapshot's date); ``keep_daily`` /
``keep_weekly`` / ``keep_monthly`` / ``keep_yearly`` N — the newest snapshot of each of the N most recent days /
ISO weeks / months / years up to now that have one. A tier without any rule keeps everything. The ``manual`` tier
(backup_manual) follows the config's ``manual_retention``. Snapshots of tiers no longer in the config are kept
(never delete what the config does not describe). :attr:`PrunePlan.decisions` lists every snapshot with keep /
forget and the rules that decided it.

Time is anchored at now — ``keep_within_days`` windows end at now or, when earlier, at the storage's newest
commit (:func:`window_anchor`: a prune host whose clock ran ahead cannot age everything out) — so a snapshot dated in the future (more than ``FUTURE_TOLERANCE`` ahead: a mistyped
``--logical-date`` of an older version, or a host whose clock ran ahead) can never push the others out of their
windows: it is kept, left out of every rule (it takes no ``keep_last`` slot and no bucket) and reported in
:attr:`PrunePlan.warnings`. Whatever the rules say, a tier with rules always keeps its newest snapshot that is
not in the future and its ``latest`` one (the newest data, highest ``sequence``; see docs/format.md).

Chains are never broken: every snapshot in the chain of a kept snapshot is kept, whatever its own tier says
(a daily incremental keeps the weekly full it builds on).

Deleting a snapshot removes its manifest **first**, then its objects: an interrupted prune leaves orphans (no
manifest, so not a snapshot), never a snapshot with missing objects. Orphans — objects under ``data/<id>/`` with
no manifest — and ``.tmp-*`` objects of killed writers are removed only when their newest object's
**modification time** is older than ``locks.orphan_grace_hours`` (never by the snapshot's logical date: a
backfill of an old date writes new objects), and never while any lock covers their snapshot id.

A prune holds the repository's exclusive lock (:func:`prune_storage`): it waits for running backups, restores
and verifies (their shared locks), and none of them starts while it runs. It checks that its lock still exists
right before it deletes anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..catalog.manifest import FUTURE_TOLERANCE, Catalog, Snapshot, manifest_key
from ..repository import data_prefix, report_prefix
from ..storage.base import Storage

if TYPE_CHECKING:
    from ..config import Config, Retention
    from ..repository.locks import HeldLock

log = logging.getLogger(__name__)

#: the tier of backup_manual's snapshots (never in ``cfg.tiers``; see ``commands.backup.MANUAL_TIER``)
MANUAL_TIER = "manual"

_BUCKETS = {
    "keep_daily": lambda d: d.strftime("%Y-%m-%d"),
    "keep_weekly": lambda d: "{:04d}-W{:02d}".format(*d.isocalendar()[:2]),
    "keep_monthly": lambda d: d.strftime("%Y-%m"),
    "keep_yearly": lambda d: d.strftime("%Y"),
}


@dataclass
class PrunePlan:
    storage: str
    keep: dict[str, list[str]] = field(default_factory=dict)  #: snapshot id -> reasons
    forget: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  #: snapshot ids whose objects have no manifest
    temps: list[str] = field(default_factory=list)  #: temp objects of killed writers, past the grace period
    kept_orphans: list[str] = field(default_factory=list)  #: uncommitted ids kept (young, or covered by a lock)
    deleted_objects: int = 0
    deleted_bytes: int = 0
    #: every snapshot, oldest first: {id, tier, type, logical_date, action: keep|forget, reasons}
    decisions: list[dict[str, Any]] = field(default_factory=list)
    #: problems found while planning (snapshots dated in the future), one sentence each
    warnings: list[str] = field(default_factory=list)
    #: where keep_within_days windows end (ISO): now, or the storage's newest commit when earlier
    anchor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"storage": self.storage, "keep": self.keep, "forget": self.forget, "orphans": self.orphans,
                "temps": self.temps, "kept_orphans": self.kept_orphans,
                "deleted_objects": self.deleted_objects, "deleted_bytes": self.deleted_bytes,
                "decisions": self.decisions, "warnings": self.warnings, "anchor": self.anchor}


#: the reason a snapshot dated in the future is kept
FUTURE = "dated in the future: kept, and not counted by the rules"


def future_snapshots(snaps: list[Snapshot], now: datetime) -> list[Snapshot]:
    """The snapshots dated more than ``FUTURE_TOLERANCE`` after ``now``."""
    return [s for s in snaps if s.logical_date > now + FUTURE_TOLERANCE]


def window_anchor(catalog: Catalog, now: datetime) -> datetime:
    """Where ``keep_within_days`` windows end: ``now``, or the newest commit time of the storage's snapshots (those
    not in the future) when that is earlier. A prune host whose clock ran ahead (ten years: every window would
    have passed) then counts from what the repository shows, and a tier whose backups stopped keeps its window's
    snapshots until newer ones arrive (restic counts ``--keep-within`` from the latest snapshot too). The anchor
    only ever keeps more than ``now`` would."""
    commits = []
    for s in catalog.snapshots.values():
        if s.in_future(now):
            continue
        try:
            at = datetime.fromisoformat(str(s.doc.get("finished_at")))
        except ValueError:
            continue
        commits.append(at if at.tzinfo else at.replace(tzinfo=UTC))
    return min(now, max(commits)) if commits else now


def _kept_by_policy(snaps: list[Snapshot], policy: dict[str, int | None], now: datetime,
                    anchor: datetime | None = None) -> dict[str, list[str]]:
    """snapshot id -> the reasons that keep it (snaps: one tier, any order; the future judged at ``now``, windows
    ending at ``anchor``, default ``now``: see :func:`window_anchor`)."""
    anchor = anchor or now
    if not any(policy.values()):
        return {s.id: ["no retention rule"] for s in snaps}
    future = {s.id for s in future_snapshots(snaps, now)}
    kept: dict[str, list[str]] = {sid: [FUTURE] for sid in sorted(future)}
    present = [s for s in snaps if s.id not in future]
    newest_first = sorted(present, key=lambda s: (s.logical_date, s.newness()), reverse=True)
    if not newest_first:
        return kept
    if policy.get("keep_last"):
        for s in newest_first[: policy["keep_last"]]:
            kept.setdefault(s.id, []).append("keep_last")
    if within := policy.get("keep_within_days"):
        try:
            since = anchor - timedelta(days=within)
        except OverflowError:  # reaches before year 1 (an operator's "forever"): every date is within
            since = datetime.min.replace(tzinfo=UTC)
        for s in newest_first:
            if s.logical_date >= since:
                kept.setdefault(s.id, []).append(f"keep_within_days {policy['keep_within_days']}")
    for rule, bucket in _BUCKETS.items():
        n = policy.get(rule)
        if not n:
            continue
        seen: list[str] = []
        for s in newest_first:
            b = bucket(s.logical_date)
            if b in seen:
                continue
            seen.append(b)
            kept.setdefault(s.id, []).append(f"{rule} {b}")
            if len(seen) >= n:
                break
    newest, latest = newest_first[0], max(present, key=Snapshot.newness)
    if newest.id not in kept:
        kept[newest.id] = ["the tier's newest snapshot (always kept)"]
    if latest.id not in kept:
        kept[latest.id] = ["the tier's latest data (highest sequence; always kept)"]
    return kept


def tier_retention(cfg: Config, tier: str) -> Retention | None:
    """The retention rules of ``tier``: the config's tier, ``manual_retention`` for backup_manual's ``manual`` tier,
    None for a tier the config does not describe (its snapshots are kept)."""
    t = cfg.tiers.get(tier)
    if t is not None:
        return t.retention
    if tier == MANUAL_TIER:
        return getattr(cfg, "manual_retention", None)
    return None


def plan_prune(cfg: Config, storage: Storage, catalog: Catalog, *, now: datetime | None = None,
               orphan_grace: timedelta | None = None) -> PrunePlan:
    """What a prune of ``storage`` would do, without changing anything: the snapshots each tier's rules keep
    (with the reasons, chains of kept snapshots included), the ones to forget, and the orphaned / temp objects
    older than ``orphan_grace`` (default ``locks.orphan_grace_hours``) at ``now`` and not covered by a lock."""
    plan = PrunePlan(storage.name)
    now = now or datetime.now(UTC)
    by_tier: dict[str, list[Snapshot]] = {}
    for s in catalog.ordered():
        by_tier.setdefault(s.tier, []).append(s)
    keep: dict[str, list[str]] = {}
    policies: dict[str, str] = {}
    anchor = window_anchor(catalog, now)
    plan.anchor = anchor.isoformat()
    for tier, snaps in by_tier.items():
        for s in future_snapshots(snaps, now):
            plan.warnings.append(
                f"snapshot {s.id} (tier {tier}) is dated {s.logical_date.isoformat()}, in the future (now "
                f"{now.replace(microsecond=0).isoformat()}): kept, and not counted by the retention rules; check the "
                "--logical-date it was given or the clock of the host that took it (it stays until its date has "
                "passed: later snapshots may build on it)")
            log.warning("%s: %s", storage.name, plan.warnings[-1])
        retention = tier_retention(cfg, tier)
        if retention is None:
            for s in snaps:
                keep.setdefault(s.id, []).append(f"tier {tier} is not in the config")
            continue
        policies[tier] = retention.describe()
        for sid, why in _kept_by_policy(snaps, retention.model_dump(), now, anchor).items():
            keep.setdefault(sid, []).extend(why)
    for sid in list(keep):  # chains are never broken
        for dep in catalog.snapshots[sid].chain[:-1]:
            if dep not in keep or not any(r.startswith("needed by") for r in keep[dep]):
                keep.setdefault(dep, []).append(f"needed by {sid}")
    plan.keep = {sid: keep[sid] for sid in sorted(keep)}
    plan.forget = [s.id for s in catalog.ordered() if s.id not in keep]
    plan.decisions = [{"id": s.id, "tier": s.tier, "type": s.type, "logical_date": s.logical_date.isoformat(),
                       "action": "keep" if s.id in keep else "forget",
                       "reasons": keep.get(s.id) or [f"no rule of tier {s.tier} keeps it ({policies.get(s.tier)})"]}
                      for s in catalog.ordered()]
    # orphans: data/<id>/ without a manifest (an interrupted backup or prune) and temp objects, aged by their
    # objects' modification time and never while a lock covers them
    from ..repository import Repository

    repo = Repository(storage, cfg)
    if orphan_grace is None:
        lc = getattr(cfg, "locks", None)
        orphan_grace = timedelta(hours=lc.orphan_grace_hours if lc is not None else 48.0)
    left = repo.leftovers(orphan_grace.total_seconds(), now=now.timestamp())
    plan.orphans = sorted(left.orphans)
    plan.temps = [t.key for t in left.temps]
    plan.kept_orphans = sorted(left.young + left.locked)
    return plan


def prune_storage(cfg: Config, storage: Storage, *, dry_run: bool = False, now: datetime | None = None) -> PrunePlan:
    """Plan and apply the prune of one storage under its exclusive repository lock (a dry run: a shared one)."""
    from ..repository import Repository, repo_scope

    repo = Repository(storage, cfg)
    with repo.lock(repo_scope(), exclusive=not dry_run, operation="prune") as held:
        plan = plan_prune(cfg, storage, repo.catalog, now=now)
        if not dry_run:
            apply_prune(storage, repo.catalog, plan, lock=held)
    return plan


def apply_prune(storage: Storage, catalog: Catalog, plan: PrunePlan, *, lock: HeldLock | None = None) -> PrunePlan:
    """Forget the planned snapshots (manifest first) and remove orphans and temp objects; returns the plan with
    counts. ``lock`` (the exclusive repository lock) is checked right before anything is deleted."""
    if lock is not None:
        lock.check()
    for t in plan.temps:
        storage.remove_temp(t)
        plan.deleted_objects += 1
        log.info("%s: removed temp object %s", storage.name, t)
    for sid in plan.forget:
        if lock is not None:
            lock.check()  # right before each deletion: a prune whose lock was removed stops here
        storage.delete(manifest_key(sid))
        log.info("%s: forgot %s (manifest removed)", storage.name, sid)
    for sid in [*plan.forget, *plan.orphans]:
        for info in list(storage.list(data_prefix(sid))):
            storage.delete(info.key)
            plan.deleted_objects += 1
            plan.deleted_bytes += info.size
        for info in list(storage.list(report_prefix(sid))):
            storage.delete(info.key)
    log.info("%s: pruned %d snapshot(s), %d orphan set(s) and %d temp object(s): %d object(s), %.1f MB", storage.name,
             len(plan.forget), len(plan.orphans), len(plan.temps), plan.deleted_objects, plan.deleted_bytes / 1e6)
    return plan
