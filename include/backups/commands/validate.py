"""Checks of restored data shared by the backup's validation/test-restore steps and the restore command:
Great Expectations on each restored database (GX loaded lazily, only here), PostgreSQL dumps loaded into a
scratch database first."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ValidationFailedError

log = logging.getLogger("backups.commands.validate")

#: source kinds that are databases (validated with Great Expectations after a restore)
DB_KINDS = ("sqlite", "postgres")
#: connection of a PostgreSQL server where validation may create scratch databases (optional)
PG_SCRATCH_CONN = "backup_pg_scratch"
PG_SCRATCH_ENV = "BACKUP_PG_SCRATCH_DSN"


def pg_scratch_dsn(resolver: Any = None) -> str | None:
    """Where PostgreSQL dumps are loaded for validation: ``$BACKUP_PG_SCRATCH_DSN``, else the connection
    ``backup_pg_scratch`` through ``resolver`` (the DAGs pass Airflow's); None when neither is configured."""
    if os.environ.get(PG_SCRATCH_ENV):
        return os.environ[PG_SCRATCH_ENV]
    if resolver is None:
        return None
    try:
        return resolver.postgres_dsn(PG_SCRATCH_CONN)
    except Exception:  # not configured: PostgreSQL validation is skipped with a clear log line
        return None


def validate_pg_dump(dump_dir: Path, details: dict[str, Any], admin_dsn: str, label: str) -> dict[str, Any]:
    """Load a directory-format dump into a new scratch database, validate it, drop the database."""
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    from ..engine.databases import pg_restore
    from ..validation import validate_postgres

    name = f"fmr_validate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        target = make_conninfo(admin_dsn, dbname=name)
        pg_restore(dump_dir, target, None)
        return validate_postgres(target, details, raise_on_failure=False, label=label)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def validate_restored(snap: Any, restored: dict[str, Path], scratch_dsn: str | None) -> dict[str, Any]:
    """GX on every restored database source; a JSON-safe dict per source (failures collected, not raised).
    A PostgreSQL dump is loaded into a scratch database on ``scratch_dsn`` (:func:`pg_scratch_dsn`); without one
    it is reported as skipped."""
    from ..validation import validate_sqlite

    out: dict[str, Any] = {}
    for name, path in sorted(restored.items()):
        rec = snap.sources[name]
        details = rec["details"]
        if rec["kind"] == "sqlite":
            out[name] = validate_sqlite(path / details["database"], details["tables"], raise_on_failure=False)
        elif rec["kind"] == "postgres":
            if scratch_dsn is None:
                log.warning("%s (postgres): not validated — no scratch database; define the connection %s (or %s) "
                            "pointing at a server where databases may be created", name, PG_SCRATCH_CONN, PG_SCRATCH_ENV)
                out[name] = {"database": name, "success": None, "skipped": f"no scratch database ({PG_SCRATCH_CONN})"}
                continue
            out[name] = validate_pg_dump(path / "dump", details["tables"], scratch_dsn, f"{name} ({details.get('database')})")
    return out


def compact_results(results: dict[str, Any]) -> dict[str, Any]:
    """Per database: success, statistics and the failures (the per-expectation list stays in the task log)."""
    return {n: {k: r.get(k) for k in ("database", "success", "skipped", "statistics", "failures", "seconds") if k in r}
            for n, r in results.items()}


def raise_failed(what: str, snap_id: str, results: dict[str, Any]) -> None:
    """ValidationFailedError naming every failed check when a database failed its validation."""
    failed = {n: r for n, r in results.items() if r.get("success") is False}
    if not failed:
        return
    lines = [f"{n}: {f}" for n, r in failed.items() for f in r["failures"]]
    raise ValidationFailedError(f"{what} of {snap_id} failed: {len(lines)} check(s) failed:\n  - " + "\n  - ".join(lines[:30]),
                         hint="the backed-up data does not match what the source reported; do not rely on this "
                              "snapshot; re-run the backup and `backupctl verify --read-data`", result=results)


