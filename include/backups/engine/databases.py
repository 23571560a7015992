"""Partial restores of databases: keep chosen SQLite tables; load a PostgreSQL dump (optionally some tables)."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, NotFoundError, RefusedError, SourceError


def keep_sqlite_tables(db: Path, tables: list[str]) -> list[str]:
    """Reduce a restored SQLite file to ``tables`` (with their indexes and triggers)."""
    conn = sqlite3.connect(db)
    try:
        existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
        unknown = [t for t in tables if t not in existing]
        if unknown:
            raise NotFoundError(f"table(s) {unknown} not in the backed-up database {db.name}",
                                hint=f"tables: {', '.join(sorted(existing))}")
        conn.execute("PRAGMA foreign_keys=OFF")
        for t in sorted(existing - set(tables)):
            conn.execute('DROP TABLE "{}"'.format(t.replace('"', '""')))
        conn.commit()
        conn.execute("VACUUM")
    finally:
        conn.close()
    return sorted(tables)


def pg_restore(dump_dir: Path, target_dsn: str | None, tables: list[str] | None, *, force: bool = False,
               skip_foreign_keys: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Load a directory-format dump into ``target_dsn`` (or, without one, write the chosen tables as SQL).
    Chosen tables go through :func:`pg_load_tables` / :func:`pg_tables_sql` (with their constraints and indexes);
    the whole dump through :func:`pg_restore_full`."""
    if tables:
        keys = sorted({t[len("public."):] if t.startswith("public.") else t for t in tables})
        return pg_load_tables(dump_dir, target_dsn, keys, force=force) if target_dsn else pg_tables_sql(dump_dir, keys)
    assert target_dsn
    return pg_restore_full(dump_dir, target_dsn, force=force, skip_foreign_keys=skip_foreign_keys)


def pg_user_tables(dsn: str) -> list[str]:
    """The table keys of every table (ordinary or partitioned) of a database outside the system schemas."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2").fetchall()
    return [table_key(s, n) for s, n in rows]


def check_pg_full_target(dump_dir: Path, target_dsn: str, *, force: bool, name: str = "the PostgreSQL target",
                         dump_tables: bool = True) -> list[str]:
    """The tables of ``target_dsn`` that a full restore of the dump would meet. Without ``force``, a database
    holding any table is refused (RefusedError, exit 7) before anything is changed: a full restore is for an empty
    or new database. ``dump_tables``: name the dump's tables among them first (reads ``dump_dir``)."""
    present = pg_user_tables(target_dsn)
    if present and not force:
        ours = sorted(set(present) & set(pg_dump_schema(dump_dir).references)) if dump_tables else []
        shown = ours or present
        what = "holds table(s) of the dump" if ours else "is not empty: it holds table(s)"
        raise RefusedError(f"full restore refused: {name} {what}: {', '.join(shown[:20])}"
                           + (f" … ({len(shown)} in all)" if len(shown) > 20 else "") + "; nothing was changed",
                           hint="restore into an empty or new database (createdb), or pass --force (DAG: force) to "
                                "replace the dump's tables in one transaction (the database ends fully restored or "
                                "unchanged; other tables stay)")
    return present


#: seconds a full restore waits for a lock on a table it replaces (a session of the application holding one)
PG_LOCK_TIMEOUT = 60.0


def _lock_watchdog(child: subprocess.Popen[bytes], dsn: str, app_name: str) -> bool:
    """Wait for ``child`` (pg_restore, its session named ``app_name``); when that session has waited for a lock
    longer than :data:`PG_LOCK_TIMEOUT`, cancel its statement (``pg_cancel_backend``): the transaction rolls back
    and pg_restore exits. ``lock_timeout`` cannot do it: the dump's preamble sets it to 0. True if cancelled."""
    import psycopg

    conn = None
    try:
        while True:
            try:
                child.wait(timeout=0.5)
                return False
            except subprocess.TimeoutExpired:
                pass
            try:
                conn = conn or psycopg.connect(dsn, autocommit=True, connect_timeout=10)
                row = conn.execute(
                    "SELECT pid, extract(epoch FROM now() - state_change) FROM pg_stat_activity WHERE application_name "
                    "= %s AND wait_event_type = 'Lock' ORDER BY 2 DESC LIMIT 1", (app_name,)).fetchone()
            except psycopg.Error:
                continue  # the watchdog is best effort; pg_restore goes on
            if row is not None and float(row[1]) > PG_LOCK_TIMEOUT:
                conn.execute("SELECT pg_cancel_backend(%s)", (row[0],))
                child.wait()
                return True
    finally:
        if conn is not None:
            conn.close()

