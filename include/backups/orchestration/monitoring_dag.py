"""The ``backup_monitoring`` DAG: notice stale, failing and anomalous backups, alert once, escalate, report.

::

    monitor_status ─► check_health ─┐
    verify_schedules ───────────────┴► detect_issues ─► send_alerts ─► escalate
                                                    └─► generate_reports ─► document_status ─► update_dashboard

* ``monitor_status`` — :func:`backups.commands.status.collect` (every tier incl. manual, every storage probed);
* ``check_health`` — :func:`backups.monitoring.health.evaluate` (freshness, storages, locks, verification and
  drill recency, anomalies);
* ``verify_schedules`` — each tier DAG exists, is not paused, has no import error, ran when its cron says: from
  Airflow's metadata through the public REST API (the HTTP connection ``backup_airflow_api``, as the run notes); without
  that connection the check reports itself as a warning instead of staying silent;
* ``detect_issues`` — problems merged, alert transitions computed (:mod:`backups.monitoring.alerts`) against the
  alert state (the Airflow Variable ``backup_monitoring_alerts``, else ``alert_state.json``);
* ``send_alerts`` / ``escalate`` — e-mail through the smtp provider (``[email] email_conn_id``, default
  ``smtp_default``) and a JSON POST through the webhook's HTTP connection (Slack payload for hooks.slack.com);
  ``escalate`` saves the new alert state once every message went out (a failed send is retried next run);
* ``generate_reports`` / ``document_status`` / ``update_dashboard`` — ``status.html`` with plots,
  ``status.md`` and a ``history.jsonl`` line, then ``status.json`` and the Variable ``backup_monitoring_status``
  (what the Backups page and ``/metrics`` read).

Nothing is read at parse time but the config; Variables and connections are read by the tasks.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, task

from ..config import Config
from ..monitoring import STATUS_VARIABLE
from .adapters import task_errors
from .dags import START_DATE, default_args

log = logging.getLogger("backups.orchestration.monitoring")

DAG_ID = "backup_monitoring"
#: the Airflow Variable holding the alert state (JSON) between runs; ``alert_state.json`` mirrors it
ALERT_VARIABLE = "backup_monitoring_alerts"


def _runtime() -> tuple[Config, Any]:
    from ..config import load_config
    from .connections import task_resolver

    cfg = load_config()
    return cfg, task_resolver(cfg)


def _doc(cfg: Config) -> str:
    m = cfg.monitoring
    return (f"# Monitoring of {cfg.application} backups\n\nEvery run (`{m.schedule}`): the newest snapshot of every "
            "tier (manual included) against its RPO, every storage (reachable, writable, usage, stale locks), "
            "verification and drill recency, anomalies (size/duration beyond "
            f"{m.size_anomaly_factor:g}x the median, a table shrinking more than {m.max_shrink_percent:g}%, an "
            "unexpected promotion to full), and each tier DAG's schedule (exists, not paused, no import error, ran "
            "on time).\n\nA new problem alerts once "
            f"({', '.join(m.alerts.email) or 'no e-mail'}{', webhook ' + m.alerts.webhook.conn_id if m.alerts.webhook else ''}); "
            f"after {m.alerts.escalate_after} runs (or past 2x the RPO) it is escalated "
            f"({', '.join(m.alerts.escalation_email) or 'webhook only'}); a cleared problem sends one resolved "
            "message. Reports: `status.html` / `status.json` in the monitoring folder; the Backups page in the "
            "UI. Same data as `backupctl status`.")


# ------------------------------------------------------------------------------------------------ helpers
def airflow_api() -> tuple[Any, str]:
    """``(client, connection id)`` of the one API connection (``api_connection``: ``backup_airflow_api``, the
    deprecated ``airflow_api`` or ``monitoring.airflow_api_conn_id``); client None when none is defined."""
    from .api_connection import api_client

    cfg, _ = _runtime()
    return api_client(cfg.monitoring.airflow_api_conn_id)


def _ui_base() -> str | None:
    try:
        from airflow.sdk import conf

        return (conf.get("api", "base_url", fallback="") or "").rstrip("/") or None
    except Exception:  # noqa: BLE001
        return None


def load_alert_state(cfg: Config) -> dict[str, Any]:
    from airflow.sdk import Variable

    from ..monitoring.alerts import load_state

    try:
        raw = Variable.get(ALERT_VARIABLE, default=None)
    except Exception:  # noqa: BLE001
        raw = None
    if raw:
        try:
            state = json.loads(raw)
            if isinstance(state, dict) and isinstance(state.get("problems"), dict):
                return state
        except ValueError:
            log.warning("Variable %s is not valid JSON: starting from the local alert state", ALERT_VARIABLE)
    return load_state(cfg)


def send_email(to: list[str], subject: str, html: str) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.sdk import conf

    conn_id = conf.get("email", "email_conn_id", fallback="smtp_default") or "smtp_default"
    with SmtpHook(smtp_conn_id=conn_id) as hook:
        sender = hook.from_email or conf.get("email", "from_email", fallback=None) or "backup-monitoring@localhost"
        hook.send_email_smtp(to=to, subject=subject, html_content=html, from_email=sender)


def send_webhook(conn_id: str, message: dict[str, Any]) -> None:
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk import Connection

    from ..monitoring.alerts import webhook_payload

    conn = Connection.get(conn_id)
    payload = webhook_payload(message, conn.host)
    HttpHook(method="POST", http_conn_id=conn_id).run(
        endpoint=None, data=json.dumps(payload), headers={"Content-Type": "application/json"})


def deliver(cfg: Config, message: dict[str, Any]) -> list[str]:
    """Send one message by e-mail (when it has recipients) and to the webhook; returns the channels used."""
    used = []
    if message["to"]:
        send_email(message["to"], message["subject"], message["html"])
        used.append("email")
    hook = cfg.monitoring.alerts.webhook
    if hook is not None:
        send_webhook(hook.conn_id, message)
        used.append(f"webhook:{hook.conn_id}")
    log.warning("%s sent (%s): %s", message["kind"], ", ".join(used) or "no channel configured", message["subject"])
    return used


# ------------------------------------------------------------------------------------------------ DAG
def build_monitoring_dag(cfg: Config) -> DAG:
    dag = DAG(
        dag_id=DAG_ID,
        description=f"Detect stale, failing and anomalous {cfg.application} backups; alert, escalate, report",
        schedule=cfg.monitoring.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args={**default_args(cfg), "retry_delay": timedelta(minutes=2)},
        tags=["backup", "monitoring"],
        doc_md=_doc(cfg),
    )
    with dag:
        add_monitoring_tasks(tier_dags(cfg))
    return dag


def tier_dags(cfg: Config) -> dict[str, str | None]:
    """The DAGs whose schedule ``verify_schedules`` checks: each tier's DAG with its cron, and the manual one."""
    tiers: dict[str, str | None] = {f"backup_{t}": cfg.tiers[t].schedule for t in cfg.tiers}
    tiers["backup_manual"] = None
    return tiers


