"""backup_monitoring end to end with real services: an SMTP server (aiosmtpd) and a webhook (http.server) on
loopback, and — for schedule verification — Airflow's own REST API served by uvicorn on a loopback port against
the test metadata DB, reached through an HTTP connection like in production.

* a freshness breach alerts exactly once, is escalated after ``escalate_after`` runs, is not repeated while open,
  and clears with one "resolved" message after a new backup;
* a paused tier DAG is caught by ``verify_schedules``;
* the run writes status.json / status.html (with plots) / history.jsonl and the Variable the dashboard reads.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backups.catalog.manifest import seal
from backups.commands.backup import run_backup  # with the integrity check, as in the tier DAGs: verified
from backups.config import load_config
from backups.demo import fmr
from tests.dags.approvals import PASSWORD, USER, serve_core_api
from tests.dags.common import load_dags, run_note, task_states
from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.airflow


# ------------------------------------------------------------------------------------------------ servers
@pytest.fixture
def webhook(monkeypatch):
    posts: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server hook name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append({"path": self.path, "type": self.headers.get("Content-Type"), "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_WEBHOOK", json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{server.server_port}/hooks/backup"}))
    yield posts
    server.shutdown()
    thread.join(5)


@pytest.fixture
def api_server(approver, monkeypatch):
    """Airflow's REST API (the core app) on a loopback port, logged in as the approver fixture's user."""
    from backups.airflow_api import AirflowApi

    with serve_core_api() as (url, port):
        # the one API connection (the run notes use it too), given as host + port as the Connections form allows
        monkeypatch.setenv("AIRFLOW_CONN_BACKUP_AIRFLOW_API", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": port, "login": USER, "password": PASSWORD}))
        yield AirflowApi(url, login=USER, password=PASSWORD)


# ------------------------------------------------------------------------------------------------ helpers
MONITORING = """\
monitoring:
  rpo_hours: {{daily: 24}}
  status_dir: "{status}"
  alerts:
    email: [ops@example.com]
    webhook: {{conn_id: backup_webhook}}
    escalate_after: 2
    escalation_email: [oncall@example.com]
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    home, root = tmp_path / "fmr", tmp_path / "backups"
    fmr.generate(home, scale=0.2, seed=5)
    # the embedded config without its drill: block (no drill has run here, so it would add a drill-overdue problem)
    text = (ROOT / "include" / "backups.local.yaml").read_text().split("\ndrill:", 1)[0] + "\n"
    text += MONITORING.format(status=tmp_path / "monitoring")
    (tmp_path / "c.yaml").write_text(text)
    for k, v in {"BACKUP_CONFIG": str(tmp_path / "c.yaml"), "FMR_HOME": str(home), "BACKUP_ROOT": str(root)}.items():
        monkeypatch.setenv(k, v)
    cfg = load_config()
    now = datetime.now(UTC).replace(microsecond=0)
    for tier, hours in (("weekly", 3), ("monthly", 2), ("daily", 1)):
        run_backup(cfg, tier, logical_date=(now - timedelta(hours=hours)).isoformat())
    return {"cfg": cfg, "root": root, "status": tmp_path / "monitoring", "now": now}


def backdate(root, snap_id: str, hours: float) -> None:
    """Make a committed snapshot look ``hours`` older (its manifest re-sealed; test-only)."""
    path = root / "local" / "snapshots" / f"{snap_id}.json"
    doc = json.loads(path.read_text())
    for key in ("started_at", "finished_at"):
        doc[key] = (datetime.fromisoformat(doc[key]) - timedelta(hours=hours)).isoformat()
    path.chmod(0o644)
    path.write_bytes(seal(doc))


_RUNS = iter(range(1, 1000))


def monitor(dag) -> dict:
    dr = dag.test(logical_date=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=30 * next(_RUNS)))
    assert dr.state == "success", task_states(dr)
    return dr


def status_doc(setup) -> dict:
    return json.loads((setup["status"] / "status.json").read_text())


# ------------------------------------------------------------------------------------------------ tests
def test_structure():
    dag = load_dags().dags["backup_monitoring"]
    assert {t.task_id for t in dag.tasks} == {"monitor_status", "check_health", "verify_schedules", "detect_issues",
                                              "send_alerts", "escalate", "generate_reports", "document_status",
                                              "update_dashboard"}
    assert dag.task_dict["send_alerts"].downstream_task_ids == {"escalate"}
    # the sequence is declared once (commands.status.STATUS): the DAG's tasks are its steps, the CLI runs the first four
    from backups.commands.status import CHECK, STATUS

    assert sorted(dag.task_ids) == sorted(STATUS.task_ids)
    for step in STATUS.steps:
        assert set(step.needs) <= dag.task_dict[step.name].upstream_task_ids, step.name
    assert [s.name for s in CHECK.steps] == ["monitor_status", "check_health", "verify_schedules", "detect_issues"]
    assert dag.max_active_runs == 1 and "monitoring" in dag.tags and dag.schedule == "*/30 * * * *"


