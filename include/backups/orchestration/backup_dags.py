"""DAG builders: a validated config in, DAGs out — ``backup_<tier>`` for every tier, and ``backup_manual``.

One factory (:func:`build_backup_dag`) builds the same task graph for both: the procedure
:data:`backups.commands.backup.BACKUP` (the steps ``backupctl backup`` runs too), one task per step, made by the
generic builder :func:`backups.orchestration.procedures.add_procedure_tasks`; the manual DAG adds a ``Param`` form and
a human approval gate in front. What only Airflow has (notifications, run notes, the asset event) is added here as
hooks; errors are mapped by :func:`backups.orchestration.adapters.task_errors`. Nothing heavy is imported here (the engine, GX, boto3,
paramiko, psycopg load inside the steps), so a DAG file parses in milliseconds.

Graph (group.task)::

    [approve_backup] → pre_backup.check_system_state → pre_backup.prepare_environment → pre_backup.notify_start
      → backup.extract_data[source] (database and command sources) ┐
      → backup.extract_config[source] (file sources)               ┴→ backup.commit (manifest; Asset event)
      → backup.upload[storage] → verify.check_integrity[storage], verify.test_restore → verify.validate_data
      → post_backup.notify_completion;  post_backup.cleanup (teardown: runs whatever happened)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, TriggerRule

from ..commands import backup as steps
from ..commands import notes
from ..commands.backup import MANUAL_TIER
from ..config import Config
from ..errors import BackupError
from . import notifiers, run_notes
from .adapters import FAIL_FAST, POOL, run_seconds, runtime

__all__ = ["FAIL_FAST", "POOL", "START_DATE", "build_backup_dag", "default_args"]

START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
RETRIES = 2
RETRY_DELAY = timedelta(minutes=5)
PLAN_TASK = "pre_backup.prepare_environment"
#: the backup_manual form fields kept in its result document
MANUAL_PARAMS = ("backup_type", "sources", "storages", "comment", "require_approval")


def asset_uri(cfg: Config, tier: str) -> str:
    return f"backup://{cfg.application}/{tier}"


def asset_extra(summary: dict[str, Any], application: str) -> dict[str, Any]:
    """The asset event's extra for a completed backup (``CompletionSummary.to_dict()``): what a consumer needs
    without opening the repository — id, type, chain, sizes, duration, where it is, and the verification verdict."""
    t, d = summary["totals"], summary.get("durations") or {}
    return {"snapshot_id": summary["snapshot_id"], "type": summary["type"], "parent": summary.get("parent"),
            "chain": list(summary.get("chain") or []), "tier": summary["tier"], "application": application,
            "logical_date": summary.get("logical_date"), "storages": list(summary["storages"]),
            "files": t.get("files"), "bytes": t.get("bytes"), "stored_bytes": t.get("stored_bytes"),
            "duration_seconds": d.get("run_seconds"), "snapshot_seconds": d.get("snapshot_seconds"),
            "verification": notes.backup_verdict(summary), "report": (summary.get("report") or [None])[0]}


def default_args(cfg: Config) -> dict[str, Any]:
    return {"owner": cfg.owner, "retries": RETRIES, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=30), "on_failure_callback": notifiers.task_failure_callbacks(cfg)}


# ------------------------------------------------------------------------------------------------ docs
def storage_description(sc: Any) -> str:
    """Where a storage keeps the snapshots, for the DAG docs."""
    if sc.type == "local":
        where = f"local directory `{sc.path}`"
    elif sc.type == "s3":
        where = f"S3 `s3://{sc.bucket}/{sc.prefix}` (connection `{sc.conn_id}`, {sc.storage_class})"
    else:
        where = f"SFTP `{sc.path}` (connection `{sc.conn_id}`)"
    return where + (", encrypted client-side" if getattr(sc, "encryption", None) else "")


def source_description(sc: Any) -> str:
    """What a source backs up, for the DAG docs."""
    if sc.type == "files":
        what = f"files under `{sc.root}` ({', '.join(sc.include)}" + (f"; except {', '.join(sc.exclude)}" if sc.exclude else "") + ")"
    elif sc.type == "sqlite":
        what = f"SQLite database `{sc.path}` (online copy, row counts and schema recorded)"
    elif sc.type == "postgres":
        what = "PostgreSQL " + (f"connection `{sc.conn_id}`" if sc.conn_id else "DSN from the config") + " (pg_dump, directory format)"
    else:
        what = f"output of `{' '.join(sc.command)}`"
    return what + (f" — {sc.description}" if sc.description else "")


def tier_doc(cfg: Config, tier: str) -> str:
    t = cfg.tiers[tier]
    lines = [f"# Backup tier `{tier}` of {cfg.application}", ""]
    if t.description:
        lines += [t.description, ""]
    lines += [f"**Type:** {t.type} · **schedule:** `{t.schedule or 'none (trigger by hand)'}` (UTC) · "
              f"**retention:** {t.retention.describe()}", "", "**Backs up:**", ""]
    lines += [f"* `{n}`: {source_description(cfg.sources[n])}" for n in t.sources]
    lines += ["", "**Stored on** (the first is the primary, where extraction writes; the others receive a verified copy):", ""]
    lines += [f"* `{n}`: {storage_description(cfg.storages[n])}" for n in t.storages]
    lines += ["", f"Each committed snapshot emits the asset `{asset_uri(cfg, tier)}`. Every run verifies what landed on "
              "each storage (SHA-256), validates the databases with Great Expectations and test-restores the chain. "
              "See docs/dags.md."]
    return "\n".join(lines)


def manual_doc(cfg: Config) -> str:
    return "\n".join([
        f"# Manual backup of {cfg.application}", "",
        "Trigger with the form: backup type, sources, storages and a comment. A person must then approve the "
        "run (**Required Actions** in the UI, or `PATCH /api/v2/dags/backup_manual/dagRuns/{run_id}/taskInstances/"
        "approve_backup/-1/hitlDetails`) before anything is read or written; Reject, or no answer in 24 h, ends the "
        "run as failed with a note saying nothing was backed up. "
        "`require_approval=false` skips the gate (scripts, tests).", "",
        f"Snapshots are ids `manual-<timestamp>` (tier `manual`, retention: {cfg.manual_retention.describe()} — "
        f"`manual_retention` in the config). The run is verified like "
        f"the scheduled tiers and a result document (who asked, who approved, what was taken, checks) is stored as "
        f"`reports/manual/<snapshot_id>.json` and `.md` on every chosen storage. Asset: `{asset_uri(cfg, MANUAL_TIER)}`.",
        "", "**Sources:** " + ", ".join(f"`{n}` ({s.type})" for n, s in cfg.sources.items()),
        "", "**Storages:** " + ", ".join(f"`{n}`: {storage_description(s)}" for n, s in cfg.storages.items())])


def manual_params(cfg: Config) -> dict[str, Param]:
    sources, storages = list(cfg.sources), list(cfg.storages)
    return {
        "backup_type": Param("full", type="string", enum=["full", "differential", "incremental"], title="Backup type",
                             description="full: complete, restorable alone; differential: changes since the last full; "
                                         "incremental: changes since the last backup of any type"),
        "sources": Param(sources, type=["null", "array"], items={"type": "string", "enum": sources}, uniqueItems=True,
                         examples=sources, title="Sources", description="What to back up; empty: every source"),
        "storages": Param(storages, type=["null", "array"], items={"type": "string", "enum": storages},
                          uniqueItems=True, examples=storages, title="Storages",
                          description="Where to store it (the first in config order is the primary); empty: every "
                                      "storage"),
        "comment": Param(None, type=["null", "string"], title="Comment",
                         description="Optional: why this backup is taken (kept in the manifest and the result document)"),
        "require_approval": Param(True, type="boolean", title="Require approval",
                                  description="Ask a person to approve before anything runs (turn off for scripts)"),
    }


# ------------------------------------------------------------------------------------------------ adapters
def build_backup_dag(cfg: Config, tier: str) -> DAG:
    """The backup DAG of one tier (``backup_<tier>``), or ``backup_manual`` for ``tier="manual"``."""
    manual = tier == MANUAL_TIER
    if manual:
        cfg = steps.with_manual_tier(cfg)  # raises ConfigError if the config itself defines a "manual" tier
    t = cfg.tiers[tier]
    asset = Asset(uri=asset_uri(cfg, tier))
    dag = DAG(
        dag_id=f"backup_{tier}",
        description=(f"On-demand, approved backup of {cfg.application}" if manual else
                     f"{t.type.capitalize()} backup of {cfg.application} ({', '.join(t.sources)} → {', '.join(t.storages)})"),
        schedule=None if manual else t.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(cfg),
        tags=["backup", "manual", f"tier:{tier}"] if manual else ["backup", f"tier:{tier}", f"type:{t.type}"],
        doc_md=manual_doc(cfg) if manual else tier_doc(cfg, tier),
        params=manual_params(cfg) if manual else {},
        on_success_callback=notifiers.dag_success_callbacks(cfg),
        on_failure_callback=notifiers.dag_failure_callbacks(cfg),
    )
    with dag:
        add_backup_tasks(cfg, tier, manual, asset)
    return dag


def add_backup_tasks(cfg: Config, tier: str, manual: bool, asset: Asset) -> None:
    """The task graph of a backup DAG (inside its ``with dag:``): the procedure :data:`backups.commands.backup.BACKUP`,
    one task per step (:func:`backups.orchestration.procedures.add_procedure_tasks`), plus what only Airflow has —
    the start and completion notifications, the run note, the asset event and, for backup_manual, the approval."""
    from ..commands.procedure import RunContext, Step
    from .procedures import TaskOptions, add_procedure_tasks

    app = cfg.application
    candidates = cfg.tiers[tier]  # the manual tier lists every source and storage

    def mapped_over(step: Step) -> list[str]:
        # mapped over the candidates known at parse time (the tier's, or every configured one for backup_manual);
        # an instance whose source or storage the run did not choose skips itself
        if step.name == "extract_data":
            return [n for n in candidates.sources if cfg.sources[n].type in steps.DATA_KINDS]
        if step.name == "extract_config":
            return [n for n in candidates.sources if cfg.sources[n].type not in steps.DATA_KINDS]
        return list(candidates.storages)

    def context(actx: Any, step: Step) -> RunContext:
        try:
            cfg_, resolver = runtime(tier)
        except BackupError:
            if step.kind != "cleanup":
                raise
            cfg_, resolver = None, None  # the teardown still removes this run's scratch
        params = dict(actx["params"] or {})
        # the cleanup step runs without a config when it cannot be loaded (RunContext's cfg is typed Config)
        run = RunContext(cfg_, resolver, dag_id=actx["dag"].dag_id, run_id=actx["run_id"], params={  # type: ignore[arg-type]
            "logical_date": actx.get("logical_date") or actx["dag_run"].run_after, "validate": True})
        if step.name in ("check_system_state", "prepare_environment"):
            run.params["selection"] = steps.selection(cfg_, tier, params)  # type: ignore[arg-type]  # not a cleanup step: cfg_ loaded
        if step.name == "notify_completion":
            run.state["run_seconds"] = run_seconds(actx["dag_run"])
            if manual:
                run.params["manual"] = {
                    "requested_by": getattr(actx["dag_run"], "triggering_user_name", None),
                    "approval": actx["ti"].xcom_pull(task_ids="approve_backup", map_indexes=-1),
                    "params": {k: params.get(k) for k in MANUAL_PARAMS}}
        return run

    def started(actx: Any, msg: str) -> None:
        plan = actx["ti"].xcom_pull(task_ids=PLAN_TASK, key="plan", map_indexes=-1)
        notifiers.publish("backup_start", {"dag_id": actx["dag"].dag_id, "run_id": actx["run_id"],
                                           "snapshot_id": plan["snapshot_id"], "message": msg, "plan": plan})

    # the asset event comes with the run's result: a consumer (a restore drill, a report) only ever sees verified
    # snapshots, and the event's extra carries sizes, duration and the verdict
    def completed(actx: Any, result: dict[str, Any]) -> None:
        actx["outlet_events"][asset].extra = asset_extra(result, app)
        url = run_notes.backup_report_url(result["snapshot_id"]) if result.get("report") else None
        run_notes.set_run_note(actx["dag"].dag_id, actx["run_id"], notes.backup_note(result, url))
        notifiers.publish("backup_complete", {"dag_id": actx["dag"].dag_id, "run_id": actx["run_id"], **result})

    built = add_procedure_tasks(
        steps.BACKUP, context=context, candidates=mapped_over,
        first_trigger_rule=TriggerRule.NONE_FAILED if manual else TriggerRule.ALL_SUCCESS,
        tooltips={"pre_backup": "sources readable, storages reachable with room; the plan",
                  "backup": "extract every source into the primary storage, commit, copy to the others",
                  "verify": "checksums on every storage, Great Expectations, test restore",
                  "post_backup": "summary (and the manual result document); cleanup"},
        options={
            "prepare_environment": TaskOptions(task_args={"multiple_outputs": True}),
            "notify_start": TaskOptions(after=started),
            "extract_data": TaskOptions(io_pool=True, scratch=True),
            "extract_config": TaskOptions(io_pool=True, scratch=True),
            "upload": TaskOptions(io_pool=True),
            "test_restore": TaskOptions(io_pool=True),
            "notify_completion": TaskOptions(task_args={"outlets": [asset]}, after=completed),
        })

    if manual:
        from .approval import BackupApprovalOperator, gate_note, note_param

        approve = BackupApprovalOperator(
            task_id="approve_backup",
            subject="Approve a {{ params.backup_type or 'full' }} backup of " + app
                    + ": {{ (params.sources or []) | join(', ') or 'every source' }} → "
                      "{{ (params.storages or []) | join(', ') or 'every storage' }}?",
            body="Requested by **{{ dag_run.triggering_user_name or 'unknown' }}** (run `{{ run_id }}`).\n\n"
                 "* type: {{ params.backup_type or 'full' }}\n"
                 "* sources: {{ (params.sources or []) | join(', ') or 'every source' }}\n"
                 "* storages: {{ (params.storages or []) | join(', ') or 'every storage' }}\n"
                 "* comment: {{ params.comment or '-' }}\n\n"
                 "Approve to run it now; Reject (or no answer in 24 h) ends the run as failed, nothing backed up.",
            outcome="backed up",
            params={"note": note_param("result document")},
            on_failure_callback=[*notifiers.task_failure_callbacks(cfg), gate_note],
        )
        approve >> built.tasks["check_system_state"]
