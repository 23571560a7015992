"""The dashboard page renderer (pure: status document -> HTML), without Airflow."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from backups.monitoring.dashboard import freshness, render_dashboard, render_empty

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0


def _iso(dt):
    return dt.isoformat()


def _tier(name, age_s, rpo_s=DAY, **over):
    committed = NOW - timedelta(seconds=age_s) if age_s is not None else None
    t = {
        "tier": name, "dag_id": f"backup_{name}", "schedule": "0 2 * * *",
        "newest_id": f"{name}-20261201T020000Z" if committed else None, "newest_type": "full" if committed else None,
        "newest_logical_date": _iso(committed) if committed else None,
        "newest_committed_at": _iso(committed) if committed else None,
        "age_seconds": age_s, "rpo_seconds": rpo_s, "overdue": age_s is None or (rpo_s is not None and age_s > rpo_s), "state": "ok",
        "size_bytes": 5 * 1024**2, "duration_seconds": 12.5, "storages": ["local"],
        "last_run": {"run_id": "scheduled__2026-12-01T02:00:00+00:00", "state": "success",
                     "start": _iso(NOW - timedelta(hours=10)), "end": None, "url": None},
        "last_failure": None, "last_verification": None, "history": [],
    }
    t.update(over)
    return t


def _status(tiers, **over):
    doc = {"schema_version": 1, "generated_at": _iso(NOW - timedelta(minutes=5)), "application": "fmr-v2",
           "state": "ok", "tiers": tiers,
           "storages": [{"storage": "local", "type": "local", "reachable": True, "writable": True,
                         "used_bytes": 3 * 1024**3, "free_bytes": 10 * 1024**3, "snapshots": 4, "error": None}],
           "last_drill": None, "problems": [], "reports": {"html": None, "json": None}}
    doc.update(over)
    return doc


class _Rows(HTMLParser):
    """data-tier -> data-state of the tier rows; fails on unbalanced table markup."""

    def __init__(self):
        super().__init__()
        self.rows, self.stack = {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-tier" in a:
            self.rows[a["data-tier"]] = (a["data-state"], a["class"])
        if tag in ("table", "tr", "td", "ul", "li"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("table", "tr", "td", "ul", "li"):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack)
            self.stack.pop()


def _rows(html):
    p = _Rows()
    p.feed(html)
    assert p.stack == []
    return p.rows


def test_fresh_late_and_stale_tiers_are_green_amber_red():
    html = render_dashboard(_status([_tier("daily", 3600), _tier("weekly", 1.5 * DAY), _tier("monthly", 3 * DAY),
                                     _tier("yearly", None)]), now=NOW)
    rows = _rows(html)
    assert rows["daily"] == ("ok", "state-ok")
    assert rows["weekly"] == ("warning", "state-warning")
    assert rows["monthly"] == ("critical", "state-critical")
    assert rows["yearly"] == ("critical", "state-critical")  # never ran
    assert "<title>Backups — CRITICAL</title>" in html
    assert "tr.state-critical td.age" in html and "--critical:#c62828" in html  # red is styled


def test_age_is_recomputed_at_render_time_so_a_frozen_status_turns_red():
    # the document says "ok" 3 days ago; nobody has written it since
    doc = _status([_tier("daily", 3600)], generated_at=_iso(NOW - timedelta(days=3)))
    doc["tiers"][0]["newest_committed_at"] = _iso(NOW - timedelta(days=3, hours=1))
    html = render_dashboard(doc, now=NOW)
    assert _rows(html)["daily"][0] == "critical"
    assert 'id="stale-status"' in html


def test_the_documents_worse_state_wins():
    html = render_dashboard(_status([_tier("daily", 60, state="critical")]), now=NOW)
    assert _rows(html)["daily"][0] == "critical"


def test_a_tier_without_rpo_has_no_verdict():
    assert freshness(_tier("manual", 10 * DAY, rpo_s=None, state=None), NOW)[0] == "unknown"
    assert freshness(_tier("manual", 10 * DAY, rpo_s=None, state="ok"), NOW)[0] == "ok"  # the writer's verdict
    html = render_dashboard(_status([_tier("manual", 10 * DAY, rpo_s=None)]), now=NOW)
    assert "10d 0h / no RPO" in html


def test_user_data_is_escaped_everywhere():
    evil = '<script>alert("x")</script>'
    tier = _tier(evil, 60, dag_id='d"><img src=x onerror=alert(1)>')
    tier["last_run"]["run_id"] = 'r"><script>1</script>'
    tier["storages"] = [evil]
    doc = _status([tier], application=evil,
                  problems=[{"key": evil, "severity": "critical", "summary": evil, "since": _iso(NOW), "runs": 2}],
                  last_drill={"id": evil, "at": _iso(NOW), "passed": False, "rto_seconds": 30.0, "rpo_seconds": None,
                              "report": evil})
    doc["storages"][0].update(storage=evil, error=evil, type=evil)
    html = render_dashboard(doc, now=NOW)
    assert html.count("<script") == 1  # the page's own (see the CSP test), none from the data
    assert not re.search(r"<img\b", html)
    assert "&lt;script&gt;" in html
    # ids in URLs are percent-encoded, not just HTML-escaped
    assert "dags/d%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/runs/r%22%3E%3Cscript%3E1%3C%2Fscript%3E" in html
    _rows(html)  # still well-formed


def test_links_to_runs_reports_and_metrics_are_relative_to_the_ui():
    tier = _tier("daily", 60, last_failure={"run_id": "manual__x", "at": _iso(NOW), "url": "javascript:alert(1)"})
    html = render_dashboard(_status([tier]), now=NOW, ui_base="../",
                            reports_href={"html": "reports/html", "json": "reports/json"})
    assert 'href="../dags/backup_daily/runs/scheduled__2026-12-01T02%3A00%3A00%2B00%3A00"' in html
    assert 'href="../dags/backup_daily/runs/manual__x"' in html
    assert 'href="../dags/backup_daily/runs"' in html
    assert 'href="reports/html"' in html and 'href="metrics"' in html
    assert "javascript:" not in html


def test_storage_usage_problems_and_drill_are_shown():
    doc = _status([_tier("daily", 60)],
                  problems=[{"key": "stale:weekly", "severity": "warning", "summary": "weekly is 9d old",
                             "since": _iso(NOW), "runs": 3}],
                  last_drill={"id": "drill-1", "at": _iso(NOW), "passed": True, "rto_seconds": 125.0,
                              "rpo_seconds": 7200.0, "report": "/x/drill.html"})
    html = render_dashboard(doc, now=NOW)
    assert "3.2 GB" in html and "10.7 GB" in html
    assert "Open problems (1)" in html and "weekly is 9d old" in html and 'data-key="stale:weekly"' in html
    assert "RTO 2m 05s" in html and "RPO 2h 00m" in html


def test_the_drill_and_backup_reports_are_links_served_by_the_plugin_not_paths():
    doc = _status([_tier("daily", 60)],
                  last_drill={"id": "drill-20261207T040000Z", "at": _iso(NOW), "passed": True, "rto_seconds": 125.0,
                              "rpo_seconds": 7200.0, "report": "/srv/backups/reports/drill/drill-20261207T040000Z.html"})
    html = render_dashboard(doc, now=NOW)
    assert '<a id="drill-report" href="../backups/drills/drill-20261207T040000Z">report</a>' in html
    assert 'href="../backups/drills/latest">latest drill report</a>' in html
    assert "/srv/backups" not in html  # a filesystem path means nothing in a browser
    newest = doc["tiers"][0]["newest_id"]
    assert f'<a class="backup-report" href="../backups/snapshots/{newest}/report"' in html
    odd = render_dashboard(_status([_tier("daily", 60)], last_drill={"id": "../x", "at": _iso(NOW), "passed": True}),
                           now=NOW)
    assert 'id="drill-report"' not in odd and "../backups/drills/latest" in odd  # an odd id is never a URL


def test_missing_status_shows_how_to_get_one():
    for html in (render_dashboard(None), render_empty(reason="no Variable <x>")):
        assert 'id="empty-state"' in html and "backup_monitoring" in html
    assert "no Variable &lt;x&gt;" in render_empty(reason="no Variable <x>")


def test_garbage_fields_do_not_break_the_page():
    doc = {"tiers": [{"tier": "t", "rpo_seconds": "soon", "size_bytes": "big", "age_seconds": True,
                      "newest_committed_at": "not a date", "last_run": "x", "storages": None}, "junk"],
           "storages": ["junk", {"storage": "s"}], "problems": [None], "generated_at": 5}
    html = render_dashboard(doc, now=NOW)
    assert _rows(html)["t"][0] in ("unknown", "critical")


def test_the_page_uses_the_one_unit_system():
    """Decimal sizes and one duration format (backups.units), as the CLI and the notes print them."""
    tier = _tier("daily", 3 * 3600 + 60)
    tier.update(size_bytes=1_500_000, duration_seconds=327.0)
    doc = _status([tier])
    doc["storages"][0].update(used_bytes=3 * 1024**3, free_bytes=10 * 10**9)
    html = render_dashboard(doc, now=NOW)
    assert "1.5 MB" in html and "5m 27s" in html and "3.2 GB" in html and "10.0 GB" in html
    assert "3h 01m" in html and "MiB" not in html and "GiB" not in html


def test_a_tier_with_its_own_open_warning_is_not_ok():
    """Issue 20 item 11: a fresh, verified tier whose size anomaly is open shows WARNING, not OK."""
    doc = _status([_tier("daily", 60), _tier("weekly", 60, dag_id="backup_weekly")],
                  problems=[{"key": "anomaly-size:daily", "severity": "warning", "summary": "daily is 9x the median",
                             "since": _iso(NOW), "runs": 1},
                            {"key": "storage-space:weekly", "severity": "warning", "summary": "a storage named weekly",
                             "since": _iso(NOW), "runs": 1}])
    rows = _rows(render_dashboard(doc, now=NOW))
    assert rows["daily"][0] == "warning" and rows["weekly"][0] == "ok"  # a storage's problem is not the tier's


def test_the_pages_only_script_is_the_one_the_csp_hash_allows():
    import base64
    import hashlib

    from backups.monitoring.dashboard import SCRIPT_CSP_HASH

    for html in (render_dashboard(_status([_tier("daily", 60)]), now=NOW), render_empty()):
        scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
        assert len(scripts) == 1 and html.count("<script") == 1
        digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
        assert SCRIPT_CSP_HASH == f"'sha256-{digest}'"


def test_a_failed_last_run_and_the_last_failure_are_marked():
    tier = _tier("daily", 60, last_failure={"run_id": "manual__f", "at": _iso(NOW), "url": None})
    tier["last_run"]["state"] = "failed"
    html = render_dashboard(_status([tier]), now=NOW)
    assert html.count('<span class="run-bad">failed</span>') == 2
    ok = render_dashboard(_status([_tier("daily", 60)]), now=NOW)
    assert '<span class="run">success</span>' in ok and "run-bad\">" not in ok


def test_the_published_tier_state_counts_its_own_problems():
    """``commands.status.finish`` raises a tier's state to its own open problems (``health.apply_tier_problems``),
    so the CLI, the document and /metrics agree with the page."""
    from backups.monitoring.health import apply_tier_problems, problem_tier

    doc = _status([_tier("daily", 60), _tier("weekly", 60)], problems=[
        {"key": "anomaly-duration:daily", "severity": "warning"}, {"key": "shrink:weekly:app_db.orders",
                                                                   "severity": "warning"},
        {"key": "storage-space:daily", "severity": "critical"}, {"key": "drill-overdue", "severity": "warning"}])
    apply_tier_problems(doc)
    assert [t["state"] for t in doc["tiers"]] == ["warning", "warning"]
    assert problem_tier("presence:daily:local") == "daily" and problem_tier("storage-unreachable:daily") is None
    assert problem_tier("schedules-unverified") is None
