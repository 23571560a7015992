"""``make demo``'s runs look like real runs in the UI: task logs where Airflow's own log reader (the one behind the
UI's log view) finds and parses them, and the run's start when it really started — not the logical date that
``dag.test()`` records as the start. The retention DAG on an empty repository keeps the run short.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.dags.common import load_dags
from tests.helpers import ROOT

pytestmark = pytest.mark.airflow


@pytest.fixture
def task_log_files(tmp_path, monkeypatch):
    """The demo's handler on the root logger for one test (levels restored afterwards)."""
    from airflow.configuration import conf

    from tools.demo_airflow import _TaskLogFiles

    monkeypatch.setenv("BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setenv("BACKUP_CONFIG", str(ROOT / "include" / "backups.local.yaml"))
    root, dag_log = logging.getLogger(), logging.getLogger("airflow.sdk.definitions.dag")
    levels = root.level, dag_log.level
    handler = _TaskLogFiles(Path(conf.get("logging", "base_log_folder")))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    dag_log.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    handler._close()
    root.setLevel(levels[0])
    dag_log.setLevel(levels[1])


def test_demo_runs_have_readable_task_logs_and_their_real_start(airflow_db, task_log_files):
    from airflow.models.dagrun import DagRun
    from airflow.utils.log.log_reader import TaskLogReader
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from tools.demo_airflow import _real_start

    dag = load_dags().dags["backup_retention"]
    started = datetime.now(UTC)
    t0 = time.monotonic()
    dr = dag.test(logical_date=datetime(2025, 6, 1, 4, 30, tzinfo=UTC), run_after=started,
                  run_conf={"dry_run": True})
    wall = time.monotonic() - t0
    assert dr.state == "success"
    _real_start(dr, started)

    with create_session() as s:
        run = s.scalar(select(DagRun).where(DagRun.id == dr.id))
        assert run.start_date == started and 0 < (run.end_date - run.start_date).total_seconds() <= wall + 1
        tis = run.get_task_instances(session=s)
        assert {ti.task_id for ti in tis} == {"prune", "report"}
        reader = TaskLogReader()
        for ti in tis:
            chunks, _meta = reader.read_log_chunks(ti, ti.try_number, {})
            text = "\n".join(getattr(m, "event", str(m)) for m in chunks)
            assert "Log file not found" not in text and "Could not read" not in text, text[:500]
            assert "[DAG TEST] running task" in text, (ti.task_id, text[:500])
            if ti.task_id == "prune":
                assert "every snapshot and the rule that decided it" in text, text[:1000]
