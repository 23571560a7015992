"""Results where people look, and a backup that validates once.

* a backup for a logical date long past, under ``dag.test()`` like ``make demo``: the Great Expectations suite ran
  exactly once (in ``test_restore``; ``validate_data`` reported that result); the run's note is the Markdown summary;
  the asset event (emitted with the verified result) carries id, type, sizes, duration and the verdict; durations
  are measured from the real start (not from the logical date ``dag.test()`` sets as the start);
* a restore whose note goes through the REST API of a real API server (uvicorn on loopback, connection
  ``backup_airflow_api`` with a user's login): the note is the user's, the report's ``run_seconds`` is sane;
* a note that cannot be set (the API server is down) is a warning, never a failure.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import pytest

from backups.config import load_config
from backups.demo import fmr
from tests.dags.common import load_dags, run_note, task_states
from tests.helpers import ROOT, free_port, run_backup

pytestmark = pytest.mark.airflow


@pytest.fixture
def app(tmp_path, monkeypatch):
    home, root = tmp_path / "fmr", tmp_path / "backups"
    fmr.generate(home, scale=0.2, seed=17)
    (tmp_path / "staging").mkdir()
    monkeypatch.setenv("FMR_HOME", str(home))
    monkeypatch.setenv("BACKUP_ROOT", str(root))
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("BACKUP_CONFIG", str(ROOT / "include" / "backups.local.yaml"))
    monkeypatch.delenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API", raising=False)
    return {"home": home, "root": root, "tmp": tmp_path}


def _xcom(dr, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = s.scalar(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key="return_value"))
        return None if row is None else XComModel.deserialize_value(row)


def _asset_extras(uri: str, run_id: str) -> list[dict]:
    """The extras of the asset events ``run_id`` published for ``uri`` (other tests share this metadata DB)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                         .where(AssetModel.uri == uri, AssetEvent.source_run_id == run_id)).all()
        return [dict(e.extra or {}) for e in rows]


def test_backup_validates_once_and_reports_in_note_and_asset_event(airflow_db, app, monkeypatch):
    import backups.validation as validation

    calls: list[str] = []
    real = validation.validate_sqlite

    def counted(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(validation, "validate_sqlite", counted)
    t0 = time.monotonic()
    dr = load_dags().dags["backup_weekly"].test(logical_date=datetime(2026, 1, 4, 1, 0, tzinfo=UTC))
    wall = time.monotonic() - t0
    states = task_states(dr)
    assert dr.state == "success", states
    sid = "weekly-20260104T010000Z"

    # Great Expectations ran once for the one database, on test_restore's copy; validate_data reused it
    assert len(calls) == 1 and calls[0].endswith("app.db"), calls
    restored, validated = _xcom(dr, "verify.test_restore"), _xcom(dr, "verify.validate_data")
    assert restored["validation"]["app_db"]["success"] is True
    assert validated["databases"] == restored["validation"] and validated["storage"] == restored["storage"]

    # durations from the real start, though the logical date (dag.test's start_date) is months ago
    done = _xcom(dr, "post_backup.notify_completion")
    assert 0 < done["durations"]["run_seconds"] <= wall + 1, (done["durations"], wall)

    note = run_note(dr)
    assert note.startswith(f"**Backup `{sid}`** — verified"), note
    assert "data (Great Expectations): app_db " in note and "✓" in note
    assert f"report: `local:reports/weekly/{sid}.json` — [open](/backups/snapshots/{sid}/report)" in note
    assert len(note) <= 1000

    extras = _asset_extras("backup://fmr-v2/weekly", dr.run_id)
    assert len(extras) == 1
    extra = extras[0]
    assert (extra["snapshot_id"], extra["type"], extra["tier"], extra["verification"]) == (sid, "full", "weekly", "verified")
    assert extra["bytes"] > 0 and 0 < extra["stored_bytes"] and extra["files"] > 0
    assert 0 < extra["duration_seconds"] <= wall + 1 and extra["storages"] == ["local"]
    assert extra["report"] == f"local:reports/weekly/{sid}.json"


@pytest.fixture
def api_server(approver):
    """Airflow's API server (core API and the simple auth manager's login) on a loopback port, in this process."""
    from tests.dags.approvals import PASSWORD, USER, serve_core_api

    with serve_core_api() as (url, _port):
        yield {"url": url, "user": USER, "password": PASSWORD}


@pytest.mark.timeout(240)
def test_restore_note_through_the_rest_api_with_a_connection(airflow_db, app, api_server, monkeypatch):
    from airflow.models.dagrun import DagRun, DagRunNote
    from airflow.utils.session import create_session
    from sqlalchemy import select

    run_backup(load_config(), "weekly", logical_date="2026-01-04T01:00:00Z")
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API", json.dumps({
        "conn_type": "http", "host": api_server["url"], "login": api_server["user"],
        "password": api_server["password"]}))
    target = app["tmp"] / "restored"
    t0 = time.monotonic()
    dr = load_dags().dags["restore_snapshot"].test(
        logical_date=datetime(2026, 1, 10, tzinfo=UTC), run_conf={"target": str(target), "require_approval": False})
    wall = time.monotonic() - t0
    assert dr.state == "success", task_states(dr)
    with create_session() as s:
        row = s.scalar(select(DagRunNote).join(DagRun, DagRun.id == DagRunNote.dag_run_id)
                       .where(DagRun.run_id == dr.run_id, DagRun.dag_id == dr.dag_id))
        content, user = row.content, row.user_id
    assert user == api_server["user"]  # set through the API, as that user (the ORM path leaves no user)
    assert content.startswith("**Restore of `weekly-20260104T010000Z`** into `") and "— verified" in content
    assert "data (Great Expectations): app_db " in content and "RESTORE_REPORT.md" in content
    report = json.loads((target / "RESTORE_REPORT.json").read_text())
    assert 0 < report["durations"]["run_seconds"] <= wall + 1

    # no login in the connection: only the simple auth manager's all-admins mode would issue a token
    from backups.orchestration import run_notes

    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API", json.dumps({"conn_type": "http", "host": api_server["url"]}))
    how = run_notes.set_run_note(dr.dag_id, dr.run_id, "**replaced?**")
    assert how.startswith("skipped: the Airflow REST API (connection backup_airflow_api) refused or failed: "
                          "AirflowApiError: no login in the connection") and "/auth/token: HTTP 403" in how, how
    with create_session() as s:
        assert s.scalar(select(DagRun).where(DagRun.run_id == dr.run_id, DagRun.dag_id == dr.dag_id)).note == content


