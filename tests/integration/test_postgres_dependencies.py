"""Dependency-aware table-level restore of a PostgreSQL source into an existing database (real server on
127.0.0.1:5432): foreign keys from the dump's schema, a missing dependency refused before anything is written,
a non-empty target refused without force and replaced in one transaction with it, a broken foreign key rolled
back. Databases are named ``bk_helper_b_*`` and dropped."""

from __future__ import annotations

import re

import psycopg
import pytest

from backups.commands import restore as rc
from backups.config import load_config
from backups.errors import IntegrityError, RefusedError
from tests.helpers import make_app, run_backup, write_config

PG = "postgresql://postgres@127.0.0.1:5432"


def _q(dsn: str, sql: str) -> list:
    with psycopg.connect(dsn) as c:
        return c.execute(sql).fetchall()


@pytest.fixture
def pg_app(tmp_path, dbs, monkeypatch):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    with psycopg.connect(src) as c:
        c.execute("CREATE TABLE fleet (id serial PRIMARY KEY, name text NOT NULL UNIQUE)")
        c.execute("CREATE TABLE missions (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                  "fleet_id int NOT NULL REFERENCES fleet(id), note text)")
        c.execute("CREATE INDEX missions_fleet ON missions (fleet_id)")
        c.execute("CREATE TABLE audit (id serial PRIMARY KEY, mission_id bigint REFERENCES missions(id))")
        c.execute("INSERT INTO fleet (name) SELECT 'r' || g FROM generate_series(1, 20) g")
        c.execute("INSERT INTO missions (fleet_id, note) SELECT 1 + g % 20, md5(g::text) FROM generate_series(1, 200) g")
        c.execute("INSERT INTO audit (mission_id) SELECT g FROM generate_series(1, 50) g")
    a = make_app(tmp_path, scale=0.1, seed=5)
    cfg = load_config(write_config(tmp_path / "pg.yaml", a["home"], a["root"],
                                   extra_sources=f'  fleet_db: {{type: postgres, dsn: "{src}"}}\n', tier_sources="fleet_db"))
    run_backup(cfg, "weekly", logical_date="2026-02-01T01:00:00Z")
    return {"cfg": cfg, "src": src, "tmp": tmp_path, "make": dbs}


def _restore(app, dsn, target, tables, **kw):
    req = rc.RestoreRequest(target=str(app["tmp"] / target), sources=["fleet_db"], tables=tables,
                            pg_target_name="test", **kw)
    return rc.restore_snapshot(app["cfg"], req, pg_dsn=dsn, validate=False)


def test_dump_schema_gives_the_foreign_keys(pg_app):
    req = rc.check_request(pg_app["cfg"], rc.RestoreRequest(target=str(pg_app["tmp"] / "p"), tables=["audit"],
                                                            include_dependencies=True))
    plan = rc.plan_tables(pg_app["cfg"], req, rc.locate(pg_app["cfg"], req))
    s = plan.sources["fleet_db"]
    assert s["tables"] == ["audit", "fleet", "missions"] and s["added"] == ["fleet", "missions"]  # transitively
    assert s["references"] == {"audit": ["missions"], "missions": ["fleet"]}
    assert list((pg_app["tmp"] / "staging").iterdir()) == []


