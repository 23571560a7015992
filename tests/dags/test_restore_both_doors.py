"""Both doors of the restore command give the same result: one snapshot restored by ``backupctl restore`` and by
the ``restore_snapshot`` DAG (``dag.test()``), the two ``RESTORE_REPORT.json``/``.md`` compared field by field
except what is run-specific (who, approval, timings, the target path)."""

from __future__ import annotations

import json
import re

import pytest

from backups.cli import main
from backups.commands.restore import RUN_SPECIFIC
from backups.config import load_config
from backups.demo import fmr
from tests.dags.common import load_dags, task_states
from tests.helpers import ROOT, app_tree, db_rows, run_backup

pytestmark = pytest.mark.airflow

WEEKLY = "weekly-20260104T010000Z"
RUN_LINES = re.compile(r"^(\* requested by:|\* approval:|Restore took )")


@pytest.fixture
def app(tmp_path, monkeypatch):
    home = tmp_path / "fmr"
    fmr.generate(home, scale=0.3, seed=17)
    monkeypatch.setenv("FMR_HOME", str(home))
    monkeypatch.setenv("BACKUP_ROOT", str(tmp_path / "backups"))
    (tmp_path / "staging").mkdir()
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("BACKUP_CONFIG", str(ROOT / "include" / "backups.local.yaml"))
    run_backup(load_config(), "weekly", logical_date="2026-01-04T01:00:00Z")
    return {"home": home, "tmp": tmp_path}


def _comparable(target):
    doc = json.loads((target / "RESTORE_REPORT.json").read_text().replace(str(target), "<TARGET>"))
    run = {k: doc.pop(k) for k in RUN_SPECIFIC}
    seconds = doc["verification"].pop("seconds")
    gx_seconds = {n: v.pop("seconds", None) for n, v in doc["verification"]["validation"].items()}
    md = [line for line in (target / "RESTORE_REPORT.md").read_text().replace(str(target), "<TARGET>").splitlines()
          if not RUN_LINES.match(line)]
    return doc, md, {**run, "verify_seconds": seconds, "gx_seconds": gx_seconds}


def test_cli_and_dag_restore_write_the_same_report(airflow_db, app, capsys):
    by_cli, by_dag = app["tmp"] / "by-cli", app["tmp"] / "by-dag"
    assert main(["restore", WEEKLY, "--target", str(by_cli)]) == 0, capsys.readouterr().err
    dr = load_dags().dags["restore_snapshot"].test(
        run_conf={"target": str(by_dag), "snapshot": WEEKLY, "require_approval": False})
    assert dr.state == "success", task_states(dr)

    for target in (by_cli, by_dag):  # both restored the same data
        assert app_tree(target / "app_files") == app_tree(app["home"])
        assert db_rows(target / "app_db" / "app.db") == db_rows(app["home"] / "app.db")
    cli_doc, cli_md, cli_run = _comparable(by_cli)
    dag_doc, dag_md, dag_run = _comparable(by_dag)
    assert cli_doc == dag_doc
    assert cli_md == dag_md
    # the same verification, really done: every file re-hashed, the database validated
    ver = cli_doc["verification"]
    assert ver["ok"] and ver["files"]["app_files"]["files_checked"] == ver["files"]["app_files"]["files_expected"] > 10
    assert ver["validation"]["app_db"]["success"] is True
    assert sorted(cli_doc["sources"]) == ["app_db", "app_files", "system_state"]
    # and what differs is who ran it and how
    assert (cli_run["dag_id"], dag_run["dag_id"]) == ("cli", "restore_snapshot")
    assert cli_run["approval"]["choice"] == "not required (CLI)" and dag_run["approval"]["choice"] == "not required"
    assert dag_run["requested_by"] == "dag_test" and cli_run["requested_by"] not in ("", "unknown", "dag_test")
    assert cli_run["archive_wait"]["archive"] is False and dag_run["archive_wait"]["archive"] is False
