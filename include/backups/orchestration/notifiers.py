"""Notifications of the backup DAGs: a notifier that always logs a clear summary, plus e-mail when configured.

* :class:`BackupNotifier` (a ``BaseNotifier``) — logs one summary (event, DAG, run, task, snapshot id, reason)
  and hands it to every callable in :data:`LISTENERS` (monitoring hooks, tests). Never raises.
* :func:`publish` — the ``notify_start`` / ``notify_completion`` tasks hand their plan / summary to the same
  listeners (events ``backup_start`` and ``backup_complete``).
* :class:`BackupSmtpNotifier` — the smtp provider's ``SmtpNotifier``, rendered on a fresh copy for every
  call (``BaseNotifier`` renders its templates in place, which would freeze the first message). It uses the
  ``smtp_default`` connection unless ``[email] email_conn_id`` says otherwise.

Where they are attached (see :func:`task_failure_callbacks`, :func:`dag_success_callbacks`, …): task
failures (final, after retries: the reason is the task's exception) and DAG-run success and failure.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier, Context

from ..commands.notes import failure_note

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("backups.orchestration.notify")

#: callables receiving every summary dict (``event``, ``dag_id``, ``run_id``, ``task_id``, ``snapshot_id``,
#: ``reason``…); add to it from a plugin or a test. Exceptions they raise are logged, not propagated.
LISTENERS: list[Callable[[dict[str, Any]], None]] = []

_PLAN_TASK = "pre_backup.prepare_environment"


def _snapshot_id(ti: Any) -> str | None:
    if ti is None or not hasattr(ti, "xcom_pull"):
        return None
    try:
        plan = ti.xcom_pull(task_ids=_PLAN_TASK, key="plan", map_indexes=-1)
    except Exception:  # outside a task process (e.g. a DAG callback in the dag-processor) XCom may be unreachable
        return None
    return plan.get("snapshot_id") if isinstance(plan, dict) else None


def summarize(event: str, context: Mapping[str, Any]) -> dict[str, Any]:
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    exc = context.get("exception")
    reason = context.get("reason") if event.endswith("failure") else None
    if exc is not None:
        reason = f"{exc.__class__.__name__}: {exc}"
    map_index = getattr(ti, "map_index", -1)
    return {
        "event": event,
        "dag_id": getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None) or context.get("run_id"),
        "task_id": getattr(ti, "task_id", None) if event.startswith("task") else None,
        "map_index": map_index if isinstance(map_index, int) and map_index >= 0 else None,
        "try_number": getattr(ti, "try_number", None) if event.startswith("task") else None,
        "logical_date": str(context.get("logical_date") or getattr(dag_run, "logical_date", None) or ""),
        "snapshot_id": _snapshot_id(ti),
        "reason": reason,
    }


def format_summary(s: dict[str, Any]) -> str:
    what = {"task_failure": "FAILED", "dag_failure": "run FAILED", "dag_success": "run succeeded"}.get(s["event"], s["event"])
    task = f" task {s['task_id']}" + (f"[{s['map_index']}]" if s.get("map_index") is not None else "") if s.get("task_id") else ""
    tries = f" after {s['try_number']} tries" if s.get("try_number") else ""
    snap = f" snapshot {s['snapshot_id']}" if s.get("snapshot_id") else ""
    reason = f"\n  reason: {s['reason']}" if s.get("reason") else ""
    return f"[backup] {s['dag_id']}{task} {what}{tries} (run {s['run_id']}{',' if snap else ''}{snap}){reason}"


class BackupNotifier(BaseNotifier):
    """Logs a clear summary of a task/DAG event and calls :data:`LISTENERS`; never fails the caller."""

    template_fields = ()

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render (the summary is built from the context)."""

    def notify(self, context: Context) -> None:
        try:
            s = summarize(self.event, context)
        except Exception as exc:  # a notifier must never hide the original failure
            log.error("backup notifier could not summarise the %s event: %s", self.event, exc)
            return
        log.log(logging.INFO if self.event == "dag_success" else logging.ERROR, "%s", format_summary(s))
        for listener in list(LISTENERS):
            try:
                listener(s)
            except Exception:
                log.exception("backup notification listener %r failed", listener)
        if self.event == "task_failure" and s.get("dag_id") and s.get("run_id"):
            try:  # the run's note says what failed (a successful end replaces it with the summary)
                from .run_notes import set_run_note

                set_run_note(s["dag_id"], s["run_id"], failure_note(s))
            except Exception:
                log.exception("the run note of the failure could not be set")


def publish(event: str, payload: dict[str, Any]) -> None:
    """Hand a run milestone (``backup_start`` with the plan, ``backup_complete`` with the summary) to
    :data:`LISTENERS`; the task logs it itself."""
    for listener in list(LISTENERS):
        try:
            listener({"event": event, **payload})
        except Exception:
            log.exception("backup notification listener %r failed", listener)


def _smtp_class() -> type:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    class BackupSmtpNotifier(SmtpNotifier):
        """``SmtpNotifier`` rendered on a copy, so one instance serves every task and run."""

        def __call__(self, *args: Any) -> None:
            SmtpNotifier.__call__(copy.copy(self), *args)

        def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
            # a DAG callback may get a serialized DAG (no template env): fall back to a plain sandboxed env
            if jinja_env is None and not hasattr(context.get("dag"), "get_template_env"):
                jinja_env = self.get_template_env(dag=None)
            super().render_template_fields(context, jinja_env)

    return BackupSmtpNotifier


def mail_notifiers(cfg: Config, subject: str, html: str) -> list[Any]:
    if not cfg.notify_email:
        return []
    return [_smtp_class()(to=list(cfg.notify_email), subject=subject, html_content=html)]


def task_failure_callbacks(cfg: Config) -> list[Any]:
    return [BackupNotifier("task_failure"), *mail_notifiers(
        cfg, "[backup] {{ dag.dag_id }}: {{ ti.task_id }} failed",
        "<p>Backup task <b>{{ ti.task_id }}</b> of <b>{{ dag.dag_id }}</b> failed (run {{ run_id }}, try "
        "{{ ti.try_number }}).</p><pre>{{ exception | e }}</pre>"
        f"<p>Application {cfg.application}. Nothing is committed until the manifest is written: the run can "
        "be cleared and retried.</p>")]


def dag_success_callbacks(cfg: Config) -> list[Any]:
    return [BackupNotifier("dag_success"), *mail_notifiers(
        cfg, "[backup] {{ dag.dag_id }} succeeded",
        "<p>Backup run {{ run_id }} of <b>{{ dag.dag_id }}</b> succeeded: committed, replicated, verified, "
        f"validated and test-restored. Application {cfg.application}.</p>")]


def dag_failure_callbacks(cfg: Config) -> list[Any]:
    return [BackupNotifier("dag_failure")]


