"""The status command: the monitoring status document (:mod:`backups.monitoring`) — every tier including
``manual``, every storage, numeric ages against the RPO, overdue flags, sizes, problems — and its Nagios-style
check code. ``backupctl status`` prints it; the ``backup_monitoring`` DAG builds it in steps (monitor_status,
check_health, verify_schedules, detect_issues) with the same functions.

Check codes (``backupctl status --check``, documented in README): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the
status could not be built: invalid configuration, an internal error).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..monitoring import status_path
from ..monitoring.alerts import load_state
from ..monitoring.health import annotate, apply_tier_problems, evaluate, overall_state
from ..monitoring.status import build_status, published
from ..monitoring.store import now_utc, parse_iso, read_json
from .base import Result

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


def collect(cfg: Any, resolver: Any = None, *, now: datetime | None = None, write_probe: bool = True,
            airflow_runs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``monitor_status``: the status document without problems (internal ``_tables`` kept for the checks).
    Without ``airflow_runs`` the last runs are carried over from the last status the monitoring DAG wrote."""
    previous = read_json(status_path(cfg), None)
    return build_status(cfg, resolver, now=now or now_utc(), write_probe=write_probe, airflow_runs=airflow_runs,
                        previous=previous if isinstance(previous, dict) else None)


def finish(cfg: Any, doc: dict[str, Any], problems: list[dict[str, Any]], *, now: datetime | None = None,
           alert_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The published document: problems annotated with since/runs (from the alert state), the overall state."""
    out = published(doc)
    out["problems"] = annotate(problems, alert_state if alert_state is not None else load_state(cfg), now)
    apply_tier_problems(out)  # a tier with an open size/duration (or other own) warning is not OK
    out["state"] = overall_state(out)
    html, js = status_path(cfg).with_name("status.html"), status_path(cfg)
    out["reports"] = {"html": str(html) if html.exists() else None, "json": str(js) if js.exists() else None}
    return out


def status(cfg: Any, resolver: Any = None, *, now: datetime | None = None, write_probe: bool = True,
           airflow_runs: dict[str, Any] | None = None, extra_problems: list[dict[str, Any]] | None = None) -> StatusResult:
    """The whole status in one call (``backupctl status``)."""
    now = now or now_utc()
    doc = collect(cfg, resolver, now=now, write_probe=write_probe, airflow_runs=airflow_runs)
    problems = evaluate(cfg, doc, now=now) + list(extra_problems or []) + airflow_problems(cfg, now)
    return StatusResult(finish(cfg, doc, problems, now=now))


#: problems only the DAG can see (Airflow's metadata): the CLI repeats them from the last status the DAG wrote
AIRFLOW_KEYS = ("dag-missing:", "dag-import-error:", "dag-paused:", "run-missed:", "run-failed:", "schedules-unverified")
#: ... when that status is at most this old
CARRY_OVER = timedelta(hours=6)


def monitoring_silence(cfg: Any) -> timedelta:
    """How old the DAG's last status may get before ``status`` reports ``monitoring-silent``: three monitoring
    intervals, at least 2 hours."""
    from ..monitoring.status import cron_max_gap_seconds

    sched = cfg.monitoring.schedule
    return max(timedelta(hours=2), timedelta(seconds=3 * cron_max_gap_seconds(sched)) if sched else timedelta(days=2))


def airflow_problems(cfg: Any, now: datetime) -> list[dict[str, Any]]:
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
