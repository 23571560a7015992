"""The ``dr_drill`` DAG: a disaster-recovery drill on the schedule of ``drill.schedule`` (null: manual only).

Graph (each task calls one step of :mod:`backups.commands.drill`, the steps ``backupctl drill`` runs)::

    plan → isolate (setup) → restore_tier (mapped per tier, pool backup_io) → verify_tier (mapped)
         → teardown (teardown task: always) → report (always)

* ``plan`` — per tier the newest snapshot whose chain is complete on the drill storage (opened read-only). The
  drill is named by the time it ran (``drill-<plan's start, UTC>``, as ``backupctl drill``) — never by the logical
  date or ``run_after`` of its run: unpausing a scheduled drill (the UI's "Unpause on trigger") also starts its
  latest scheduled slot, days late, and that drill ran today. A cleared downstream task works on the same scratch
  names (the plan's XCom keeps the id).
* ``isolate`` — the scratch directory and the ``drill_<run>_<tier>_<source>`` PostgreSQL databases.
* ``restore_tier`` — archive storages: the thaw wait (only with ``drill.approve_archive``; it polls inside the
  task, holding a worker slot for the hours a GLACIER retrieval takes — drill from a non-archive storage where you
  can); the restore command's ``run_restore`` (SHA-256 checked).
* ``verify_tier`` — re-hash, Great Expectations with Data Docs, integrity, config files, ``drill.smoke``.
* ``teardown`` — an Airflow teardown task: runs even when a step (``isolate`` included) failed; removes the
  scratch data and hands what it could not remove to the report.
* ``report`` — measure and judge (RTO/RPO per tier), write the Markdown/HTML/JSON reports and the history line;
  **fails the run** (and the failure notifier alerts) when a check failed, a target was missed, ``isolate``
  failed or the teardown left something behind. It is not upstream of the teardown, so a failed setup does not
  mark it ``upstream_failed``.

A tier's failure (no restorable snapshot, a damaged object, a failed check) is returned as a finding by its
task, so the other tiers are still drilled and the report is always written. The scratch directory is shared by
restore, verify and teardown: on Celery/Kubernetes route them to one host with :data:`DRILL_QUEUE`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task

from ..commands import drill as drill_command
from ..commands.drill import DrillPlan, DrillRequest, Scratch, TierRestore, TierVerify
from ..config import Config, load_config
from ..errors import BackupError
from . import notifiers, run_notes
from .adapters import POOL, task_errors
from .dags import START_DATE, default_args

log = logging.getLogger("backups.orchestration.drill")

DAG_ID = "dr_drill"
#: Celery/Kubernetes: a queue served by one host (isolate, restore_tier, verify_tier and teardown share the
#: scratch directory). None: the default queue (LocalExecutor: one host).
DRILL_QUEUE: str | None = None


def _resolver(cfg: Config) -> Any:
    """Airflow's connections, always: besides the storages' conn_id, the scratch PostgreSQL server may be the
    ``backup_pg_scratch`` connection even when the config names no conn_id."""
    from .connections import task_resolver

    return task_resolver(cfg, always=True)


def drill_params(cfg: Config) -> dict[str, Param]:
    return {
        "storage": Param(None, type=["null", "string"], enum=[None, *cfg.storages], title="Storage",
                         values_display={None: "drill.storage, else each tier's last storage"},
                         description="Drill from this storage; empty: drill.storage, else each tier's last storage"),
        "tiers": Param(None, type=["null", "array"], items={"type": "string", "enum": list(cfg.tiers)},
                       uniqueItems=True, examples=list(cfg.tiers), title="Tiers",
                       description="Drill these tiers; empty: drill.tiers, else every tier"),
    }


def drill_doc(cfg: Config) -> str:
    d = drill_command.settings(cfg)
    return "\n".join([
        f"# Disaster-recovery drill of {cfg.application}", "",
        f"Schedule: `{d.schedule}` (UTC)" if d.schedule else "Schedule: manual (set `drill.schedule` to a cron).",
        f"Targets: RTO {d.rto_minutes:g} min, RPO {d.rpo_hours:g} h. Storage: "
        f"{d.storage or 'the last storage of each tier'}; tiers: {', '.join(d.tiers or cfg.tiers)}.", "",
        "1. `plan`: the newest snapshot of each tier whose chain is complete on the drill storage (read-only).",
        "2. `isolate`: a scratch directory and scratch PostgreSQL databases (never the live ones).",
        "3. `restore_tier` (one per tier): the chain restored, every SHA-256 checked.",
        "4. `verify_tier`: re-hash, Great Expectations (with Data Docs), referential integrity, config files parse, "
        f"{len(d.smoke)} smoke check(s).",
        "5. `teardown`: always removes the scratch data.",
        "6. `report`: RTO/RPO per tier judged against the targets; Markdown/HTML/JSON report and history in "
        "`<reports>/drill/`; fails the run when the drill failed (a leftover of the teardown is a finding).", "",
        "Without Airflow: `backupctl drill`. Runbook: `docs/disaster-recovery.md`."])


def build_drill_dag(cfg: Config) -> DAG:
    d = drill_command.settings(cfg)
    on_host = {"queue": DRILL_QUEUE} if DRILL_QUEUE else {}
    heavy = {**on_host, **({"pool": POOL} if POOL else {})}
    failure = [notifiers.BackupNotifier("task_failure"), *notifiers.mail_notifiers(
        cfg, "[drill] {{ dag.dag_id }}: {{ ti.task_id }} failed",
        "<p>Disaster-recovery drill task <b>{{ ti.task_id }}</b> failed (run {{ run_id }}).</p>"
        "<pre>{{ exception | e }}</pre><p>See the drill report and docs/disaster-recovery.md.</p>")]
    dag = DAG(
        dag_id=DAG_ID,
        description=f"Disaster-recovery drill of {cfg.application}: restore into isolation, test, measure RTO/RPO",
        schedule=d.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        # retries only for unexpected errors: every library error fails its task at once (AirflowFailException), a
        # tier's failure is a finding, and a failed drill fails `report` without a retry
        default_args={**default_args(cfg), "on_failure_callback": failure},
        tags=["drill", "disaster-recovery"],
        doc_md=drill_doc(cfg),
        params=drill_params(cfg),
        on_success_callback=[notifiers.BackupNotifier("dag_success")],
        on_failure_callback=notifiers.dag_failure_callbacks(cfg),
    )
    with dag:
        add_drill_tasks(on_host, heavy, failure)
    return dag


def _runtime() -> tuple[Config, Any, Any]:
    cfg = load_config()
    return cfg, _resolver(cfg), get_current_context()


TEARDOWN_KEY = "teardown"
NOTE_KEY = "note"


def report_drill(plan: dict[str, Any], restores: Any, verifies: Any) -> dict[str, Any]:
    """The ``report`` task: judge, write and store the reports, publish the summary; fail when the drill failed."""
    from airflow.sdk.exceptions import AirflowFailException

    cfg, resolver, ctx = _runtime()
    # pulled, not an argument: a setup task may only be followed by ALL_SUCCESS tasks (this one is ALL_DONE)
    scratch = ctx["ti"].xcom_pull(task_ids="isolate")
    p = DrillPlan.from_dict(plan)
    # a slice is one XCom query (iterating a lazy sequence probes one past its end and logs "XCom not found")
    rs = [TierRestore.from_dict(r) for r in (restores[:] if restores is not None else []) if r]
    vs = [TierVerify.from_dict(v) for v in (verifies[:] if verifies is not None else []) if v]
    missing = [] if scratch else ["isolate failed: no scratch space (see its task log)"]
    missing += drill_command.teardown_findings(ctx["ti"].xcom_pull(task_ids="teardown", key=TEARDOWN_KEY) or None)
    verdict = drill_command.write_reports(cfg, drill_command.judge(
        cfg, p, Scratch.from_dict(scratch[0]) if scratch else None, rs, vs, extra_findings=missing))
    verdict.reports["stored"] = ", ".join(drill_command.store_reports(cfg, verdict, resolver))
    summary = {"drill_id": verdict.drill_id, "passed": verdict.passed, "rto_seconds": verdict.rto_seconds,
               "rpo_seconds": verdict.rpo_seconds, "findings": verdict.findings, "reports": verdict.reports}
    # the note once in the log (the full report is in the files it names, not repeated here)
    note = drill_command.drill_note(verdict.to_dict())
    log.info("%s", note)
    run_notes.set_run_note(ctx["dag"].dag_id, ctx["run_id"], note)
    notifiers.publish("drill_complete", {"dag_id": ctx["dag"].dag_id, "run_id": ctx["run_id"], **summary})
    if not verdict.passed:
        # the failure notifier replaces the run's note with "Failed — task report"; put the drill's note back after it
        ctx["ti"].xcom_push(key=NOTE_KEY, value=note)
        raise AirflowFailException(str(drill_command.failed_error(verdict)))
    return summary


def note_again(context: Any) -> None:
    """The ``report`` task's last failure callback: a failed drill's run note is the drill's own (verdict, cause,
    RTO/RPO per tier, findings, report), not the generic "Failed — task report" the failure notifier just set."""
    try:
        note = context["ti"].xcom_pull(task_ids="report", key=NOTE_KEY)
        if note:
            run_notes.set_run_note(context["dag"].dag_id, context["run_id"], note)
    except Exception:  # a callback never hides the failure itself
        log.exception("the drill's run note could not be set again")


def add_drill_tasks(on_host: dict[str, Any], heavy: dict[str, Any], failure: list[Any]) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    @task(task_id="plan")
    def plan_task() -> dict[str, Any]:
        cfg, resolver, ctx = _runtime()
        p = dict(ctx["params"] or {})
        with task_errors(fail_fast=(BackupError,)):
            plan = drill_command.plan_drill(cfg, DrillRequest(
                storage=p.get("storage") or None, tiers=p.get("tiers") or None, started_at=datetime.now(UTC).isoformat(),
                door=ctx["dag"].dag_id, run_id=ctx["run_id"]), resolver)
        return plan.to_dict()

    @task(task_id="isolate", **on_host)
    def isolate_task(plan: dict[str, Any]) -> list[dict[str, Any]]:
        """One scratch slot per tier (the scratch description plus the tier): what ``restore_tier`` maps over."""
        cfg, resolver, _ctx = _runtime()
        p = DrillPlan.from_dict(plan)
        with task_errors(fail_fast=(BackupError,)):
            scratch = drill_command.isolate(cfg, p, resolver).to_dict()
        return [{**scratch, "tier": t} for t in p.names]

    @task(task_id="restore_tier", map_index_template="{{ task.op_kwargs['slot']['tier'] }}", **heavy)
    def restore_task(plan: dict[str, Any], slot: dict[str, Any]) -> dict[str, Any]:
        cfg, resolver, _ctx = _runtime()
        return drill_command.restore_tier(cfg, DrillPlan.from_dict(plan), Scratch.from_dict(slot), slot["tier"],
                                          resolver).to_dict()

    @task(task_id="verify_tier", map_index_template="{{ task.op_kwargs['restored']['tier'] }}", **on_host)
    def verify_task(plan: dict[str, Any], scratch: list[dict[str, Any]], restored: dict[str, Any]) -> dict[str, Any]:
        cfg, resolver, _ctx = _runtime()
        return drill_command.verify_tier(cfg, DrillPlan.from_dict(plan), Scratch.from_dict(scratch[0]),
                                         TierRestore.from_dict(restored), resolver).to_dict()

    @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE, on_failure_callback=[*failure, note_again])
    def report_task(plan: dict[str, Any], restores: Any = None, verifies: Any = None) -> dict[str, Any]:
        return report_drill(plan, restores, verifies)

    @task(task_id="teardown", **on_host)
    def teardown_task(plan: dict[str, Any]) -> dict[str, Any]:
        cfg, resolver, ctx = _runtime()
        down = drill_command.teardown(cfg, plan["drill_id"], resolver)
        ctx["ti"].xcom_push(key=TEARDOWN_KEY, value=down.to_dict())  # for the report, even when this task fails
        if down.problems:
            raise AirflowFailException("drill teardown left scratch data behind:\n  - " + "\n  - ".join(down.problems))
        return down.to_dict()

    planned = plan_task()
    scratch = isolate_task(planned)
    restores = restore_task.partial(plan=planned).expand(slot=scratch)
    verifies = verify_task.partial(plan=planned, scratch=scratch).expand(restored=restores)
    down = teardown_task(planned)
    verifies >> down
    down.as_teardown(setups=scratch)
    # the teardown's trigger rule would skip it when isolate failed; isolate may have left a part behind (killed)
    down.operator.trigger_rule = TriggerRule.ALL_DONE
    # after the teardown, as in the CLI: its problems are findings. Not upstream of the teardown, so outside the
    # setup's scope: a failed isolate does not mark the report upstream_failed (it reports the failure instead)
    report = report_task(planned, restores, verifies)
    down >> report


__all__ = ["DAG_ID", "DRILL_QUEUE", "build_drill_dag", "drill_doc", "drill_params"]
