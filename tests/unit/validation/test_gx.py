"""The Great Expectations suite: derived from what the source reported, passes on a faithful copy, fails clearly.

great_expectations is imported once for the module (the first test pays ~10 s); the details every test
validates against come from the same function the sqlite source uses when it backs a database up.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from backups.errors import IntegrityError
from backups.sources.sqlite import describe_tables
from backups.validation import suite_for, validate_postgres, validate_sqlite

SCHEMA = """
CREATE TABLE robots (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, model TEXT);
CREATE TABLE missions (id INTEGER PRIMARY KEY, robot_id INTEGER NOT NULL, status TEXT);
CREATE TABLE tags (robot_id INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (robot_id, tag));
"""


def make_db(path: Path, *, unique_name: bool = True) -> Path:
    conn = sqlite3.connect(path)
    schema = SCHEMA if unique_name else SCHEMA.replace("TEXT NOT NULL UNIQUE", "TEXT NOT NULL")
    conn.executescript(schema)
    conn.executemany("INSERT INTO robots VALUES (?, ?, ?)", [(i, f"amr-{i:03d}", "AMR-2") for i in range(1, 21)])
    conn.executemany("INSERT INTO missions VALUES (?, ?, ?)", [(i, 1 + i % 20, "done") for i in range(1, 101)])
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [(r, t) for r in range(1, 6) for t in ("a", "b")])
    conn.commit()
    conn.close()
    return path


def details_of(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return describe_tables(conn)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gx():
    import great_expectations

    return great_expectations


@pytest.fixture()
def good(tmp_path: Path) -> tuple[Path, dict]:
    db = make_db(tmp_path / "app.db")
    return db, details_of(db)


def test_suite_for_covers_counts_schema_and_keys(gx, good):
    _, details = good
    exps = suite_for(details)
    got = {(e.meta["table"], e.expectation_type, json.dumps(e.configuration.kwargs, sort_keys=True, default=str))
           for e in exps}
    kinds = {(t, k) for t, k, _ in got}
    assert ("robots", "expect_table_row_count_to_equal") in kinds
    assert ("robots", "expect_table_columns_to_match_set") in kinds
    assert ("tags", "expect_compound_columns_to_be_unique") in kinds
    uniques = sorted(e.column for e in exps if e.expectation_type == "expect_column_values_to_be_unique")
    assert uniques == ["id", "id", "name"]  # missions.id, robots.id, robots.name
    not_null = sorted(f"{e.meta['table']}.{e.column}" for e in exps
                      if e.expectation_type == "expect_column_values_to_not_be_null")
    assert not_null == ["missions.id", "robots.id", "robots.name", "tags.robot_id", "tags.tag"]
    rows = {e.meta["table"]: e.value for e in exps if e.expectation_type == "expect_table_row_count_to_equal"}
    assert rows == {"missions": 100, "robots": 20, "tags": 10}


def test_good_database_passes(gx, good):
    db, details = good
    res = validate_sqlite(db, details)
    assert res["success"] is True
    assert res["failures"] == []
    assert res["statistics"]["unsuccessful_expectations"] == 0
    assert res["statistics"]["evaluated_expectations"] == len(suite_for(details))
    json.dumps(res)  # JSON-safe: fit for XCom


def test_deleted_row_fails_with_clear_message(gx, good):
    db, details = good
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM missions WHERE id = 42")
    conn.commit()
    conn.close()
    with pytest.raises(IntegrityError) as info:
        validate_sqlite(db, details)
    msg = str(info.value)
    assert "data validation of app.db failed" in msg
    assert "missions: expect_table_row_count_to_equal(value=100): observed 99" in msg
    assert info.value.result["statistics"]["unsuccessful_expectations"] == 1


def test_duplicated_key_fails(gx, tmp_path):
    reported = details_of(make_db(tmp_path / "source.db"))  # the source had a unique robots.name
    db = make_db(tmp_path / "restored.db", unique_name=False)  # the copy lost the index and got a duplicate
    conn = sqlite3.connect(db)
    conn.execute("UPDATE robots SET name = 'amr-001' WHERE id = 2")
    conn.commit()
    conn.close()
    res = validate_sqlite(db, reported, raise_on_failure=False)
    assert res["success"] is False
    failed = [r for r in res["results"] if not r["success"]]
    assert [(r["table"], r["expectation"], r["kwargs"]) for r in failed] == [
        ("robots", "expect_column_values_to_be_unique", {"column": "name"})]
    assert failed[0]["unexpected_count"] == 2
    assert "robots: expect_column_values_to_be_unique(column='name'): 2 unexpected value(s)" in res["failures"][0]


def test_schema_change_and_missing_table_fail(gx, good):
    db, details = good
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE robots ADD COLUMN firmware TEXT")
    conn.execute("DROP TABLE tags")
    conn.commit()
    conn.close()
    with pytest.raises(IntegrityError) as info:
        validate_sqlite(db, details)
    failures = info.value.result["failures"]
    assert any(f.startswith("table tags: missing from the restored database") for f in failures)
    assert any("robots: expect_table_columns_to_match_set" in f and "firmware" in f for f in failures)


def _pg_admin() -> str | None:
    try:
        import psycopg

        dsn = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return dsn
    except Exception:
        return None


def test_postgres_database(gx):
    admin = _pg_admin()
    if admin is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    import psycopg

    from backups.sources.postgres import describe_tables as pg_describe

    name = f"gx_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE robots (id integer PRIMARY KEY, name text NOT NULL UNIQUE)")
            conn.execute("CREATE SCHEMA ops")
            conn.execute("CREATE TABLE ops.events (id bigint PRIMARY KEY, robot_id integer NOT NULL)")
            conn.execute("INSERT INTO robots SELECT i, 'amr-' || i FROM generate_series(1, 30) i")
            conn.execute("INSERT INTO ops.events SELECT i, 1 + i % 30 FROM generate_series(1, 50) i")
            with conn.cursor() as cur:
                details = pg_describe(cur, [])
        assert set(details) == {"robots", "ops.events"}
        assert validate_postgres(dsn, details)["success"] is True
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM ops.events WHERE id = 7")
        with pytest.raises(IntegrityError, match=r"ops\.events: expect_table_row_count_to_equal\(value=50\): observed 49"):
            validate_postgres(dsn, details)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


#: table and column names that need quoting: capitals, spaces, double and single quotes, SQL keywords, unicode
ODD_NAMES = ["Robots", "robot fleet", 'say "hi"', "it's", "select", "Ünïcödé Täble"]


def _odd_sqlite(path: Path, table: str) -> Path:
    q = table.replace('"', '""')
    conn = sqlite3.connect(path)
    conn.execute(f'CREATE TABLE "{q}" ("Id" INTEGER PRIMARY KEY, "Robot Name" TEXT NOT NULL UNIQUE, "x""y" TEXT)')
    conn.executemany(f'INSERT INTO "{q}" VALUES (?, ?, ?)', [(i, f"amr-{i}", None) for i in range(1, 13)])
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("table", ODD_NAMES)
def test_sqlite_odd_identifiers_validate(gx, tmp_path, table):
    db = _odd_sqlite(tmp_path / "odd.db", table)
    details = details_of(db)
    assert details[table]["rows"] == 12
    res = validate_sqlite(db, details, raise_on_failure=False)
    assert res["success"] is True, res["failures"]
    conn = sqlite3.connect(db)
    conn.execute('DELETE FROM "{}" WHERE "Id" = 3'.format(table.replace('"', '""')))
    conn.commit()
    conn.close()
    with pytest.raises(IntegrityError, match="observed 11"):
        validate_sqlite(db, details)


@pytest.mark.parametrize("table", ["Robots", 'Ops "Schema".Robot Fleet', "ünï.it's"])
def test_postgres_odd_identifiers_validate(gx, table):
    """A table named with capitals (``"Robots"``), spaces, quotes or unicode, in public or another schema."""
    admin = _pg_admin()
    if admin is None:
        pytest.fail("PostgreSQL on 127.0.0.1:5432 is required")
    import psycopg
    from psycopg import sql

    from backups.sources.postgres import describe_tables as pg_describe

    schema, _, name = table.rpartition(".")
    qual = sql.SQL(".").join([sql.Identifier(schema or "public"), sql.Identifier(name)])
    db = f"gx_hpostgres_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={db}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            if schema:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL('CREATE TABLE {} ("Id" int PRIMARY KEY, "Robot Name" text NOT NULL UNIQUE, "x""y" text)')
                         .format(qual))
            conn.execute(sql.SQL("INSERT INTO {} SELECT i, 'amr-' || i FROM generate_series(1, 30) i").format(qual))
            with conn.cursor() as cur:
                details = pg_describe(cur, [])
        assert set(details) == {table} and details[table]["rows"] == 30
        res = validate_postgres(dsn, details, raise_on_failure=False)
        assert res["success"] is True, res["failures"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL('DELETE FROM {} WHERE "Id" = 7').format(qual))
        with pytest.raises(IntegrityError, match="observed 29"):
            validate_postgres(dsn, details)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
