"""The alert state machine: one alert per new problem, no repeat while it stays open, escalation, one "resolved".

State (``status_dir(cfg)/alert_state.json``, written atomically by the DAG's ``escalate`` task, after the messages
went out — a run whose sending failed leaves the old state, so the next run sends again: at least once)::

    {"updated_at": ISO, "problems": {key: {"severity", "summary", "since", "runs", "escalated": bool}}}

Per monitoring run, :func:`transition` compares the run's problems with the state:

* a key not in the state is **new**: it joins one ``alert`` message (``alerts.email`` and the webhook);
* a key already open counts one more consecutive run; when its runs reach ``alerts.escalate_after`` — or at once
  for a freshness breach past 2 x the RPO (``stale:*`` critical) — it joins one ``escalation`` message
  (``alerts.escalation_email`` and the webhook), once;
* a key in the state but not in the run is **resolved**: it joins one ``resolved`` message (the alert recipients,
  plus the escalation recipients when it had been escalated) and leaves the state.

So one run sends at most three messages, and a problem that stays open sends nothing more.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import status_dir
from .store import ALERT_STATE, iso, now_utc, read_json, write_atomic

if TYPE_CHECKING:
    from datetime import datetime

    from ..config import Config


def load_state(cfg: Config) -> dict[str, Any]:
    state = read_json(status_dir(cfg) / ALERT_STATE, None)
    if not isinstance(state, dict) or not isinstance(state.get("problems"), dict):
        return {"updated_at": None, "problems": {}}
    return state


def save_state(cfg: Config, state: dict[str, Any]) -> None:
    write_atomic(status_dir(cfg) / ALERT_STATE, json.dumps(state, indent=1, sort_keys=True))


def _escalate_now(p: dict[str, Any]) -> bool:
    return p["key"].startswith("stale:") and p["severity"] == "critical"


def transition(cfg: Config, problems: list[dict[str, Any]], state: dict[str, Any], *, now: datetime | None = None,
               application: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(new state, messages) for this run's ``problems`` (see the module docstring). Pure: nothing is sent."""
    alerts = cfg.monitoring.alerts
    stamp = iso(now or now_utc())
    app = application or cfg.application
    old = dict(state.get("problems") or {})
    new_state: dict[str, Any] = {"updated_at": stamp, "problems": {}}
    new, escalated, resolved = [], [], []
    for p in problems:
        prev = old.get(p["key"])
        if prev is None:
            entry = {"severity": p["severity"], "summary": p["summary"], "since": stamp, "runs": 1, "escalated": False}
            new.append(p)
        else:
            entry = {**prev, "severity": p["severity"], "summary": p["summary"], "runs": int(prev.get("runs", 0)) + 1}
        if not entry["escalated"] and (entry["runs"] >= alerts.escalate_after or _escalate_now(p)):
            entry["escalated"] = True
            escalated.append({**p, "since": entry["since"], "runs": entry["runs"]})
        new_state["problems"][p["key"]] = entry
    for key, prev in sorted(old.items()):
        if key not in new_state["problems"]:
            resolved.append({"key": key, **prev})
    messages = []
    if new:
        messages.append(_message("alert", app, new, list(alerts.email)))
    if escalated:
        messages.append(_message("escalation", app, escalated, list(alerts.escalation_email)))
    if resolved:
        to = list(alerts.email) + [a for a in alerts.escalation_email if any(r.get("escalated") for r in resolved)
                                   and a not in alerts.email]
        messages.append(_message("resolved", app, resolved, to))
    return new_state, messages


_TITLES = {"alert": "new backup problem", "escalation": "ESCALATED backup problem", "resolved": "resolved"}


def _message(kind: str, app: str, problems: list[dict[str, Any]], to: list[str]) -> dict[str, Any]:
    n = len(problems)
    worst_sev = "critical" if any(p.get("severity") == "critical" for p in problems) else "warning"
    if kind == "resolved":
        subject = f"[backup] {app}: RESOLVED {n} problem(s): " + ", ".join(p["key"] for p in problems[:3])
    else:
        subject = (f"[backup] {app}: {worst_sev.upper()} {_TITLES[kind]}{'s' if n > 1 else ''}: "
                   + ", ".join(p["key"] for p in problems[:3]) + (" ..." if n > 3 else ""))
    lines = []
    for p in problems:
        extra = f" (open since {p.get('since')}, {p.get('runs')} run(s))" if kind != "alert" else ""
        lines.append(f"- [{p.get('severity', '?')}] {p['key']}: {p.get('summary', '')}{extra}")
    intro = {"alert": "New problem(s) detected by backup monitoring:",
             "escalation": "Problem(s) still open (or a freshness breach past twice the RPO), escalated:",
             "resolved": "Problem(s) no longer present:"}[kind]
    text = f"{subject}\n\n{intro}\n" + "\n".join(lines)
    from html import escape

    html = (f"<p>{escape(intro)}</p><ul>" + "".join(f"<li>{escape(line[2:])}</li>" for line in lines) + "</ul>"
            f"<p>Application {escape(app)}. Status: <code>backupctl status</code> or the Backups page in Airflow.</p>")
    return {"kind": kind, "to": to, "subject": subject, "text": text, "html": html,
            "keys": [p["key"] for p in problems], "severity": "ok" if kind == "resolved" else worst_sev}


def webhook_payload(message: dict[str, Any], host: str | None) -> dict[str, Any]:
    """Slack-compatible ``{"text": ...}`` for hooks.slack.com; a generic JSON document otherwise."""
    if host and "hooks.slack.com" in host:
        return {"text": message["text"]}
    return {"kind": message["kind"], "severity": message["severity"], "subject": message["subject"],
            "text": message["text"], "keys": message["keys"]}
