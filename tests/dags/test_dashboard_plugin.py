"""The "Backups" dashboard plugin inside Airflow's real API app: discovered from ``plugins/``, mounted at
``/backups``, refused without Airflow authentication, served to a logged-in session, ``/metrics`` on the
allow-list, the status from the Variable or the status file, and ``airflow plugins`` listing it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, subprocess_env

pytestmark = pytest.mark.airflow

PLUGINS = ROOT / "plugins"
NOW = datetime.now(UTC)


def _status(*, stale: str = "monthly", name: str = "fmr-test") -> dict:
    def tier(t, age_h, rpo_h):
        committed = NOW - timedelta(hours=age_h)
        return {"tier": t, "dag_id": f"backup_{t}", "schedule": None, "newest_id": f"{t}-x",
                "newest_type": "full", "newest_logical_date": committed.isoformat(),
                "newest_committed_at": committed.isoformat(), "age_seconds": age_h * 3600.0,
                "rpo_seconds": rpo_h * 3600.0, "overdue": age_h > rpo_h,
                "state": "critical" if age_h > 2 * rpo_h else "ok", "size_bytes": 1000, "duration_seconds": 2.0,
                "storages": ["local"], "last_run": None, "last_failure": None, "last_verification": None,
                "history": []}

    return {"schema_version": 1, "generated_at": NOW.isoformat(), "application": name, "state": "critical",
            "tiers": [tier("daily", 1, 26), tier(stale, 2000, 840)],
            "storages": [{"storage": "local", "type": "local", "reachable": True, "writable": True,
                          "used_bytes": 4096, "free_bytes": 1 << 30, "snapshots": 2, "error": None}],
            "last_drill": None, "problems": [{"key": f"stale:{stale}", "severity": "critical",
                                               "summary": f"{stale} is stale", "since": NOW.isoformat(), "runs": 1}],
            "reports": {"html": None, "json": None}}


@pytest.fixture(scope="module")
def api(airflow_db):
    """Airflow's API app (core) with this repository's plugins folder, and JWTs for an admin and a role-less user."""
    from airflow import plugins_manager, settings

    caches = (plugins_manager._get_plugins, plugins_manager.get_fastapi_plugins, plugins_manager._get_ui_plugins)
    old = settings.PLUGINS_FOLDER
    settings.PLUGINS_FOLDER = str(PLUGINS)
    for f in caches:
        f.cache_clear()
    try:
        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        app = create_app("core")
        am = get_auth_manager()
        tokens = {
            "admin": am.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin")),
            "viewer": am.generate_jwt(SimpleAuthManagerUser(username="v", role="viewer")),
            "none": am.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None)),
        }
        assert any(v.get("name") == "Backups" for v in plugins_manager._get_ui_plugins()[0])
        yield app, tokens
    finally:
        settings.PLUGINS_FOLDER = old
        for f in caches:
            f.cache_clear()


@pytest.fixture
def client(api):
    from fastapi.testclient import TestClient

    app, tokens = api
    with TestClient(app) as c:
        c.tokens = tokens
        yield c


@pytest.fixture
def status_variable():
    from airflow.models import Variable

    from backups.monitoring import STATUS_VARIABLE

    Variable.set(STATUS_VARIABLE, json.dumps(_status()))  # noqa: AIR311 - server-side model, as the plugin reads it
    yield
    Variable.delete(STATUS_VARIABLE)  # noqa: AIR311


ROUTES = ["/backups/", "/backups/metrics", "/backups/status.json", "/backups/reports/html"]


@pytest.mark.parametrize("path", ROUTES)
def test_anonymous_requests_are_refused(client, path):
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 401, r.text
    assert "Backups" not in r.text and "backup_" not in r.text


def test_the_bare_prefix_redirects_to_the_dashboard(client):
    """``/backups`` (as typed, without the slash) is not the UI's "not found": it redirects to ``/backups/``."""
    r = client.get("/backups", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "backups/"
    assert client.get("/backups?x=1", follow_redirects=False).headers["location"] == "backups/?x=1"
    client.cookies.set("_token", client.tokens["viewer"])
    r = client.get("/backups")  # followed: the dashboard itself
    assert r.status_code == 200 and str(r.url).endswith("/backups/") and "Backups" in r.text
    assert client.get("/backupsx", follow_redirects=False).status_code != 307  # only the exact prefix


def test_an_anonymous_browser_is_sent_to_the_login_page(client):
    r = client.get("/backups/", headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/auth/login") and "next=" in r.headers["location"]


@pytest.mark.parametrize("path", ROUTES)
def test_a_forged_token_and_a_user_without_permission_are_refused(client, path):
    assert client.get(path, cookies={"_token": "not-a-jwt"}).status_code == 403
    r = client.get(path, headers={"Authorization": f"Bearer {client.tokens['none']}"})
    assert r.status_code == 403, r.text


def test_a_logged_in_session_sees_the_page_with_the_stale_tier_red(client, status_variable):
    client.cookies.set("_token", client.tokens["viewer"])  # the UI's session cookie
    r = client.get("/backups/")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert 'data-tier="monthly" data-state="critical"' in r.text
    assert 'data-tier="daily" data-state="ok"' in r.text
    assert "from Variable backup_monitoring_status" in r.text
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["frame-ancestors"] == "'self'" and directives["default-src"] == "'none'"
    assert directives["script-src"].startswith("'sha256-") and "unsafe" not in directives["script-src"]
    assert client.get("/backups/status.json").json()["application"] == "fmr-test"


def test_metrics_with_a_bearer_token(client, status_variable):
    r = client.get("/backups/metrics", headers={"Authorization": f"Bearer {client.tokens['admin']}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, s.labels.get("tier")): s.value
               for f in text_string_to_metric_families(r.text) for s in f.samples}
    assert samples[("backup_rpo_seconds", "monthly")] == 840 * 3600
    assert samples[("backup_status_available", None)] == 1
    assert samples[("backup_open_problems", None)] == 1


def test_metrics_allow_list_lets_a_scraper_in_without_a_token_and_only_for_metrics(api, monkeypatch,
                                                                                   status_variable):
    from fastapi.testclient import TestClient

    app, _ = api
    monkeypatch.setenv("AIRFLOW__BACKUPS__METRICS_ALLOW_FROM", "10.0.0.0/8, not-an-ip, 192.0.2.7")
    with TestClient(app, client=("10.1.2.3", 40000)) as inside:
        r = inside.get("/backups/metrics")
        assert r.status_code == 200 and "backup_age_seconds" in r.text
        assert inside.get("/backups/").status_code == 401  # the page still needs a login
        assert inside.get("/backups/status.json").status_code == 401
    with TestClient(app, client=("192.168.1.1", 40000)) as outside:
        assert outside.get("/backups/metrics").status_code == 401
    monkeypatch.setenv("AIRFLOW__BACKUPS__METRICS_ALLOW_FROM", "")
    with TestClient(app, client=("10.1.2.3", 40000)) as inside:
        assert inside.get("/backups/metrics").status_code == 401


def test_without_a_variable_the_status_file_is_read_and_reports_are_served_from_its_folder(client, tmp_path,
                                                                                          monkeypatch):
    from backups.config import load_config
    from backups.monitoring import status_dir, status_path

    client.cookies.set("_token", client.tokens["admin"])
    r = client.get("/backups/")
    assert r.status_code == 200 and 'id="empty-state"' in r.text and "backup_monitoring" in r.text
    assert client.get("/backups/metrics").text.strip().endswith("backup_status_available 0")

    folder = status_dir(load_config())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text('<h1>report</h1><img src="size.png">')
    (folder / "size.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    outside = tmp_path / "secret.html"
    outside.write_text("secret")
    doc = _status(stale="weekly", name="from-file")
    doc["reports"] = {"html": str(folder / "report.html"), "json": str(outside)}
    status_path(load_config()).write_text(json.dumps(doc))
    try:
        r = client.get("/backups/")
        assert r.status_code == 200
        assert 'data-tier="weekly" data-state="critical"' in r.text and "from-file" in r.text
        assert str(status_path(load_config())) in r.text
        assert 'href="reports/html"' in r.text and 'href="reports/json"' not in r.text
        rep = client.get("/backups/reports/html")
        assert rep.status_code == 200 and "<h1>report</h1>" in rep.text
        assert "sandbox" in rep.headers["content-security-policy"]
        assert client.get("/backups/reports/size.png").content.startswith(b"\x89PNG")
        assert client.get("/backups/reports/json").status_code == 404  # outside the monitoring folder
        assert client.get("/backups/reports/..%2Fstatus.json").status_code == 404
        assert client.get("/backups/reports/status.json").status_code == 200  # a file of the folder, by name
    finally:
        status_path(load_config()).unlink()


def test_drill_reports_and_backup_result_documents_are_served_to_logged_in_users(client):
    """The drill's HTML report (``latest`` and by id), its Data Docs (linked relatively from the report) and a backup
    run's result document open from the plugin; ids and paths out of their folder are refused (issue 20 item 7)."""
    from backups.commands.drill.common import drill_dir
    from backups.config import load_config
    from backups.repository import report_key

    cfg = load_config()
    folder, did = drill_dir(cfg), "drill-20261207T040000Z"
    docs = folder / f"{did}.datadocs" / "weekly" / "app_db"
    docs.mkdir(parents=True, exist_ok=True)
    (folder / f"{did}.html").write_text(f"<h1>drill {did}</h1><a href='{did}.datadocs/weekly/app_db/index.html'>x</a>")
    (folder / "latest.html").write_text("<h1>the newest drill</h1>")
    (folder / f"{did}.json").write_text('{"passed": true}')
    (docs / "index.html").write_text("<h1>Data Docs</h1>")
    sid = "daily-20261207T020000Z"
    local = next(sc for sc in cfg.storages.values() if sc.type == "local")
    md = Path(local.path) / report_key(sid, "md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(f"# Backup {sid}\n\n* comment: <script>alert(1)</script>\n")
    md.with_suffix(".json").write_text(json.dumps({"kind": "backup-result", "snapshot_id": sid}))
    try:
        _served(client, did, sid)
    finally:  # the session's repository: leave no drill or report behind for other tests
        shutil.rmtree(folder / f"{did}.datadocs")
        for f in (folder / f"{did}.html", folder / "latest.html", folder / f"{did}.json", md, md.with_suffix(".json")):
            f.unlink()


def _served(client, did: str, sid: str) -> None:
    paths = ["/backups/drills/latest", f"/backups/drills/{did}", f"/backups/snapshots/{sid}/report"]
    for path in paths:
        assert client.get(path).status_code == 401  # anonymous
        assert client.get(path, headers={"Authorization": f"Bearer {client.tokens['none']}"}).status_code == 403
    client.cookies.set("_token", client.tokens["viewer"])
    r = client.get("/backups/drills/latest")
    assert r.status_code == 200 and "the newest drill" in r.text and r.headers["content-type"].startswith("text/html")
    assert "sandbox" in r.headers["content-security-policy"]
    r = client.get(f"/backups/drills/{did}")
    assert r.status_code == 200 and f"drill {did}" in r.text
    assert client.get(f"/backups/drills/{did}.json").json() == {"passed": True}
    r = client.get(f"/backups/drills/{did}.datadocs/weekly/app_db/index.html")  # the report's relative link
    assert r.status_code == 200 and "Data Docs" in r.text and "allow-scripts" in r.headers["content-security-policy"]
    assert "allow-same-origin" not in r.headers["content-security-policy"]
    for bad in ("..%2F..%2Fstatus.json", "drill-x%2F..%2F..%2Fmonitoring%2Fstatus.json", "history.jsonl",
                f"{did}.datadocs/..%2F..%2Fmonitoring/status.json", "drill-20991231T000000Z"):
        assert client.get(f"/backups/drills/{bad}").status_code == 404, bad
    r = client.get(f"/backups/snapshots/{sid}/report")
    assert r.status_code == 200 and f"Backup {sid}" in r.text and "<script>alert" not in r.text
    assert "&lt;script&gt;" in r.text and "read from storage" in r.text
    assert client.get(f"/backups/snapshots/{sid}/report.json").json()["snapshot_id"] == sid
    assert client.get("/backups/snapshots/daily-x/report").status_code == 404
    assert client.get("/backups/snapshots/daily-20261208T020000Z/report").status_code == 404
    assert client.get(f"/backups/snapshots/{sid}/manifest").status_code == 404


def test_airflow_plugins_lists_the_dashboard(tmp_path):
    env = subprocess_env(AIRFLOW__CORE__PLUGINS_FOLDER=str(PLUGINS), AIRFLOW_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "airflow", "plugins", "--output", "json"], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    p = plugins["backups_dashboard"]
    assert "/backups" in json.dumps(p["fastapi_apps"])
    assert "Backups" in json.dumps(p["external_views"])
    assert "backups_dashboard.py" in json.dumps(p["source"])
