"""Each command through both doors — ``backupctl`` and the DAG (``dag.test()``) — on the same application:
the same snapshot, the same checks, the same verification, the same prune decisions (issue 9)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from backups.cli import main
from backups.demo import fmr
from tests.dags.common import load_dags, task_states
from tests.helpers import ROOT

pytestmark = pytest.mark.airflow

WEEKLY = datetime(2026, 1, 4, 1, 0, tzinfo=UTC)


@pytest.fixture
def doors(tmp_path, monkeypatch):
    """One application; a config per door that differ only in the repository root (cli/ and dag/)."""
    home = tmp_path / "fmr"
    fmr.generate(home, scale=0.2, seed=21)
    text = (ROOT / "include" / "backups.local.yaml").read_text().replace("keep_weekly: 8", "keep_weekly: 1")
    configs = {}
    for door in ("cli", "dag"):
        configs[door] = tmp_path / f"{door}.yaml"
        configs[door].write_text(text.replace("${BACKUP_ROOT}", str(tmp_path / door)))
    monkeypatch.setenv("FMR_HOME", str(home))
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path))
    monkeypatch.setenv("BACKUP_CONFIG", str(configs["dag"]))  # what the DAG tasks read on their "worker"
    return {"tmp": tmp_path, "config": configs}


def cli(capsys, doors, *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["--config", str(doors["config"]["cli"]), *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def xcom(dr, task_id: str, map_index: int = -1):
    ti = next(t for t in dr.get_task_instances() if t.task_id == task_id and t.map_index == map_index)
    return ti.xcom_pull(task_ids=task_id, map_indexes=map_index)


def test_backup_and_verify_through_both_doors_agree(airflow_db, doors, capsys):
    code, by_cli = cli(capsys, doors, "backup", "--tier", "weekly", "--logical-date", WEEKLY.isoformat())
    assert code == 0
    dr = load_dags().dags["backup_weekly"].test(logical_date=WEEKLY)
    assert dr.state == "success", task_states(dr)
    summary = xcom(dr, "post_backup.notify_completion")

    # the same snapshot: id, type, chain, what each source holds
    assert by_cli["id"] == summary["snapshot_id"] == "weekly-20260104T010000Z"
    assert (by_cli["type"], by_cli["parent"], by_cli["storages"]) == (summary["type"], summary["parent"],
                                                                        summary["storages"])
    assert by_cli["files"] == summary["totals"]["files"] and by_cli["sources"] == sorted(summary["sources"])
    # the same pre-checks ran through both doors (the CLI used to skip them)
    state = xcom(dr, "pre_backup.check_system_state")
    assert set(by_cli["system_state"]) == set(state) and set(by_cli["system_state"]["estimates"]) == set(state["estimates"])
    assert by_cli["system_state"]["estimated_bytes"] == state["estimated_bytes"] > 0

    # verify: the CLI re-hashes what the DAG's check_integrity re-hashed, and finds the same objects
    integrity = xcom(dr, "verify.check_integrity", 0)
    code, verified = cli(capsys, doors, "verify", "--read-data")
    assert code == 0 and verified["ok"] and integrity["ok"]
    (report,) = verified["storages"]
    assert report["snapshots"] == [integrity["snapshot_id"]] and report["objects"] == integrity["objects_hashed"]


def test_prune_through_both_doors_agrees(airflow_db, doors, capsys):
    from backups.commands.base import config_and_resolver
    from backups.engine.snapshot import run_backup

    for door in ("cli", "dag"):
        cfg, _ = config_and_resolver(str(doors["config"][door]))
        for week in range(3):
            run_backup(cfg, "weekly", logical_date=(WEEKLY + timedelta(weeks=week)).isoformat())
    code, by_cli = cli(capsys, doors, "prune")
    assert code == 0
    dr = load_dags().dags["backup_retention"].test(logical_date=WEEKLY + timedelta(weeks=3))
    assert dr.state == "success", task_states(dr)
    (by_dag,) = [xcom(dr, "prune", 0)]
    (cli_local,) = by_cli["storages"]
    assert by_cli["unreachable"] == {} and not by_cli["dry_run"]
    for key in ("keep", "forget", "orphans", "temps", "deleted_objects"):
        assert cli_local[key] == by_dag[key], key
    # two repositories of the same data: sizes agree to compression noise (manifests hold timestamps)
    assert abs(cli_local["deleted_bytes"] - by_dag["deleted_bytes"]) < 1000 < by_dag["deleted_bytes"]
    assert cli_local["keep"] == ["weekly-20260118T010000Z"] and len(cli_local["forget"]) == 2


def test_unreachable_storage_is_treated_alike(airflow_db, doors, capsys, tmp_path):
    """A storage that does not answer: the CLI prunes/verifies the others and fails naming it; the DAG's task
    for it fails while the other storage's task succeeds."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the storage directory should be")
    for door in ("cli", "dag"):
        path = doors["config"][door]
        path.write_text(path.read_text().replace(
            "storages:\n", f'storages:\n  broken: {{type: local, path: "{blocker}"}}\n', 1))
    code, verified = cli(capsys, doors, "verify")
    assert code == 5 and [u.split(":")[0] for u in verified["unreachable"]] == ["broken"]  # only unreachable: exit 5
    capsys.readouterr()
    code = main(["--config", str(doors["config"]["cli"]), "prune", "--json"])
    out = capsys.readouterr()
    assert code == 5 and "prune could not reach broken" in out.err
    assert [s["storage"] for s in json.loads(out.out)["storages"]] == ["local"]
    dag = load_dags().dags["backup_retention"]
    for t in dag.tasks:
        t.retries = 0  # the broken storage's task would be retried in 10 minutes
    dr = dag.test(logical_date=WEEKLY)
    states = task_states(dr)
    assert states["prune[0]"] != "success" and states["prune[1]"] == "success", states  # sorted: broken, local
