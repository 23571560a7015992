"""Green means restorable, for PostgreSQL (real server on 127.0.0.1:5432; databases ``bk_hpostgres_*`` and the
test restore's ``backup_check_*``, all dropped):

* a full restore (no ``--table``) into a database that holds tables is refused (exit 7, nothing changed); with
  ``--force`` it replaces the dump's tables in one transaction — fully restored or unchanged, never half;
* a pg_restore failing midway (an index creation refused by an event trigger) or running out of space (exit 5)
  leaves the target as it was;
* an ``exclude_tables`` entry that a dumped table references is refused at backup time (exit 2, naming the foreign
  key) unless ``drop_dangling_foreign_keys`` — then every restore leaves those foreign keys out and loads;
* the backup's test restore (CLI and the DAG's ``test_restore`` step) loads each dump into a scratch database and
  fails the run when it does not load, naming pg_restore's error; the scratch database is always dropped.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from pathlib import Path

import psycopg
import pytest

from backups.cli import main
from backups.commands import backup as steps
from backups.commands import restore as rc
from backups.config import load_config
from backups.errors import ConfigError, IntegrityError, RefusedError, SourceError, StorageError
from tests.helpers import commit_unverified, make_app, run_backup, write_config

PG = "postgresql://postgres@127.0.0.1:5432"


def _q(dsn: str, sql: str) -> list:
    with psycopg.connect(dsn) as c:
        return c.execute(sql).fetchall()


def _x(dsn: str, *sql: str) -> None:
    with psycopg.connect(dsn) as c:
        for s in sql:
            c.execute(s)


def _state(dsn: str) -> dict:
    """Everything a half-done restore would change: tables with their rows, constraints, indexes, views."""
    tables = _q(dsn, "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE c.relkind IN ('r', 'v', 'S', 'i') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                     "AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2")
    rows = {f"{s}.{t}": _q(dsn, f'SELECT * FROM "{s}"."{t}" ORDER BY 1')
            for s, t in _q(dsn, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type "
                                "= 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")}
    cons = _q(dsn, "SELECT conrelid::regclass::text, conname, contype FROM pg_constraint c JOIN pg_namespace n "
                   "ON n.oid = c.connamespace WHERE n.nspname = 'public' ORDER BY 1, 2")
    return {"relations": tables, "rows": rows, "constraints": cons}


def _seed(dsn: str) -> None:
    _x(dsn, "CREATE TABLE fleet (id serial PRIMARY KEY, name text NOT NULL UNIQUE)",
       "CREATE TABLE missions (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
       "fleet_id int NOT NULL REFERENCES fleet(id), note text)",
       "CREATE INDEX missions_fleet ON missions (fleet_id)",
       "INSERT INTO fleet (name) SELECT 'r' || g FROM generate_series(1, 20) g",
       "INSERT INTO missions (fleet_id, note) SELECT 1 + g % 20, md5(g::text) FROM generate_series(1, 300) g")


def _config(tmp: Path, src: str, extra: str = "") -> Path:
    a = make_app(tmp, scale=0.1, seed=5)
    return write_config(tmp / "pg.yaml", a["home"], a["root"], tier_sources="fleet_db",
                        extra_sources=f'  fleet_db: {{type: postgres, dsn: "{src}"{extra}}}\n')


@pytest.fixture
def pg_app(tmp_path, dbs, monkeypatch):
    """A weekly full of a two-table source (missions references fleet)."""
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    _seed(src)
    cfg_path = _config(tmp_path, src)
    snap, plan = run_backup(load_config(cfg_path), "weekly", logical_date="2026-02-01T01:00:00Z")
    return {"cfg_path": cfg_path, "cfg": load_config(cfg_path), "src": src, "tmp": tmp_path, "make": dbs,
            "snap": snap, "plan": plan}


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _restore(app, dsn: str, target: str, **kw):
    req = rc.RestoreRequest(target=str(app["tmp"] / target), sources=["fleet_db"], pg_target_name="test", **kw)
    return rc.restore_snapshot(app["cfg"], req, pg_dsn=dsn, validate=False)


# ------------------------------------------------------------------------------------------------ full restore
def test_full_restore_into_a_database_with_an_unrelated_table_is_refused(pg_app):
    target = pg_app["make"]("unrelated")
    _x(target, "CREATE TABLE invoices (id int PRIMARY KEY, amount int)", "INSERT INTO invoices VALUES (1, 10), (2, 20)")
    before = _state(target)
    code, _, err = _cli("--config", str(pg_app["cfg_path"]), "restore", "latest", "--target",
                        str(pg_app["tmp"] / "r1"), "--pg-target", target, "--no-validate")
    assert code == 7, err
    assert "not empty" in err and "invoices" in err and "--force" in err
    assert _state(target) == before
    assert not (pg_app["tmp"] / "r1" / "fleet_db").exists()


def test_full_restore_over_a_same_named_table_is_refused_then_forced_in_one_transaction(pg_app):
    target = pg_app["make"]("same")
    _x(target, "CREATE TABLE fleet (id int PRIMARY KEY, name text)", "INSERT INTO fleet VALUES (1, 'local change')",
       "CREATE TABLE invoices (id int PRIMARY KEY)", "INSERT INTO invoices VALUES (7)")
    before = _state(target)
    with pytest.raises(RefusedError, match="holds table\\(s\\): fleet, invoices") as ei:
        _restore(pg_app, target, "r1")
    assert ei.value.exit_code == 7 and "--force" in ei.value.hint
    assert _state(target) == before
    # the engine refuses too (a caller that skips the prerequisites), naming the dump's tables first
    from backups.catalog import Catalog
    from backups.engine.restorer import restore
    from backups.storage import LocalStorage

    storage = LocalStorage(pg_app["cfg"].storages["local"].path)
    cat = Catalog(storage, "fmr-test")
    with pytest.raises(RefusedError, match="holds table\\(s\\) of the dump: fleet;"):
        restore(storage, cat, cat.get(pg_app["snap"].id), pg_app["tmp"] / "r0", sources=["fleet_db"], pg_target=target)
    assert _state(target) == before and not (pg_app["tmp"] / "r0" / "fleet_db").exists()
    out = _restore(pg_app, target, "r2", force=True)
    assert out.restored.sources["fleet_db"].extra["replaced"] == ["fleet"]
    assert _q(target, "SELECT count(*) FROM fleet") == [(20,)] and _q(target, "SELECT count(*) FROM missions") == [(300,)]
    assert _q(target, "SELECT * FROM fleet ORDER BY id") == _q(pg_app["src"], "SELECT * FROM fleet ORDER BY id")
    assert _q(target, "SELECT * FROM invoices") == [(7,)]  # not in the dump: kept
    # the CLI with the Great Expectations check of the target: the kept table is not a failure
    code, out, err = _cli("--config", str(pg_app["cfg_path"]), "restore", "latest", "--target",
                          str(pg_app["tmp"] / "r3"), "--pg-target", target, "--force")
    assert code == 0, err
    assert _q(target, "SELECT count(*) FROM missions") == [(300,)] and _q(target, "SELECT * FROM invoices") == [(7,)]


def test_a_forced_full_restore_that_fails_leaves_the_target_unchanged(pg_app):
    """A view of the target depends on fleet: dropping fleet fails after other objects were already dropped and
    created in the same transaction — all of it rolls back."""
    target = pg_app["make"]("view")
    _x(target, "CREATE TABLE fleet (id int PRIMARY KEY, name text)", "INSERT INTO fleet VALUES (1, 'keep me')",
       "CREATE TABLE missions (id int PRIMARY KEY, note text)", "INSERT INTO missions VALUES (5, 'mine')",
       "CREATE VIEW fleet_names AS SELECT name FROM fleet")
    before = _state(target)
    with pytest.raises(SourceError, match="rolled back \\(one transaction\\), the target database is unchanged") as ei:
        _restore(pg_app, target, "r1", force=True)
    assert "fleet_names" in str(ei.value) or "depend" in str(ei.value)
    assert _state(target) == before
    assert not (pg_app["tmp"] / "r1" / "fleet_db").exists()


_REFUSE_INDEX = """CREATE FUNCTION public.refuse_index() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{message}'; END $$"""


