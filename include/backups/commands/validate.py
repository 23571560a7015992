"""Checks of restored data shared by the backup's validation/test-restore steps and the restore command:
Great Expectations on each restored database (GX loaded lazily, only here), PostgreSQL dumps loaded into a
scratch database first."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ValidationFailedError

if TYPE_CHECKING:
    from ..config import Config
    from ..storage import Resolver

log = logging.getLogger("backups.commands.validate")

#: source kinds that are databases (validated with Great Expectations after a restore)
DB_KINDS = ("sqlite", "postgres")
#: connection of a PostgreSQL server where validation may create scratch databases (optional)
PG_SCRATCH_CONN = "backup_pg_scratch"
PG_SCRATCH_ENV = "BACKUP_PG_SCRATCH_DSN"


def pg_scratch_dsn(resolver: Resolver | None = None) -> str | None:
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


def pg_check_server(cfg: Config, source: str, resolver: Resolver | None = None) -> str:
    """The PostgreSQL server where a backup's test restore loads the dump of ``source`` into a scratch database
    (``backup_check_<random>``, dropped afterwards): ``drill.postgres`` (the drill's scratch server) when configured,
    else ``$BACKUP_PG_SCRATCH_DSN`` / the connection ``backup_pg_scratch``, else the source's own server (its DSN:
    the user needs CREATEDB; the live database itself is never written)."""
    pg = cfg.drill.postgres if cfg.drill is not None else None
    if pg is not None:
        if pg.dsn:
            return str(pg.dsn)
        if resolver is None:
            from ..storage import NoAirflowResolver

            resolver = NoAirflowResolver()
        assert pg.conn_id  # the config model requires exactly one of dsn / conn_id
        return str(resolver.postgres_dsn(pg.conn_id))
    dsn = pg_scratch_dsn(resolver)
    if dsn:
        return dsn
    sc = cfg.sources[source]
    assert sc.type == "postgres"  # the caller passes the postgres sources only
    if sc.dsn:
        return str(sc.dsn)
    if resolver is None:
        from ..storage import NoAirflowResolver

        resolver = NoAirflowResolver()
    assert sc.conn_id  # the config model requires exactly one of dsn / conn_id
    return str(resolver.postgres_dsn(sc.conn_id))


def load_pg_dump(dump_dir: Path, details: dict[str, Any], admin_dsn: str, label: str, *, prefix: str = "backup_check_",
                 validate: bool = True) -> dict[str, Any]:
    """Prove a dump restorable: ``pg_restore`` it (one transaction, the recorded dangling foreign keys left out)
    into a new scratch database on ``admin_dsn``, run the Great Expectations suite there when ``validate``, and drop
    the database — always, also after a failure. A dump that does not load is an IntegrityError (exit 4) naming
    pg_restore's error lines; out of space on that server is a StorageError (exit 5)."""
    import uuid

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from ..engine.databases import pg_restore_full
    from ..errors import SourceError

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            drop_dead_scratch(conn)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(json.dumps(
                {"owner": "backupctl test restore", "host": socket.gethostname(), "pid": os.getpid(),
                 "started": datetime.now(UTC).isoformat(timespec="seconds")}))))
    except psycopg.Error as exc:  # libpq and server messages never contain the password
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"test restore of {label}: cannot create the scratch database {name}: {reason}",
                          hint="point drill.postgres (or the connection backup_pg_scratch) at a server where this "
                               "user may create databases, or grant it CREATEDB on the source's server") from None
    t0 = time.monotonic()
    try:
        target = make_conninfo(admin_dsn, dbname=name)
        try:
            loaded = pg_restore_full(dump_dir, target, skip_foreign_keys=details.get("dangling_foreign_keys"))
        except SourceError as exc:
            raise ValidationFailedError(
                f"test restore of {label}: the dump does not load into a scratch database: {exc.message}",
                hint="this snapshot cannot be restored as is: fix the cause pg_restore names (for a foreign key to "
                     "an excluded table, see drop_dangling_foreign_keys in the README), then run the backup again",
                result={"database": label, "success": False, "failures": [f"pg_restore: {exc.message}"]}) from None
        if not validate:
            return {"database": label, "loaded": True, "scratch_database": name,
                    "tables": len(details.get("tables") or {}), "seconds": round(time.monotonic() - t0, 3),
                    **({"foreign_keys_skipped": loaded["foreign_keys_skipped"]} if "foreign_keys_skipped" in loaded else {})}
        from ..validation import validate_postgres

        return validate_postgres(target, details.get("tables") or {}, raise_on_failure=False, label=label)
    finally:
        try:
            with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            log.error("could not drop the scratch database %s: %s (drop it by hand)", name,
                      str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


#: name prefixes of the scratch databases of test restores and validations (each carries its owner as a comment)
SCRATCH_PREFIXES = ("backup_check_", "fmr_validate_")


def drop_dead_scratch(conn: Any) -> list[str]:
    """Drop the scratch databases of test restores whose owner is gone: created on this host by a process that no
    longer runs (a backup killed with -9 before its ``finally``). Owners on other hosts, live owners and databases
    without a readable owner are left alone. Returns the names dropped."""
    from psycopg import sql

    dropped = []
    rows = conn.execute("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE "
                        + " OR ".join("left(datname, %s) = %s" for _ in SCRATCH_PREFIXES),
                        [v for p in SCRATCH_PREFIXES for v in (len(p), p)]).fetchall()
    for name, comment in rows:
        try:
            owner = json.loads(comment or "")
            host, pid = owner["host"], int(owner["pid"])
        except (ValueError, TypeError, KeyError):
            continue
        if host != socket.gethostname() or _alive(pid):
            continue
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        log.warning("dropped the scratch database %s left by process %d (gone) of this host", name, pid)
        dropped.append(name)
    return dropped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def validate_pg_dump(dump_dir: Path, details: dict[str, Any], admin_dsn: str, label: str) -> dict[str, Any]:
    """Load a directory-format dump into a new scratch database, validate it, drop the database
    (:func:`load_pg_dump`). ``details`` is the source's manifest details (its ``tables``, its dangling foreign keys)."""
    return load_pg_dump(dump_dir, details, admin_dsn, label, prefix="fmr_validate_")


def validate_restored(snap: Any, restored: dict[str, Path], scratch_dsn: str | dict[str, str] | None) -> dict[str, Any]:
    """GX on every restored database source; a JSON-safe dict per source (failures collected, not raised).
    A PostgreSQL dump is loaded into a scratch database on ``scratch_dsn`` (:func:`pg_scratch_dsn`, or per source
    :func:`pg_check_server`); without one it is reported as skipped. A dump that does not load raises
    (:func:`load_pg_dump`)."""
    from ..validation import validate_sqlite

    out: dict[str, Any] = {}
    for name, path in sorted(restored.items()):
        rec = snap.sources[name]
        details = rec["details"]
        if rec["kind"] == "sqlite":
            out[name] = validate_sqlite(path / details["database"], details["tables"], raise_on_failure=False)
        elif rec["kind"] == "postgres":
            server = scratch_dsn.get(name) if isinstance(scratch_dsn, dict) else scratch_dsn
            if server is None:
                log.warning("%s (postgres): not validated — no scratch database; define the connection %s (or %s) "
                            "pointing at a server where databases may be created", name, PG_SCRATCH_CONN, PG_SCRATCH_ENV)
                out[name] = {"database": name, "success": None, "skipped": f"no scratch database ({PG_SCRATCH_CONN})"}
                continue
            out[name] = validate_pg_dump(path / "dump", details, server, f"{name} ({details.get('database')})")
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


