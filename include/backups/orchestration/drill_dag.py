"""The ``dr_drill`` DAG: a disaster-recovery drill on the schedule of ``drill.schedule`` (null: manual only).

Graph: the procedure :data:`backups.commands.drill.DRILL` (the steps ``backupctl drill`` runs), built by the
generic builder :func:`~backups.orchestration.procedures.add_procedure_tasks`; this module adds only what is
Airflow's (the setup/teardown pair, the run note, the ``drill_complete`` event, the failing ``report``)::

    plan → isolate (setup) → restore_tier (mapped over the configured tiers, pool backup_io) → verify_tier (mapped)
         → teardown (teardown task: always) → report (always)

A tier the run does not drill (the ``tiers`` param, ``drill.tiers``) skips its ``restore_tier`` and ``verify_tier``.

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
* ``report`` — measure and judge (RTO/RPO per tier), write the Markdown/HTML/JSON reports and the history line,
  set the run's note (:func:`backups.commands.drill.drill_note`; a failed drill keeps it); **fails the run** (and the failure notifier alerts) when a check failed, a target was missed, ``isolate``
  failed or the teardown left something behind. It is not upstream of the teardown, so a failed setup does not
  mark it ``upstream_failed``.

A tier's failure (no restorable snapshot, a damaged object, a failed check) is returned as a finding by its
task, so the other tiers are still drilled and the report is always written. The scratch directory is shared by
restore, verify and teardown: on Celery/Kubernetes route them to one host with :data:`DRILL_QUEUE`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, Param, TriggerRule

from ..commands import drill as drill_command
from ..commands.procedure import RunContext, Step
from ..config import Config, load_config
from ..units import fmt_duration
from . import notifiers, run_notes
from .backup_dags import START_DATE, default_args

if TYPE_CHECKING:
    from .connections import AirflowResolver

log = logging.getLogger("backups.orchestration.drill")

DAG_ID = "dr_drill"
#: Celery/Kubernetes: a queue served by one host (isolate, restore_tier, verify_tier and teardown share the
#: scratch directory). None: the default queue (LocalExecutor: one host).
DRILL_QUEUE: str | None = None


def _resolver(cfg: Config) -> AirflowResolver | None:
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
        f"Targets: RTO {fmt_duration(d.rto_minutes * 60)} per tier, RPO {fmt_duration(d.rpo_hours * 3600)} (from when "
        "the data was read). Storage: "
        f"{d.storage or 'the last storage of each tier'}; tiers: {', '.join(d.tiers or cfg.tiers)}.", "",
        "1. `plan`: the newest snapshot of each tier whose chain is complete on the drill storage (read-only).",
        "2. `isolate`: a scratch directory and scratch PostgreSQL databases (never the live ones).",
        "3. `restore_tier` (one per tier): the chain restored, every SHA-256 checked.",
        "4. `verify_tier`: re-hash, Great Expectations (with Data Docs), referential integrity, config files parse, "
        f"{len(d.smoke)} smoke check(s).",
        "5. `teardown`: always removes the scratch data.",
        "6. `report`: RTO/RPO per tier judged against the targets; Markdown/HTML/JSON report and history in "
        "`<reports>/drill/`; the run's note (verdict, RTO/RPO per tier, findings, report); fails the run when the "
        "drill failed (a leftover of the teardown is a finding).", "",
        "Each drill is named by the time it ran: unpausing also runs the latest scheduled slot (README, Unpausing).", "",
        "Without Airflow: `backupctl drill`. Runbook: `docs/disaster-recovery.md`."])


def build_drill_dag(cfg: Config) -> DAG:
    d = drill_command.settings(cfg)
    on_host = {"queue": DRILL_QUEUE} if DRILL_QUEUE else {}
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
        add_drill_tasks(cfg, on_host, failure)
    return dag


NOTE_KEY = "note"


def _teardown_done(actx: Any, down: dict[str, Any]) -> None:
    """The teardown task fails (visibly) when something is left; its result is pushed first: the report reads it."""
    from airflow.sdk.exceptions import AirflowFailException

    if down.get("problems"):
        actx["ti"].xcom_push(key="return_value", value=down)
        raise AirflowFailException("drill teardown left scratch data behind:\n  - " + "\n  - ".join(down["problems"]))


def _reported(actx: Any, verdict: dict[str, Any]) -> None:
    """After the report: the run's note (logged once — the full report is in the files it names), the
    ``drill_complete`` event; then the task fails when the drill failed (the failure notifier alerts)."""
    from airflow.sdk.exceptions import AirflowFailException

    try:  # the report as the Backups plugin serves it (authenticated like the UI), not a path on the worker
        link: str | None = run_notes.drill_report_url(verdict["drill_id"])
    except (KeyError, ValueError):
        link = None
    note = drill_command.drill_note(verdict, link)
    log.info("%s", note)
    run_notes.set_run_note(actx["dag"].dag_id, actx["run_id"], note)
    summary = {k: verdict[k] for k in ("drill_id", "passed", "rto_seconds", "rpo_seconds", "findings", "reports")}
    notifiers.publish("drill_complete", {"dag_id": actx["dag"].dag_id, "run_id": actx["run_id"], **summary})
    if not verdict["passed"]:
        # the failure notifier replaces the run's note with "Failed — task report"; put the drill's note back after it
        actx["ti"].xcom_push(key=NOTE_KEY, value=note)
        raise AirflowFailException(str(drill_command.failed_error(verdict)))


def note_again(context: Any) -> None:
    """The ``report`` task's last failure callback: a failed drill's run note is the drill's own (verdict, cause,
    RTO/RPO per tier, findings, report), not the generic "Failed — task report" the failure notifier just set."""
    try:
        note = context["ti"].xcom_pull(task_ids="report", key=NOTE_KEY)
        if note:
            run_notes.set_run_note(context["dag"].dag_id, context["run_id"], note)
    except Exception:  # a callback never hides the failure itself
        log.exception("the drill's run note could not be set again")


def add_drill_tasks(cfg: Config, on_host: dict[str, Any], failure: list[Any]) -> None:
    """The drill's tasks: the procedure :data:`backups.commands.drill.DRILL` built by the generic builder, plus what
    only Airflow has — ``isolate`` as the setup of the ``teardown`` task (trigger rule ``all_done``: it also runs
    when ``isolate`` failed half-way), the note, the event and the failure of ``report``."""
    from .procedures import TaskOptions, add_procedure_tasks

    def context(actx: Any, step: Step) -> RunContext:
        cfg_ = load_config()
        return RunContext(cfg_, _resolver(cfg_), dag_id=actx["dag"].dag_id, run_id=actx["run_id"],
                          params=dict(actx["params"] or {}))

    built = add_procedure_tasks(
        drill_command.DRILL, context=context, candidates=lambda step: list(cfg.tiers),
        options={
            "isolate": TaskOptions(task_args=on_host),
            "restore_tier": TaskOptions(task_args=on_host, io_pool=True),
            "verify_tier": TaskOptions(task_args=on_host),
            "teardown": TaskOptions(task_args=on_host, after=_teardown_done),
            # its log: the note once, not the verdict again as "Returned value was" (the report files hold it)
            "report": TaskOptions(task_args={"on_failure_callback": [*failure, note_again],
                                             "show_return_value_in_logs": False}, after=_reported),
        })
    down = built.tasks["teardown"]
    down.as_teardown(setups=built.tasks["isolate"])
    # the teardown's trigger rule would skip it when isolate failed; isolate may have left a part behind (killed)
    down.operator.trigger_rule = TriggerRule.ALL_DONE


__all__ = ["DAG_ID", "DRILL_QUEUE", "build_drill_dag", "drill_doc", "drill_params"]
