"""The DAG package as the scheduler sees it: parses cleanly and fast, every DAG well-formed, the expected graph.

No metadata DB is needed to parse (``DagBag`` only imports the files).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.airflow

DAGS = ROOT / "dags"
TIERS = {"daily": "incremental", "weekly": "full", "monthly": "full"}  # include/backups.local.yaml
ALL_IDS = {f"backup_{t}" for t in TIERS} | {"backup_manual"}

COMMON_EDGES = {
    ("pre_backup.check_system_state", "pre_backup.prepare_environment"),
    ("pre_backup.prepare_environment", "pre_backup.notify_start"),
    ("pre_backup.notify_start", "backup.extract_data"),
    ("pre_backup.notify_start", "backup.extract_config"),
    ("pre_backup.prepare_environment", "backup.extract_data"),
    ("pre_backup.prepare_environment", "backup.extract_config"),
    ("backup.extract_data", "backup.commit"),
    ("backup.extract_config", "backup.commit"),
    ("pre_backup.prepare_environment", "backup.commit"),
    ("backup.commit", "backup.upload"),
    ("pre_backup.prepare_environment", "backup.upload"),
    ("backup.upload", "verify.check_integrity"),
    ("backup.upload", "verify.test_restore"),
    ("verify.test_restore", "verify.validate_data"),  # the one GX run is test_restore's; validate_data reports it
    ("pre_backup.prepare_environment", "verify.check_integrity"),
    ("pre_backup.prepare_environment", "verify.validate_data"),
    ("pre_backup.prepare_environment", "verify.test_restore"),
    ("verify.check_integrity", "post_backup.notify_completion"),
    ("verify.validate_data", "post_backup.notify_completion"),
    ("verify.test_restore", "post_backup.notify_completion"),
    ("backup.commit", "post_backup.notify_completion"),
    ("pre_backup.prepare_environment", "post_backup.notify_completion"),
    ("backup.extract_data", "post_backup.notify_completion"),  # the summary reads every step's result
    ("backup.extract_config", "post_backup.notify_completion"),
    ("backup.upload", "post_backup.notify_completion"),
    ("pre_backup.prepare_environment", "post_backup.cleanup"),  # the teardown reads the plan
    # the teardown waits for every task that uses scratch space
    ("backup.extract_data", "post_backup.cleanup"),
    ("backup.extract_config", "post_backup.cleanup"),
    ("verify.validate_data", "post_backup.cleanup"),
    ("verify.test_restore", "post_backup.cleanup"),
    ("post_backup.notify_completion", "post_backup.cleanup"),
}
COMMON_TASKS = {t for edge in COMMON_EDGES for t in edge}


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def _edges(dag) -> set[tuple[str, str]]:
    return {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}


def test_no_import_errors_and_every_dag(bag):
    assert bag.import_errors == {}
    assert ALL_IDS <= set(bag.dags)


def test_dag_files_are_small():
    for f in DAGS.glob("*.py"):
        assert len(f.read_text().splitlines()) <= 60, f"{f.name} is longer than 60 lines"


def test_dag_conventions(bag):
    """Every DAG of the folder: tags, owner, doc_md, retries with a delay, failure callbacks; one run at a time
    for the backup DAGs (they write a repository)."""
    for dag_id, dag in sorted(bag.dags.items()):
        assert dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 200, dag_id
        assert dag.catchup is False, dag_id
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", (dag_id, t.task_id)
            assert t.retries >= 2, (dag_id, t.task_id)
            assert t.retry_delay.total_seconds() > 0, (dag_id, t.task_id)
    for dag_id in sorted(ALL_IDS):
        dag = bag.dags[dag_id]
        assert "backup" in dag.tags
        assert dag.max_active_runs == 1, dag_id
        assert dag.on_success_callback and dag.on_failure_callback, dag_id
        for t in dag.tasks:
            assert t.owner == "data-engineering", t.task_id  # include/backups.local.yaml: owner (default)
            assert t.on_failure_callback, t.task_id


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_tier_dag(bag, tier):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = bag.dags[f"backup_{tier}"]
    assert set(dag.tags) == {"backup", f"tier:{tier}", f"type:{TIERS[tier]}"}
    assert {t.task_id for t in dag.tasks} == COMMON_TASKS
    assert _edges(dag) == COMMON_EDGES
    schedules = {"daily": "0 2 * * 1-6", "weekly": "0 1 * * 0", "monthly": "0 3 1 * *"}
    assert dag.timetable.expression == schedules[tier]
    for what in ("app_db", "app_files", "system_state", "local", "retention", "keep_"):
        assert what in dag.doc_md
    tasks = dag.task_dict
    for tid, key, values in (("backup.extract_data", "source", ["app_db", "system_state"]),
                             ("backup.extract_config", "source", ["app_files"]),
                             ("backup.upload", "storage", ["local"]),
                             ("verify.check_integrity", "storage", ["local"])):
        assert isinstance(tasks[tid], MappedOperator), tid
        assert tasks[tid]._get_specified_expand_input().value == {key: values}, tid
    assert [a.uri for a in tasks["post_backup.notify_completion"].outlets] == [f"backup://fmr-v2/{tier}"]
    assert not tasks["backup.commit"].outlets  # the event comes with the verified result
    assert tasks["post_backup.cleanup"].is_teardown


def test_manual_dag(bag):
    dag = bag.dags["backup_manual"]
    assert dag.schedule is None
    assert {t.task_id for t in dag.tasks} == COMMON_TASKS | {"approve_backup"}
    assert _edges(dag) == COMMON_EDGES | {("approve_backup", "pre_backup.check_system_state")}
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    assert isinstance(dag.task_dict["approve_backup"], ApprovalOperator)
    params = dag.params
    assert set(params) == {"backup_type", "sources", "storages", "comment", "require_approval"}
    assert params["require_approval"] is True
    assert params["backup_type"] == "full"
    assert params.get_param("backup_type").schema["enum"] == ["full", "differential", "incremental"]
    assert params["sources"] == ["app_db", "app_files", "system_state"]
    assert [a.uri for a in dag.task_dict["post_backup.notify_completion"].outlets] == ["backup://fmr-v2/manual"]


def test_parse_touches_no_variable_or_connection(monkeypatch):
    from airflow import sdk
    from airflow.dag_processing.dagbag import DagBag

    def forbidden(*args, **kwargs):
        raise AssertionError(f"Variable/Connection accessed at parse time: {args}")

    monkeypatch.setattr(sdk.Variable, "get", forbidden)
    monkeypatch.setattr(sdk.Connection, "get", forbidden)
    monkeypatch.setattr(sdk.BaseHook, "get_connection", forbidden)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert ALL_IDS <= set(bag.dags)


def test_broken_config_is_an_import_error_naming_key_and_fix(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    text = (ROOT / "include" / "backups.local.yaml").read_text().replace("retention: {keep_daily: 14}", "retension: {keep_daily: 14}")
    bad = tmp_path / "backups.yaml"
    bad.write_text(text)
    monkeypatch.setenv("BACKUP_CONFIG", str(bad))
    bag = DagBag(dag_folder=str(DAGS))
    mine = [str(DAGS / "backup_tiers.py"), str(DAGS / "backup_manual.py")]
    assert set(mine) <= set(bag.import_errors)
    for err in (bag.import_errors[f] for f in mine):
        assert f"{bad}: tiers.daily.retension: unknown key; remove it or check its spelling" in err
    monkeypatch.setenv("BACKUP_CONFIG", str(tmp_path / "missing.yaml"))
    err = DagBag(dag_folder=str(DAGS)).import_errors[str(DAGS / "backup_tiers.py")]
    assert "configuration file not found" in err and "fix: pass --config PATH or set BACKUP_CONFIG" in err


def test_parse_is_fast_and_light_in_a_fresh_process(tmp_path):
    """None of the heavy libraries imported by our code, and no gross slowdown. The 1 s parse target is measured by
    the benchmark (`make bench`), not here: a timed assertion fails on a loaded machine."""
    script = textwrap.dedent(f"""
        import json, sys, time
        import airflow
        from airflow.dag_processing.dagbag import DagBag
        t0 = time.perf_counter()
        bag = DagBag(dag_folder={str(DAGS)!r})
        took = time.perf_counter() - t0
        heavy = [m for m in ("great_expectations", "pandas", "paramiko", "psycopg", "psycopg2") if m in sys.modules]
        print(json.dumps({{"seconds": took, "errors": list(bag.import_errors), "dags": sorted(bag.dags), "heavy": heavy}}))
    """)
    import os

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == [] and ALL_IDS <= set(out["dags"])
    assert out["heavy"] == []
    # boto3 may appear: Airflow's Asset URI sanitiser loads every provider's URI normaliser (amazon's imports
    # boto3) the first time an Asset is built. A parse several times the 1 s target is a regression, whatever the load.
    assert out["seconds"] <= 5.0, f"dags/ took {out['seconds']:.2f}s to parse"


def test_a_tier_named_manual_is_an_import_error(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    text = (ROOT / "include" / "backups.local.yaml").read_text().replace("  monthly: ", "  manual: ")
    path = tmp_path / "backups.yaml"
    path.write_text(text)
    monkeypatch.setenv("BACKUP_CONFIG", str(path))
    errors = DagBag(dag_folder=str(DAGS)).import_errors
    mine = [str(DAGS / "backup_tiers.py"), str(DAGS / "backup_manual.py")]
    assert set(mine) <= set(errors)
    for err in (errors[f] for f in mine):
        assert "tiers.manual: the tier name 'manual' is reserved for the backup_manual DAG" in err
        assert "fix: rename the tier" in err
