"""backup_retention: one prune task per storage, then a report; a dry run changes nothing, a real run forgets
what the rules no longer keep (chains intact)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backups.catalog import Catalog
from backups.config import load_config
from backups.demo import fmr
from backups.storage import open_storage
from tests.dags.common import load_dags, run_note
from tests.helpers import ROOT, run_backup

pytestmark = pytest.mark.airflow


def test_structure():
    dag = load_dags().dags["backup_retention"]
    assert {t.task_id for t in dag.tasks} == {"prune", "report"}
    assert dag.max_active_runs == 1 and "retention" in dag.tags and dag.schedule is not None
    assert "keep_daily=14" in dag.doc_md


def test_dry_run_then_prune(airflow_db, tmp_path, monkeypatch):
    home, root = tmp_path / "fmr", tmp_path / "backups"
    fmr.generate(home, scale=0.2, seed=2)
    text = (ROOT / "include" / "backups.local.yaml").read_text().replace("keep_weekly: 8", "keep_weekly: 1")
    (tmp_path / "c.yaml").write_text(text)
    for k, v in {"BACKUP_CONFIG": str(tmp_path / "c.yaml"), "FMR_HOME": str(home), "BACKUP_ROOT": str(root)}.items():
        monkeypatch.setenv(k, v)
    cfg = load_config()
    for week in range(3):
        run_backup(cfg, "weekly", logical_date=(datetime(2026, 3, 1, 1, tzinfo=UTC) + timedelta(weeks=week)).isoformat())
    dag = load_dags().dags["backup_retention"]
    dr = dag.test(logical_date=datetime(2026, 3, 20, 4, 30, tzinfo=UTC), run_conf={"dry_run": True})
    assert dr.state == "success"
    storage = open_storage(cfg, "local")
    assert len(Catalog(storage, cfg.application).ordered()) == 3
    note = run_note(dr)  # the run's note sums it up; the report lists every snapshot with the rule that decided it
    assert note.startswith("**Retention (dry run)** — would forget 2 snapshot(s) on 1 storage(s)"), note
    assert "`local`: keep 1, would forget 2 (weekly-20260301T010000Z, weekly-20260308T010000Z)" in note
    decisions = _xcom(dr, "report")["decisions"]["local"]
    assert [(d["id"], d["action"]) for d in decisions] == [
        ("weekly-20260301T010000Z", "forget"), ("weekly-20260308T010000Z", "forget"),
        ("weekly-20260315T010000Z", "keep")]
    assert decisions[0]["reasons"] == ["no rule of tier weekly keeps it (keep_weekly=1)"]
    assert decisions[2]["reasons"] == ["keep_weekly 2026-W11"]
    dr = dag.test(logical_date=datetime(2026, 3, 21, 4, 30, tzinfo=UTC), run_conf={"dry_run": False})
    assert dr.state == "success"
    assert [s.id for s in Catalog(storage, cfg.application).ordered()] == ["weekly-20260315T010000Z"]
    assert run_note(dr).startswith("**Retention** — forgot 2 snapshot(s) on 1 storage(s)")


def _xcom(dr, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = s.scalar(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key="return_value"))
        return None if row is None else XComModel.deserialize_value(row)