def test_freshness_breach_alerts_once_escalates_and_resolves(airflow_db, setup, smtp_sink, webhook):
    from airflow.models import Variable  # the metadata DB, as the dashboard (API server) reads it

    dag = load_dags().dags["backup_monitoring"]
    ops, oncall = ["ops@example.com"], ["oncall@example.com"]

    dr = monitor(dag)  # baseline: everything fresh; only the (unconfigured) schedule check is a problem
    assert smtp_sink.take() == [(ops, "[backup] fmr-v2: WARNING new backup problem: schedules-unverified")]
    note = run_note(dr).splitlines()  # every run leaves a note: the state, the count, the problems
    assert note[0] == "**WARNING** — 1 open problem", note
    assert note[2].startswith("* warning: `schedules-unverified` — schedules not verified: no Airflow connection")
    assert [p["json"]["kind"] for p in webhook] == ["alert"] and webhook[0]["path"] == "/hooks/backup"
    webhook.clear()
    assert status_doc(setup)["state"] == "warning"

    daily = status_doc(setup)["tiers"][0]["newest_id"]
    backdate(setup["root"], daily, 30)  # RPO 24 h: overdue, not yet twice the RPO
    dr_stale = monitor(dag)
    mails = smtp_sink.take()
    assert (ops, "[backup] fmr-v2: WARNING new backup problem: stale:daily") in mails
    assert [m for m in mails if m[0] == ops] == [(ops, "[backup] fmr-v2: WARNING new backup problem: stale:daily")]
    assert [m for m in mails if m[0] == oncall] == [  # the schedule problem's second run: escalate_after 2
        (oncall, "[backup] fmr-v2: WARNING ESCALATED backup problem: schedules-unverified")]
    assert sorted(p["json"]["kind"] for p in webhook) == ["alert", "escalation"]
    assert webhook[0]["json"]["keys"] == ["stale:daily"] and "stale:daily" in webhook[0]["json"]["text"]
    webhook.clear()
    doc = status_doc(setup)
    stale = next(p for p in doc["problems"] if p["key"] == "stale:daily")
    assert stale["runs"] == 1 and doc["tiers"][0]["overdue"] is True

    assert run_note(dr_stale).startswith("**WARNING** — 2 open problems\n\n* warning: `schedules-unverified`")
    assert "* warning: `stale:daily` — " in run_note(dr_stale)
    monitor(dag)  # second run with stale:daily open: escalated, not re-alerted
    assert smtp_sink.take() == [(oncall, "[backup] fmr-v2: WARNING ESCALATED backup problem: stale:daily")]
    assert [p["json"]["kind"] for p in webhook] == ["escalation"]
    webhook.clear()

    monitor(dag)  # still open: nothing at all
    assert smtp_sink.take() == [] and webhook == []
    assert next(p for p in status_doc(setup)["problems"] if p["key"] == "stale:daily")["runs"] == 3

    run_backup(setup["cfg"], "daily", logical_date=setup["now"].isoformat())
    monitor(dag)
    assert smtp_sink.take() == [(sorted(ops + oncall), "[backup] fmr-v2: RESOLVED 1 problem(s): stale:daily")]
    assert [p["json"]["kind"] for p in webhook] == ["resolved"] and webhook[0]["json"]["keys"] == ["stale:daily"]

    doc = status_doc(setup)
    assert [p["key"] for p in doc["problems"]] == ["schedules-unverified"]
    # the CLI door runs the same steps: the same problems (the schedule check repeated from the DAG's last status),
    # the same since/runs, the same tier states
    from backups.commands.status import status

    cli = status(setup["cfg"]).to_dict()
    assert [(p["key"], p["since"], p["runs"]) for p in cli["problems"]] == [
        (p["key"], p["since"], p["runs"]) for p in doc["problems"]]
    assert [(t["tier"], t["state"]) for t in cli["tiers"]] == [(t["tier"], t["state"]) for t in doc["tiers"]]
    assert json.loads(Variable.get("backup_monitoring_status"))["generated_at"] == doc["generated_at"]  # noqa: AIR311
    html = (setup["status"] / "status.html").read_text()
    assert html.count("src='data:image/png;base64,") >= 4 and doc["reports"]["html"].endswith("status.html")
    assert len((setup["status"] / "history.jsonl").read_text().splitlines()) == 5


def test_schedule_verification_catches_a_paused_tier_dag(airflow_db, setup, api_server, smtp_sink, webhook):
    dag = load_dags().dags["backup_monitoring"]
    monitor(dag)  # parses and serialises the DAG folder, so the tier DAGs exist in the metadata DB
    for dag_id in ("backup_daily", "backup_weekly", "backup_monthly", "backup_manual"):
        api_server.patch(f"/dags/{dag_id}", {"is_paused": dag_id == "backup_daily"})
    monitor(dag)
    keys = {p["key"]: p for p in status_doc(setup)["problems"]}
    assert "dag-paused:backup_daily" in keys and keys["dag-paused:backup_daily"]["severity"] == "critical"
    assert not any(k.startswith("dag-paused:") and k != "dag-paused:backup_daily" for k in keys), keys
    assert "schedules-unverified" not in keys
    assert any("dag-paused:backup_daily" in subject for _, subject in smtp_sink.take())
