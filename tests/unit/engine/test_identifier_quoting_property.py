"""Property: every place our code puts a table name into SQL quotes it, for any name SQLite or PostgreSQL allows
(capitals, spaces, quotes, ``$$``, ``%``, keywords, unicode) — row counts, keys, foreign keys, table selection,
the emptiness check of a restore target. Real SQLite files and the real PostgreSQL server on 127.0.0.1:5432."""

from __future__ import annotations

import sqlite3
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from backups.engine.databases import (
    keep_sqlite_tables,
    pg_target_tables,
    pg_user_tables,
    sqlite_foreign_key_check,
    sqlite_foreign_keys,
)
from backups.sources.postgres import describe_tables as pg_describe
from backups.sources.sqlite import describe_tables as sqlite_describe

PG = "postgresql://postgres@127.0.0.1:5432"

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00.")
#: names that need quoting more often than not: mixed in on purpose
_odd = st.sampled_from(['"', "'", " ", "$$", "%", "select", "Robots", "ü", "--", ";", "\\"])
names = st.lists(st.one_of(_odd, st.text(_chars, min_size=1, max_size=4)), min_size=1, max_size=5).map("".join).filter(
    lambda n: n.strip() == n and 0 < len(n.encode()) <= 50 and not n.lower().startswith("sqlite_"))


def _q(name: str) -> str:
    return '"{}"'.format(name.replace('"', '""'))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parent=names, child=names)
def test_sqlite_paths_quote_any_name(tmp_path, parent, child):
    if parent.lower() == child.lower():
        return
    db = tmp_path / f"{uuid.uuid4().hex}.db"
    conn = sqlite3.connect(db)
    conn.execute(f"CREATE TABLE {_q(parent)} (id INTEGER PRIMARY KEY)")
    conn.execute(f"CREATE TABLE {_q(child)} (id INTEGER PRIMARY KEY, p INTEGER REFERENCES {_q(parent)}(id))")
    conn.executemany(f"INSERT INTO {_q(parent)} VALUES (?)", [(i,) for i in range(3)])
    conn.executemany(f"INSERT INTO {_q(child)} VALUES (?, ?)", [(i, i % 3) for i in range(5)])
    conn.commit()
    details = sqlite_describe(conn)
    conn.close()
    assert details[parent]["rows"] == 3 and details[child]["rows"] == 5 and details[child]["primary_key"] == ["id"]
    assert sqlite_foreign_keys(db) == {parent: [], child: [parent]}
    assert sqlite_foreign_key_check(db) == []
    assert keep_sqlite_tables(db, [child]) == [child]
    assert sqlite_foreign_key_check(db)  # the parent is gone: the check names the dangling reference
    db.unlink()


@pytest.fixture(scope="module")
def pg_db():
    name = f"bk_hpostgres_prop_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{PG}/{name}"
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=names, schema=st.one_of(st.none(), names))
def test_postgres_paths_quote_any_name(pg_db, table, schema):
    qual = sql.SQL(".").join([sql.Identifier(schema or "public"), sql.Identifier(table)])
    key = table if schema in (None, "public") else f"{schema}.{table}"
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
        for (s,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('public', 'information_schema') "
                                 "AND nspname NOT LIKE 'pg\\_%'").fetchall():
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(s)))
        if schema not in (None, "public"):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        assert pg_user_tables(pg_db) == []
        conn.execute(sql.SQL('CREATE TABLE {} ("Id" int PRIMARY KEY, "x y" text UNIQUE)').format(qual))
        assert pg_target_tables(pg_db, [key]) == {key: 0}
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, 'b')").format(qual))
        with conn.cursor() as cur:
            details = pg_describe(cur, [])
    assert details[key]["rows"] == 2 and details[key]["primary_key"] == ["Id"] and ["x y"] in details[key]["unique"]
    assert pg_user_tables(pg_db) == [key] and pg_target_tables(pg_db, [key]) == {key: 1}
    with psycopg.connect(pg_db) as conn, conn.cursor() as cur:
        assert key not in pg_describe(cur, [key])  # exclude_tables matches the exact name