def add_monitoring_tasks(tiers: dict[str, str | None]) -> None:
    """The tasks and their order (in a ``with dag:`` block); each task's body is the function of the same name."""

    def step(fn: Any, task_id: str) -> Any:
        return task(task_id=task_id)(task_errors()(fn))

    def verify_schedules() -> dict[str, Any]:
        return check_tier_schedules(tiers)

    doc = step(monitor_status, "monitor_status")()
    plan = step(detect_issues, "detect_issues")(doc, step(check_health, "check_health")(doc),
                                                step(verify_schedules, "verify_schedules")())
    step(escalate, "escalate")(plan, step(send_alerts, "send_alerts")(plan))
    reports = step(generate_reports, "generate_reports")(plan)
    step(update_dashboard, "update_dashboard")(plan, step(document_status, "document_status")(plan, reports))


# ------------------------------------------------------------------------------------------------ tasks
# No docstrings on the task bodies below: TaskFlow would show one as the task's documentation (the module doc has it)
def monitor_status() -> dict[str, Any]:
    from ..commands.status import collect

    cfg_, resolver = _runtime()
    return collect(cfg_, resolver)


def check_health(doc: dict[str, Any]) -> list[dict[str, Any]]:
    from ..monitoring.health import evaluate

    cfg_, _ = _runtime()
    problems = evaluate(cfg_, doc)
    log.info("health: %d problem(s): %s", len(problems), ", ".join(p["key"] for p in problems) or "none")
    return problems


