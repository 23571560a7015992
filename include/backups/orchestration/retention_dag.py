"""The ``backup_retention`` DAG: apply every tier's retention rules on every storage, then report.

One mapped ``prune[storage]`` task per storage (each retryable on its own), so a storage that is down does not
stop the others. Rules, chain protection and orphan cleanup are the library's
(:mod:`backups.commands.prune`, the same as ``backupctl prune``); the DAG only adapts them. ``dry_run`` (a Param) shows what would go.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task

from ..commands import notes
from ..commands.prune import decision_table, prune_one
from ..config import Config
from . import notifiers, run_notes
from .adapters import io_pool_args, runtime, task_errors
from .backup_dags import START_DATE, default_args

log = logging.getLogger("backups.orchestration.retention")

DAG_ID = "backup_retention"
SCHEDULE = "30 4 * * *"  #: daily, after the nightly backups


def _doc(cfg: Config) -> str:
    rows = "\n".join(f"| `{n}` | {t.retention.describe()} |" for n, t in sorted(cfg.tiers.items()))
    rows += f"\n| `manual` (backup_manual) | {cfg.manual_retention.describe()} (`manual_retention`) |"
    return (f"# Retention of {cfg.application} backups\n\nEvery day at 04:30 UTC, on every storage "
            f"({', '.join(f'`{s}`' for s in cfg.storages)}): forget the snapshots the tiers' rules no longer keep, "
            "never one that a kept snapshot's chain needs (manifest first, then objects), and remove objects left "
            "by interrupted runs more than 2 days ago.\n\n| tier | keeps |\n|---|---|\n" + rows +
            "\n\nTrigger with `dry_run` to see what would be removed. Same as `backupctl prune`. The run's note "
            "sums it up; the `prune` and `report` logs list every snapshot with keep/forget and the rule that "
            "decided it.")


def build_retention_dag(cfg: Config) -> DAG:
    dag = DAG(
        dag_id=DAG_ID,
        description=f"Apply the tiers' retention on every storage of {cfg.application}",
        schedule=SCHEDULE,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args={**default_args(cfg), "retry_delay": timedelta(minutes=10)},
        tags=["backup", "retention"],
        doc_md=_doc(cfg),
        params={"dry_run": Param(False, type="boolean", title="Dry run",
                                 description="Only report what would be removed")},
        on_failure_callback=notifiers.dag_failure_callbacks(cfg),
    )
    with dag:
        @task(task_id="prune", **io_pool_args())
        @task_errors()
        def prune(storage: str) -> dict[str, Any]:
            cfg_, resolver = runtime(DAG_ID)
            # an unreachable storage raises: this task is retried, the other storages' tasks go on
            return prune_one(cfg_, storage, dry_run=bool(get_current_context()["params"].get("dry_run")),
                             resolver=resolver)

        @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE)
        @task_errors()
        def report(results: list[dict[str, Any]]) -> dict[str, Any]:
            ctx = get_current_context()
            done = [r for r in results if r]
            reached = {r["storage"] for r in done}
            failed = [n for n in sorted(cfg.storages) if n not in reached]
            dry_run = bool(ctx["params"].get("dry_run"))
            for r in done:
                log.info("%s:\n%s", r["storage"], decision_table(r, dry_run=dry_run))
            run_notes.set_run_note(ctx["dag"].dag_id, ctx["run_id"],
                                   notes.retention_note(done, dry_run=dry_run, failed=failed))
            return {"storages": len(done), "forgot": sum(len(r["forget"]) for r in done), "not_reached": failed,
                    "dry_run": dry_run,
                    "decisions": {r["storage"]: [{k: d[k] for k in ("id", "action", "reasons")}
                                                 for d in r.get("decisions") or []] for r in done}}

        pruned: Any = prune.expand(storage=sorted(cfg.storages))  # an XComArg here, the results list at run time
        report(pruned)
    return dag
