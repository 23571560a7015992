"""Backup monitoring (issue 12): status, health checks, alerts, metrics.

The contract between the writers (``backupctl status``, the ``backup_monitoring`` DAG) and the readers (the
"Backups" dashboard plugin, ``/metrics``, ``backupctl status --prometheus``) is one JSON document, the **status**:

.. code-block:: text

    {
      "schema_version": 1,
      "generated_at": "2026-12-01T04:00:00+00:00",       # ISO 8601, UTC
      "application": "fmr-v2",
      "state": "ok" | "warning" | "critical",            # the worst of tiers, storages and problems
      "tiers": [{
          "tier": "daily", "dag_id": "backup_daily",
          "schedule": "0 2 * * 1-6" | null,
          "newest_id": "daily-20261201T020000Z" | null,
          "newest_type": "full" | "differential" | "incremental" | null,
          "newest_logical_date": ISO | null, "newest_committed_at": ISO | null,
          "age_seconds": float | null,                     # now - newest_committed_at
          "rpo_seconds": float,
          "overdue": bool,                                 # age > rpo (or no snapshot at all)
          "state": "ok" | "warning" | "critical",          # the worst of freshness, presence and verification
          "freshness": "ok" | "warning" | "critical",      # by age alone: warning = overdue; critical = > 2 x rpo or never
          "size_bytes": int | null, "duration_seconds": float | null,
          "storages": ["local", ...],                       # storages holding the newest snapshot
          "last_run": {"run_id": str, "state": str, "start": ISO | null, "end": ISO | null, "url": str | null} | null,
          "last_failure": {"run_id": str, "at": ISO, "url": str | null} | null,
          "last_verification": {"at": ISO, "ok": bool, "storage": str, "read_data": bool} | null,  # null: no snapshot
          "verification": {"state": "none" | "ok" | "never" | "overdue" | "failed" | "unknown",
                           "severity": "ok" | "warning" | "critical", "storage": str | null, "at": ISO | null,
                           "max_age_days": float,
                           "failures": [{"storage", "snapshot", "since", "problems": [str]}]},
          "presence": {"checked": [storage, ...], "objects": int, "omitted": {storage: int},  # from each listing
                       "problems": [{"storage", "snapshot", "object": str | null, "problem": str,
                                     "needed_by": [snapshot id, ...]}]},
          "history": [{"id": str, "logical_date": ISO, "size_bytes": int, "duration_seconds": float | null}, ...]
      }],
      "storages": [{"storage": "local", "type": "local", "reachable": bool, "writable": bool | null,
                    "used_bytes": int | null, "free_bytes": int | null, "snapshots": int, "error": str | null,
                    "verification_record": {"state": "absent" | "ok" | "unreadable" | "damaged" | "foreign",
                                            "key": str | null, "problem": str | null} | null,
                    "open_failures": {snapshot id | "*": {"since", "at", "read_data", "problems" (the first 5),
                                                          "problem_count"}},
                    "dependents": {snapshot id: [ids whose chain holds it]},
                    "last_verification": {...} | null, "last_read_data_ok": {...} | null,
                    "last_read_data_at": ISO | null}],     # newest passed re-hash (verify or a backup's check)
      "last_drill": {"id": str, "at": ISO, "passed": bool, "rto_seconds": float | null, "rpo_seconds": float | null,
                     "report": str | null} | null,
      "problems": [{"key": "stale:daily", "severity": "warning" | "critical", "summary": str,
                    "since": ISO, "runs": int}],
      "reports": {"html": str | null, "json": str | null}
    }

Where it lives: :func:`status_path` (a local file, written atomically) and, under Airflow, the Variable
:data:`STATUS_VARIABLE` (written by the ``update_dashboard`` task, so the API server can read it on any machine).
Readers never list a remote repository per page load: they read this document.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

SCHEMA_VERSION = 1
#: the Airflow Variable the monitoring DAG writes the status JSON to (read by the dashboard plugin)
STATUS_VARIABLE = "backup_monitoring_status"


def status_dir(cfg: Config) -> Path:
    """The folder of ``status.json`` (and the monitoring reports and alert state, when kept locally).

    ``monitoring.status_dir`` when configured; otherwise ``reports/monitoring`` under the first local storage;
    otherwise ``$BACKUP_STATUS_DIR`` or ``~/.local/state/fmr-backups/monitoring``.
    """
    mon = getattr(cfg, "monitoring", None)
    configured = getattr(mon, "status_dir", None) if mon is not None else None
    if configured:
        return Path(configured)
    for sto in getattr(cfg, "storages", {}).values():
        if getattr(sto, "type", None) == "local":
            return Path(sto.path) / "reports" / "monitoring"
    env = os.environ.get("BACKUP_STATUS_DIR")
    return Path(env) if env else Path.home() / ".local" / "state" / "fmr-backups" / "monitoring"


def status_path(cfg: Config) -> Path:
    return status_dir(cfg) / "status.json"