@pytest.mark.parametrize("code, message, error, exit_code", [
    ("P0001", "index creation refused by the test", SourceError, 6),
    # exactly what the server reports when its disk is full while it writes the index
    ("53100", 'could not extend file "base/16384/16500": No space left on device', StorageError, 5),
])
def test_pg_restore_failing_midway_rolls_back(pg_app, code, message, error, exit_code):
    """An event trigger refuses the dump's index, which comes after the tables were created and filled: the whole
    load is one transaction, so the target is left empty, and a full disk is exit 5 (not 6)."""
    target = pg_app["make"]("midway")
    _x(target, _REFUSE_INDEX.format(code=code, message=message),
       "CREATE EVENT TRIGGER refuse_index ON ddl_command_start WHEN TAG IN ('CREATE INDEX') "
       "EXECUTE FUNCTION public.refuse_index()")
    before = _state(target)
    code_, _, err = _cli("--config", str(pg_app["cfg_path"]), "restore", "latest", "--target",
                         str(pg_app["tmp"] / "r1"), "--pg-target", target, "--no-validate")
    assert code_ == exit_code == error.exit_code, err
    assert "the target database is unchanged" in err and message.split(":")[0] in err
    assert "target is empty" not in err
    assert _state(target) == before and _state(target)["rows"] == {}


