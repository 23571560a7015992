"""The restore declared once as a :class:`~backups.commands.procedure.Procedure` (:data:`RESTORE`), with the task
ids of the ``restore_snapshot`` DAG: ``locate → approve_restore → wait_for_archive → restore → verify_restored →
report``. ``backupctl restore`` runs it through :func:`backups.commands.procedure.run` (the gate asks nothing there;
the wait loops the one archive poll, :class:`backups.engine.thaw.ThawPoll`).

The run context carries the request (``params["request"]``, checked), the PostgreSQL DSNs (never in a result),
``validate``, ``poll_seconds`` / ``thaw_timeout`` / ``tty``, and in ``state``: ``run`` (:class:`RunInfo`) and
``locks`` (an ``ExitStack``: when the caller gives one, the restore step enters the repository's shared lock into
it, so the verification runs under the same lock — the CLI holds it across both steps).
"""

from __future__ import annotations

import time
from typing import Any

from ..procedure import GATE, WAIT, Procedure, RunContext, Step, Wait
from ..target_lock import TargetOwner, claim
from ..validate import pg_scratch_dsn
from .plan import ArchiveWait, TablePlan, check_before_approval, check_prerequisites, plan_tables
from .report import RestoreReport, build_report, write_report
from .request import Location, RestoreRequest, locate, read_only_storage
from .run import RestoreResult, Verification, run_restore, shared_lock, verify_restore


def _req(ctx: RunContext) -> RestoreRequest:
    req: RestoreRequest = ctx.params["request"]
    return req


def _claim(ctx: RunContext) -> None:
    run = ctx.state.get("run")
    claim(_req(ctx).target, TargetOwner(door=ctx.dag_id if ctx.dag_id != "backupctl" else "cli", run_id=ctx.run_id,
                                        user=getattr(run, "requested_by", None) or "unknown"))


def _locate(ctx: RunContext, results: dict[str, Any], _: Any) -> Location:
    req = _req(ctx)
    loc = locate(ctx.cfg, req, ctx.resolver)
    return check_before_approval(ctx.cfg, req, loc, ctx.resolver, ctx.params.get("pg_dsn"),
                                 validate=bool(ctx.params.get("validate", True)), run_id=ctx.run_id)


def _approve(ctx: RunContext, results: dict[str, Any], _: Any) -> None:
    return None  # a gate: the DAG's approval operator; the CLI asks nothing


def _wait(ctx: RunContext, results: dict[str, Any], _: Any) -> ArchiveWait | Wait:
    """The archive thaw as a wait over the one poll; the target is claimed first (nothing is thawed for a run
    that could not write)."""
    from ...catalog import Catalog
    from ...engine.thaw import THAW_TIMEOUT_SECONDS, ThawPoll, needed_keys
    loc: Location = results["locate"]
    _claim(ctx)
    st = read_only_storage(ctx.cfg, loc.storage, ctx.resolver)
    if not st.archive:
        return ArchiveWait(storage=loc.storage, archive=False, keys=0)
    cat = Catalog(st, ctx.cfg.application)
    p = ThawPoll(st, needed_keys(cat, cat.get(loc.snapshot_id)))
    timeout = ctx.params.get("thaw_timeout")
    return Wait(poll=p.poll, interval=float(ctx.params.get("poll_seconds") or 60.0), progress=p.progress,
                timeout=THAW_TIMEOUT_SECONDS if timeout is None else float(timeout), expired=p.expired,
                result=lambda: ArchiveWait(storage=loc.storage, archive=True, keys=len(p.keys),
                                           waited_seconds=round(p.waited, 1)))


def _restore(ctx: RunContext, results: dict[str, Any], _: Any) -> RestoreResult:
    req, loc = _req(ctx), results["locate"]
    pg_dsn = ctx.params.get("pg_dsn")
    # checked again: the target may have changed while the request waited for the approval or the thaw
    check_prerequisites(ctx.cfg, req, loc, pg_dsn, validate=bool(ctx.params.get("validate", True)),
                        run_id=ctx.run_id)
    _claim(ctx)
    locks = ctx.state.get("locks")
    if locks is not None:  # one shared lock over the restore and its verification (a prune waits for both)
        locks.enter_context(shared_lock(ctx.cfg, loc.storage, ctx.resolver, operation="restore"))
        ctx.state["locked"] = True
    plan = TablePlan.from_dict(loc.tables) or plan_tables(ctx.cfg, req, loc, ctx.resolver, pg_dsn)
    return run_restore(ctx.cfg, req, loc, ctx.resolver, pg_dsn, tty=ctx.params.get("tty"), plan=plan,
                       locked=bool(ctx.state.get("locked")))


def _verify(ctx: RunContext, results: dict[str, Any], _: Any) -> Verification:
    validate = bool(ctx.params.get("validate", True))
    return verify_restore(ctx.cfg, _req(ctx), results["locate"], results["restore"], ctx.resolver,
                          ctx.params.get("pg_dsn"), validate=validate,
                          scratch_dsn=ctx.params.get("scratch_dsn") or (pg_scratch_dsn(ctx.resolver) if validate
                                                                       else None),
                          locked=bool(ctx.state.get("locked")))


def _report(ctx: RunContext, results: dict[str, Any], _: Any) -> RestoreReport:
    run = ctx.state["run"]
    if "t0" in ctx.state:
        run.run_seconds = round(time.monotonic() - ctx.state["t0"], 1)
    wait = results.get("wait_for_archive")  # the CLI's result; the DAG's sensor result is in the RunInfo already
    if wait is not None:
        run.archive_wait = wait.to_dict() if hasattr(wait, "to_dict") else wait
    report = build_report(_req(ctx), results["locate"], results["restore"], results["verify_restored"], run)
    ctx.state["report_paths"] = write_report(_req(ctx).target, report)
    return report


RESTORE = Procedure("restore", (
    Step("locate", "", _locate, result=Location,
         doc="the snapshot, its storage, and everything knowable before the approval (target, space, tables)"),
    Step("approve_restore", "", _approve, kind=GATE, doc="a person approves (DAG); the CLI asks nothing"),
    Step("wait_for_archive", "", _wait, kind=WAIT, needs=("locate",), result=ArchiveWait,
         doc="archive storages: request the thaw and poll until every object is readable"),
    Step("restore", "", _restore, needs=("locate",), result=RestoreResult,
         doc="claim the target, plan the tables, restore (every SHA-256 checked while written)"),
    Step("verify_restored", "", _verify, needs=("locate", "restore"), result=Verification,
         doc="the restored tree against the snapshot's index; Great Expectations on the databases"),
    Step("report", "", _report, needs=("locate", "restore", "verify_restored"),
         doc="RESTORE_REPORT.json and .md in the target directory"),
))
