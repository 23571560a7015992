"""Dependency-aware table-level restore of a SQLite source: the foreign keys of the backed-up database decide
which tables a partial restore needs (``missions`` and ``telemetry`` reference ``robots``)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from backups.commands import restore as rc
from backups.engine.databases import dependency_closure, sqlite_foreign_keys
from backups.errors import IntegrityError, NotFoundError, RefusedError
from tests.helpers import make_app, run_backup, subprocess_env

WEEKLY = "weekly-20260104T010000Z"


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    a = make_app(tmp_path, scale=0.2, seed=5)
    run_backup(a["cfg"], "weekly", logical_date="2026-01-04T01:00:00Z")
    return a


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}


def test_foreign_keys_and_closure(app):
    refs = sqlite_foreign_keys(app["home"] / "app.db")
    assert refs["missions"] == ["robots"] and refs["robots"] == []
    assert dependency_closure(refs, ["missions"]) == ["robots"]
    assert dependency_closure({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a"]) == ["b", "c"]  # cycles end


def test_missing_dependency_refuses_before_writing(app):
    cfg = app["cfg"]
    target = app["tmp"] / "t"
    req = rc.check_request(cfg, rc.RestoreRequest(target=str(target), sources=["app_db"], tables=["missions"]))
    loc = rc.locate(cfg, req)
    with pytest.raises(RefusedError) as ei:
        rc.plan_tables(cfg, req, loc)
    msg = str(ei.value)
    assert "app_db: robots (referenced by missions)" in msg and "nothing was written" in msg
    assert "--with-dependencies" in ei.value.hint and ei.value.exit_code == 7
    assert not target.exists()  # nothing in the target
    assert list((app["tmp"] / "staging").iterdir()) == []  # the staged copy is gone too
    with pytest.raises(NotFoundError, match="table\\(s\\) nope not in the backed-up database of source app_db"):
        rc.plan_tables(cfg, rc.RestoreRequest(target=str(target), sources=["app_db"], tables=["nope"]), loc)
    # a table referencing nothing needs nothing
    plan = rc.plan_tables(cfg, rc.RestoreRequest(target=str(target), sources=["app_db"], tables=["robots"]), loc)
    assert plan.tables() == {"app_db": ["robots"]} and plan.added() == {}


def test_with_dependencies_restores_and_reports_them(app):
    cfg = app["cfg"]
    target = app["tmp"] / "t"
    out = rc.restore_snapshot(cfg, rc.RestoreRequest(target=str(target), sources=["app_db"], tables=["missions"],
                                                     include_dependencies=True))
    db = target / "app_db" / "app.db"
    assert sorted(x.name for x in db.parent.iterdir()) == ["app.db"]  # no -wal/-shm left by the checks
    assert _tables(db) == {"missions", "robots"}
    with closing(sqlite3.connect(db)) as c:
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
        assert c.execute("SELECT count(*) FROM missions").fetchone()[0] > 0
    assert out.restored.tables["sources"]["app_db"]["added"] == ["robots"]
    assert out.verified.validation["app_db"]["success"] is True
    assert out.verified.files["app_db"]["foreign_key_check"] == "ok"
    # the integrity check after a table-level restore sees a reference that no longer resolves
    with closing(sqlite3.connect(db)) as c:
        c.execute("PRAGMA foreign_keys = OFF")
        c.execute("DELETE FROM robots WHERE id = (SELECT robot_id FROM missions LIMIT 1)")
        c.commit()
    req = rc.check_request(cfg, rc.RestoreRequest(target=str(target), sources=["app_db"], tables=["missions"],
                                                  include_dependencies=True))
    with pytest.raises(IntegrityError, match="app_db: foreign key check: .* row\\(s\\) of missions reference missing rows of robots"):
        rc.verify_restore(cfg, req, out.location, out.restored, validate=False)
    doc = json.loads((target / "RESTORE_REPORT.json").read_text())
    assert doc["tables"]["sources"]["app_db"]["tables"] == ["missions", "robots"]
    assert "dependencies restored with them: robots" in (target / "RESTORE_REPORT.md").read_text()
    assert list((app["tmp"] / "staging").iterdir()) == []


def test_cli_with_and_without_dependencies(app):
    base = [sys.executable, "-m", "backups.cli", "--config", str(app["config_path"]), "restore", WEEKLY,
            "--source", "app_db", "--table", "missions", "--table", "telemetry"]
    p = subprocess.run([*base, "--target", str(app["tmp"] / "a")], capture_output=True, text=True, env=subprocess_env())
    assert p.returncode == 7, p.stderr
    assert "robots (referenced by missions, telemetry)" in p.stderr and "--with-dependencies" in p.stderr
    assert not (app["tmp"] / "a").exists()
    p = subprocess.run([*base, "--target", str(app["tmp"] / "b"), "--with-dependencies", "--no-validate"],
                       capture_output=True, text=True, env=subprocess_env())
    assert p.returncode == 0, p.stderr
    assert "app_db: dependencies restored with the tables (foreign keys): robots" in p.stdout
    assert _tables(app["tmp"] / "b" / "app_db" / "app.db") == {"missions", "robots", "telemetry"}
