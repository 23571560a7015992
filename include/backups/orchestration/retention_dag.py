"""The ``backup_retention`` DAG: apply every tier's retention rules on every storage, then report.

One mapped ``prune[storage]`` task per storage (each retryable on its own), so a storage that is down does not
stop the others. Rules, chain protection and orphan cleanup are the library's
(:mod:`backups.engine.retention`); the DAG only adapts them. ``dry_run`` (a Param) shows what would go.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from ..config import Config
from ..errors import BackupError
from . import notifiers, steps
from .dags import FAIL_FAST, POOL, START_DATE, default_args

DAG_ID = "backup_retention"
SCHEDULE = "30 4 * * *"  #: daily, after the nightly backups


def _doc(cfg: Config) -> str:
    rows = "\n".join(f"| `{n}` | {t.retention.describe()} |" for n, t in sorted(cfg.tiers.items()))
    return (f"# Retention of {cfg.application} backups\n\nEvery day at 04:30 UTC, on every storage "
            f"({', '.join(f'`{s}`' for s in cfg.storages)}): forget the snapshots the tiers' rules no longer keep, "
            "never one that a kept snapshot's chain needs (manifest first, then objects), and remove objects left "
            "by interrupted runs more than 2 days ago.\n\n| tier | keeps |\n|---|---|\n" + rows +
            "\n\nTrigger with `dry_run` to see what would be removed. Same as `backupctl prune`.")


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
        @task(task_id="prune", **({"pool": POOL} if POOL else {}))
        def prune(storage: str) -> dict[str, Any]:
            from ..engine.retention import prune_storage
            from ..storage import open_storage

            dry = bool(get_current_context()["params"].get("dry_run"))
            try:
                cfg_ = steps.runtime_config(DAG_ID)
                resolver = steps.resolver_for(cfg_)
                st = open_storage(cfg_, storage, resolver, read_only=dry)
                st.check()
                plan = prune_storage(cfg_, st, dry_run=dry)  # under the exclusive repository lock
                steps.log.info("%s: keep %d, %s %d: %s; orphans %d, temp objects %d", storage, len(plan.keep),
                               "would forget" if dry else "forgot", len(plan.forget), ", ".join(plan.forget) or "-",
                               len(plan.orphans), len(plan.temps))
            except FAIL_FAST as exc:
                raise AirflowFailException(str(exc)) from None
            except BackupError:
                raise  # storage trouble: retried
            out = plan.to_dict()
            out["keep"] = sorted(out["keep"])  # ids only in XCom
            return out

        @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE)
        def report(results: list[dict[str, Any]]) -> dict[str, Any]:
            done = [r for r in results if r]
            for r in done:
                steps.log.info("%s: kept %d, forgot %d, orphans %d, %d object(s) / %.1f MB removed", r["storage"],
                               len(r["keep"]), len(r["forget"]), len(r["orphans"]), r["deleted_objects"],
                               r["deleted_bytes"] / 1e6)
            return {"storages": len(done), "forgot": sum(len(r["forget"]) for r in done)}

        report(prune.expand(storage=sorted(cfg.storages)))
    return dag
