"""The status command: the monitoring status document (:mod:`backups.monitoring`) — every tier including
``manual``, every storage, numeric ages against the RPO, overdue flags, sizes, problems — and its Nagios-style
check code.

The sequence is declared once, as the procedure :data:`STATUS`; ``backupctl status`` runs its first four steps
(:data:`CHECK`), the ``backup_monitoring`` DAG all nine, one task per step (``orchestration/monitoring_dag.py``)::

    monitor_status → check_health → verify_schedules → detect_issues → send_alerts → escalate
                                                                    └→ generate_reports → document_status → update_dashboard

What only Airflow can do — ask its REST API about the tier DAGs, keep the alert state in a Variable, send mail
through the smtp provider, publish the status to the Variable the Backups page reads and set the run's note — comes
in through the run context (``ctx.state["hooks"]``: :class:`MonitoringHooks`). Without hooks (the CLI) the schedule
check repeats what the DAG saw last (:func:`airflow_problems`), the alert state is read from ``alert_state.json``
and the alerting and publishing steps skip themselves.

Check codes (``backupctl status --check``, documented in README): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the
status could not be built: invalid configuration, an internal error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from ..monitoring import status_path
from ..monitoring.alerts import load_state, transition
from ..monitoring.health import annotate, apply_tier_problems, evaluate, overall_state
from ..monitoring.status import build_status, published
from ..monitoring.store import now_utc, parse_iso, read_json
from .base import Result
from .procedure import Procedure, RunContext, Skip, Step, run

if TYPE_CHECKING:
    from ..config import Config
    from ..storage import Resolver

log = logging.getLogger("backups.commands.status")

#: Nagios plugin return codes of ``backupctl status --check``
CHECK_OK, CHECK_WARNING, CHECK_CRITICAL, CHECK_UNKNOWN = 0, 1, 2, 3
CHECK_CODES = {"ok": CHECK_OK, "warning": CHECK_WARNING, "critical": CHECK_CRITICAL}
CHECK_NAMES = {CHECK_OK: "OK", CHECK_WARNING: "WARNING", CHECK_CRITICAL: "CRITICAL", CHECK_UNKNOWN: "UNKNOWN"}


@dataclass
class StatusResult(Result):
    status: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.status

    @property
    def check_code(self) -> int:
        return CHECK_CODES.get(self.status["state"], CHECK_UNKNOWN)

    def check_line(self) -> str:
        """One Nagios plugin output line: ``BACKUP CRITICAL - 2 problem(s): stale:monthly, ...``."""
        s = self.status
        keys = [p["key"] for p in s["problems"]]
        what = f"{len(keys)} problem(s): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" if keys else "all tiers fresh"
        perf = " ".join(f"{t['tier']}_age={str(t['age_seconds']) + 's' if t['age_seconds'] is not None else 'U'};"
                        f"{t['rpo_seconds'] or ''};{2 * t['rpo_seconds'] if t['rpo_seconds'] else ''}"
                        for t in s["tiers"])
        return f"BACKUP {CHECK_NAMES[self.check_code]} - {what} | {perf}"


def collect(cfg: Config, resolver: Resolver | None = None, *, now: datetime | None = None, write_probe: bool = True,
            airflow_runs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``monitor_status``: the status document without problems (internal ``_tables`` kept for the checks).
    Without ``airflow_runs`` the last runs are carried over from the last status the monitoring DAG wrote."""
    previous = read_json(status_path(cfg), None)
    return build_status(cfg, resolver, now=now or now_utc(), write_probe=write_probe, airflow_runs=airflow_runs,
                        previous=previous if isinstance(previous, dict) else None)


