"""``postgres`` source: a consistent ``pg_dump`` in directory format, parallel, with recorded row counts.

Algorithm: open a REPEATABLE READ transaction, export its snapshot (``pg_export_snapshot()``), count rows and
read the columns of every table inside that transaction, then run ``pg_dump -Fd -Z0 -j N --snapshot=…`` so
the dump and the recorded counts describe the same instant. The dump directory (``dump/toc.dat`` plus one
``dump/<id>.dat`` per table) becomes the source's entries: in a differential or incremental, a table file whose
bytes did not change is referenced from the parent instead of stored again. Compression is ours (zstd).
The password never appears on a command line: it is passed to ``pg_dump`` in ``PGPASSWORD``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SourceError
from .base import Prepared, SourceReader, walk_staging

log = logging.getLogger("backups.sources.postgres")


def split_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """(conninfo without password, extra environment with PGPASSWORD) for libpq command-line tools."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception:  # psycopg.ProgrammingError; the message may echo the DSN, so do not include it
        raise SourceError("postgres DSN could not be parsed", hint="use postgresql://user@host:port/dbname or key=value form") from None
    env = {}
    if "password" in params:
        env["PGPASSWORD"] = params.pop("password")
    return make_conninfo(**params), env


def find_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    raise SourceError(f"{name} not found", hint="install the PostgreSQL client tools (Debian: postgresql-client)")


def exact_pattern(name: str) -> str:
    """A pg_dump pattern matching exactly ``name``: in double quotes (inner ones doubled), so capitals, spaces,
    dots and the wildcard characters ``*`` / ``?`` are taken literally (unquoted, pg_dump lower-cases them)."""
    return '"{}"'.format(name.replace('"', '""'))


def exact_table_pattern(key: str) -> str:
    """The pg_dump pattern of a table key (``name`` in ``public``, or ``schema.name``), the same table that
    :func:`describe_tables` leaves out for that ``exclude_tables`` entry."""
    schema, _, name = key.rpartition(".")
    return f"{exact_pattern(schema or 'public')}.{exact_pattern(name)}"


def describe_tables(cur: Any, exclude: list[str]) -> dict[str, Any]:
    cur.execute(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")
    tables: dict[str, Any] = {}
    for schema, name in cur.fetchall():
        qualified = name if schema == "public" else f"{schema}.{name}"
        if qualified in exclude or f"{schema}.{name}" in exclude:
            continue
        ident = '"{}"."{}"'.format(schema.replace('"', '""'), name.replace('"', '""'))
        cur.execute(f"SELECT count(*) FROM {ident}")
        rows = cur.fetchone()[0]
        cur.execute(
            "SELECT column_name, data_type, is_nullable = 'NO' FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", (schema, name))
        cols = [[c, t, nn] for c, t, nn in cur.fetchall()]
        cur.execute(
            "SELECT i.indisprimary, array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s::regclass AND i.indisunique GROUP BY i.indexrelid, i.indisprimary", (ident,))
        pk, unique = [], []
        for primary, colnames in cur.fetchall():
            if primary:
                pk = list(colnames)
            unique.append(list(colnames))
        pk_set = set(pk)
        tables[qualified] = {"rows": rows, "columns": [[c, t, nn, c in pk_set] for c, t, nn in cols],
                             "primary_key": pk, "unique": unique}
    return tables


class PostgresSource(SourceReader):
    kind = "postgres"
    change_detection = "checksum"

    def __init__(self, name: str, dsn: str, jobs: int = 2, schemas: list[str] | None = None,
                 exclude_tables: list[str] | None = None, *, drop_dangling_foreign_keys: bool = False) -> None:
        super().__init__(name)
        self._dsn = dsn  # may hold a password: never log or echo it
        self.jobs = jobs
        self.schemas = schemas or []
        self.exclude_tables = exclude_tables or []
        self.drop_dangling_foreign_keys = drop_dangling_foreign_keys

    def _connect(self):
        import psycopg

        try:
            return psycopg.connect(self._dsn, connect_timeout=10)
        except psycopg.Error as exc:
            # libpq messages name host/port/user/database, never the password
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise SourceError(f"source {self.name}: cannot connect to PostgreSQL: {reason}",
                              hint=f"check sources.{self.name} (dsn / conn_id) and that the server is running") from None

    def check(self) -> None:
        with self._connect() as conn:
            conn.execute("SELECT 1")
        find_tool("pg_dump")

    def estimate(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    def dangling_foreign_keys(self, dump_dir: Path) -> list[dict[str, str]]:
        """The dump's foreign keys that reference a table it does not hold (excluded, or outside ``schemas``).
        Such a dump does not load (pg_restore stops at the foreign key): refused (ConfigError, exit 2) naming each
        one, unless ``drop_dangling_foreign_keys`` — then they are returned, recorded in the manifest, and every
        restore leaves them out."""
        from ..engine.databases import dangling_foreign_keys, describe_foreign_key, pg_dump_schema

        dangling = dangling_foreign_keys(pg_dump_schema(dump_dir))
        if dangling and not self.drop_dangling_foreign_keys:
            listed = "; ".join(f"foreign key {describe_foreign_key(fk)}" for fk in dangling[:10])
            more = f" … and {len(dangling) - 10} more" if len(dangling) > 10 else ""
            raise ConfigError(
                f"source {self.name}: {len(dangling)} dumped table(s) reference a table the backup leaves out "
                f"(exclude_tables / schemas), so the dump would not restore: {listed}{more}",
                hint=f"in sources.{self.name}: stop excluding the referenced table(s), or exclude the referencing "
                     "table(s) too, or set drop_dangling_foreign_keys: true to back up without these foreign keys "
                     "(every restore then leaves them out)")
        for fk in dangling:
            log.warning("source %s: foreign key %s left out of every restore (drop_dangling_foreign_keys)",
                        self.name, describe_foreign_key(fk))
        return dangling

    @contextmanager
    def prepare(self, staging: Path) -> Iterator[Prepared]:
        import psycopg

        pg_dump = find_tool("pg_dump")
        conninfo, extra_env = split_dsn(self._dsn)
        with self._connect() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.cursor() as cur:
                cur.execute("SELECT pg_export_snapshot(), current_database(), current_setting('server_version')")
                snap, dbname, version = cur.fetchone()
                cmd = [pg_dump, "--format=directory", "--compress=0", f"--jobs={self.jobs}", f"--snapshot={snap}",
                       "--no-password", f"--file={staging / 'dump'}"]
                cmd += [f"--schema={exact_pattern(s)}" for s in self.schemas]
                cmd += [f"--exclude-table={exact_table_pattern(t)}" for t in self.exclude_tables]
                cmd += [f"--dbname={conninfo}"]
                env = {**os.environ, **extra_env}
                # the dump and the row counts run at the same time, in the same exported snapshot
                errlog = tempfile.TemporaryFile()
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errlog)
                try:
                    tables = describe_tables(cur, self.exclude_tables)
                finally:
                    code = proc.wait()
                if code != 0:
                    errlog.seek(0)
                    msg = errlog.read().decode(errors="replace").strip()[-800:]
                    raise SourceError(f"source {self.name}: pg_dump failed (exit {code}): {msg}")
            conn.rollback()
        details = {"database": dbname, "server_version": version, "format": "directory", "tables": tables}
        dangling = self.dangling_foreign_keys(staging / "dump")
        if dangling:
            details["dangling_foreign_keys"] = dangling
        yield Prepared(entries=walk_staging(staging), details=details)
