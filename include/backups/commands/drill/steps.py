"""The drill declared once: :data:`DRILL`, the procedure both doors run — ``backupctl drill`` through
:func:`run_drill` (the in-process runner, :func:`backups.commands.procedure.run`) and the ``dr_drill`` DAG through
the generic builder (:func:`backups.orchestration.procedures.add_procedure_tasks`).

::

    plan → isolate → restore_tier[tier] → verify_tier[tier] → teardown (cleanup) → report (always)

The step bodies call the steps through the package (``backups.commands.drill.restore_tier`` …), so a test can
replace one. A tier's failure is a finding, never a raised error, so the other tiers go on; ``report`` runs
whatever happened before it (a failed ``isolate`` included), after the teardown whose problems are findings —
computed once, here, for both doors.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...errors import BackupError, DrillFailedError
from ..base import Result
from ..procedure import CLEANUP, Procedure, RunContext, Skip, Step
from ..procedure import run as run_procedure
from .checks import TierVerify
from .common import RUNBOOK, first_line
from .isolation import Scratch, Teardown
from .judge import DrillVerdict
from .plan import DrillPlan, DrillRequest, check_request
from .tier_restore import TierRestore

if TYPE_CHECKING:
    from ...storage import Resolver


def _drill() -> Any:
    from .. import drill

    return drill


def _plan_of(r: dict[str, Any]) -> DrillPlan:
    plan = r.get("plan")
    if plan is None:
        raise Skip("no drill plan (the plan step failed)")
    return plan


def _plan(ctx: RunContext, r: dict[str, Any], _: Any) -> DrillPlan:
    p = ctx.params
    req = DrillRequest(storage=p.get("storage") or None, tiers=p.get("tiers") or None,
                       started_at=p.get("started_at") or datetime.now(UTC).isoformat(), drill_id=p.get("drill_id"),
                       door=p.get("door") or ctx.dag_id, run_id=p.get("run_id") or ctx.run_id)
    return _drill().plan_drill(ctx.cfg, req, ctx.resolver)


def _isolate(ctx: RunContext, r: dict[str, Any], _: Any) -> Scratch:
    try:
        return _drill().isolate(ctx.cfg, r["plan"], ctx.resolver)
    except BackupError as exc:  # the CLI's report names the cause (a DAG's report points to this task's log)
        ctx.state["isolate_error"] = first_line(exc)
        raise


def _planned(ctx: RunContext, r: dict[str, Any]) -> list[str]:
    return list(r["plan"].names)


def _restore(ctx: RunContext, r: dict[str, Any], tier: str) -> TierRestore:
    plan, scratch = r["plan"], r["isolate"]
    if tier not in plan.names:
        raise Skip(f"tier {tier} is not part of this drill")
    holds = ctx.state.get("holds")  # the CLI: the shared lock stays held from the restore through the verification
    hold = ExitStack() if holds is not None else None
    out = _drill().restore_tier(ctx.cfg, plan, scratch, tier, ctx.resolver,
                                poll_seconds=float(ctx.params.get("poll_seconds") or 60.0),
                                thaw_timeout=ctx.params.get("thaw_timeout"), hold=hold)
    if holds is not None:
        holds[tier] = hold
    return out


def _verify(ctx: RunContext, r: dict[str, Any], tier: str) -> TierVerify:
    restored = (r.get("restore_tier") or {}).get(tier)
    if restored is None:
        raise Skip(f"tier {tier} was not restored by this drill")
    hold = (ctx.state.get("holds") or {}).pop(tier, None)
    with hold or nullcontext():
        return _drill().verify_tier(ctx.cfg, r["plan"], Scratch.from_dict(restored.scratch), restored, ctx.resolver,
                                    locked=hold is not None and restored.ok)


def _teardown(ctx: RunContext, r: dict[str, Any], _: Any) -> Teardown:
    for hold in (ctx.state.get("holds") or {}).values():  # tiers whose verification did not run
        hold.close()
    plan = _plan_of(r)
    down = _drill().teardown(ctx.cfg, plan.drill_id, ctx.resolver)
    scratch = r.get("isolate")
    down.scratch = scratch.to_dict() if scratch is not None else None
    return down


def _report(ctx: RunContext, r: dict[str, Any], _: Any) -> DrillVerdict:
    """Judge, write the reports (and a stored copy). The teardown's problems and a failed ``isolate`` are
    findings; the verdict is returned whether the drill passed or not (each door decides how to fail)."""
    d = _drill()
    plan = _plan_of(r)
    down: Teardown | None = r.get("teardown")
    extra = d.teardown_findings(down)
    scratch = Scratch.from_dict(down.scratch) if down is not None and down.scratch else None
    if down is not None and scratch is None:
        extra.insert(0, f"isolate failed: no scratch space ({ctx.state.get('isolate_error') or 'see its task log'})")
    restores = [x for x in (r.get("restore_tier") or {}).values() if x is not None]
    verifies = [x for x in (r.get("verify_tier") or {}).values() if x is not None]
    verdict = d.write_reports(ctx.cfg, d.judge(ctx.cfg, plan, scratch, restores, verifies, extra_findings=extra))
    verdict.reports["stored"] = ", ".join(d.store_reports(ctx.cfg, verdict, ctx.resolver))
    ctx.state.update(verdict=verdict, teardown=down)  # for the CLI door, also when an earlier step failed
    return verdict


#: the drill: each tier's newest restorable snapshot restored into isolation, tested, measured, judged, reported.
#: The DAG keeps today's task ids (no group), maps the per-tier steps over the configured tiers (a tier the run
#: does not drill skips itself), makes ``isolate`` the setup of the ``teardown`` task
DRILL = Procedure("drill", (
    Step("plan", "", _plan, result=DrillPlan,
         doc="per tier the newest snapshot whose chain is complete on the drill storage (opened read-only)"),
    Step("isolate", "", _isolate, needs=("plan",), result=Scratch,
         doc="leftovers of killed drills removed; the scratch directory and scratch PostgreSQL databases"),
    Step("restore_tier", "", _restore, fan_out="tier", items=_planned, needs=("plan", "isolate"), result=TierRestore,
         doc="the tier's snapshot restored into its scratch (after an archive's thaw), every SHA-256 checked"),
    Step("verify_tier", "", _verify, fan_out="tier", items=_planned, needs=("plan", "restore_tier"),
         result=TierVerify, doc="re-hash, Great Expectations with Data Docs, integrity, config files, drill.smoke"),
    Step("teardown", "", _teardown, kind=CLEANUP, needs=("plan", "isolate"), after=("verify_tier",), result=Teardown,
         doc="the scratch directory and every drill_<run>_* database removed, whatever happened"),
    Step("report", "", _report, always=True, needs=("plan", "restore_tier", "verify_tier", "teardown"),
         after=("teardown",), result=DrillVerdict,
         doc="RTO/RPO per tier judged against the targets; the Markdown/HTML/JSON reports and the history line"),
))


@dataclass
class DrillOutcome(Result):
    verdict: dict[str, Any]
    teardown: dict[str, Any] | None


def run_drill(cfg: Config, req: DrillRequest | None = None, resolver: Resolver | None = None, *, poll_seconds: float = 60.0,
              thaw_timeout: float | None = None, raise_on_failure: bool = False) -> DrillOutcome:
    """``backupctl drill``: :data:`DRILL` in this process (the teardown always runs, the report after it). The
    report is written even when the drill fails; ``raise_on_failure`` then raises
    :class:`~backups.errors.DrillFailedError` with the findings. A plan that fails (a refused scratch server)
    raises as it is: there is nothing to report."""
    req = check_request(cfg, req or DrillRequest())
    ctx = RunContext(cfg, resolver, dag_id=req.door, run_id=req.run_id, params={
        "storage": req.storage, "tiers": req.tiers, "started_at": req.started_at, "drill_id": req.drill_id,
        "door": req.door, "poll_seconds": poll_seconds, "thaw_timeout": thaw_timeout}, state={"holds": {}})
    try:
        run_procedure(DRILL, ctx)
    except BackupError:
        if "verdict" not in ctx.state:  # the plan or the report itself failed
            raise
    verdict: DrillVerdict = ctx.state["verdict"]
    if raise_on_failure and not verdict.passed:
        raise failed_error(verdict)
    down = ctx.state.get("teardown")
    return DrillOutcome(verdict=verdict.to_dict(), teardown=down.to_dict() if down else None)


def failed_error(verdict: DrillVerdict | dict[str, Any]) -> DrillFailedError:
    v = verdict if isinstance(verdict, dict) else verdict.to_dict()
    return DrillFailedError(
        f"disaster-recovery drill {v['drill_id']} FAILED: {len(v['findings'])} finding(s):\n  - "
        + "\n  - ".join(v["findings"][:30]) + f"\n  report: {v['reports'].get('md')}",
        hint=f"fix what the findings name (see the report and {RUNBOOK}), then run `backupctl drill` again")
