"""The DAG run's note: a short Markdown summary of a backup, restore or retention run, shown by the Airflow UI on
the run (Grid view, run details) — where people look first.

Airflow 3.3 has no Task SDK call for a task to set its own run's note (the execution API only reads it; see
apache/airflow#64890). The public REST API does: ``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}?update_mask=note``.
:func:`set_run_note` tries, in order:

1. **the REST API** through the one API connection ``backup_airflow_api`` (:mod:`.api_connection`; the schedule
   check uses it too): type ``http``, host = the API server's base URL (``http://airflow-api:8080``; or host +
   port + schema ``https``), login and password of a user allowed to edit DAG runs (simple auth manager: role
   ``user`` or higher), exchanged for a token at ``POST /auth/token``; or ``{"token": "<JWT>"}`` in the extra
   instead of login/password; without either, ``GET /auth/token`` (the simple auth manager's all-admins mode of
   a local ``airflow standalone``). The client is :class:`backups.airflow_api.AirflowApi`;
2. without that connection, **the metadata database** — only where the process has it: ``dag.test()``, ``airflow
   dags test``, ``make demo``. A real worker has no database access (Airflow 3 blocks it), so step 3 follows;
3. a **warning** in the task log naming the connection to create.

It never raises: a run whose note could not be set is still a good backup. Notes are cut to Airflow's limit
(1000 characters) with a pointer to the full report.

Links for notes: :func:`drill_report_url` and :func:`backup_report_url` — the reports the Backups plugin serves
(:mod:`backups.monitoring.links`), under the API server's ``[api] base_url`` when set (else root-relative).
"""

from __future__ import annotations

import logging
from typing import Any

from ..airflow_api import AirflowApi
from ..monitoring import links
from .api_connection import CONN_ID as NOTE_CONN_ID
from .api_connection import api_connection

log = logging.getLogger("backups.orchestration.run_notes")
#: Airflow's limit on a note (``DAGRunPatchBody.note``, ``dag_run_note.content``)
MAX_NOTE = 1000
TIMEOUT = 10.0


def fit(markdown: str, limit: int = MAX_NOTE) -> str:
    """``markdown`` cut at a line boundary to ``limit`` characters, ending with "…" when cut."""
    if len(markdown) <= limit:
        return markdown
    tail = "\n…"
    cut = markdown[: limit - len(tail)]
    if "\n" in cut:
        cut = cut[: cut.rindex("\n")]
    return cut + tail


def ui_base() -> str:
    """The API server's ``[api] base_url`` without its trailing slash ("" when unset: links stay root-relative)."""
    try:
        from airflow.sdk import conf

        return (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    except Exception:  # noqa: BLE001 - no Airflow config here: a root-relative link still works in the UI
        return ""


def drill_report_url(drill_id: str = "latest") -> str:
    """The URL of a drill's HTML report served by the Backups plugin (``latest``: the newest drill's), for a note."""
    return links.drill_report_url(drill_id, base=ui_base())


def backup_report_url(snapshot_id: str) -> str:
    """The URL of a backup run's result document served by the Backups plugin, for a note."""
    return links.backup_report_url(snapshot_id, base=ui_base())


def set_run_note(dag_id: str, run_id: str, markdown: str) -> str:
    """Set the run's note (see the module doc). Returns how: ``"api"``, ``"metadata-db"`` or ``"skipped: <why>"``."""
    note = fit(markdown)
    try:
        conn, conn_id = api_connection()
    except Exception as exc:  # a broken connection definition must not fail the run either
        return _skip(f"connection {NOTE_CONN_ID} could not be read ({exc.__class__.__name__}: {exc})")
    if conn is not None:
        try:
            _patch(conn, dag_id, run_id, note)
            log.info("run note set through the Airflow REST API (connection %s)", conn_id)
            return "api"
        except Exception as exc:
            return _skip(f"the Airflow REST API (connection {conn_id}) refused or failed: {_reason(exc)}")
    try:
        _write_orm(dag_id, run_id, note)
        log.info("run note set in the metadata database (no connection %s: a local run)", NOTE_CONN_ID)
        return "metadata-db"
    except Exception as exc:
        return _skip(f"no connection {NOTE_CONN_ID}, and no metadata database to write in this process ({_reason(exc)})")


def _skip(why: str) -> str:
    log.warning("the run note was not set: %s. Fix: define the Airflow connection %s (type http, host = the API "
                "server's URL, login/password of a user who may edit DAG runs) on the workers; the backup itself "
                "is not affected", why, NOTE_CONN_ID)
    return f"skipped: {why}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}"[:300]


def _patch(conn: Any, dag_id: str, run_id: str, note: str) -> None:
    AirflowApi.from_connection(conn, timeout=TIMEOUT).set_run_note(dag_id, run_id, note)


def _write_orm(dag_id: str, run_id: str, note: str) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dr is None:
            raise LookupError(f"no DAG run {dag_id} / {run_id}")
        dr.note = note