# ------------------------------------------------------------------------------------------------ exclude_tables
def _seed_excluded(dsn: str) -> None:
    _x(dsn, "CREATE TABLE customers (id int PRIMARY KEY, name text)",
       "CREATE TABLE orders (id int PRIMARY KEY, customer_id int CONSTRAINT orders_customer_fk REFERENCES customers(id))",
       "CREATE TABLE notes (id int PRIMARY KEY, body text)",
       "INSERT INTO customers VALUES (1, 'a'), (2, 'b')", "INSERT INTO orders SELECT g, 1 + g % 2 FROM generate_series(1, 50) g",
       "INSERT INTO notes VALUES (1, 'x')")


def test_an_excluded_table_that_a_dumped_table_references_is_refused_at_backup(tmp_path, dbs, monkeypatch):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    _seed_excluded(src)
    cfg_path = _config(tmp_path, src, ", exclude_tables: [customers]")
    code, _, err = _cli("--config", str(cfg_path), "backup", "--tier", "weekly")
    assert code == ConfigError.exit_code == 2, err
    assert "orders_customer_fk (orders -> customers)" in err
    assert "drop_dangling_foreign_keys" in err and "exclude" in err
    assert not list(tmp_path.rglob("snapshots/*.json"))  # nothing committed


def test_drop_dangling_foreign_keys_backs_up_and_every_restore_leaves_them_out(tmp_path, dbs, monkeypatch):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    _seed_excluded(src)
    cfg_path = _config(tmp_path, src, ", exclude_tables: [customers], drop_dangling_foreign_keys: true")
    code, out, err = _cli("--config", str(cfg_path), "backup", "--tier", "weekly")
    assert code == 0, err
    assert "fleet_db: the dump loaded into a scratch database" in out
    cfg = load_config(cfg_path)
    target = dbs("restored")
    app = {"cfg": cfg, "tmp": tmp_path}
    res = _restore(app, target, "r1")
    assert res.restored.sources["fleet_db"].extra["foreign_keys_skipped"] == ["orders.orders_customer_fk"]
    assert _q(target, "SELECT count(*) FROM orders") == [(50,)] and _q(target, "SELECT count(*) FROM notes") == [(1,)]
    assert _q(target, "SELECT to_regclass('customers')") == [(None,)]
    assert _q(target, "SELECT conname FROM pg_constraint WHERE contype = 'f'") == []


