"""The Airflow side of ``backupctl doctor``: ``python -m backups.orchestration.doctor --out FILE [--config PATH]``.

:mod:`backups.commands.doctor` runs this module in a child process when Airflow is installed (the CLI itself
never imports this layer; an Airflow that cannot be imported is a failed check), with an environment that makes
it read only (:func:`backups.commands.doctor.airflow_read_env`: no log folder, no SQLite database created) and
looks connections up as a task does: ``AIRFLOW_CONN_<ID>`` variables, the secrets backend, then the metadata
database. Checks: every ``conn_id`` of the config is defined in
Airflow (environment ``AIRFLOW_CONN_*``, a secrets backend or the metadata database), the ``backup_io`` pool
exists, the one REST API connection ``backup_airflow_api`` of the run notes and the schedule check (a warning when
missing or when only the deprecated ``airflow_api`` provides it) and — with ``notify_email`` — the SMTP connection
(``[email] email_conn_id``, default ``smtp_default``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import airflow.sdk  # noqa: F401  (a missing Airflow is an ImportError when the entry point loads: checks skipped)

from ..commands.doctor import FAIL, OK, WARN, Check, SmtpEndpoint, conn_ids
from .adapters import POOL

if TYPE_CHECKING:
    from ..config import Config


def _connection(conn_id: str) -> Any:
    from airflow.sdk import Connection

    return Connection.get(conn_id)


def _smtp_conn_id() -> str:
    from airflow.configuration import conf

    return conf.get("email", "email_conn_id", fallback="smtp_default") or "smtp_default"


class AirflowDoctor:
    """Checks that need Airflow: connections defined, the pool present, the SMTP connection."""

    def checks(self, cfg: Config) -> list[Check]:
        out = []
        for conn_id, used_by in conn_ids(cfg).items():
            out.append(self._defined(conn_id, used_by))
        out.append(self.pool())
        out.append(self.api_connection(cfg))
        if cfg.notify_email:
            conn_id = _smtp_conn_id()
            out.append(self._defined(conn_id, f"notification mail to {', '.join(cfg.notify_email)}"))
        return out

    def api_connection(self, cfg: Config) -> Check:
        """The one REST API connection (run notes, schedule verification): a warning when missing — the runs still
        work, their notes are skipped and the schedule check reports ``schedules-unverified`` — or when only a
        deprecated id (``airflow_api``, ``monitoring.airflow_api_conn_id``) provides it."""
        from ..airflow_api import AirflowApi
        from .api_connection import CONN_ID, LEGACY_CONN_ID, candidates, get_connection

        label, used_by = f"airflow connection {CONN_ID}", "run notes and schedule verification (the REST API)"
        fix = (f"add an http connection {CONN_ID!r}: host = the API server's URL, login/password of a user who may "
               "read DAGs and edit DAG runs (README, 'Run results')")
        configured = cfg.monitoring.airflow_api_conn_id
        found = None
        for conn_id in candidates(configured):
            try:
                conn = get_connection(conn_id)
            except Exception as exc:  # noqa: BLE001 - a broken secrets backend or DB: report it
                return Check(label, FAIL, f"{conn_id!r} cannot be looked up ({type(exc).__name__}: {exc})",
                             "check the metadata database / secrets backend settings of this host")
            if conn is not None:
                found = (conn_id, conn)
                break
        if found is None:
            return Check(label, WARN, "not defined: without it the runs cannot set their notes on a worker without "
                                      "metadata DB access and backup_monitoring reports schedules-unverified", fix)
        conn_id, conn = found
        try:
            url = AirflowApi.from_connection(conn).base
        except ValueError as exc:
            return Check(label, FAIL, f"connection {conn_id!r}: {exc}", fix)
        if conn_id != CONN_ID:
            why = ("the config key monitoring.airflow_api_conn_id is deprecated" if conn_id == configured
                   else f"the id {LEGACY_CONN_ID!r} is deprecated")
            return Check(label, WARN, f"not defined; {conn_id!r} ({url}) is used instead: {why}",
                         f"rename the connection {conn_id!r} to {CONN_ID!r}"
                         + (" and remove monitoring.airflow_api_conn_id from the config" if configured else ""))
        return Check(label, OK, f"defined (API server {url}; used by {used_by})")

    def _defined(self, conn_id: str, used_by: str) -> Check:
        from airflow.sdk.exceptions import AirflowNotFoundException

        label = f"airflow connection {conn_id}"
        try:
            conn = _connection(conn_id)
        except AirflowNotFoundException:
            return Check(label, FAIL, f"not defined (used by {used_by})",
                         f"add it in the Airflow UI (Admin -> Connections), in airflow_settings.yaml, or as the "
                         f"environment variable AIRFLOW_CONN_{conn_id.upper()} (JSON) on every worker and the triggerer")
        except Exception as exc:  # noqa: BLE001 - a broken secrets backend or DB: report it, go on
            return Check(label, FAIL, f"cannot be looked up ({type(exc).__name__}: {exc})",
                         "check the metadata database / secrets backend settings of this host")
        where = f"{conn.conn_type or '?'}" + (f" {conn.host}" if conn.host else "") + (f":{conn.port}" if conn.port else "")
        return Check(label, OK, f"defined ({where}; used by {used_by})")

    def pool(self) -> Check:
        if not POOL:
            return Check("airflow pool", OK, "the tasks use no pool (adapters.POOL is None)")
        label = f"airflow pool {POOL}"
        no_db = os.environ.get("BACKUPS_DOCTOR_NO_DB")
        if no_db:  # opening a missing SQLite file would create an empty database
            return Check(label, WARN, f"{no_db}: the pool cannot be checked, connections were looked up in the "
                                      "environment and the secrets backend only",
                         "run doctor with the scheduler's environment (AIRFLOW_HOME, "
                         "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN; for `make airflow`: `make airflow-status`)")
        try:
            from airflow.models.pool import Pool
            from airflow.utils.session import create_session

            with create_session() as session:
                pool = Pool.get_pool(POOL, session=session)
                slots = pool.slots if pool is not None else None
        except Exception as exc:  # noqa: BLE001 - e.g. a worker without metadata DB access (Airflow 3 workers)
            return Check(label, WARN, f"cannot read the metadata database here ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0][:160]})",
                         "run doctor on the scheduler host to check the pool (`airflow db migrate` if its database "
                         "is new)")
        if pool is None:
            return Check(label, FAIL, "missing: the scheduler never runs the backup tasks (they wait for this pool)",
                         f"airflow pools set {POOL} 2 'backup I/O' (or load airflow_settings.yaml: make airflow-settings)")
        if slots is not None and slots < 1:
            return Check(label, WARN, f"{slots} slot(s): no backup task can run", f"airflow pools set {POOL} 2 'backup I/O'")
        return Check(label, OK, f"{slots} slot(s)")

    def smtp_endpoint(self) -> SmtpEndpoint | None:
        try:
            conn = _connection(_smtp_conn_id())
        except Exception:  # noqa: BLE001 - reported by checks() already
            return None
        extra = conn.extra_dejson or {}
        # the smtp provider's rule: SSL unless the extra disable_ssl is true
        use_ssl = str(extra.get("disable_ssl", False)).lower() not in ("true", "1", "yes")
        return SmtpEndpoint(conn.conn_id, conn.host or "localhost", int(conn.port or (465 if use_ssl else 25)), use_ssl)


def main(argv: list[str] | None = None) -> int:
    """The checks of :class:`AirflowDoctor` as JSON into ``--out`` (``{"checks": [...], "smtp": {...} | null}``)."""
    import argparse
    import contextlib
    import dataclasses
    import json
    import sys

    from ..config import load_config

    ap = argparse.ArgumentParser(description="the Airflow-side checks of backupctl doctor")
    ap.add_argument("--config")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        cfg = load_config(args.config)
        doctor = AirflowDoctor()
        checks = doctor.checks(cfg)
        smtp = doctor.smtp_endpoint() if cfg.notify_email else None
    doc = {"checks": [dataclasses.asdict(c) for c in checks], "smtp": dataclasses.asdict(smtp) if smtp else None}
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    return 0


__all__ = ["AirflowDoctor", "main"]

if __name__ == "__main__":  # pragma: no cover - run by backupctl doctor
    raise SystemExit(main())