def test_missing_dependency_refused_and_nothing_written(pg_app):
    empty = pg_app["make"]("empty")
    with pytest.raises(RefusedError, match=r"fleet_db: fleet \(referenced by missions\)") as ei:
        _restore(pg_app, empty, "a", ["missions"])
    assert "--with-dependencies" in ei.value.hint
    assert not (pg_app["tmp"] / "a").exists()
    assert _q(empty, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    # a dependency that already exists in the target database satisfies the reference
    with psycopg.connect(empty) as c:
        c.execute("CREATE TABLE fleet (id int PRIMARY KEY, name text)")
        c.execute("INSERT INTO fleet SELECT g, 'r' || g FROM generate_series(1, 20) g")
    out = _restore(pg_app, empty, "b", ["missions"])
    assert out.restored.tables["sources"]["fleet_db"]["in_target"] == ["fleet"]
    assert _q(empty, "SELECT count(*) FROM missions") == [(200,)]


def test_with_dependencies_into_an_empty_database(pg_app):
    empty = pg_app["make"]("deps")
    out = _restore(pg_app, empty, "c", ["missions"], include_dependencies=True)
    assert out.restored.tables["sources"]["fleet_db"]["added"] == ["fleet"]
    assert _q(empty, "SELECT count(*) FROM missions") == [(200,)] and _q(empty, "SELECT count(*) FROM fleet") == [(20,)]
    assert _q(empty, "SELECT to_regclass('public.audit')") == [(None,)]
    cons = {r[0] for r in _q(empty, "SELECT conname FROM pg_constraint WHERE contype IN ('p', 'f', 'u')")}
    assert {"missions_pkey", "fleet_pkey", "fleet_name_key", "missions_fleet_id_fkey"} <= cons
    assert _q(empty, "SELECT count(*) FROM pg_indexes WHERE indexname = 'missions_fleet'") == [(1,)]
    with psycopg.connect(empty) as c:  # the identity and serial sequences continue after the restored rows
        assert c.execute("INSERT INTO missions (fleet_id) VALUES (1) RETURNING id").fetchone()[0] == 201
        assert c.execute("INSERT INTO fleet (name) VALUES ('new') RETURNING id").fetchone()[0] == 21
    assert "dependencies restored with them: fleet" in (pg_app["tmp"] / "c" / "RESTORE_REPORT.md").read_text()


def test_non_empty_target_refused_then_forced_in_one_transaction(pg_app):
    live = pg_app["make"]("live")
    _restore(pg_app, live, "d", ["audit"], include_dependencies=True)
    with psycopg.connect(live) as c:
        c.execute("DELETE FROM audit")
        c.execute("UPDATE fleet SET name = name || '-changed'")
    with pytest.raises(RefusedError, match="already holds rows in fleet_db: fleet") as ei:
        _restore(pg_app, live, "e", ["missions"], include_dependencies=True)
    assert "--force" in ei.value.hint and not (pg_app["tmp"] / "e").exists()
    assert _q(live, "SELECT count(*) FROM fleet WHERE name LIKE '%-changed'") == [(20,)]  # untouched
    # forced: fleet and missions replaced; audit (outside the selection) keeps its foreign key, re-validated
    out = _restore(pg_app, live, "f", ["missions"], include_dependencies=True, force=True)
    extra = out.restored.sources["fleet_db"].extra
    assert extra["replaced"] == ["fleet", "missions"] and extra["foreign_keys_revalidated"] == ["public.audit.audit_mission_id_fkey"]
    assert _q(live, "SELECT count(*) FROM fleet WHERE name LIKE '%-changed'") == [(0,)]
    assert _q(live, "SELECT convalidated FROM pg_constraint WHERE conname = 'audit_mission_id_fkey'") == [(True,)]


def test_forced_load_breaking_a_foreign_key_rolls_back(pg_app):
    live = pg_app["make"]("broken")
    _restore(pg_app, live, "g", ["audit"], include_dependencies=True)
    with psycopg.connect(live) as c:  # audit now references a mission the backup does not have
        c.execute("ALTER TABLE audit DROP CONSTRAINT audit_mission_id_fkey")
        c.execute("INSERT INTO missions (fleet_id, note) VALUES (1, 'after the backup')")
        c.execute("INSERT INTO audit (mission_id) SELECT max(id) FROM missions")
        c.execute("ALTER TABLE audit ADD CONSTRAINT audit_mission_id_fkey FOREIGN KEY (mission_id) REFERENCES missions(id)")
    before = _q(live, "SELECT count(*) FROM missions")
    with pytest.raises(IntegrityError, match="rolled back, the target database is unchanged"):
        _restore(pg_app, live, "h", ["missions"], include_dependencies=True, force=True)
    assert _q(live, "SELECT count(*) FROM missions") == before == [(201,)]
    assert _q(live, "SELECT count(*) FROM pg_constraint WHERE conname = 'audit_mission_id_fkey'") == [(1,)]
    assert not (pg_app["tmp"] / "h" / "fleet_db").exists()  # the failed source is not left in the target


def test_a_dump_that_cannot_be_read_completely_is_not_committed(dbs, tmp_path):
    """pg_restore failing half-way (a table's data file gone) kills psql before its input ends: the
    transaction never commits, the forced replacement leaves the target as it was."""
    import subprocess

    from backups.engine.databases import pg_load_tables
    from backups.errors import SourceError
    from backups.sources.postgres import find_tool

    src, live = dbs("dump"), dbs("keep")
    for dsn in (src, live):
        with psycopg.connect(dsn) as c:
            c.execute("CREATE TABLE fleet (id int PRIMARY KEY, name text)")
            c.execute("INSERT INTO fleet SELECT g, 'r' || g FROM generate_series(1, 30) g")
    dump = tmp_path / "dump"
    subprocess.run([find_tool("pg_dump"), "-Fd", "-Z0", "-f", str(dump), src], check=True)
    for f in dump.glob("*.dat"):
        if f.name != "toc.dat":
            f.unlink()
    with psycopg.connect(live) as c:
        c.execute("UPDATE fleet SET name = 'live'")
    with pytest.raises(SourceError, match="pg_restore failed"):
        pg_load_tables(dump, live, ["fleet"], force=True)
    assert _q(live, "SELECT count(*), min(name) FROM fleet") == [(30, "live")]


def test_odd_names_other_schemas_and_the_sql_file(dbs, tmp_path):
    """Quoted names with spaces, a table in another schema, a trigger and a comment: the dump's entries are
    attributed to the right tables, and ``tables.sql`` (no PostgreSQL target) loads into an empty database."""
    import subprocess

    from backups.engine.databases import dependency_closure, pg_dump_schema, pg_tables_sql
    from backups.sources.postgres import find_tool

    src, empty = dbs("odd"), dbs("sql")
    with psycopg.connect(src) as c:
        c.execute("CREATE SCHEMA ops")
        c.execute('CREATE TABLE ops."Robot Fleet" (id int PRIMARY KEY, name text)')
        c.execute('CREATE TABLE public."Mission Log" (id serial PRIMARY KEY, robot int REFERENCES ops."Robot Fleet"(id))')
        c.execute("CREATE TABLE other (id int PRIMARY KEY)")
        c.execute('COMMENT ON TABLE public."Mission Log" IS \'what the robots did\'')
        c.execute("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
        c.execute('CREATE TRIGGER t_touch BEFORE INSERT ON public."Mission Log" FOR EACH ROW EXECUTE FUNCTION touch()')
        c.execute('INSERT INTO ops."Robot Fleet" SELECT g, \'r\' || g FROM generate_series(1, 5) g')
        c.execute('INSERT INTO public."Mission Log" (robot) SELECT 1 + g % 5 FROM generate_series(1, 12) g')
    dump = tmp_path / "src" / "dump"
    dump.parent.mkdir()
    subprocess.run([find_tool("pg_dump"), "-Fd", "-Z0", "-f", str(dump), src], check=True)
    schema = pg_dump_schema(dump)
    assert schema.tables == {"Mission Log": ["ops.Robot Fleet"], "ops.Robot Fleet": [], "other": []}
    owners = {k[0]: v for k, v in schema.owner.items() if v == "Mission Log"}
    assert {"TABLE", "CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "COMMENT", "DEFAULT"} <= set(owners)
    wanted = ["Mission Log", *dependency_closure(schema.tables, ["Mission Log"])]
    pg_tables_sql(dump, wanted)
    sql = (tmp_path / "src" / "tables.sql").read_text()
    assert "other" not in re.findall(r"CREATE TABLE (\S+)", sql) and 'COPY ops."Robot Fleet"' in sql
    with psycopg.connect(empty) as c:  # what the tables need besides themselves: the schema and the function
        c.execute("CREATE SCHEMA ops")
        c.execute("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
    subprocess.run([find_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", empty, "-f",
                    str(tmp_path / "src" / "tables.sql")], check=True, capture_output=True)
    assert _q(empty, 'SELECT count(*) FROM public."Mission Log"') == [(12,)]
    assert _q(empty, "SELECT count(*) FROM pg_trigger WHERE tgname = 't_touch'") == [(1,)]
    assert _q(empty, "SELECT to_regclass('public.other')") == [(None,)]