# ------------------------------------------------------------------------------------------------ test restore
#: a CHECK calling a function that names a table without its schema: pg_dump's restore runs with an empty
#: search_path, so loading the data fails although the dump itself is complete and verifies
_UNLOADABLE = (
    "CREATE TABLE fleet (id int PRIMARY KEY)",
    "INSERT INTO fleet SELECT generate_series(1, 5)",
    "CREATE FUNCTION known_robot(int) RETURNS bool LANGUAGE sql AS 'SELECT EXISTS (SELECT 1 FROM fleet WHERE id = $1)'",
    "CREATE TABLE missions (id int PRIMARY KEY, robot int CHECK (known_robot(robot)))",
    "INSERT INTO missions VALUES (1, 1), (2, 3)",
)


def _check_dbs() -> list:
    return _q(f"{PG}/postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'backup\\_check\\_%'")


def test_cli_backup_fails_when_its_dump_does_not_load(tmp_path, dbs, monkeypatch):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    _x(src, *_UNLOADABLE)
    before = _check_dbs()
    code, _, err = _cli("--config", str(_config(tmp_path, src)), "backup", "--tier", "weekly")
    assert code == IntegrityError.exit_code == 4, err
    assert "does not load into a scratch database" in err and 'relation "fleet" does not exist' in err
    assert _check_dbs() == before  # the scratch database is dropped after the failure too


def test_dag_test_restore_step_loads_the_dump_and_fails_naming_pg_restore(tmp_path, dbs, monkeypatch):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    _x(src, *_UNLOADABLE)
    cfg = load_config(_config(tmp_path, src))
    with pytest.raises(IntegrityError, match='relation "fleet" does not exist'):  # the backup's own test restore
        run_backup(cfg, "weekly", logical_date="2026-02-01T01:00:00Z")
    _, plan = commit_unverified(cfg, "weekly", logical_date="2026-02-02T01:00:00Z")  # a snapshot no test restore saw
    before = _check_dbs()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(IntegrityError, match='relation "fleet" does not exist'):
        steps.test_restore(cfg, plan, scratch)
    assert _check_dbs() == before


def test_dag_test_restore_step_validates_a_loadable_dump(pg_app):
    scratch = pg_app["tmp"] / "scratch"
    scratch.mkdir()
    before = _check_dbs()
    res = steps.test_restore(pg_app["cfg"], pg_app["plan"], scratch)
    assert res.validation["fleet_db"]["success"] is True
    assert _check_dbs() == before


# ------------------------------------------------------------------------------------------------ odd identifiers
@pytest.mark.parametrize("parent, child, fk", [
    ("Customer Base", 'Order "Lines"', 'fk to "Customer Base"'),
    ("ünï$$cödé", "Orders%s", "Fk.With.Dots"),
])
def test_odd_names_through_exclusion_dangling_keys_and_restores(tmp_path, dbs, monkeypatch, parent, child, fk):
    """Names needing quotes everywhere SQL touches them: ``exclude_tables`` matches the exact name (capitals kept,
    not a lower-cased pg_dump pattern), the dangling foreign key is named and then left out of the restore, and a
    table-level restore over an existing empty table of that name works (its emptiness check in a DO block)."""
    from psycopg import sql

    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    P, C = sql.Identifier(parent), sql.Identifier(child)
    with psycopg.connect(src) as c:
        c.execute(sql.SQL('CREATE TABLE {} ("Id" int PRIMARY KEY)').format(P))
        c.execute(sql.SQL('CREATE TABLE {} ("Id" int PRIMARY KEY, "Ref" int CONSTRAINT {} REFERENCES {})')
                  .format(C, sql.Identifier(fk), P))
        c.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 4)").format(P))
        c.execute(sql.SQL("INSERT INTO {} SELECT g, 1 + g % 4 FROM generate_series(1, 9) g").format(C))
    yaml_name = parent.replace("\\", "\\\\").replace('"', '\\"')
    cfg_path = _config(tmp_path, src, f', exclude_tables: ["{yaml_name}"]')
    code, _, err = _cli("--config", str(cfg_path), "backup", "--tier", "weekly")
    assert code == 2 and f"{fk} ({child} -> {parent})" in err, err
    excl = f'exclude_tables: ["{yaml_name}"]'
    cfg_path.write_text(cfg_path.read_text().replace(excl, excl + ", drop_dangling_foreign_keys: true"))
    code, out, err = _cli("--config", str(cfg_path), "backup", "--tier", "weekly")
    assert code == 0 and "loaded into a scratch database" in out, err
    cfg = load_config(cfg_path)
    snap_tables = list(run_backup(cfg, "daily", logical_date="2026-02-02T02:00:00Z")[0].sources["fleet_db"]["details"]["tables"])
    assert snap_tables == [child]  # the excluded table is neither dumped nor counted
    target = dbs("t")
    res = _restore({"cfg": cfg, "tmp": tmp_path}, target, "r1")
    assert res.restored.sources["fleet_db"].extra["foreign_keys_skipped"] == [f"{child}.{fk}"]
    assert _q(target, sql.SQL("SELECT count(*) FROM {}").format(C).as_string(None)) == [(9,)]


