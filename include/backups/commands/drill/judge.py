"""Step 5, judging: per tier RTO and RPO, bytes, files and throughput measured, every check and both targets
(``rto_minutes``, ``rpo_hours``) judged into the drill's verdict and findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...config import Config, Drill
from ...units import fmt_duration
from ..base import Result
from .checks import TierVerify
from .common import RUNBOOK, iso_utc, settings, utc_now
from .isolation import Scratch
from .plan import DrillPlan, TierPlan
from .tier_restore import TierRestore


# ------------------------------------------------------------------------------------------------ 5. judge
@dataclass
class DrillVerdict(Result):
    drill_id: str
    at: str
    finished_at: str
    passed: bool
    door: str
    run_id: str
    application: str
    targets: dict[str, float]
    rto_seconds: float | None
    rpo_seconds: float | None
    tiers: list[dict[str, Any]]
    findings: list[str]
    next_drill: str | None
    schedule: str | None
    runbook: str = RUNBOOK
    reports: dict[str, str] = field(default_factory=dict)


def next_drill(schedule: str | None, after: datetime | None = None) -> str | None:
    if not schedule:
        return None
    from croniter import croniter

    return iso_utc(croniter(schedule, after or utc_now()).get_next(datetime))


def judge(cfg: Config, plan: DrillPlan, scratch: Scratch | None, restores: list[TierRestore | None],
          verifies: list[TierVerify | None], *, finished_at: datetime | None = None,
          extra_findings: list[str] | None = None) -> DrillVerdict:
    """Measure per tier (RTO, RPO, bytes, files, throughput, step times) and judge every check and target."""
    d = settings(cfg)
    by_r = {r.tier: r for r in restores if r is not None}
    by_v = {v.tier: v for v in verifies if v is not None}
    findings = list(extra_findings or [])
    tiers = [_judge_tier(d, plan, scratch, tp, by_r.get(tp.tier), by_v.get(tp.tier), findings)
             for tp in (TierPlan.from_dict(x) for x in plan.tiers)]
    restorable = [t["rpo_seconds"] for t in tiers if t["restored"] and t["rpo_seconds"] is not None]
    rpo_all = min(restorable) if restorable else None
    rpo_ok = rpo_all is not None and rpo_all <= d.rpo_hours * 3600
    if rpo_all is None:
        findings.append("RPO: no tier could be restored: nothing is recoverable from this storage")
    elif not rpo_ok:
        findings.append(f"RPO target missed: the newest restorable data was read {fmt_duration(rpo_all)} before the "
                        f"drill started (target {fmt_duration(d.rpo_hours * 3600)})")
    rtos = [t["rto_seconds"] for t in tiers if t["rto_seconds"] is not None]
    passed = bool(tiers) and all(t["passed"] for t in tiers) and rpo_ok and not extra_findings
    end = finished_at or utc_now()
    return DrillVerdict(drill_id=plan.drill_id, at=plan.started_at, finished_at=iso_utc(end), passed=passed,
                        door=plan.door, run_id=plan.run_id, application=cfg.application,
                        targets={"rto_minutes": d.rto_minutes, "rpo_hours": d.rpo_hours},
                        rto_seconds=max(rtos) if rtos else None, rpo_seconds=rpo_all, tiers=tiers, findings=findings,
                        next_drill=next_drill(d.schedule, end), schedule=d.schedule)


def _judge_tier(d: Drill, plan: DrillPlan, scratch: Scratch | None, tp: TierPlan, r: TierRestore | None,
                v: TierVerify | None, findings: list[str]) -> dict[str, Any]:
    """One tier's measures and result (the verdict's ``tiers`` entry); its findings are appended to ``findings``."""
    steps = {"plan": plan.seconds, "isolate": scratch.seconds if scratch else None,
             "thaw": r.thaw_seconds if r else None, "restore": r.restore_seconds if r else None,
             "verify": v.verify_seconds if v else None}
    ok_restore = bool(r and r.ok)
    rto = round(sum(x for x in steps.values() if x), 3) if ok_restore and v else None
    # the RPO counts from when the data was read (the status's age uses the same basis), not from the logical date
    read = tp.data_time or tp.logical_date  # a plan made before data_time existed: its logical date
    rpo = round((datetime.fromisoformat(plan.started_at) - datetime.fromisoformat(read)).total_seconds(), 1) if read else None
    checks = v.checks if v else []
    rto_ok = rto is not None and rto <= d.rto_minutes * 60
    findings += _tier_findings(d, tp, r, v, rto, rto_ok)
    nbytes = r.bytes if r else 0
    return {
        "tier": tp.tier, "storage": tp.storage, "snapshot_id": tp.snapshot_id, "logical_date": tp.logical_date,
        "data_time": tp.data_time, "restored": ok_restore, "checks_passed": bool(v and v.ok), "rto_seconds": rto, "rto_ok": rto_ok,
        "rpo_seconds": rpo, "steps": steps, "files": r.files if r else 0, "bytes": nbytes,
        "throughput_mb_s": round(nbytes / 1e6 / r.restore_seconds, 2) if r and r.ok and r.restore_seconds else None,
        "checks": checks, "data_docs": v.data_docs if v else {}, "passed_over": tp.passed_over,
        "error": tp.error or (r.error if r and not r.ok else None),
        "passed": ok_restore and bool(v and v.ok) and rto_ok}


def _tier_findings(d: Drill, tp: TierPlan, r: TierRestore | None, v: TierVerify | None, rto: float | None,
                   rto_ok: bool) -> list[str]:
    """What went wrong with one tier: the first step that failed or did not report, every failed check, a missed
    RTO target, the newer snapshots passed over."""
    findings = []
    if tp.error:
        findings.append(f"{tp.tier}: {tp.error}")
    elif r is None:
        findings.append(f"{tp.tier}: the restore step did not run or did not report (see the task log)")
    elif not r.ok:
        findings.append(f"{tp.tier}: {r.error}")
    elif v is None:
        findings.append(f"{tp.tier}: the verification step did not run or did not report (see the task log)")
    for c in v.checks if v else []:
        if not c["ok"] and c["kind"] != "restore":
            findings.append(f"{tp.tier}: check {c['name']} failed: {c['detail']}")
    if rto is not None and not rto_ok:
        findings.append(f"{tp.tier}: RTO target missed: restore and verification took {fmt_duration(rto)} "
                        f"(target {fmt_duration(d.rto_minutes * 60)})")
    for p in tp.passed_over:
        findings.append(f"{tp.tier}: newer snapshot passed over (chain incomplete on {tp.storage}): {p}")
    return findings
