"""Monitoring core without Airflow: the status document (every tier and storage), RPO defaults, health checks
(freshness, an unreachable storage, a table that shrank, stale locks), the alert state machine, the HTML report
with its plots, and ``backupctl status --check`` exit codes (a real CLI subprocess)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backups.commands.status import status
from backups.commands.verify import verify
from backups.config import load_config
from backups.demo import fmr
from backups.monitoring import status_path
from backups.monitoring.alerts import transition
from backups.monitoring.health import evaluate
from backups.monitoring.report import document, render_html, write_html
from backups.monitoring.status import rpo_seconds, tier_state
from backups.monitoring.store import read_jsonl
from backups.repository import verification
from backups.storage import open_storage
from tests.helpers import commit_unverified, run_backup, subprocess_env, write_config

H = 3600.0


@pytest.fixture
def app(tmp_path):
    home = tmp_path / "home"
    fmr.generate(home, scale=0.2, seed=3)
    return home


def make_cfg(tmp_path: Path, home: Path, monitoring: str = "", **kw) -> Path:
    path = write_config(tmp_path / "c.yaml", home, tmp_path / "repo", **kw)
    if monitoring:
        path.write_text(path.read_text() + monitoring)
    return path


def test_rpo_defaults_to_two_cron_intervals_and_can_be_set(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app, "monitoring: {rpo_hours: {weekly: 200, manual: 1000}}\n"))
    assert rpo_seconds(cfg, "daily") == 2 * 48 * H  # Mon-Sat at 02:00: the Saturday -> Monday gap is 48 h
    assert rpo_seconds(cfg, "monthly") == 2 * 31 * 24 * H
    assert rpo_seconds(cfg, "weekly") == 200 * H
    assert rpo_seconds(cfg, "manual") == 1000 * H
    assert tier_state(None, 10.0) == (True, "critical") and tier_state(11.0, 10.0) == (True, "warning")
    assert tier_state(21.0, 10.0) == (True, "critical") and tier_state(9.0, 10.0) == (False, "ok")
    assert tier_state(None, None) == (False, "ok")


def test_status_has_every_tier_and_storage_and_numeric_ages(tmp_path, app):
    extra = f'  broken: {{type: local, path: "{tmp_path}/file/sub"}}\n'
    (tmp_path / "file").write_text("a file where a folder should be")
    cfg = load_config(make_cfg(tmp_path, app, extra_storages=extra))
    run_backup(cfg, "weekly")
    doc = status(cfg, now=datetime.now(UTC) + timedelta(days=20)).to_dict()
    assert [t["tier"] for t in doc["tiers"]] == ["daily", "weekly", "monthly", "manual"]
    weekly = doc["tiers"][1]
    assert weekly["newest_id"].startswith("weekly-") and weekly["age_seconds"] > 19 * 24 * H
    assert weekly["overdue"] is True and weekly["state"] == "warning" and weekly["size_bytes"] > 0
    assert weekly["storages"] == ["local"] and len(weekly["history"]) == 1
    assert doc["tiers"][3]["state"] == "ok" and doc["tiers"][3]["rpo_seconds"] is None  # manual: no schedule
    by_name = {s["storage"]: s for s in doc["storages"]}
    assert by_name["local"]["reachable"] and by_name["local"]["writable"] and by_name["local"]["used_bytes"] > 0
    assert by_name["local"]["snapshots"] == 1
    assert by_name["broken"]["reachable"] is False and "cannot create" in by_name["broken"]["error"]
    keys = {p["key"]: p for p in doc["problems"]}
    assert {"stale:daily", "stale:weekly", "stale:monthly", "storage-unreachable:broken", "verify-overdue:local"} <= set(keys)
    assert keys["stale:weekly"]["severity"] == "warning" and keys["stale:daily"]["severity"] == "critical"
    assert doc["state"] == "critical"
    json.dumps(doc)  # JSON-able as a whole


def test_a_table_that_shrank_is_an_anomaly(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app))
    run_backup(cfg, "daily", logical_date="2026-03-02T02:00:00+00:00")
    with sqlite3.connect(app / "app.db") as conn:
        before = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        conn.execute("DELETE FROM telemetry WHERE rowid % 2 = 0")  # half the rows gone
    run_backup(cfg, "daily", logical_date="2026-03-03T02:00:00+00:00")
    doc = status(cfg).to_dict()
    shrink = [p for p in doc["problems"] if p["key"].startswith("shrink:")]
    assert [p["key"] for p in shrink] == ["shrink:daily:app_db.telemetry"], shrink
    assert f"{before:,} ->" in shrink[0]["summary"] and shrink[0]["severity"] == "warning"


def test_verification_recency_and_failed_verification(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app))
    run_backup(cfg, "weekly")
    later = datetime.now(UTC) + timedelta(days=9)
    assert "verify-overdue:local" in {p["key"] for p in status(cfg, now=later).to_dict()["problems"]}
    local, sid = open_storage(cfg, "local"), status(cfg).to_dict()["tiers"][1]["newest_id"]
    verification.record(local, cfg.application, read_data=True, checked=[sid], failed={}, every=True,
                        at=later - timedelta(days=1))
    assert "verify-overdue:local" not in {p["key"] for p in status(cfg, now=later).to_dict()["problems"]}
    verification.record(local, cfg.application, read_data=False, checked=[], failed={sid: [f"{sid}: x: missing"]},
                        every=False, at=later)
    keys = {p["key"] for p in status(cfg, now=later).to_dict()["problems"]}
    assert "verify-failed:local" in keys and "verify-overdue:local" not in keys


def test_drill_history_is_read_and_checked(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app))
    drill = status_path(cfg).parent.parent / "drill" / "history.jsonl"
    drill.parent.mkdir(parents=True)
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    new = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    drill.write_text(json.dumps({"id": "d1", "at": old, "passed": True, "rto_seconds": 12.5, "rpo_seconds": 60,
                                 "report": "r1"}) + "\n" +
                     json.dumps({"id": "d2", "at": new, "passed": False, "rto_seconds": None, "rpo_seconds": None,
                                 "report": "r2"}) + "\n")
    doc = status(cfg).to_dict()
    assert doc["last_drill"]["id"] == "d2" and doc["last_drill"]["passed"] is False
    keys = {p["key"] for p in doc["problems"]}
    assert {"drill-failed", "drill-overdue"} <= keys


class _Cfg:
    """A config stand-in for the pure alert state machine."""

    def __init__(self, escalate_after=3):
        from backups.config import Monitoring

        self.application = "app"
        self.monitoring = Monitoring.model_validate({"alerts": {"email": ["ops@example.com"], "escalate_after": escalate_after,
                                                                "escalation_email": ["oncall@example.com"]}})


def _run(cfg, state, problems):
    state, messages = transition(cfg, problems, state)
    return state, {m["kind"]: m for m in messages}


def test_alert_state_machine_alerts_once_escalates_and_resolves():
    cfg = _Cfg(escalate_after=3)
    stale = {"key": "stale:daily", "severity": "warning", "summary": "old"}
    state, m = _run(cfg, {}, [stale])
    assert set(m) == {"alert"} and m["alert"]["to"] == ["ops@example.com"] and m["alert"]["keys"] == ["stale:daily"]
    state, m = _run(cfg, state, [stale])
    assert m == {}  # still open: no repeat
    state, m = _run(cfg, state, [stale])
    assert set(m) == {"escalation"} and m["escalation"]["to"] == ["oncall@example.com"]
    state, m = _run(cfg, state, [stale])
    assert m == {} and state["problems"]["stale:daily"]["runs"] == 4
    state, m = _run(cfg, state, [])
    assert set(m) == {"resolved"} and m["resolved"]["to"] == ["ops@example.com", "oncall@example.com"]
    assert state["problems"] == {}
    state, m = _run(cfg, state, [])
    assert m == {}


def test_a_freshness_breach_past_twice_the_rpo_escalates_at_once():
    cfg = _Cfg(escalate_after=5)
    state, m = _run(cfg, {}, [{"key": "stale:weekly", "severity": "critical", "summary": "very old"},
                              {"key": "storage-unreachable:s3", "severity": "critical", "summary": "down"}])
    assert set(m) == {"alert", "escalation"} and m["escalation"]["keys"] == ["stale:weekly"]
    assert m["alert"]["keys"] == ["stale:weekly", "storage-unreachable:s3"]


def test_report_html_has_the_plots_and_history_is_kept(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app))
    for day in (2, 3, 4):
        run_backup(cfg, "daily", logical_date=f"2026-03-0{day}T02:00:00+00:00")
    doc = status(cfg).to_dict()
    html = render_html(doc)
    assert html.count("<img") == 4 and html.count("src='data:image/png;base64,") == 4
    assert "Age vs RPO" in html and "Storage usage per storage" in html and "Snapshot size over time" in html
    document(cfg, doc)
    document(cfg, doc)
    assert len(read_jsonl(status_path(cfg).with_name("history.jsonl"))) == 2
    path = write_html(cfg, doc)
    assert path.name == "status.html" and path.read_text().count("data:image/png;base64,") == 5  # + age over time


def test_evaluate_flags_stale_locks(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app))
    run_backup(cfg, "weekly")
    locks = tmp_path / "repo" / "local" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    old = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    (locks / "0123abcd.json").write_text(json.dumps({
        "lock_format": 1, "scope": "repo", "exclusive": True, "operation": "prune", "host": "worker-7", "pid": 99,
        "run": None, "created": old, "heartbeat": old}))
    from backups.commands.status import collect

    doc = collect(cfg)
    assert "lock-stale:local" in {p["key"] for p in evaluate(cfg, doc)}


# ------------------------------------------------------------------------------------------ CLI --check
def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backups.cli", "--config", str(cfg), *args], capture_output=True,
                          text=True, env=subprocess_env(), timeout=120)


def test_status_check_exit_codes(tmp_path, app):
    fresh = make_cfg(tmp_path, app)
    cfg = load_config(fresh)
    for tier in ("weekly", "daily", "monthly"):
        commit_unverified(cfg, tier)  # a backup killed after its commit: never verified
    p = _cli(fresh, "status", "--check")
    assert p.returncode == 1 and p.stdout.startswith("BACKUP WARNING - 3 problem(s): unverified:daily"), p.stdout
    verify(cfg, every=True, read_data=True)
    p = _cli(fresh, "status", "--check", "--prometheus", str(tmp_path / "backup.prom"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("BACKUP OK - all tiers fresh") and "manual" in p.stdout
    prom = (tmp_path / "backup.prom").read_text()
    assert 'backup_age_seconds{application="fmr-test",tier="daily"}' in prom and "backup_open_problems" in prom
    doc = json.loads(_cli(fresh, "status", "--json").stdout)
    assert doc["state"] == "ok" and all(isinstance(t["age_seconds"], float) for t in doc["tiers"][:3])

    stale = tmp_path / "stale.yaml"
    stale.write_text(fresh.read_text() + "monitoring: {rpo_hours: {daily: 0.0001}}\n")  # 0.36 s
    time.sleep(0.8)
    p = _cli(stale, "status", "--check")
    assert p.returncode == 2 and p.stdout.startswith("BACKUP CRITICAL - 1 problem(s): stale:daily"), p.stdout
    p = _cli(stale, "status", "--check", "--json")
    assert p.returncode == 2 and json.loads(p.stdout)["tiers"][0]["overdue"] is True

    assert status(load_config(fresh), now=datetime.now(UTC) + timedelta(days=5)).check_code == 1  # daily overdue (RPO 4 d)

    (tmp_path / "blocker").write_text("x")
    down = tmp_path / "down.yaml"
    down.write_text(fresh.read_text().replace(f'"{tmp_path}/repo/local"', f'"{tmp_path}/blocker/local"'))
    p = _cli(down, "status", "--check")
    assert p.returncode == 2 and "storage-unreachable:local" in p.stdout, p.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(fresh.read_text() + "monitoring: {rpo_hours: {hourly: 1}}\n")
    p = _cli(bad, "status", "--check")
    assert p.returncode == 3 and p.stdout.startswith("BACKUP UNKNOWN") and "monitoring.rpo_hours.hourly" in p.stdout
    p = _cli(bad, "status")
    assert p.returncode == 2 and "monitoring.rpo_hours.hourly" in p.stderr  # without --check: the usual exit 2


def test_webhook_payload_is_slack_compatible_for_slack_hooks():
    from backups.monitoring.alerts import webhook_payload

    state, messages = transition(_Cfg(), [{"key": "stale:daily", "severity": "warning", "summary": "old"}], {})
    assert webhook_payload(messages[0], "https://hooks.slack.com/services/T0/B0/X") == {"text": messages[0]["text"]}
    generic = webhook_payload(messages[0], "http://127.0.0.1:9/hook")
    assert generic["kind"] == "alert" and generic["keys"] == ["stale:daily"] and "stale:daily" in generic["text"]


def test_schedule_checks_from_api_answers():
    from backups.monitoring.schedules import check_schedules

    now = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    ok_run = {"dag_run_id": "scheduled__2026-03-04T02:00:00+00:00", "dag_id": "backup_daily", "state": "success",
              "run_type": "scheduled", "run_after": "2026-03-04T02:00:00+00:00", "start_date": "2026-03-04T02:00:05+00:00",
              "end_date": "2026-03-04T02:03:00+00:00"}
    failed = {**ok_run, "dag_run_id": "manual__1", "run_type": "manual", "state": "failed",
              "run_after": "2026-03-04T09:00:00+00:00"}
    data = {"base_url": "http://af", "import_errors": [{"filename": "dags/backup_tiers.py", "stack_trace": "boom"}], "dags": {
        "backup_daily": {"dag": {"is_paused": False, "has_import_errors": False}, "runs": [failed, ok_run]},
        "backup_weekly": {"dag": {"is_paused": False, "has_import_errors": False,
                                  "next_dagrun_run_after": "2026-02-22T01:00:00+00:00"},
                          "runs": [{**ok_run, "run_after": "2026-02-22T01:00:00+00:00"}]},
        "backup_monthly": {"dag": None, "runs": []},
        "backup_manual": {"dag": {"is_paused": True, "has_import_errors": True}, "runs": []}}}
    tiers = {"backup_daily": "0 2 * * 1-6", "backup_weekly": "0 1 * * 0", "backup_monthly": "0 3 1 * *",
             "backup_manual": None}
    out = check_schedules(tiers, data, now=now)
    keys = {p["key"] for p in out["problems"]}
    assert keys == {"run-failed:backup_daily", "run-missed:backup_weekly", "dag-missing:backup_monthly",
                    "dag-import-error:backup_manual"}  # a paused manual DAG is fine: it has no schedule
    assert out["runs"]["backup_daily"]["last_failure"]["run_id"] == "manual__1"
    assert out["runs"]["backup_daily"]["last_run"]["url"] == "http://af/dags/backup_daily/runs/manual__1"
    assert out["runs"]["backup_weekly"]["missed"] == "2026-03-01T01:00:00+00:00"


def test_an_unexpected_promotion_to_full_is_an_anomaly(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app))
    run_backup(cfg, "daily", logical_date="2026-03-02T02:00:00+00:00")  # the first: promoted, as expected
    assert not any(p["key"].startswith("promoted:") for p in status(cfg).to_dict()["problems"])
    run_backup(cfg, "daily", logical_date="2026-03-03T02:00:00+00:00", type_override="incremental")
    for data in (tmp_path / "repo" / "local" / "data").glob("daily-*/app_db.index.zst"):
        data.chmod(0o644)
        data.write_bytes(b"damaged")  # no earlier snapshot can be a parent any more: the next one is promoted
    run_backup(cfg, "daily", logical_date="2026-03-04T02:00:00+00:00")
    problems = {p["key"]: p for p in status(cfg).to_dict()["problems"]}
    assert "promoted:daily" in problems and "promoted to full" in problems["promoted:daily"]["summary"]


def test_size_and_duration_anomalies_against_the_recent_median(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app))

    def doc(sizes, durations):
        hist = [{"id": f"daily-{i}", "logical_date": f"2026-03-0{i + 1}T02:00:00+00:00", "size_bytes": s,
                 "duration_seconds": d} for i, (s, d) in enumerate(zip(sizes, durations, strict=True))]
        tier = {"tier": "daily", "rpo_seconds": None, "history": hist, "newest_id": hist[-1]["id"], "state": "ok",
                "storages": [], "expected_storages": []}
        return {"generated_at": "2026-03-09T00:00:00+00:00", "tiers": [tier], "storages": [], "last_drill": None}

    keys = lambda d: {p["key"] for p in evaluate(cfg, d)}  # noqa: E731
    assert keys(doc([100, 110, 90, 105], [10, 12, 11, 13])) == set()
    assert keys(doc([100, 110, 90, 400], [10, 12, 11, 13])) == {"anomaly-size:daily"}  # 4x the median
    assert keys(doc([100, 110, 90, 20], [10, 12, 11, 13])) == {"anomaly-size:daily"}  # a fifth of it
    assert keys(doc([100, 110, 90, 100], [10, 12, 11, 40])) == {"anomaly-duration:daily"}


def test_low_free_space_and_corrupt_manifests_are_problems(tmp_path, app):
    cfg = load_config(make_cfg(tmp_path, app, "monitoring: {min_free_percent: 15}\n"))
    sto = {"storage": "local", "type": "local", "reachable": True, "writable": True, "used_bytes": 10,
           "free_bytes": 10 * 10**9, "total_bytes": 100 * 10**9, "snapshots": 0, "error": None, "locks": [],
           "corrupt": ["daily-20260301T020000Z"]}
    doc = {"generated_at": "2026-03-09T00:00:00+00:00", "tiers": [], "storages": [sto], "last_drill": None}
    problems = {p["key"]: p for p in evaluate(cfg, doc)}
    assert set(problems) == {"storage-space:local", "corrupt:local"}
    assert "10.0% free" in problems["storage-space:local"]["summary"]
    assert problems["corrupt:local"]["severity"] == "critical"


def test_status_notices_when_the_monitoring_dag_went_silent(tmp_path, app):
    from backups.monitoring.report import write_status

    cfg = load_config(make_cfg(tmp_path, app))
    for tier in ("weekly", "daily", "monthly"):
        run_backup(cfg, tier)
    verify(cfg, every=True, read_data=True)
    doc = status(cfg).to_dict()
    assert doc["problems"] == []
    dag_doc = {**doc, "problems": [{"key": "dag-paused:backup_daily", "severity": "critical", "summary": "paused",
                                    "since": doc["generated_at"], "runs": 1}]}
    write_status(cfg, dag_doc)  # as the DAG's update_dashboard does
    keys = [(p["key"], p["severity"]) for p in status(cfg).to_dict()["problems"]]
    assert keys == [("dag-paused:backup_daily", "critical")]  # repeated from the DAG's last status
    later = datetime.now(UTC) + timedelta(hours=3)
    assert [p["key"] for p in status(cfg, now=later).to_dict()["problems"]] == ["monitoring-silent"]


@pytest.mark.parametrize(("block", "needle"), [
    ("monitoring: {schedule: 'every hour'}", "monitoring.schedule: 'every hour' is not a 5-field cron"),
    ("monitoring: {rpo_hours: {yearly: 9000}}", "monitoring.rpo_hours.yearly: unknown tier 'yearly'"),
    ("monitoring: {rpo_hours: {daily: 0}}", "monitoring.rpo_hours.daily: Input should be greater than 0"),
    ("monitoring: {alerts: {webhook: {}}}", "monitoring.alerts.webhook.conn_id: required key is missing"),
    ("monitoring: {alerts: {escalate_after: 0}}", "monitoring.alerts.escalate_after: Input should be greater than or equal to 1"),
    ("monitoring: {max_shrink_percent: 120}", "monitoring.max_shrink_percent: Input should be less than or equal to 100"),
    ("monitoring: {alerts: {emails: [a@b]}}", "monitoring.alerts.emails: unknown key"),
    ("monitoring: {verify_max_age_days: 0}", "monitoring.verify_max_age_days: Input should be greater than 0"),
    ("monitoring: {verify_max_age_day: 3}", "monitoring.verify_max_age_day: unknown key"),
])
def test_monitoring_config_errors_name_the_key(block, needle):
    from backups.config import parse_config
    from backups.errors import ConfigError

    text = (Path(__file__).resolve().parents[3] / "include" / "backups.local.yaml").read_text() + block + "\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml", env={"FMR_HOME": "/h", "BACKUP_ROOT": "/r"})
    assert err.value.exit_code == 2 and f"c.yaml: {needle}" in str(err.value)


def test_a_drill_dated_in_the_future_never_hides_a_later_failed_one(tmp_path, app):
    """A drill that passed on a host whose clock ran a year ahead, then (clock fixed) one that failed. Before: the
    future-dated pass was the "last drill" for a year: no drill-failed, no drill-overdue."""
    cfg = load_config(make_cfg(tmp_path, app))
    drill = status_path(cfg).parent.parent / "drill" / "history.jsonl"
    drill.parent.mkdir(parents=True)
    ahead = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    new = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    drill.write_text(json.dumps({"id": "d1", "at": ahead, "passed": True, "rto_seconds": 12.5, "rpo_seconds": 60,
                                 "report": "r1"}) + "\n" +
                     json.dumps({"id": "d2", "at": new, "passed": False, "rto_seconds": None, "rpo_seconds": None,
                                 "report": "r2"}) + "\n")
    doc = status(cfg).to_dict()
    assert doc["last_drill"]["id"] == "d2" and doc["last_drill"]["passed"] is False
    problems = {p["key"]: p for p in doc["problems"]}
    assert {"drill-failed", "drill-overdue", "drill-history"} <= set(problems), sorted(problems)
    assert "d1" in problems["drill-history"]["summary"] and "in the future" in problems["drill-history"]["summary"]


def test_the_status_procedure_without_airflow_skips_alerting_and_publishing(tmp_path, app):
    """One declaration (commands.status.STATUS) for both doors: without Airflow's hooks the whole procedure still
    runs — the status is built, the reports are written — and the steps only Airflow can do skip themselves."""
    from backups.commands.procedure import RunContext, run
    from backups.commands.status import CHECK, STATUS

    cfg = load_config(make_cfg(tmp_path, app))
    run_backup(cfg, "daily")
    out = run(STATUS, RunContext(cfg))
    assert [s.name for s in CHECK.steps] == [s.name for s in STATUS.steps[:4]]
    assert {k: v for k, v in out.states.items() if v != "success"} == {
        "send_alerts": "skipped", "escalate": "skipped", "update_dashboard": "skipped"}
    assert out.results["detect_issues"]["status"]["tiers"][0]["tier"] == "daily"
    assert Path(out.results["generate_reports"]["html"]).is_file()
    assert not status_path(cfg).exists()  # the published document is the DAG's (update_dashboard)
    assert status(cfg).to_dict()["state"] == out.results["detect_issues"]["status"]["state"]
