"""The backup DAGs end to end under ``dag.test()`` on a generated FMR V2 application.

* backup_weekly (full) then, after a day of application activity, backup_daily (incremental on top of it);
  restoring the daily snapshot gives back exactly the source tree and database;
* backup_manual without the approval gate, on two of three storages: replicated, verified, reported;
* backup_manual through the approval gate, answered through Airflow's REST API (tests/dags/approvals.py);
* a missing source: check_system_state fails at once with the reason, the failure notifiers fire (log
  summary to the listeners, e-mail through an SMTP sink).
"""

from __future__ import annotations

import email
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backups.catalog import Catalog
from backups.config import load_config
from backups.demo import fmr
from backups.engine.restorer import restore
from backups.storage import open_storage
from tests.dags.common import load_dags, run_note, task_states
from tests.helpers import ROOT, app_tree, db_rows

pytestmark = pytest.mark.airflow


@pytest.fixture
def app(tmp_path, monkeypatch):
    """A generated application, an empty repository root, a private staging dir; the shipped config."""
    home, root, staging = tmp_path / "fmr", tmp_path / "backups", tmp_path / "staging"
    fmr.generate(home, scale=0.3, seed=11)
    staging.mkdir()
    monkeypatch.setenv("FMR_HOME", str(home))
    monkeypatch.setenv("BACKUP_ROOT", str(root))
    monkeypatch.setenv("BACKUP_STAGING", str(staging))
    monkeypatch.setenv("BACKUP_CONFIG", str(ROOT / "include" / "backups.local.yaml"))  # the embedded default
    return {"home": home, "root": root, "staging": staging, "tmp": tmp_path}


def _asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                         .where(AssetModel.uri == uri)).all()
        return [dict(e.extra or {}) for e in rows]


def test_weekly_then_daily_end_to_end_restore_equals_source(airflow_db, app):
    bag = load_dags()
    dr = bag.dags["backup_weekly"].test(logical_date=datetime(2026, 1, 4, 1, 0, tzinfo=UTC))
    assert dr.state == "success", task_states(dr)
    fmr.mutate(app["home"], seed=5, fraction=0.05)
    dr = bag.dags["backup_daily"].test(logical_date=datetime(2026, 1, 5, 2, 0, tzinfo=UTC))
    states = task_states(dr)
    assert dr.state == "success", states
    assert states["backup.extract_data[0]"] == states["backup.extract_config[0]"] == "success"
    assert states["post_backup.cleanup"] == "success"

    cfg = load_config()
    storage = open_storage(cfg, "local", read_only=True)
    cat = Catalog(storage, cfg.application)
    assert [s.id for s in cat.ordered()] == ["weekly-20260104T010000Z", "daily-20260105T020000Z"]
    snap = cat.get("latest")
    assert (snap.type, snap.parent) == ("incremental", "weekly-20260104T010000Z")
    assert snap.doc["totals"]["stored_files"] < cat.get("weekly-20260104T010000Z").doc["totals"]["stored_files"]

    out = app["tmp"] / "restored"
    restore(storage, cat, snap, out)
    assert app_tree(out / "app_files") == app_tree(app["home"])
    assert db_rows(out / "app_db" / "app.db") == db_rows(app["home"] / "app.db")

    events = _asset_events("backup://fmr-v2/daily")
    assert events and events[-1]["snapshot_id"] == "daily-20260105T020000Z"
    assert _asset_events("backup://fmr-v2/weekly")[-1]["type"] == "full"
    # every task removed its scratch space; the teardown removed the run directories
    leftovers = [p for p in (app["staging"] / "fmr-backups").rglob("*") if p.is_file()]
    assert leftovers == []


MULTI = """\
application: fmr-v2
sources:
  app_db:       {{type: sqlite, path: "{home}/app.db"}}
  app_files:    {{type: files, root: "{home}", include: ["config/**", "user_data/**", "logs/**", "uploads/**"], exclude: ["**/*.tmp"]}}
  system_state: {{type: command, command: ["uname", "-a"]}}
storages:
  local:   {{type: local, path: "{root}/local"}}
  offsite: {{type: local, path: "{root}/offsite"}}
  spare:   {{type: local, path: "{root}/spare"}}
tiers:
  daily: {{type: incremental, schedule: "0 2 * * *", sources: [app_db, app_files, system_state], storages: [local, offsite]}}
{extra}"""


def _multi_config(app, monkeypatch, extra: str = "", home: Path | None = None) -> Path:
    path = app["tmp"] / "multi.yaml"
    path.write_text(MULTI.format(home=home or app["home"], root=app["root"], extra=extra))
    monkeypatch.setenv("BACKUP_CONFIG", str(path))
    return path


