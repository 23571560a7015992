"""The Backups dashboard (plugins/backups_dashboard.py) in the real Airflow UI, in headless Chromium, logged in.

The status document is put where the monitoring DAG puts it (the Variable ``backup_monitoring_status``, set
through the REST API), with the monthly tier far past its RPO: the page reached from the navigation must show
that tier red. Screenshots: ``browser-artifacts/<test>/``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from backups.airflow_api import AirflowApiError

pytestmark = pytest.mark.timeout(900)

RED, RED_BG, GREEN = "rgb(198, 40, 40)", "rgb(253, 236, 234)", "rgb(46, 125, 50)"


def _status() -> dict:
    now = datetime.now(UTC)

    def tier(name: str, age_h: float, rpo_h: float, state: str) -> dict:
        committed = now - timedelta(hours=age_h)
        return {"tier": name, "dag_id": f"backup_{name}", "schedule": None, "newest_id": f"{name}-20261001T020000Z",
                "newest_type": "full", "newest_logical_date": committed.isoformat(),
                "newest_committed_at": committed.isoformat(), "age_seconds": age_h * 3600, "rpo_seconds": rpo_h * 3600,
                "overdue": age_h > rpo_h, "state": state, "size_bytes": 48 * 1024**2, "duration_seconds": 41.0,
                "storages": ["local"], "last_run": {"run_id": "scheduled__2026-10-01T02:00:00+00:00",
                                                    "state": "success", "start": committed.isoformat()},
                "last_failure": None, "last_verification": {"at": now.isoformat(), "ok": True, "storage": "local"},
                "history": []}

    return {"schema_version": 1, "generated_at": now.isoformat(), "application": "fmr-v2", "state": "critical",
            "tiers": [tier("daily", 3, 26, "ok"), tier("weekly", 100, 192, "ok"),
                      tier("monthly", 2000, 840, "critical")],
            "storages": [{"storage": "local", "type": "local", "reachable": True, "writable": True,
                          "used_bytes": 3 * 1024**3, "free_bytes": 90 * 1024**3, "snapshots": 14, "error": None}],
            "last_drill": {"id": "drill-20261115T0300Z", "at": now.isoformat(), "passed": True, "rto_seconds": 312.0,
                           "rpo_seconds": 86000.0, "report": None},
            "problems": [{"key": "stale:monthly", "severity": "critical",
                          "summary": "monthly: newest snapshot is 83 days old (RPO 35 days)",
                          "since": now.isoformat(), "runs": 4}],
            "reports": {"html": None, "json": None}}


@pytest.fixture
def stale_status(airflow_server):
    api = airflow_server.api
    body = {"key": "backup_monitoring_status", "value": json.dumps(_status())}
    try:
        api.post("/api/v2/variables", body)
    except AirflowApiError as exc:  # 409: it exists (an earlier test): replace it
        if exc.status != 409:
            raise
        api.patch("/api/v2/variables/backup_monitoring_status", body)
    yield
    api.delete("/api/v2/variables/backup_monitoring_status")


def test_backups_page_from_the_navigation_shows_the_stale_tier_red(airflow_server, page, shot, stale_status):
    from playwright.sync_api import expect

    page.goto(airflow_server.url + "/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Backups").click()
    page.wait_for_url(re.compile(r".*/plugin/backups.*"))
    frame = page.frame_locator("iframe[title='Backups']")

    monthly = frame.locator('tr[data-tier="monthly"]')
    monthly.wait_for()
    assert monthly.get_attribute("data-state") == "critical"
    age = monthly.locator("td.age")
    assert age.evaluate("e => getComputedStyle(e).color") == RED
    assert age.evaluate("e => getComputedStyle(e).backgroundColor") == RED_BG
    assert monthly.locator("td").nth(1).inner_text() == "CRITICAL"
    daily = frame.locator('tr[data-tier="daily"]')
    assert daily.get_attribute("data-state") == "ok"
    assert daily.locator("td.age").evaluate("e => getComputedStyle(e).color") == GREEN
    assert "monthly: newest snapshot is 83 days old" in frame.locator("#problems").inner_text()
    assert "3.2 GB" in frame.locator("#storages").inner_text()  # decimal units (backups.units), as the CLI
    assert "RTO 5m 12s" in frame.locator("#drill").inner_text()
    shot("backups-stale-monthly")

    # a run link opens the Airflow UI's own view (not a UI nested in the iframe)
    frame.get_by_role("link", name="backup_daily").click()
    page.wait_for_url(re.compile(re.escape(airflow_server.url) + r"/dags/backup_daily/runs"))
    expect(page.locator("iframe[title='Backups']")).to_have_count(0)
    expect(page.get_by_text("backup_daily").first).to_be_visible()
    shot("daily-runs-from-the-dashboard")


def test_an_anonymous_browser_gets_the_login_page_not_the_dashboard(airflow_server, browser, stale_status):
    ctx = browser.new_context()
    try:
        pg = ctx.new_page()
        pg.goto(airflow_server.url + "/backups/")
        pg.wait_for_url(re.compile(r".*/auth/login.*"))
        assert "monthly" not in pg.content()
        assert ctx.request.get(airflow_server.url + "/backups/metrics").status == 401
        assert ctx.request.get(airflow_server.url + "/backups/status.json").status == 401
    finally:
        ctx.close()