def test_a_note_that_cannot_be_set_is_a_warning(airflow_db, monkeypatch, caplog):
    from backups.orchestration import run_notes

    port = free_port()  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API", json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{port}", "login": "x", "password": "y"}))
    with caplog.at_level(logging.WARNING, logger="backups.orchestration.run_notes"):
        how = run_notes.set_run_note("backup_daily", "no-such-run", "**hello**")
    assert how.startswith("skipped: the Airflow REST API (connection backup_airflow_api) refused or failed: "
                          f"AirflowApiError: POST http://127.0.0.1:{port}/auth/token: ") and "refused" in how, how
    assert "Fix: define the Airflow connection backup_airflow_api" in caplog.text
    monkeypatch.delenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API")
    how = run_notes.set_run_note("backup_daily", "no-such-run", "**hello**")  # ORM path, but no such run
    assert how.startswith("skipped: no connection backup_airflow_api, and no metadata database to write in this process (LookupError")


def test_notes_fit_airflows_limit():
    from backups.orchestration.run_notes import MAX_NOTE, fit

    text = "\n".join(f"* line {i} " + "x" * 40 for i in range(60))
    out = fit(text)
    assert len(out) <= MAX_NOTE and out.endswith("\n…") and text.startswith(out[:-2])
    assert fit("short") == "short"


def test_a_failed_run_says_what_failed_in_its_note(airflow_db, app):
    run_backup(load_config(), "weekly", logical_date="2026-01-04T01:00:00Z")
    target = app["tmp"] / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    dr = load_dags().dags["restore_snapshot"].test(run_conf={"target": str(target), "require_approval": False})
    assert dr.state == "failed"
    note = run_note(dr)
    head = note.splitlines()[0]  # collapsed, the UI shows the first line: the verdict and the cause in words
    # a non-empty target is known before the approval: refused by ``locate``, the note says so and how to retry
    assert head.startswith("**Refused before approval** — ") and f"restore target {target} is not empty" in head, note
    assert "* fix: choose an empty or new directory" in note and "Trigger the DAG again" in note, note
    assert "```" not in note and len(note) <= 1000
