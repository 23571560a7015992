"""The human approval gate of ``backup_manual`` (Airflow's ``ApprovalOperator``, skippable per run).

"Approve" lets the run continue; "Reject" (or no answer within ``response_timeout``, the default being
"Reject") skips ``pre_backup.check_system_state`` and with it everything that would touch data. A run
triggered with ``require_approval=false`` (scripts, tests) skips this task itself; the next task runs on
``none_failed``, so a skipped gate lets it through while a rejection (which skips it directly) does not.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.exceptions import AirflowSkipException


class BackupApprovalOperator(ApprovalOperator):
    """``ApprovalOperator`` that steps aside when the run's ``require_approval`` param is false."""

    def execute(self, context: Any) -> Any:
        if not context["params"].get("require_approval", True):
            raise AirflowSkipException("require_approval is false: the approval step is skipped for this run")
        return super().execute(context)


def note_param(what: str) -> Any:
    """The approval form's optional note. Nullable: Airflow's form marks a field required (and keeps *Approve* /
    *Reject* disabled) unless its schema type includes ``"null"``. An unanswered note arrives as None or ""."""
    from airflow.sdk import Param

    return Param(None, type=["null", "string"], title="Note", description=f"Optional note for the {what}")