@pytest.mark.parametrize("name", ["ünï$$cödé", "100% 'Robots'", "$fmr$"])
def test_table_restore_over_an_empty_table_with_an_odd_name(tmp_path, dbs, monkeypatch, name):
    """The emptiness check of a table-level restore runs in a DO block: the table's name must not end its
    dollar-quoted body ($$) nor be read as a RAISE format (%)."""
    from psycopg import sql

    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src, target = dbs("src"), dbs("t")
    T = sql.Identifier(name)
    for dsn in (src, target):
        _x(dsn, sql.SQL('CREATE TABLE {} ("Id" int PRIMARY KEY)').format(T).as_string(None))
    _x(src, sql.SQL("INSERT INTO {} SELECT generate_series(1, 6)").format(T).as_string(None))
    cfg = load_config(_config(tmp_path, src))
    run_backup(cfg, "weekly", logical_date="2026-02-01T01:00:00Z")
    _restore({"cfg": cfg, "tmp": tmp_path}, target, "r1", tables=[name])
    assert _q(target, sql.SQL("SELECT count(*) FROM {}").format(T).as_string(None)) == [(6,)]


def test_drill_constraint_check_quotes_constraint_names(dbs):
    from backups.commands.drill import postgres_integrity

    db = dbs("drill")
    _x(db, 'CREATE TABLE "Robots" (id int PRIMARY KEY)', "INSERT INTO \"Robots\" VALUES (1)",
       'CREATE TABLE "Mission ""Log""" (id int PRIMARY KEY, robot int)', "INSERT INTO \"Mission \"\"Log\"\"\" VALUES (1, 1)",
       'ALTER TABLE "Mission ""Log""" ADD CONSTRAINT "to ""Robots""" FOREIGN KEY (robot) REFERENCES "Robots" NOT VALID')
    ok, detail = postgres_integrity(db)
    assert ok, detail
    assert _q(db, "SELECT convalidated FROM pg_constraint WHERE conname = 'to \"Robots\"'") == [(True,)]


@pytest.fixture
def tiny_tablespace(tmp_path):
    """A PostgreSQL tablespace on a tmpfs just big enough for an empty database (root, and a server on this machine,
    needed: skipped otherwise — the event-trigger test above covers the same path everywhere). Yields its name."""
    import os
    import shutil
    import subprocess

    data_dir = _q(f"{PG}/postgres", "SELECT current_setting('data_directory')")[0][0]
    if os.geteuid() != 0 or not Path(data_dir).is_dir() or shutil.which("mount") is None:
        pytest.skip("needs root and the PostgreSQL server on this machine (a tmpfs tablespace)")
    template = _q(f"{PG}/postgres", "SELECT pg_database_size('template1')")[0][0]
    mnt = Path(f"/tmp/bk_hpostgres_ts_{uuid.uuid4().hex[:8]}")
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={template + 3 * 2**20}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    name = mnt.name
    try:
        shutil.chown(mnt, "postgres", "postgres")
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
            c.execute(f"CREATE TABLESPACE {name} LOCATION '{mnt}'")
        yield name
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
            for (db,) in c.execute("SELECT datname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
                                   "WHERE t.spcname = %s", (name,)).fetchall():
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def test_a_real_disk_full_during_a_full_restore_is_exit_5_and_rolls_back(tmp_path, dbs, monkeypatch, tiny_tablespace):
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("big")
    _x(src, "CREATE TABLE telemetry (id int PRIMARY KEY, payload text)",
       "INSERT INTO telemetry SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g")
    cfg_path = _config(tmp_path, src)
    run_backup(load_config(cfg_path), "weekly", logical_date="2026-02-01T01:00:00Z")
    target_name = f"bk_hpostgres_{uuid.uuid4().hex[:8]}_full"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{target_name}" TABLESPACE {tiny_tablespace}')
    target = f"{PG}/{target_name}"
    code, _, err = _cli("--config", str(cfg_path), "restore", "latest", "--target", str(tmp_path / "r1"),
                        "--pg-target", target, "--no-validate")
    assert code == StorageError.exit_code == 5, err
    assert "ran out of space" in err and "the target database is unchanged" in err and "could not extend file" in err
    assert _q(target, "SELECT to_regclass('public.telemetry')") == [(None,)]