#: pg_restore / server messages that mean the server (or the client) ran out of space: a storage problem (exit 5)
_NO_SPACE = ("No space left on device", "could not extend file", "Disk quota exceeded", "Check free disk space",
             "SQLSTATE 53100")


def pg_error_lines(stderr: str, limit: int = 800) -> str:
    """pg_restore's error lines (``error:`` / ``ERROR:`` / ``Command was:`` / ``DETAIL:``), else its last output."""
    keep = [ln.strip() for ln in stderr.splitlines()
            if re.search(r"error:|ERROR:|FATAL:|DETAIL:|Command was:", ln) and "errors ignored on restore" not in ln]
    text = "\n".join(keep) if keep else stderr.strip()
    return text[-limit:] if len(text) > limit else text


def _use_list(tool: str, dump_dir: Path, skip: list[dict[str, str]], env: dict[str, str], workdir: Path) -> Path | None:
    """A ``--use-list`` file: the dump's table of contents without the foreign keys in ``skip`` (each
    ``{"schema", "table", "constraint"}``), so pg_restore does not add a foreign key whose referenced table was
    excluded from the dump. None when there is nothing to skip."""
    if not skip:
        return None
    proc = subprocess.run([tool, "--list", str(dump_dir)], capture_output=True, check=False, env=env)
    if proc.returncode != 0:
        raise SourceError(f"pg_restore --list failed (exit {proc.returncode}): "
                          f"{pg_error_lines(proc.stderr.decode(errors='replace'))}",
                          hint="the dump may be damaged: run `backupctl verify --read-data`")
    wanted = {f" FK CONSTRAINT {k['schema']} {k['table']} {k['constraint']} " for k in skip}
    out, dropped = [], 0
    for line in proc.stdout.decode(errors="surrogateescape").splitlines(keepends=True):
        if not line.startswith(";") and any(w in line for w in wanted):
            out.append(";" + line)  # commented out: not restored
            dropped += 1
        else:
            out.append(line)
    path = workdir / "use-list.txt"
    path.write_text("".join(out), encoding="utf-8", errors="surrogateescape")
    return path


