"""The human approval gate of ``backup_manual`` and ``restore_snapshot`` (Airflow's ``ApprovalOperator``,
skippable per run).

* **Approve** lets the run continue.
* **Reject**, or **no answer** within ``response_timeout`` (24 h), fails the gate without a retry
  (:class:`GateClosed`): everything after it ends ``upstream_failed`` and the run is *failed* — never a green run
  that did nothing. The run's note says so in its first line: "**Rejected** by olga.ops at 2026-12-07 10:02 UTC —
  nothing was restored", or "**No answer within 24 h** — nothing was backed up". (Airflow's own ApprovalOperator
  skips the downstream tasks on Reject, and the run then ends as a success.)
* A run triggered with ``require_approval=false`` (scripts, tests) skips the gate; the next task runs on
  ``none_failed``, so a skipped gate lets it through.

The gate has no ``defaults``: Airflow 3.3's form draws the default option as the solid (primary) button and, on a
timeout, the scheduler *records the default as the answer*. A default of Reject made Reject the highlighted button;
a default of Approve would record a timed-out request as approved. Without a default both buttons are drawn alike
(Approve first) and a timeout resumes the gate with an error, which :meth:`BackupApprovalOperator.execute_complete`
turns into the "no answer" failure explicitly. An answer without a user (a default applied by Airflow) is treated
as no answer, whatever it chose.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.exceptions import HITLRejectException
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

log = logging.getLogger("backups.orchestration.approval")

#: how long a request waits for an answer before the run ends as failed
RESPONSE_TIMEOUT = timedelta(hours=24)


class RunEnded(AirflowFailException):
    """A failure that ends the run on purpose (no retry) and says why in the run's note (``note``, Markdown)."""

    def __init__(self, message: str, note: str) -> None:
        super().__init__(message)
        self.note = note


class GateClosed(RunEnded):
    """The approval gate ended the run: rejected, or not answered in time."""


def _when(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M UTC") if isinstance(value, datetime) else "an unknown time"


def _hours(delta: timedelta | None) -> str:
    if delta is None:
        return "the time allowed"
    h = delta.total_seconds() / 3600
    return f"{h:.0f} h" if h >= 1 else f"{delta.total_seconds() / 60:.0f} min"


def rejected_note(who: str, when: Any, outcome: str, note: str | None = None, retry: str = "") -> str:
    """The run's note after a Reject: first line the verdict, who and when."""
    lines = [f"**Rejected** by {who} at {_when(when)} — nothing was {outcome}"]
    if note:
        lines += ["", f"* note: {note}"]
    if retry:
        lines += ["", retry]
    return "\n".join(lines)


def timeout_note(timeout: timedelta | None, outcome: str, retry: str = "") -> str:
    lines = [f"**No answer within {_hours(timeout)}** — nothing was {outcome}",
             "", "* nobody approved or rejected the request in time; the run ended without touching data"]
    if retry:
        lines += ["", retry]
    return "\n".join(lines)


class BackupApprovalOperator(ApprovalOperator):
    """``ApprovalOperator`` that steps aside when the run's ``require_approval`` param is false, and fails the run
    on Reject or timeout with a note (``outcome``: "restored" / "backed up", as the note says it)."""

    def __init__(self, *, outcome: str, retry: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("response_timeout", RESPONSE_TIMEOUT)
        super().__init__(fail_on_reject=True, **kwargs)  # GateClosed is an AirflowFailException: no retry
        self.outcome, self.retry = outcome, retry

    def execute(self, context: Any) -> Any:
        if not context["params"].get("require_approval", True):
            raise AirflowSkipException("require_approval is false: the approval step is skipped for this run")
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" in event and event.get("error_type") == "timeout":
            raise self._closed("no answer", timeout_note(self.response_timeout, self.outcome, self.retry))
        if "error" not in event and not event.get("responded_by_user"):
            # a default applied by Airflow, not a person's answer: never an approval
            raise self._closed("no answer", timeout_note(self.response_timeout, self.outcome, self.retry))
        try:
            return super().execute_complete(context, event)
        except HITLRejectException:
            who = event.get("responded_by_user") or {}
            note = (event.get("params_input") or {}).get("note")
            raise self._closed("rejected", rejected_note(who.get("name") or who.get("id") or "unknown",
                                                         event.get("responded_at"), self.outcome, note,
                                                         self.retry)) from None

    def _closed(self, why: str, note: str) -> GateClosed:
        first = note.splitlines()[0].replace("**", "")
        log.warning("approval %s: %s", why, first)
        return GateClosed(first, note)


def ended_note(context: Any) -> None:
    """The last failure callback of a task that may raise :class:`RunEnded` (the gate, the restore's request
    checks): sets the run's note from it, after the generic failure notifier, whose "Failed — task …" note it
    replaces. Other failures keep the generic note. Never raises."""
    exc = context.get("exception")
    if not isinstance(exc, RunEnded):
        return
    try:
        from .run_notes import set_run_note

        set_run_note(context["dag"].dag_id, context["run_id"], exc.note)
    except Exception:
        log.exception("the run note of the ended run could not be set")


gate_note = ended_note


def note_param(what: str) -> Any:
    """The approval form's optional note. Nullable: Airflow's form marks a field required (and keeps *Approve* /
    *Reject* disabled) unless its schema type includes ``"null"``. An unanswered note arrives as None or ""."""
    from airflow.sdk import Param

    return Param(None, type=["null", "string"], title="Note", description=f"Optional note for the {what}")