def finish(cfg: Config, doc: dict[str, Any], problems: list[dict[str, Any]], *, now: datetime | None = None,
           alert_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The published document: problems annotated with since/runs (from the alert state), the overall state."""
    out = published(doc)
    out["problems"] = annotate(problems, alert_state if alert_state is not None else load_state(cfg), now)
    apply_tier_problems(out)  # a tier with an open size/duration (or other own) warning is not OK
    out["state"] = overall_state(out)
    html, js = status_path(cfg).with_name("status.html"), status_path(cfg)
    out["reports"] = {"html": str(html) if html.exists() else None, "json": str(js) if js.exists() else None}
    return out


def status(cfg: Config, resolver: Resolver | None = None, *, now: datetime | None = None, write_probe: bool = True,
           airflow_runs: dict[str, Any] | None = None, extra_problems: list[dict[str, Any]] | None = None) -> StatusResult:
    """The whole status in one call (``backupctl status``): the steps of :data:`CHECK`."""
    ctx = RunContext(cfg, resolver, params={"now": now or now_utc(), "write_probe": write_probe,
                                            "airflow_runs": airflow_runs, "extra_problems": extra_problems or []})
    return StatusResult(run(CHECK, ctx).results["detect_issues"]["status"])


# ------------------------------------------------------------------------------------------------ the procedure
class MonitoringHooks(Protocol):
    """What the Airflow door adds to the steps (``ctx.state["hooks"]``; see ``orchestration/monitoring_dag.py``)."""

    def verify_schedules(self) -> dict[str, Any]:
        """``{"problems": [...], "runs": {dag_id: {"last_run", "last_failure"}}}`` from Airflow's metadata."""

    def load_alert_state(self, cfg: Config) -> dict[str, Any]:
        """The alert state saved by the last run."""

    def save_alert_state(self, cfg: Config, state: dict[str, Any]) -> None:
        """Keep the alert state for the next run."""

    def deliver(self, cfg: Config, message: dict[str, Any]) -> list[str]:
        """Send one alert / escalation / resolved message; the channels used."""

    def publish(self, status: dict[str, Any]) -> None:
        """Hand the published status to the readers (the Backups page's Variable) and set the run's note."""


def _hooks(ctx: RunContext, what: str) -> MonitoringHooks:
    hooks = ctx.state.get("hooks")
    if hooks is None:
        raise Skip(f"{what}: only the backup_monitoring DAG does that")
    return hooks


def _now(ctx: RunContext) -> datetime:
    return ctx.params.get("now") or now_utc()


def _monitor_status(ctx: RunContext, results: dict[str, Any], _item: Any) -> dict[str, Any]:
    return collect(ctx.cfg, ctx.resolver, now=_now(ctx), write_probe=ctx.params.get("write_probe", True),
                   airflow_runs=ctx.params.get("airflow_runs"))


def _check_health(ctx: RunContext, results: dict[str, Any], _item: Any) -> list[dict[str, Any]]:
    problems = evaluate(ctx.cfg, results["monitor_status"], now=_now(ctx))
    log.info("health: %d problem(s): %s", len(problems), ", ".join(p["key"] for p in problems) or "none")
    return problems


def _verify_schedules(ctx: RunContext, results: dict[str, Any], _item: Any) -> dict[str, Any]:
    hooks = ctx.state.get("hooks")
    if hooks is not None:
        return hooks.verify_schedules()
    # without Airflow: what the DAG saw last (when recent), and the caller's own
    return {"problems": list(ctx.params.get("extra_problems") or []) + airflow_problems(ctx.cfg, _now(ctx)),
            "runs": {}}


def _detect_issues(ctx: RunContext, results: dict[str, Any], _item: Any) -> dict[str, Any]:
    doc, schedules = results["monitor_status"], results["verify_schedules"] or {}
    for t in doc["tiers"]:
        runs = (schedules.get("runs") or {}).get(t["dag_id"])
        if runs is not None:
            t["last_run"], t["last_failure"] = runs.get("last_run"), runs.get("last_failure")
    now, hooks = _now(ctx), ctx.state.get("hooks")
    every = list(results["check_health"]) + list(schedules.get("problems") or [])
    saved = hooks.load_alert_state(ctx.cfg) if hooks is not None else load_state(ctx.cfg)
    state, messages = transition(ctx.cfg, every, saved, now=now)
    # the CLI only looks: since/runs as the DAG's alert state has them (it neither alerts nor counts a run)
    out = finish(ctx.cfg, doc, every, now=now, alert_state=state if hooks is not None else saved)
    log.info("state %s; %d open problem(s); messages: %s", out["state"], len(every),
             ", ".join(m["kind"] for m in messages) or "none")
    return {"status": out, "messages": messages, "state": state}


def _send(ctx: RunContext, plan: dict[str, Any], escalation: bool) -> list[str]:
    hooks = _hooks(ctx, "alerts")
    sent = []
    for m in plan["messages"]:
        if (m["kind"] == "escalation") == escalation:
            hooks.deliver(ctx.cfg, m)
            sent.append(m["kind"])
    return sent


def _send_alerts(ctx: RunContext, results: dict[str, Any], _item: Any) -> dict[str, Any]:
    return {"sent": _send(ctx, results["detect_issues"], escalation=False)}


def _escalate(ctx: RunContext, results: dict[str, Any], _item: Any) -> dict[str, Any]:
    plan = results["detect_issues"]
    sent = _send(ctx, plan, escalation=True)
    _hooks(ctx, "alerts").save_alert_state(ctx.cfg, plan["state"])  # after sending: a failed send is retried
    return {"sent": sent, "open": sorted(plan["state"]["problems"])}


def _generate_reports(ctx: RunContext, results: dict[str, Any], _item: Any) -> dict[str, Any]:
    from ..monitoring.report import write_html

    html = write_html(ctx.cfg, results["detect_issues"]["status"])
    log.info("report: %s", html)
    return {"html": str(html), "json": str(status_path(ctx.cfg))}


def _document_status(ctx: RunContext, results: dict[str, Any], _item: Any) -> dict[str, Any]:
    from ..monitoring.report import document

    reports = results["generate_reports"]
    return {**reports, **document(ctx.cfg, {**results["detect_issues"]["status"], "reports": reports})}


def _update_dashboard(ctx: RunContext, results: dict[str, Any], _item: Any) -> dict[str, Any]:
    from ..monitoring.report import write_status

    hooks = _hooks(ctx, "publishing the status")
    docs = results.get("document_status") or {}
    out = dict(results["detect_issues"]["status"])
    out["reports"] = {"html": docs.get("html"), "json": docs.get("json")}
    path = write_status(ctx.cfg, out)
    hooks.publish(out)
    return {"state": out["state"], "problems": len(out["problems"]), "json": str(path)}


_PLAN = ("detect_issues",)
STATUS = Procedure("status", (
    Step("monitor_status", "", _monitor_status, doc="every tier (manual included) and every storage probed"),
    Step("check_health", "", _check_health, needs=("monitor_status",), doc="freshness, storages, verification, anomalies"),
    Step("verify_schedules", "", _verify_schedules, doc="each tier DAG exists, is unpaused, ran on time"),
    Step("detect_issues", "", _detect_issues, needs=("monitor_status", "check_health", "verify_schedules"),
         doc="problems merged; alert transitions against the saved alert state"),
    Step("send_alerts", "", _send_alerts, needs=_PLAN, doc="new and resolved problems: e-mail and webhook"),
    Step("escalate", "", _escalate, needs=_PLAN, doc="problems open too long; the alert state saved"),
    Step("generate_reports", "", _generate_reports, needs=_PLAN, after=_PLAN, doc="status.html with plots"),
    Step("document_status", "", _document_status, needs=(*_PLAN, "generate_reports"),
         doc="status.md and a history line"),
    Step("update_dashboard", "", _update_dashboard, needs=(*_PLAN, "document_status"),
         doc="status.json, the Backups page's Variable, the run's note"),
))
#: what ``backupctl status`` runs: the status and its problems, nothing sent or published
CHECK = Procedure("status", STATUS.steps[:4])


#: problems only the DAG can see (Airflow's metadata): the CLI repeats them from the last status the DAG wrote
AIRFLOW_KEYS = ("dag-missing:", "dag-import-error:", "dag-paused:", "run-missed:", "run-failed:", "schedules-unverified")
#: ... when that status is at most this old
CARRY_OVER = timedelta(hours=6)


def monitoring_silence(cfg: Config) -> timedelta:
    """How old the DAG's last status may get before ``status`` reports ``monitoring-silent``: three monitoring
    intervals, at least 2 hours."""
    from ..monitoring.status import cron_max_gap_seconds

    sched = cfg.monitoring.schedule
    return max(timedelta(hours=2), timedelta(seconds=3 * cron_max_gap_seconds(sched)) if sched else timedelta(days=2))


def airflow_problems(cfg: Config, now: datetime) -> list[dict[str, Any]]:
    """The schedule problems of the last status written by ``backup_monitoring`` (when recent), marked as such."""
    prev = read_json(status_path(cfg), None)
    if not isinstance(prev, dict):
        return []
    at = parse_iso(prev.get("generated_at"))
    if at is None:
        return []
    silent = monitoring_silence(cfg)
    if now - at > silent:  # the DAG wrote a status once, and stopped: its scheduler (or the DAG) is down
        return [{"key": "monitoring-silent", "severity": "warning",
                 "summary": f"backup_monitoring last wrote the status at {prev['generated_at']}, more than "
                            f"{silent.total_seconds() / 3600:.1f} h ago: is the Airflow scheduler running, the DAG "
                            "unpaused?"}]
    if now - at > CARRY_OVER:
        return []
    return [{"key": p["key"], "severity": p["severity"], "summary": f"{p['summary']} (seen by backup_monitoring at "
             f"{prev['generated_at']})"} for p in prev.get("problems") or []
            if isinstance(p, dict) and str(p.get("key", "")).startswith(AIRFLOW_KEYS)]