def pg_restore_full(dump_dir: Path, target_dsn: str, *, force: bool = False,
                    skip_foreign_keys: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Load the whole dump into ``target_dsn`` in ONE transaction (``pg_restore --single-transaction
    --exit-on-error``): the database ends fully restored or unchanged, never half.

    1. The target must hold no table (:func:`check_pg_full_target`), else RefusedError (exit 7) — unless
       ``force``: then the dump's objects are dropped and re-created inside the same transaction
       (``--clean --if-exists``); tables that are not in the dump stay.
    2. Foreign keys in ``skip_foreign_keys`` (recorded at backup time when the source sets
       ``drop_dangling_foreign_keys``: they reference a table that was excluded) are left out (``--use-list``).
    3. Any failure rolls everything back: out of space on the server → StorageError (exit 5), anything else →
       SourceError (exit 6), both naming pg_restore's error lines and saying the target is unchanged."""
    from ..errors import StorageError
    from ..sources.postgres import find_tool, split_dsn

    present = check_pg_full_target(dump_dir, target_dsn, force=force)
    tool = find_tool("pg_restore")
    conninfo, extra = split_dsn(target_dsn)
    # tagged, so the lock watchdog finds its session (the dump's own preamble sets lock_timeout = 0)
    app_name = f"backupctl-restore-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **extra, "PGAPPNAME": app_name}
    cmd = [tool, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", f"--dbname={conninfo}",
           "--no-password"]
    if present:  # forced: replace the dump's objects in the same transaction
        cmd += ["--clean", "--if-exists"]
    with tempfile.TemporaryDirectory(prefix="pg-restore-") as tmp:
        use_list = _use_list(tool, dump_dir, list(skip_foreign_keys or []), env, Path(tmp))
        if use_list is not None:
            cmd.append(f"--use-list={use_list}")
        errlog = tempfile.TemporaryFile()
        child = subprocess.Popen([*cmd, str(dump_dir)], env=env, stdout=subprocess.DEVNULL, stderr=errlog)
        cancelled = _lock_watchdog(child, target_dsn, app_name)
        errlog.seek(0)
        err = errlog.read().decode(errors="replace")
    if child.returncode != 0:
        lines = pg_error_lines(err)
        if any(s in err for s in _NO_SPACE):
            raise StorageError(f"pg_restore ran out of space (exit {child.returncode}); rolled back (one transaction), "
                               f"the target database is unchanged: {lines}",
                               hint="free space on the PostgreSQL server's disk (or use a bigger one), then restore again")
        if cancelled:
            raise SourceError(f"pg_restore waited {PG_LOCK_TIMEOUT:g}s for a lock held by another session and gave up; "
                              f"rolled back (one transaction), the target database is unchanged: {lines}",
                              hint="stop the application (or end its sessions: pg_stat_activity, pg_terminate_backend) "
                                   "so that nothing uses the target database, then restore again")
        skipped = {(k["schema"], k["table"], k["constraint"]) for k in skip_foreign_keys or []}
        try:
            dangling = [fk for fk in dangling_foreign_keys(pg_dump_schema(dump_dir))
                        if (fk["schema"], fk["table"], fk["constraint"]) not in skipped]
        except SourceError:
            dangling = []
        if dangling:  # a snapshot taken before such dumps were refused at backup time
            raise SourceError(
                f"pg_restore failed (exit {child.returncode}); rolled back (one transaction), the target database is "
                f"unchanged: the dump holds foreign keys to tables it does not contain: "
                f"{', '.join(describe_foreign_key(fk) for fk in dangling)}: {lines}",
                hint="load it by hand without them: pg_restore --list DUMP > list.txt, put ';' before their "
                     "'FK CONSTRAINT' lines, then pg_restore --use-list=list.txt --single-transaction -d DB DUMP; "
                     "and set drop_dangling_foreign_keys (or stop excluding the referenced tables) for new backups")
        raise SourceError(f"pg_restore failed (exit {child.returncode}); rolled back (one transaction), the target "
                          f"database is unchanged: {lines}",
                          hint="read pg_restore's error above: a missing role/extension/tablespace on the target, or "
                               "a dump that does not load (run `backupctl verify --read-data`); restore into a new "
                               "database to compare")
    out: dict[str, Any] = {"pg_restore": "loaded into target database (one transaction)", "tables": "all"}
    if present:
        out["replaced"] = sorted(set(present) & set(pg_dump_schema(dump_dir).references))
    if skip_foreign_keys:
        out["foreign_keys_skipped"] = [f"{table_key(k['schema'], k['table'])}.{k['constraint']}" for k in skip_foreign_keys]
    return out


# ------------------------------------------------------------------------------------------------ dependencies
# Foreign keys decide which tables a partial restore needs: a table is restorable alone only when every table it
# references (transitively) is restored with it (or, for a PostgreSQL target, already exists there).
#
# SQLite: ``PRAGMA foreign_key_list`` on a staged copy of the database, opened read-only and immutable (no
# ``-wal``/``-shm`` file is ever created next to it).
# PostgreSQL: the dump's own schema — ``pg_restore --schema-only -f -`` needs only ``toc.dat`` — parsed per TOC
# entry (its ``-- Name: …; Type: …; Schema: …`` header and statement): each entry is attributed to the table it
# belongs to (the table, its data, defaults, sequences, constraints, indexes, triggers, comments), and every
# ``FOREIGN KEY … REFERENCES`` gives an edge. The same attribution selects what a table-level restore loads.

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUAL = rf"({_IDENT})\.({_IDENT})"
_HEADER = re.compile(r"^-- (?:Data for )?Name: (?P<name>.*); Type: (?P<type>[A-Z][A-Z ]*); Schema: (?P<schema>[^;]*); "
                     r"Owner: (?P<owner>[^;]*)$")
_RULES = [  # (entry types, statement pattern whose groups 1-2 are the owning table's schema and name)
    ({"TABLE"}, re.compile(rf"CREATE (?:UNLOGGED )?TABLE {_QUAL}")),
    ({"DEFAULT", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "SEQUENCE"}, re.compile(rf"ALTER TABLE (?:ONLY )?{_QUAL}")),
    ({"INDEX"}, re.compile(rf"CREATE (?:UNIQUE )?INDEX \S+ ON (?:ONLY )?{_QUAL}")),
    ({"TRIGGER"}, re.compile(rf"CREATE (?:CONSTRAINT )?TRIGGER .*? ON {_QUAL}", re.S)),
    ({"COMMENT"}, re.compile(rf"COMMENT ON (?:TABLE|COLUMN) {_QUAL}")),
]
_OWNED_BY = re.compile(rf"ALTER SEQUENCE {_QUAL} OWNED BY {_QUAL}\.{_IDENT}")
_IDENTITY_SEQ = re.compile(rf"SEQUENCE NAME {_QUAL}")
_REFERENCES = re.compile(rf"FOREIGN KEY \(.*?\) REFERENCES {_QUAL}", re.S)
_FK_NAME = re.compile(rf"ADD CONSTRAINT ({_IDENT}) FOREIGN KEY")


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def table_key(schema: str, name: str) -> str:
    """The name a table has in manifests and requests: ``name`` in ``public``, ``schema.name`` elsewhere."""
    return name if schema == "public" else f"{schema}.{name}"


def quote_table(key: str) -> str:
    """``"schema"."name"`` for a table key."""
    schema, _, name = key.rpartition(".")
    return '"{}"."{}"'.format((schema or "public").replace('"', '""'), name.replace('"', '""'))


def _qual(m: re.Match[str], first: int = 1) -> str:
    return table_key(_unquote(m.group(first)), _unquote(m.group(first + 1)))


def sqlite_ro_params(db: Path) -> str:
    """The ``file:`` URI query that opens ``db`` read-only, and immutable — so that no ``-wal``/``-shm`` side file
    is created next to it (a restore target stays as restored) — unless a non-empty ``-wal`` already holds changes
    that are not in the main file yet (then a plain read-only open sees them)."""
    wal = db.with_name(db.name + "-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    return "mode=ro" if pending else "mode=ro&immutable=1"


def sqlite_foreign_keys(db: Path) -> dict[str, list[str]]:
    """Every table of a SQLite database and the tables its foreign keys reference (read-only, immutable)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?{sqlite_ro_params(db)}", uri=True)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {t: sorted({r[2] for r in conn.execute('PRAGMA foreign_key_list("{}")'.format(t.replace('"', '""')))})
                for t in names}
    finally:
        conn.close()


def sqlite_foreign_key_check(db: Path) -> list[str]:
    """``PRAGMA foreign_key_check`` on a SQLite database (read-only, immutable): one line per group of rows whose
    foreign key points at a missing row or table (empty: every reference resolves)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?{sqlite_ro_params(db)}", uri=True)
    try:
        groups: dict[tuple[str, str], int] = {}
        for table, _rowid, parent, _fk in conn.execute("PRAGMA foreign_key_check"):
            groups[(table, parent)] = groups.get((table, parent), 0) + 1
    except sqlite3.Error as exc:  # a table referencing a table that is not there at all
        return [str(exc)]
    finally:
        conn.close()
    return [f"{n} row(s) of {t} reference missing rows of {p}" for (t, p), n in sorted(groups.items())]


def _chunks(lines: Any) -> Any:
    """(header match or None, lines) per TOC entry of ``pg_restore -f -`` output; COPY data is never parsed."""
    header, buf, in_copy = None, [], False
    for line in lines:
        if in_copy:
            buf.append(line)
            in_copy = line.rstrip("\n") != "\\."
            continue
        m = _HEADER.match(line.rstrip("\n"))
        if m:
            yield header, buf
            header, buf = m, []
        buf.append(line)
        in_copy = line.startswith("COPY ") and line.rstrip().endswith("FROM stdin;")
    yield header, buf


class PgDumpSchema:
    """A directory-format dump's tables, their foreign keys and which TOC entry belongs to which table."""

    def __init__(self, sql_lines: Any) -> None:
        self.owner: dict[tuple[str, str, str], str] = {}  # (type, schema, name) -> table key
        self.references: dict[str, set[str]] = {}
        #: every foreign key: {"schema", "table" (the referencing table, unquoted), "constraint", "references" (key)}
        self.foreign_keys: list[dict[str, str]] = []
        seqs: dict[str, str] = {}  # sequence key -> table key
        pending: list[tuple[tuple[str, str, str], str]] = []  # CREATE SEQUENCE entries, owner known later
        for m, lines in _chunks(sql_lines):
            if m is None:
                continue
            key = (m["type"], m["schema"], m["name"])
            body = "".join(x for x in lines if not x.startswith("--"))
            if m["type"] == "SEQUENCE OWNED BY" and (o := _OWNED_BY.search(body)):
                seqs[_qual(o)] = self.owner[key] = _qual(o, 3)
                continue
            if m["type"] == "SEQUENCE" and "ALTER TABLE" not in body:
                pending.append((key, table_key(m["schema"], m["name"])))
                continue
            for types, rx in _RULES:
                if m["type"] in types and (o := rx.search(body)):
                    self.owner[key] = _qual(o)
                    break
            else:
                continue
            if m["type"] == "TABLE":
                self.references.setdefault(self.owner[key], set())
            if m["type"] == "SEQUENCE" and (s := _IDENTITY_SEQ.search(body)):
                seqs[_qual(s)] = self.owner[key]
            if m["type"] == "FK CONSTRAINT" and (r := _REFERENCES.search(body)):
                self.references.setdefault(self.owner[key], set()).add(_qual(r))
                if (t := _RULES[1][1].search(body)) and (c := _FK_NAME.search(body)):
                    self.foreign_keys.append({"schema": _unquote(t.group(1)), "table": _unquote(t.group(2)),
                                              "constraint": _unquote(c.group(1)), "references": _qual(r)})
        for key, seq in pending:
            if seq in seqs:
                self.owner[key] = seqs[seq]
        self._seqs = seqs

    @property
    def tables(self) -> dict[str, list[str]]:
        return {t: sorted(r) for t, r in sorted(self.references.items())}

    def table_of(self, m: re.Match[str]) -> str | None:
        if m["type"] == "TABLE DATA":
            return table_key(m["schema"], m["name"])
        if m["type"] == "SEQUENCE SET":
            return self._seqs.get(table_key(m["schema"], m["name"]))
        return self.owner.get((m["type"], m["schema"], m["name"]))

    def select(self, sql_lines: Any, tables: set[str]) -> Any:
        """The lines of ``sql_lines`` (the dump as SQL) that create and fill ``tables``: the preamble (session
        settings) and every entry owned by one of them; schemas, functions, views, … are left out."""
        for m, lines in _chunks(sql_lines):
            if m is None or self.table_of(m) in tables:
                yield from lines


def _pg_sql(dump_dir: Path, *extra: str) -> subprocess.Popen[str]:
    from ..sources.postgres import find_tool

    # stderr to a file: a pipe nobody reads while stdout is streamed could fill up and stall pg_restore
    return _popen([find_tool("pg_restore"), "--no-owner", "--no-privileges", *extra, "-f", "-", str(dump_dir)],
                  stdout=subprocess.PIPE)


def _popen(cmd: list[str], **kw: Any) -> subprocess.Popen[str]:
    """A text-mode child whose stderr goes to a temp file (read by :func:`_stderr`)."""
    errlog = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stderr=errlog, text=True, encoding="utf-8", errors="surrogateescape", **kw)
    proc.errlog = errlog  # type: ignore[attr-defined]
    return proc


def _stderr(proc: subprocess.Popen[str]) -> str:
    fh: Any = getattr(proc, "errlog", None)
    if fh is None:
        return ""
    fh.seek(0)
    return fh.read().decode(errors="replace").strip()


def _finish(proc: subprocess.Popen[str], what: str) -> None:
    if proc.wait() != 0:
        raise SourceError(f"{what} failed (exit {proc.returncode}): {_stderr(proc)[-600:]}",
                          hint="the dump may be damaged: run `backupctl verify --read-data`")


def pg_dump_schema(dump_dir: Path) -> PgDumpSchema:
    """The dump's tables and foreign keys (needs only ``dump_dir/toc.dat``)."""
    proc = _pg_sql(dump_dir, "--schema-only")
    assert proc.stdout is not None
    schema = PgDumpSchema(proc.stdout)
    _finish(proc, "pg_restore --schema-only")
    return schema


def dangling_foreign_keys(schema: PgDumpSchema) -> list[dict[str, str]]:
    """The foreign keys of a dump that reference a table the dump does not hold (excluded with
    ``exclude_tables``, or outside ``schemas``): pg_restore cannot add them, so the dump does not load as is."""
    return sorted((fk for fk in schema.foreign_keys if fk["references"] not in schema.references),
                  key=lambda fk: (fk["schema"], fk["table"], fk["constraint"]))


def describe_foreign_key(fk: dict[str, str]) -> str:
    """``orders_customer_fk (orders -> customers)`` for messages."""
    return f"{fk['constraint']} ({table_key(fk['schema'], fk['table'])} -> {fk['references']})"


def dependency_closure(references: dict[str, list[str]], tables: list[str]) -> list[str]:
    """The tables ``tables`` reference, directly or through others (not ``tables`` themselves), sorted."""
    seen: set[str] = set(tables)
    todo = list(tables)
    while todo:
        for ref in references.get(todo.pop(), []):
            if ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return sorted(seen - set(tables))


def pg_target_tables(dsn: str, tables: list[str]) -> dict[str, int | None]:
    """For each table key: None when the target database has no such table, else 1 if it holds rows, 0 if empty."""
    import psycopg

    out: dict[str, int | None] = {}
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        for t in tables:  # fetchone() is typed Optional: these SELECTs always return exactly one row
            if conn.execute("SELECT to_regclass(%s)", (quote_table(t),)).fetchone()[0] is None:  # type: ignore[index]
                out[t] = None
            else:
                out[t] = int(conn.execute(f"SELECT EXISTS (SELECT 1 FROM {quote_table(t)})").fetchone()[0])  # type: ignore[index]
    return out


def pg_load_tables(dump_dir: Path, target_dsn: str, tables: list[str], *, force: bool) -> dict[str, Any]:
    """Load ``tables`` (definition, data, sequences, constraints, indexes, triggers) from a directory-format dump
    into an existing database, in ONE transaction (``psql --single-transaction``, stop on the first error):

    1. lock the tables that exist there; refuse (RefusedError) if one holds rows and ``force`` is off — checked
       again inside the transaction;
    2. drop the foreign keys of other tables that reference them (remembering their definitions), then the tables;
    3. create and fill the tables from the dump (their own foreign keys are checked as they are added);
    4. re-add the dropped foreign keys ``NOT VALID`` and ``VALIDATE CONSTRAINT`` each: rows elsewhere that
       reference data the restore removed fail the load.

    Any failure rolls everything back: the target database is as it was."""
    import psycopg

    from ..sources.postgres import find_tool, split_dsn

    schema = pg_dump_schema(dump_dir)
    unknown = [t for t in tables if t not in schema.references]
    if unknown:
        raise NotFoundError(f"table(s) {unknown} not in the backed-up database dump {dump_dir.parent.name}",
                            hint=f"tables: {', '.join(sorted(schema.references))}")
    state = pg_target_tables(target_dsn, tables)
    full = sorted(t for t, s in state.items() if s)
    if full and not force:
        raise RefusedError(f"the PostgreSQL target already holds rows in {', '.join(full)}",
                           hint="restore into an empty or new database, or pass force (--force) to replace these "
                                "tables in one transaction")
    existing = [t for t, s in state.items() if s is not None]
    inbound: list[tuple[str, str, str]] = []
    if existing:
        with psycopg.connect(target_dsn, connect_timeout=10) as conn:
            conn.execute("SET search_path = ''")  # every name in the definitions schema-qualified
            inbound = conn.execute(
                "SELECT format('%%I.%%I', n.nspname, r.relname), c.conname, pg_get_constraintdef(c.oid) "
                "FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace "
                "WHERE c.contype = 'f' AND c.confrelid = ANY(%s::regclass[]) AND NOT c.conrelid = ANY(%s::regclass[]) "
                "ORDER BY 1, 2", ([quote_table(t) for t in existing],) * 2).fetchall()
    quoted = ", ".join(quote_table(t) for t in existing)
    pre = ["SET lock_timeout = '60s';"]
    if existing:
        pre.append(f"LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE;")
        if not force:
            for t in existing:  # a dollar-quote tag that the table's name does not contain
                body = (f"BEGIN IF EXISTS (SELECT 1 FROM {quote_table(t)}) THEN RAISE EXCEPTION "
                        f"'table {t.replace(chr(39), '').replace('%', '%%')} holds rows'; END IF; END")
                tag = "$fmr$"
                while tag in body:
                    tag = tag[:-1] + "x$"
                pre.append(f"DO {tag} {body} {tag};")
        pre += [f'ALTER TABLE {rel} DROP CONSTRAINT "{name.replace(chr(34), chr(34) * 2)}";' for rel, name, _ in inbound]
        pre.append(f"DROP TABLE {quoted};")
    post = []
    for rel, name, definition in inbound:
        qname = '"{}"'.format(name.replace('"', '""'))
        post.append(f"ALTER TABLE {rel} ADD CONSTRAINT {qname} {definition.replace(' NOT VALID', '')} NOT VALID;")
        if " NOT VALID" not in definition:
            post.append(f"ALTER TABLE {rel} VALIDATE CONSTRAINT {qname};")
    conninfo, extra = split_dsn(target_dsn)
    psql = _popen([find_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                   f"--dbname={conninfo}", "--no-password", "-f", "-"],
                  env={**os.environ, **extra}, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert psql.stdin is not None
    dump = _pg_sql(dump_dir)
    assert dump.stdout is not None
    # psql commits only when its input ends: until the epilogue is written, killing it rolls everything back
    fed = False
    try:
        psql.stdin.write("\n".join(pre) + "\n")
        for line in schema.select(dump.stdout, set(tables)):
            psql.stdin.write(line)
        _finish(dump, "pg_restore")  # a dump that could not be read completely must not be committed
        psql.stdin.write("\n".join(post) + "\n")
        fed = True
    except BrokenPipeError:
        pass  # psql stopped at an error (and rolled back): its message follows
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
        if fed:
            with contextlib.suppress(BrokenPipeError):
                psql.stdin.close()
        elif psql.poll() is None:
            psql.kill()  # the server rolls back the open transaction
            with contextlib.suppress(OSError):
                psql.stdin.close()
    psql.wait()
    if psql.returncode != 0:
        msg = _stderr(psql)[-800:] or f"psql exit {psql.returncode}"
        if "violates foreign key constraint" in msg:
            raise IntegrityError(f"loading {', '.join(tables)} into the PostgreSQL target broke a foreign key; "
                                 f"rolled back, the target database is unchanged: {msg}",
                                 hint="restore the referencing tables too (add them to the tables), or fix the rows "
                                      "that reference removed data first")
        raise SourceError(f"loading {', '.join(tables)} into the PostgreSQL target failed; rolled back, the target "
                          f"database is unchanged: {msg}",
                          hint="a view or another object may depend on a replaced table, or a type/schema the tables "
                               "use is missing: fix the target database, or restore the whole dump into a new one")
    return {"pg_restore": "loaded into target database (one transaction, constraints validated)", "tables": sorted(tables),
            "replaced": existing, "foreign_keys_revalidated": [f"{rel}.{name}" for rel, name, _ in inbound]}


def pg_tables_sql(dump_dir: Path, tables: list[str]) -> dict[str, Any]:
    """Without a PostgreSQL target: the chosen tables (with their constraints, indexes, sequences) as SQL in
    ``tables.sql`` next to the dump (load it with ``psql --single-transaction -f tables.sql``)."""
    schema = pg_dump_schema(dump_dir)
    unknown = [t for t in tables if t not in schema.references]
    if unknown:
        raise NotFoundError(f"table(s) {unknown} not in the backed-up database dump {dump_dir.parent.name}",
                            hint=f"tables: {', '.join(sorted(schema.references))}")
    out_file = dump_dir.parent / "tables.sql"
    dump = _pg_sql(dump_dir)
    assert dump.stdout is not None
    with open(out_file, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.writelines(schema.select(dump.stdout, set(tables)))
    _finish(dump, "pg_restore")
    return {"pg_restore": f"SQL written to {out_file}", "tables": sorted(tables)}
