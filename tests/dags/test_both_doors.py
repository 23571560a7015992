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


def _comparable(doc: dict) -> dict:
    """A result document without what differs between two runs of the same data: timings, the run's ids, where
    the repository lives, and the stored sizes (zstd frames hold timestamps of the manifests' neighbours)."""
    doc = json.loads(json.dumps(doc))
    for key in ("durations", "report", "requested_by", "approval", "id", "already_committed", "system_state", "plan",
                "steps", "seconds"):
        doc.pop(key, None)
    doc["totals"].pop("stored_bytes")  # zstd of archives holding mtimes of the run's own scratch: a few bytes apart
    for src in doc["sources"].values():
        src.pop("extract_seconds", None)
        src.pop("stored_bytes")
    doc["checks"]["restore_test"]["validation"] = {
        n: {k: v for k, v in r.items() if k != "seconds"} for n, r in doc["checks"]["restore_test"]["validation"].items()}
    doc["checks"]["validation"] = doc["checks"]["restore_test"]["validation"]
    for i in doc["checks"]["integrity"].values():
        i.pop("bytes_hashed", None)
    return doc


def test_backup_and_verify_through_both_doors_agree(airflow_db, doors, capsys):
    """`backupctl backup` runs the tier DAG's steps: the same result document (ids and timings aside), field by
    field — integrity on every storage, the test restore with Great Expectations, the report in reports/."""
    from backups.commands.backup import BACKUP

    code, by_cli = cli(capsys, doors, "backup", "--tier", "weekly", "--logical-date", WEEKLY.isoformat())
    assert code == 0
    dr = load_dags().dags["backup_weekly"].test(logical_date=WEEKLY)
    assert dr.state == "success", task_states(dr)
    summary = xcom(dr, "post_backup.notify_completion")

    assert by_cli["id"] == summary["snapshot_id"] == "weekly-20260104T010000Z"
    assert _comparable(by_cli) == _comparable(summary)
    # the CLI ran every step the DAG has, in the declared order, and each succeeded
    assert list(by_cli["steps"]) == [s.name for s in BACKUP.steps]
    assert set(by_cli["steps"].values()) == {"success"}, by_cli["steps"]
    assert by_cli["checks"]["restore_test"]["validation"]["app_db"]["success"] is True
    # both stored the result document next to the snapshot
    for door in ("cli", "dag"):
        assert (doors["tmp"] / door / "local" / "reports" / "weekly" / "weekly-20260104T010000Z.json").is_file()
    # the same pre-checks ran through both doors
    state = xcom(dr, "pre_backup.check_system_state")
    assert set(by_cli["system_state"]) == set(state) and set(by_cli["system_state"]["estimates"]) == set(state["estimates"])
    assert by_cli["system_state"]["estimated_bytes"] == state["estimated_bytes"] > 0

    # verify: the CLI re-hashes what the DAG's check_integrity re-hashed, and finds the same objects
    integrity = xcom(dr, "verify.check_integrity", 0)
    code, verified = cli(capsys, doors, "verify", "--read-data")
    assert code == 0 and verified["ok"] and integrity["ok"]
    (report,) = verified["storages"]
    assert report["snapshots"] == [integrity["snapshot_id"]] and report["objects"] == integrity["objects_hashed"]


def test_the_backup_dags_are_the_declared_procedure():
    """The tier DAGs' tasks are the steps of commands.backup.BACKUP — same ids, order of groups, fan-out as mapped
    tasks, the cleanup step as the teardown — and backup_manual adds only its approval gate."""
    from backups.commands.backup import BACKUP

    dags = load_dags().dags
    for dag_id in ("backup_daily", "backup_weekly", "backup_monthly", "backup_manual"):
        dag = dags[dag_id]
        ids = [t for t in dag.task_ids if t != "approve_backup"]
        assert sorted(ids) == sorted(BACKUP.task_ids), dag_id
        for step in BACKUP.steps:
            task = dag.get_task(step.task_id)
            assert ("Mapped" in type(task).__name__) == bool(step.fan_out), step.task_id
            assert task.is_teardown == (step.kind == "cleanup"), step.task_id
        # each step runs after the one declared before it (directly or through its group)
        for before, after in zip(BACKUP.steps, BACKUP.steps[1:], strict=False):
            if after.kind != "cleanup" and before.group != after.group:
                assert before.task_id in dag.get_task(after.task_id).get_flat_relative_ids(upstream=True), \
                    (dag_id, before.task_id, after.task_id)
    assert "approve_backup" in dags["backup_manual"].task_ids


def test_prune_through_both_doors_agrees(airflow_db, doors, capsys):
    from backups.commands.base import config_and_resolver
    from tests.helpers import run_backup

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