def check_tier_schedules(tiers: dict[str, str | None]) -> dict[str, Any]:
    # the body of verify_schedules
    from ..airflow_api import AirflowApiError
    from ..monitoring.schedules import check_schedules, collect

    try:
        api, conn_id = airflow_api()
    except Exception as exc:  # noqa: BLE001 - a host that is no URL, a broken secrets backend: say so
        return {"problems": [{"key": "schedules-unverified", "severity": "warning",
                              "summary": f"schedules not verified: {exc}"}], "runs": {}}
    if api is None:
        return {"problems": [{"key": "schedules-unverified", "severity": "warning",
                              "summary": f"schedules not verified: no Airflow connection {conn_id!r} (an HTTP "
                                         "connection to the API server with a user allowed to read DAGs)"}],
                "runs": {}}
    try:
        data = collect(api, sorted(tiers))
    except AirflowApiError as exc:
        return {"problems": [{"key": "schedules-unverified", "severity": "warning",
                              "summary": f"schedules not verified: Airflow REST API via {conn_id!r}: {exc}"}],
                "runs": {}}
    out = check_schedules(tiers, data, ui_url=_ui_base())
    log.info("schedules: %s", ", ".join(p["key"] for p in out["problems"]) or "every tier DAG on time")
    return out


def detect_issues(doc: dict[str, Any], problems: list[dict[str, Any]], schedules: dict[str, Any]) -> dict[str, Any]:
    from ..commands.status import finish
    from ..monitoring.alerts import transition
    from ..monitoring.store import now_utc

    cfg_, _ = _runtime()
    for t in doc["tiers"]:
        runs = (schedules.get("runs") or {}).get(t["dag_id"])
        if runs is not None:
            t["last_run"], t["last_failure"] = runs.get("last_run"), runs.get("last_failure")
    now = now_utc()
    every = list(problems) + list(schedules.get("problems") or [])
    state, messages = transition(cfg_, every, load_alert_state(cfg_), now=now)
    status = finish(cfg_, doc, every, now=now, alert_state=state)
    log.info("state %s; %d open problem(s); messages: %s", status["state"], len(every),
             ", ".join(m["kind"] for m in messages) or "none")
    return {"status": status, "messages": messages, "state": state}


def send_alerts(plan: dict[str, Any]) -> dict[str, Any]:
    cfg_, _ = _runtime()
    sent = []
    for m in plan["messages"]:
        if m["kind"] != "escalation":
            deliver(cfg_, m)
            sent.append(m["kind"])
    return {"sent": sent}


def escalate(plan: dict[str, Any], _sent: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk import Variable

    from ..monitoring.alerts import save_state

    cfg_, _ = _runtime()
    sent = []
    for m in plan["messages"]:
        if m["kind"] == "escalation":
            deliver(cfg_, m)
            sent.append(m["kind"])
    Variable.set(ALERT_VARIABLE, json.dumps(plan["state"], sort_keys=True))
    try:
        save_state(cfg_, plan["state"])
    except OSError as exc:
        log.warning("could not mirror the alert state to alert_state.json: %s", exc)
    return {"sent": sent, "open": sorted(plan["state"]["problems"])}


def generate_reports(plan: dict[str, Any]) -> dict[str, Any]:
    from ..monitoring import status_path
    from ..monitoring.report import write_html

    cfg_, _ = _runtime()
    html = write_html(cfg_, plan["status"])
    log.info("report: %s", html)
    return {"html": str(html), "json": str(status_path(cfg_))}


def document_status(plan: dict[str, Any], reports: dict[str, Any]) -> dict[str, Any]:
    from ..monitoring.report import document

    cfg_, _ = _runtime()
    return {**reports, **document(cfg_, {**plan["status"], "reports": reports})}


def update_dashboard(plan: dict[str, Any], docs: dict[str, Any] | None) -> dict[str, Any]:
    from airflow.sdk import Variable

    from ..monitoring.report import write_status

    cfg_, _ = _runtime()
    status = dict(plan["status"])
    status["reports"] = {"html": (docs or {}).get("html"), "json": (docs or {}).get("json")}
    path = write_status(cfg_, status)
    Variable.set(STATUS_VARIABLE, json.dumps(status, sort_keys=True, default=str),
                 description="backup monitoring status (written by backup_monitoring, read by the Backups page)")
    set_note(status)
    return {"state": status["state"], "problems": len(status["problems"]), "json": str(path)}


def set_note(status: dict[str, Any]) -> None:
    """The run's note: the state and the count of open problems, then the problems (``notes.monitoring_note``)."""
    from airflow.sdk import get_current_context

    from ..commands.notes import monitoring_note
    from ..monitoring.links import PREFIX
    from .run_notes import set_run_note, ui_base

    ctx = get_current_context()
    set_run_note(ctx["dag"].dag_id, ctx["run_id"], monitoring_note(status, f"{ui_base()}{PREFIX}/"))