def test_a_forced_full_restore_does_not_wait_forever_for_a_session_holding_a_lock(pg_app, monkeypatch):
    from backups.engine import databases

    monkeypatch.setattr(databases, "PG_LOCK_TIMEOUT", 1.0)
    target = pg_app["make"]("busy")
    _x(target, "CREATE TABLE fleet (id int PRIMARY KEY, name text)", "INSERT INTO fleet VALUES (1, 'in use')")
    before = _state(target)
    app_session = psycopg.connect(target)  # the application, idle in a transaction that read fleet
    try:
        app_session.execute("SELECT * FROM fleet").fetchall()
        with pytest.raises(SourceError, match="waited 1s for a lock held by another session") as ei:
            _restore(pg_app, target, "r1", force=True)
        assert "pg_terminate_backend" in ei.value.hint
    finally:
        app_session.rollback()
        app_session.close()
    assert _state(target) == before


def test_a_drill_of_a_source_with_dropped_dangling_foreign_keys_passes(tmp_path, dbs, monkeypatch):
    """The drill restores the whole dump into its scratch database: the recorded dangling foreign keys are left
    out, so pg_restore loads it and every check (GX, constraints) passes."""
    from datetime import UTC, datetime, timedelta

    from backups.commands.drill import DrillRequest, run_drill

    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("BACKUP_STATUS_DIR", str(tmp_path / "status"))
    src = dbs("src")
    _seed_excluded(src)
    cfg_path = _config(tmp_path, src, ", exclude_tables: [customers], drop_dangling_foreign_keys: true")
    cfg_path.write_text(cfg_path.read_text() + f"drill:\n  scratch_dir: {tmp_path / 'scratch'}\n  tiers: [weekly]\n"
                        f"  rpo_hours: 2\n  postgres: {{dsn: \"{PG}/postgres\"}}\n")
    cfg = load_config(cfg_path)
    run_backup(cfg, "weekly", logical_date=(datetime.now(UTC) - timedelta(minutes=5)).isoformat())
    verdict = run_drill(cfg, DrillRequest()).verdict
    assert verdict["passed"], verdict["findings"]
    checks = {c["name"]: c for c in verdict["tiers"][0]["checks"]}
    assert checks["fleet_db: Great Expectations"]["ok"] and checks["fleet_db: constraints"]["ok"]


def test_an_old_dump_with_dangling_foreign_keys_names_them_and_the_manual_way(tmp_path, dbs):
    """A dump taken before such dumps were refused (pg_dump --exclude-table of a referenced table, nothing recorded):
    the restore rolls back and says which foreign keys and how to load it by hand."""
    import subprocess

    from backups.engine.databases import pg_restore_full
    from backups.sources.postgres import find_tool

    src, target = dbs("src"), dbs("t")
    _seed_excluded(src)
    dump = tmp_path / "dump"
    subprocess.run([find_tool("pg_dump"), "-Fd", "-Z0", "--exclude-table=customers", "-f", str(dump), src], check=True)
    with pytest.raises(SourceError, match="foreign keys to tables it does not contain: orders_customer_fk "
                                          "\\(orders -> customers\\)") as ei:
        pg_restore_full(dump, target)
    assert "--use-list" in ei.value.hint and "drop_dangling_foreign_keys" in ei.value.hint
    assert _state(target)["relations"] == []
    out = pg_restore_full(dump, target, skip_foreign_keys=[{"schema": "public", "table": "orders",
                                                            "constraint": "orders_customer_fk"}])
    assert out["foreign_keys_skipped"] == ["orders.orders_customer_fk"] and _q(target, "SELECT count(*) FROM orders") == [(50,)]


