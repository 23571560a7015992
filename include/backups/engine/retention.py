"""Retention (rotation) and orphan cleanup for one storage.

Policy per tier (restic's ``forget`` rules): ``keep_last`` N newest; ``keep_daily`` / ``keep_weekly`` /
``keep_monthly`` / ``keep_yearly`` N — the newest snapshot of each of the N most recent days / ISO weeks / months
/ years that have one. A tier without any rule keeps everything. Snapshots of tiers no longer in the config
are kept (never delete what the config does not describe).

Chains are never broken: every snapshot in the chain of a kept snapshot is kept, whatever its own tier says
(a daily incremental keeps the weekly full it builds on).

Deleting a snapshot removes its manifest **first**, then its objects: an interrupted prune leaves orphans (no
manifest, so not a snapshot), never a snapshot with missing objects. Orphans — objects under ``data/<id>/`` with
no manifest — are removed only when their logical date is older than ``orphan_grace`` (a backup that is still
running has no manifest yet).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..catalog.manifest import ID_RE, Catalog, Snapshot, manifest_key
from ..storage.base import Storage

log = logging.getLogger(__name__)

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
    deleted_objects: int = 0
    deleted_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"storage": self.storage, "keep": self.keep, "forget": self.forget, "orphans": self.orphans,
                "deleted_objects": self.deleted_objects, "deleted_bytes": self.deleted_bytes}


def _kept_by_policy(snaps: list[Snapshot], policy: dict[str, int | None]) -> dict[str, list[str]]:
    """snapshot id -> the rules that keep it (snaps: one tier, any order)."""
    newest_first = sorted(snaps, key=lambda s: s.logical_date, reverse=True)
    kept: dict[str, list[str]] = {}
    if not any(policy.values()):
        return {s.id: ["no retention rule"] for s in snaps}
    if policy.get("keep_last"):
        for s in newest_first[: policy["keep_last"]]:
            kept.setdefault(s.id, []).append("keep_last")
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
    return kept


def plan_prune(cfg: Any, storage: Storage, catalog: Catalog, *, now: datetime | None = None,
               orphan_grace: timedelta = timedelta(days=2)) -> PrunePlan:
    plan = PrunePlan(storage.name)
    by_tier: dict[str, list[Snapshot]] = {}
    for s in catalog.ordered():
        by_tier.setdefault(s.tier, []).append(s)
    keep: dict[str, list[str]] = {}
    for tier, snaps in by_tier.items():
        t = cfg.tiers.get(tier)
        if t is None:
            for s in snaps:
                keep.setdefault(s.id, []).append(f"tier {tier} is not in the config")
            continue
        for sid, why in _kept_by_policy(snaps, t.retention.model_dump()).items():
            keep.setdefault(sid, []).extend(why)
    for sid in list(keep):  # chains are never broken
        for dep in catalog.snapshots[sid].chain[:-1]:
            if dep not in keep or not any(r.startswith("needed by") for r in keep[dep]):
                keep.setdefault(dep, []).append(f"needed by {sid}")
    plan.keep = {sid: keep[sid] for sid in sorted(keep)}
    plan.forget = [s.id for s in catalog.ordered() if s.id not in keep]
    # orphans: data/<id>/ without a manifest (an interrupted backup or prune), past the grace period
    now = now or datetime.now(UTC)
    # any manifest, of any application sharing this storage, protects its objects
    manifests = {i.key[len("snapshots/"):-len(".json")] for i in storage.list("snapshots/") if i.key.endswith(".json")}
    ids = set()
    for info in storage.list("data/"):
        sid = info.key.split("/", 2)[1]
        if sid not in manifests:
            ids.add(sid)
    for sid in sorted(ids):
        m = ID_RE.match(sid)
        if m is None:
            continue
        when = datetime.strptime(m.group("ts"), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if now - when > orphan_grace:
            plan.orphans.append(sid)
    return plan


def apply_prune(storage: Storage, catalog: Catalog, plan: PrunePlan) -> PrunePlan:
    """Forget the planned snapshots (manifest first) and remove orphans; returns the plan with counts."""
    for sid in plan.forget:
        storage.delete(manifest_key(sid))
        log.info("%s: forgot %s (manifest removed)", storage.name, sid)
    for sid in [*plan.forget, *plan.orphans]:
        for info in list(storage.list(f"data/{sid}/")):
            storage.delete(info.key)
            plan.deleted_objects += 1
            plan.deleted_bytes += info.size
        for info in list(storage.list(f"reports/{sid.rsplit('-', 1)[0]}/{sid}.")):
            storage.delete(info.key)
    log.info("%s: pruned %d snapshot(s) and %d orphan set(s): %d object(s), %.1f MB", storage.name, len(plan.forget),
             len(plan.orphans), plan.deleted_objects, plan.deleted_bytes / 1e6)
    return plan
