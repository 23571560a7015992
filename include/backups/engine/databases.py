"""Partial restores of databases: keep chosen SQLite tables; load a PostgreSQL dump (optionally some tables)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from ..errors import NotFoundError, SourceError


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


def dump_tables(tool: str, dump_dir: Path) -> set[str]:
    """Table names in a directory-format dump (from ``pg_restore --list``: ``... TABLE <schema> <name> <owner>``)."""
    proc = subprocess.run([tool, "--list", str(dump_dir)], capture_output=True, check=False)
    if proc.returncode != 0:
        raise SourceError(f"pg_restore --list failed (exit {proc.returncode}): "
                          f"{proc.stderr.decode(errors='replace').strip()[-400:]}", hint="the dump may be damaged: run verify")
    names = set()
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith(";"):
            continue
        parts = line.split()
        if "TABLE" not in parts[:5]:
            continue
        i = parts.index("TABLE") + (2 if parts[parts.index("TABLE") + 1 : parts.index("TABLE") + 2] == ["DATA"] else 1)
        if i + 1 < len(parts):
            names.add(parts[i + 1])  # parts[i] is the schema
    return names


def pg_restore(dump_dir: Path, target_dsn: str | None, tables: list[str] | None) -> dict[str, Any]:
    """Load a directory-format dump into ``target_dsn`` (or, without one, write the chosen tables as SQL)."""
    from ..sources.postgres import find_tool, split_dsn

    tool = find_tool("pg_restore")
    if tables:
        existing = dump_tables(tool, dump_dir)
        unknown = [t for t in tables if t.split(".")[-1] not in existing]
        if unknown:
            raise NotFoundError(f"table(s) {unknown} not in the backed-up database dump {dump_dir.parent.name}",
                                hint=f"tables: {', '.join(sorted(existing))}")
    cmd = [tool, "--no-owner", "--no-privileges", "--exit-on-error"]
    for t in tables or []:
        cmd.append(f"--table={t.split('.')[-1]}")
    env = dict(os.environ)
    if target_dsn:
        conninfo, extra = split_dsn(target_dsn)
        env.update(extra)
        cmd += [f"--dbname={conninfo}", "--no-password", "--jobs=2" if not tables else "--single-transaction"]
        out_file = None
    else:
        out_file = dump_dir.parent / "tables.sql"
        cmd += [f"--file={out_file}"]
    cmd.append(str(dump_dir))
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    if proc.returncode != 0:
        raise SourceError(f"pg_restore failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()[-800:]}",
                          hint="check the target database exists and is empty, or restore into a scratch database")
    return {"pg_restore": "loaded into target database" if target_dsn else f"SQL written to {out_file}", "tables": tables or "all"}
