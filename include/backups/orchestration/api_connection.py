"""The one Airflow connection to the API server, for everything that calls the REST API from a task: the run notes
(``run_notes.py``), schedule verification (``monitoring_dag.check_tier_schedules``, the ``verify_schedules`` task) and doctor's check.

:data:`CONN_ID` is ``backup_airflow_api`` (``BACKUP_NOTE_CONN_ID`` renames it): type ``http``, host = the API
server's URL, login/password of a user who may read DAGs and edit DAG runs (or ``{"token": "<JWT>"}`` in the
extra). Deprecated, still read for one release with a warning: the schedule check's former connection
``airflow_api`` when ``backup_airflow_api`` is not defined, and the config key ``monitoring.airflow_api_conn_id``.
The client itself is :class:`backups.airflow_api.AirflowApi` (plain urllib, no Airflow import).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from ..airflow_api import CONN_ID as DEFAULT_CONN_ID
from ..airflow_api import LEGACY_CONN_ID, AirflowApi

log = logging.getLogger("backups.orchestration.api_connection")

#: the connection's id (``BACKUP_NOTE_CONN_ID`` renames it, as before)
CONN_ID = os.environ.get("BACKUP_NOTE_CONN_ID") or DEFAULT_CONN_ID


def get_connection(conn_id: str) -> Any:
    """The connection, or None when it is not defined (other lookup errors propagate)."""
    from airflow.sdk import Connection

    try:
        return Connection.get(conn_id)
    except Exception as exc:
        if "NotFound" in exc.__class__.__name__ or "isn't defined" in str(exc) or "not found" in str(exc).lower():
            return None
        raise


def _deprecated(message: str) -> None:
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    log.warning("%s", message)


def candidates(configured: str | None = None) -> list[str]:
    """The ids looked up, in order: a configured ``monitoring.airflow_api_conn_id`` (deprecated), :data:`CONN_ID`,
    then the legacy ``airflow_api``."""
    ids = [configured] if configured else []
    return list(dict.fromkeys([*ids, CONN_ID, LEGACY_CONN_ID]))


def api_connection(configured: str | None = None) -> tuple[Any, str]:
    """``(connection, its id)`` of the first defined id of :func:`candidates`; ``(None, CONN_ID)`` when none is.
    Using a deprecated one logs (and warns) how to move to :data:`CONN_ID`."""
    for conn_id in candidates(configured):
        conn = get_connection(conn_id)
        if conn is None:
            continue
        if conn_id == configured and conn_id != CONN_ID:
            _deprecated(f"the config key monitoring.airflow_api_conn_id ({conn_id!r}) is deprecated: the schedule "
                        f"check and the run notes share the Airflow connection {CONN_ID!r}; define that one and "
                        "remove the key")
        elif conn_id == LEGACY_CONN_ID and conn_id != CONN_ID:
            _deprecated(f"the Airflow connection {LEGACY_CONN_ID!r} is deprecated: rename it to {CONN_ID!r} (one "
                        "connection for the run notes and the schedule check)")
        return conn, conn_id
    return None, CONN_ID


def api_client(configured: str | None = None, *, timeout: float = 20.0) -> tuple[AirflowApi | None, str]:
    """``(client, connection id)`` (client None when no connection is defined). A connection whose host cannot be
    a URL raises ValueError naming the connection."""
    conn, conn_id = api_connection(configured)
    if conn is None:
        return None, conn_id
    try:
        return AirflowApi.from_connection(conn, timeout=timeout), conn_id
    except ValueError as exc:
        raise ValueError(f"Airflow connection {conn_id!r}: {exc}") from None
