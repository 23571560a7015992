"""DAG builders: a validated config in, DAGs out — ``backup_<tier>`` for every tier, and ``backup_manual``.

One factory (:func:`build_backup_dag`) wires the same task graph for both; the manual DAG adds a
``Param`` form and a human approval gate in front. Task bodies are thin adapters: read the context, call one
step of :mod:`backups.commands.backup` (typed inputs rebuilt from XCom with ``X.from_dict()``), push its result's
``to_dict()``; errors are mapped by
:func:`backups.orchestration.adapters.task_errors`. Nothing heavy is imported here (the engine, GX, boto3,
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

from airflow.sdk import DAG, Asset, Param, TaskGroup, TriggerRule, get_current_context, task, teardown
from airflow.sdk.exceptions import AirflowSkipException

from ..commands import backup as steps
from ..commands import notes
from ..commands.backup import MANUAL_TIER
from ..config import Config
from ..errors import BackupError
from . import notifiers, run_notes
from .adapters import FAIL_FAST, POOL, io_pool_args, run_seconds, runtime, task_errors

__all__ = ["FAIL_FAST", "POOL", "START_DATE", "build_backup_dag", "default_args"]

START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
RETRIES = 2
RETRY_DELAY = timedelta(minutes=5)
PLAN_TASK = "pre_backup.prepare_environment"
#: the backup_manual form fields kept in its result document
MANUAL_PARAMS = ("backup_type", "sources", "storages", "comment", "require_approval")
#: the backup_manual params a run cannot do without: none (every field is nullable or has a valid default)
MANUAL_REQUIRED: tuple[str, ...] = ()


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
        "approve_backup/-1/hitlDetails`) before anything is read or written; no answer in 24 h rejects it. "
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
def _ctx() -> Any:
    return get_current_context()


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
    """The task graph of a backup DAG (inside its ``with dag:``): thin adapters over :mod:`backups.commands.backup`."""
    app = cfg.application
    candidates = cfg.tiers[tier]  # the manual tier lists every source and storage

    with TaskGroup("pre_backup", tooltip="sources readable, storages reachable with room; the plan") as pre:

        @task(task_id="check_system_state", trigger_rule=TriggerRule.NONE_FAILED if manual else TriggerRule.ALL_SUCCESS)
        @task_errors()
        def check_system_state() -> dict[str, Any]:
            cfg_, resolver = runtime(tier)
            sel = steps.selection(cfg_, tier, _ctx()["params"])
            return steps.check_system_state(cfg_, sel, resolver).to_dict()

        @task(task_id="prepare_environment", multiple_outputs=True)
        @task_errors()
        def prepare_environment(state: dict[str, Any]) -> dict[str, Any]:
            ctx = _ctx()
            cfg_, resolver = runtime(tier)
            logical = ctx.get("logical_date") or ctx["dag_run"].run_after
            return steps.prepare_environment(cfg_, steps.selection(cfg_, tier, ctx["params"]), logical,
                                             steps.SystemState.from_dict(state), resolver).to_dict()

        @task(task_id="notify_start")
        @task_errors()
        def notify_start(plan: dict[str, Any]) -> str:
            msg = steps.start_message(steps.as_plan(plan))
            steps.log.info("%s", msg)
            notifiers.publish("backup_start", {"dag_id": _ctx()["dag"].dag_id, "run_id": _ctx()["run_id"],
                                               "snapshot_id": plan["snapshot_id"], "message": msg, "plan": plan})
            return msg

        state = check_system_state()
        prep = prepare_environment(state)
        started = notify_start(prep["plan"])

    with TaskGroup("backup", tooltip="extract every source into the primary storage, commit, copy to the others"):

        def _extract(task_id: str):
            @task(task_id=task_id, map_index_template="{{ source_name }}", **io_pool_args())
            @task_errors()
            def extract(plan: dict[str, Any], estimates: dict[str, int], source: str) -> dict[str, Any]:
                ctx = _ctx()
                ctx["source_name"] = source  # type: ignore[typeddict-unknown-key]
                if source not in plan["sources"]:
                    raise AirflowSkipException(f"source {source} is not part of this run")
                cfg_, resolver = runtime(tier)
                with steps.task_scratch(ctx["dag"].dag_id, ctx["run_id"], f"extract-{source}") as scratch:
                    return steps.extract_source(cfg_, steps.as_plan(plan), source, scratch, resolver,
                                                estimates.get(source)).to_dict()

            return extract

        # mapped over the candidates known at parse time (the tier's, or every configured one for backup_manual);
        # an instance whose source or storage the run did not choose skips itself
        extract_data = _extract("extract_data").partial(plan=prep["plan"], estimates=prep["estimates"]).expand(
            source=[n for n in candidates.sources if cfg.sources[n].type in steps.DATA_KINDS])
        extract_config = _extract("extract_config").partial(plan=prep["plan"], estimates=prep["estimates"]).expand(
            source=[n for n in candidates.sources if cfg.sources[n].type not in steps.DATA_KINDS])

        # skipped extractions (not chosen, or nothing to map) must not skip the commit
        @task(task_id="commit", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        @task_errors()
        def commit(plan: dict[str, Any]) -> dict[str, Any]:
            cfg_, resolver = runtime(tier)
            return steps.commit_snapshot(cfg_, steps.as_plan(plan), resolver).to_dict()

        committed = commit(prep["plan"])
        started >> [extract_data, extract_config]
        [extract_data, extract_config] >> committed

        @task(task_id="upload", map_index_template="{{ storage_name }}", **io_pool_args())
        @task_errors()
        def upload(plan: dict[str, Any], committed: dict[str, Any], storage: str) -> dict[str, Any]:
            _ctx()["storage_name"] = storage  # type: ignore[typeddict-unknown-key]
            if storage not in plan["storages"]:
                raise AirflowSkipException(f"storage {storage} is not part of this run")
            cfg_, resolver = runtime(tier)
            return steps.upload_to(cfg_, steps.as_plan(plan), storage, resolver).to_dict()

        uploaded = upload.partial(plan=prep["plan"], committed=committed).expand(storage=list(candidates.storages))

    with TaskGroup("verify", tooltip="checksums on every storage, Great Expectations, test restore"):

        @task(task_id="check_integrity", map_index_template="{{ storage_name }}", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        @task_errors()
        def check_integrity(plan: dict[str, Any], storage: str) -> dict[str, Any]:
            _ctx()["storage_name"] = storage  # type: ignore[typeddict-unknown-key]
            if storage not in plan["storages"]:
                raise AirflowSkipException(f"storage {storage} is not part of this run")
            cfg_, resolver = runtime(tier)
            return steps.check_integrity(cfg_, steps.as_plan(plan), storage, resolver).to_dict()

        @task(task_id="test_restore", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, **io_pool_args())
        @task_errors()
        def test_restore(plan: dict[str, Any]) -> dict[str, Any]:
            ctx = _ctx()
            cfg_, resolver = runtime(tier)
            with steps.task_scratch(ctx["dag"].dag_id, ctx["run_id"], "restore") as scratch:
                return steps.test_restore(cfg_, steps.as_plan(plan), scratch, resolver).to_dict()

        # the Great Expectations suite runs once, inside test_restore, on the copy it restored and SHA-256 checked;
        # validate_data reports (and fails on) that result instead of restoring and validating a second time
        @task(task_id="validate_data")
        @task_errors()
        def validate_data(plan: dict[str, Any], restore_test: dict[str, Any]) -> dict[str, Any]:
            cfg_, _resolver = runtime(tier)
            return steps.validate_data(cfg_, steps.as_plan(plan),
                                       steps.RestoreTestResult.from_dict(restore_test)).to_dict()

        integrity = check_integrity.partial(plan=prep["plan"]).expand(storage=list(candidates.storages))
        restored = test_restore(prep["plan"])
        validated = validate_data(prep["plan"], restored)
        uploaded >> [integrity, restored]

    with TaskGroup("post_backup", tooltip="summary (and the manual result document); cleanup"):

        # the asset event comes with the run's result: a consumer (a restore drill, a report) only ever sees
        # verified snapshots, and the event's extra carries sizes, duration and the verdict
        @task(task_id="notify_completion", outlets=[asset], trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        @task_errors()
        def notify_completion(plan: dict[str, Any], committed: dict[str, Any], validation: dict[str, Any],
                              restore_test: dict[str, Any]) -> dict[str, Any]:
            ctx = _ctx()
            ti, dag_run = ctx["ti"], ctx["dag_run"]
            cfg_, resolver = runtime(tier)
            extracts = ti.xcom_pull(task_ids=["backup.extract_data", "backup.extract_config"]) or []
            uploads = ti.xcom_pull(task_ids=["backup.upload"]) or []
            checks = ti.xcom_pull(task_ids=["verify.check_integrity"]) or []
            summary = steps.complete_run(
                cfg_, steps.as_plan(plan), steps.CommitResult.from_dict(committed),
                [steps.IntegrityResult.from_dict(c) for c in checks if c], steps.ValidationResult.from_dict(validation),
                steps.RestoreTestResult.from_dict(restore_test),
                [steps.ExtractResult.from_dict(e) if e else None for e in extracts],
                [steps.UploadResult.from_dict(u) if u else None for u in uploads],
                run_seconds=run_seconds(dag_run), resolver=resolver, dag_id=ctx["dag"].dag_id, run_id=ctx["run_id"],
                manual=None if not manual else {
                    "requested_by": getattr(dag_run, "triggering_user_name", None),
                    "approval": ti.xcom_pull(task_ids="approve_backup", map_indexes=-1),
                    "params": {k: ctx["params"].get(k) for k in MANUAL_PARAMS}})
            result = summary.to_dict()
            ctx["outlet_events"][asset].extra = asset_extra(result, app)
            run_notes.set_run_note(ctx["dag"].dag_id, ctx["run_id"], notes.backup_note(result))
            notifiers.publish("backup_complete", {"dag_id": ctx["dag"].dag_id, "run_id": ctx["run_id"], **result})
            return result

        done = notify_completion(prep["plan"], committed, validated, restored)
        integrity >> done

        @teardown
        @task_errors()
        def cleanup() -> dict[str, Any]:
            ctx = _ctx()
            plan = (ctx["ti"].xcom_pull(task_ids=PLAN_TASK, key="plan", map_indexes=-1) or None)
            try:
                cfg_, resolver = runtime(tier)
            except BackupError:
                cfg_, resolver = None, None
            return steps.cleanup(cfg_, steps.as_plan(plan) if plan else None, ctx["dag"].dag_id, ctx["run_id"],
                                 resolver).to_dict()

        # every task that uses scratch space is a direct upstream: cleanup starts only once they are all done
        [extract_data, extract_config, validated, restored, done] >> cleanup()

    if manual:
        from .approval import BackupApprovalOperator, note_param

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
                 "Approve to run it now; Reject (or no answer in 24 h) skips the backup.",
            defaults="Reject",
            response_timeout=timedelta(hours=24),
            params={"note": note_param("result document")},
        )
        approve >> pre