def test_manual_without_approval_two_of_three_storages(airflow_db, app, monkeypatch):
    _multi_config(app, monkeypatch)
    dag = load_dags().dags["backup_manual"]
    conf = {"backup_type": "full", "sources": ["app_db", "app_files"], "storages": ["offsite", "local"],
            "comment": "before the firmware roll-out", "require_approval": False}
    dr = dag.test(logical_date=datetime(2026, 2, 3, 10, 30, tzinfo=UTC), run_conf=conf)
    states = task_states(dr)
    assert dr.state == "success", states
    assert states["approve_backup"] == "skipped"
    assert states["backup.extract_data[1]"] == "skipped"  # system_state: not chosen
    assert states["backup.upload[0]"] == states["backup.upload[1]"] == "success"  # local (primary), offsite (replica)
    assert states["backup.upload[2]"] == states["verify.check_integrity[2]"] == "skipped"  # spare: not chosen

    cfg = load_config()
    sid = "manual-20260203T103000Z"
    for name in ("local", "offsite"):
        st = open_storage(cfg, name, read_only=True)
        snap = Catalog(st, cfg.application).get(sid)
        assert sorted(snap.sources) == ["app_db", "app_files"] and snap.doc["comment"] == "before the firmware roll-out"
        doc = json.loads(st.get_bytes(f"reports/manual/{sid}.json"))
        assert doc["requested_by"] == "dag_test"
        assert doc["approval"]["choice"] == "not required"
        assert doc["checks"]["integrity"]["offsite"]["ok"] and doc["checks"]["integrity"]["local"]["ok"]
        assert doc["checks"]["validation"]["app_db"]["success"] is True
        assert doc["checks"]["restore_test"]["storage"] == "offsite"
        md = st.get_bytes(f"reports/manual/{sid}.md").decode()
        assert md.startswith(f"# Manual backup {sid}") and "before the firmware roll-out" in md
    spare = open_storage(cfg, "spare", read_only=True)
    assert list(spare.list("")) == []


@pytest.mark.timeout(240)
@pytest.mark.parametrize("choice", ["Approve", "Reject"])
def test_manual_approval_gate_answered(airflow_db, app, approver, choice):
    dag = load_dags().dags["backup_manual"]
    day = 4 if choice == "Approve" else 5
    responder = approver("backup_manual", "approve_backup", [choice], {"note": "ok for tonight"})
    dr = dag.test(logical_date=datetime(2026, 2, day, 9, 0, tzinfo=UTC),
                  run_conf={"sources": ["app_db"], "storages": ["local"], "comment": "schema change"})
    responder.join(5)  # answered through the API, as olga.ops, with that choice
    states = task_states(dr)
    assert not responder.detail["defaults"]  # Reject is not the highlighted button
    cfg = load_config()
    storage = open_storage(cfg, "local", read_only=True)
    sid = f"manual-202602{day:02d}T090000Z"
    if choice == "Reject":  # a failed run, not a green one; nothing touched data; the teardown still ran
        assert dr.state == "failed", states
        assert states["approve_backup"] == "failed"
        assert {s for t, s in states.items() if t.startswith(("pre_backup", "backup", "verify"))} == {"upstream_failed"}
        assert states["post_backup.cleanup"] == "success"
        assert sid not in Catalog(storage, cfg.application).snapshots
        first = run_note(dr).splitlines()[0]
        assert first.startswith("**Rejected** by olga.ops at ") and first.endswith(" — nothing was backed up")
        return
    assert dr.state == "success", states
    assert states["approve_backup"] == "success"
    assert states["backup.extract_config[0]"] == "skipped"  # app_files not chosen
    doc = json.loads(storage.get_bytes(f"reports/manual/{sid}.json"))
    assert doc["approval"]["by"] == "olga.ops" and doc["approval"]["choice"] == "Approve"
    assert doc["approval"]["note"] == "ok for tonight"
    assert list(doc["sources"]) == ["app_db"]


def test_missing_source_fails_check_system_state_and_notifies(airflow_db, app, monkeypatch, smtp_sink):
    from backups.orchestration import notifiers

    missing = app["tmp"] / "no-such-home"
    _multi_config(app, monkeypatch, extra="notify_email: [ops@example.com]\n", home=missing)
    calls: list[dict] = []
    monkeypatch.setattr(notifiers, "LISTENERS", [calls.append])
    dag = load_dags().dags["backup_daily"]
    started = time.monotonic()
    dr = dag.test(logical_date=datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    states = task_states(dr)
    assert dr.state == "failed"
    assert states["pre_backup.check_system_state"] == "failed"
    assert states["pre_backup.prepare_environment"] == "upstream_failed"
    assert time.monotonic() - started < 60  # failed at once, no retries for a missing source

    task_calls = [c for c in calls if c["event"] == "task_failure"]
    assert [c["task_id"] for c in task_calls] == ["pre_backup.check_system_state"]
    reason = task_calls[0]["reason"]
    assert f"SQLite database {missing}/app.db does not exist" in reason
    assert "fix sources.app_db.path" in reason
    assert "source app_files (files)" in reason
    assert [c["event"] for c in calls if c["event"].startswith("dag")] == ["dag_failure"]
    assert len(smtp_sink.messages) == 1, "one failure e-mail expected"
    mail = email.message_from_string(smtp_sink.messages[0])
    assert mail["To"] == "ops@example.com"
    assert mail["Subject"] == "[backup] backup_daily: pre_backup.check_system_state failed"
    body = "".join(p.get_payload(decode=True).decode() for p in mail.walk() if p.get_content_type() == "text/html")
    assert "app.db does not exist" in body
