"""The ``backup_monitoring`` DAG: notice stale, failing and anomalous backups, alert once, escalate, report.

Its tasks are the steps of the procedure :data:`backups.commands.status.STATUS` — the sequence ``backupctl status``
runs too (its first four steps) — built by :func:`backups.orchestration.procedures.add_procedure_tasks`::

    monitor_status ─► check_health ─► verify_schedules ─► detect_issues ─► send_alerts ─► escalate
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
  ``status.md`` and a ``history.jsonl`` line, then ``status.json``, the Variable ``backup_monitoring_status``
  (what the Backups page and ``/metrics`` read) and the run's note (the state and the open problems).

What is Airflow's alone (the REST API, Variables, the smtp/http providers, the note) is :class:`AirflowMonitoring`,
handed to the steps in their run context. Nothing is read at parse time but the config; Variables and connections
are read by the tasks.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG

from ..config import Config
from ..monitoring import STATUS_VARIABLE
from .backup_dags import START_DATE, default_args

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


class AirflowMonitoring:
    """The :class:`~backups.commands.status.MonitoringHooks` of the DAG: what only Airflow can do."""

    def __init__(self, tiers: dict[str, str | None]) -> None:
        self.tiers = tiers

    def verify_schedules(self) -> dict[str, Any]:
        return check_tier_schedules(self.tiers)

    def load_alert_state(self, cfg: Config) -> dict[str, Any]:
        return load_alert_state(cfg)

    def save_alert_state(self, cfg: Config, state: dict[str, Any]) -> None:
        from airflow.sdk import Variable

        from ..monitoring.alerts import save_state

        Variable.set(ALERT_VARIABLE, json.dumps(state, sort_keys=True))
        try:
            save_state(cfg, state)
        except OSError as exc:
            log.warning("could not mirror the alert state to alert_state.json: %s", exc)

    def deliver(self, cfg: Config, message: dict[str, Any]) -> list[str]:
        return deliver(cfg, message)

    def publish(self, status: dict[str, Any]) -> None:
        from airflow.sdk import Variable

        Variable.set(STATUS_VARIABLE, json.dumps(status, sort_keys=True, default=str),
                     description="backup monitoring status (written by backup_monitoring, read by the Backups page)")
        set_note(status)


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


def add_monitoring_tasks(tiers: dict[str, str | None]) -> Any:
    """The tasks of :data:`~backups.commands.status.STATUS` (in a ``with dag:`` block), with the Airflow hooks."""
    from ..commands.procedure import RunContext
    from ..commands.status import STATUS
    from .procedures import add_procedure_tasks

    def context(actx: Any, _step: Any) -> RunContext:
        cfg, resolver = _runtime()
        return RunContext(cfg, resolver, dag_id=actx["dag"].dag_id, run_id=actx["run_id"],
                          state={"hooks": AirflowMonitoring(tiers)})

    return add_procedure_tasks(STATUS, context=context, candidates=lambda _step: [])


# ------------------------------------------------------------------------------------------------ tasks
def check_tier_schedules(tiers: dict[str, str | None]) -> dict[str, Any]:
    """The body of ``verify_schedules`` in the DAG: the tier DAGs as Airflow's REST API sees them."""
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


def set_note(status: dict[str, Any]) -> None:
    """The run's note: the state and the count of open problems, then the problems (``notes.monitoring_note``)."""
    from airflow.sdk import get_current_context

    from ..commands.notes import monitoring_note
    from ..monitoring.links import page_url
    from .run_notes import set_run_note, ui_base

    ctx = get_current_context()
    set_run_note(ctx["dag"].dag_id, ctx["run_id"], monitoring_note(status, page_url(base=ui_base())))