def test_scratch_databases_of_a_killed_backup_are_dropped_by_the_next_test_restore(tmp_path, dbs, monkeypatch):
    import json
    import socket
    import subprocess

    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    _seed(src)
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = uuid.uuid4().hex[:8]
    owners = {f"backup_check_{tag}dead": {"host": socket.gethostname(), "pid": dead.pid},
              f"backup_check_{tag}live": {"host": socket.gethostname(), "pid": 1},
              f"fmr_validate_{tag}away": {"host": "another-host.example", "pid": dead.pid},
              f"backup_check_{tag}none": None}
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
        for name, owner in owners.items():
            c.execute(f'CREATE DATABASE "{name}"')
            if owner:
                c.execute(f"COMMENT ON DATABASE \"{name}\" IS '{json.dumps({**owner, 'started': '2026-01-01T00:00:00+00:00'})}'")
    try:
        code, _, err = _cli("--config", str(_config(tmp_path, src)), "backup", "--tier", "weekly")
        assert code == 0, err
        left = {n for (n,) in _check_dbs() + _q(f"{PG}/postgres", "SELECT datname FROM pg_database WHERE datname "
                                                                   "LIKE 'fmr\\_validate\\_%'") if tag in n}
        assert left == set(owners) - {f"backup_check_{tag}dead"}
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
            for name in owners:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_forced_full_restore_over_a_changed_copy_of_itself_gives_the_snapshot_back(tmp_path, dbs, monkeypatch):
    """The runbook's "put the live database back": every object of the dump (another schema, a view, a sequence,
    an identity column, foreign keys) is dropped and re-created in one transaction; rows added since are gone."""
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    _seed(src)
    _x(src, "CREATE SCHEMA ops", 'CREATE TABLE ops."Events" (id bigserial PRIMARY KEY, mission bigint REFERENCES missions(id))',
       'INSERT INTO ops."Events" (mission) SELECT g FROM generate_series(1, 40) g',
       "CREATE VIEW busy AS SELECT fleet_id, count(*) FROM missions GROUP BY 1")
    cfg = load_config(_config(tmp_path, src))
    run_backup(cfg, "weekly", logical_date="2026-02-01T01:00:00Z")
    snapshot_state = _state(src)
    live = dbs("live")
    _restore({"cfg": cfg, "tmp": tmp_path}, live, "r1")
    assert _state(live)["rows"] == snapshot_state["rows"]
    _x(live, "INSERT INTO fleet (name) VALUES ('after')", 'DELETE FROM ops."Events" WHERE id > 30',
       "ALTER TABLE missions ADD COLUMN extra int")
    _restore({"cfg": cfg, "tmp": tmp_path}, live, "r2", force=True)
    assert _state(live) == _state(src) == snapshot_state
    assert _q(live, "INSERT INTO fleet (name) VALUES ('next') RETURNING id") == [(21,)]  # sequence restored too


def test_the_test_restore_never_shows_the_password(tmp_path, dbs, monkeypatch, caplog):
    """The default scratch server is the source's own (its DSN, password included): pg_restore gets the password
    in PGPASSWORD only, and neither the failure nor the log shows it."""
    monkeypatch.setenv("BACKUP_STAGING", str(tmp_path / "staging"))
    src = dbs("src")
    _x(src, *_UNLOADABLE)
    cfg_path = _config(tmp_path, src.replace("postgres@", "postgres:s3cr3t-pw@"))
    with caplog.at_level("DEBUG"):
        code, out, err = _cli("--config", str(cfg_path), "-v", "backup", "--tier", "weekly")
    assert code == 4 and 'relation "fleet" does not exist' in err
    assert "s3cr3t" not in out + err + caplog.text
