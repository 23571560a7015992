"""PostgreSQL source against the real server: full / differential / incremental, partial restore by table."""

from __future__ import annotations

import psycopg

from backups.catalog import Catalog
from backups.config import load_config
from backups.engine.restorer import restore
from backups.storage import LocalStorage
from tests.helpers import run_backup, write_config


def _seed(dsn: str) -> None:
    with psycopg.connect(dsn) as c:
        c.execute("CREATE TABLE fleet (id serial PRIMARY KEY, name text NOT NULL UNIQUE, battery int)")
        c.execute("CREATE TABLE events (id bigserial PRIMARY KEY, fleet_id int REFERENCES fleet(id), note text)")
        c.execute("INSERT INTO fleet (name, battery) SELECT 'r' || g, g % 100 FROM generate_series(1, 500) g")
        c.execute("INSERT INTO events (fleet_id, note) SELECT 1 + g % 500, md5(g::text) FROM generate_series(1, 5000) g")


def _rows(dsn: str, table: str) -> list:
    with psycopg.connect(dsn) as c:
        return c.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def test_postgres_chain_and_partial_restore(app, pg_db):
    dsn = pg_db["dsn"]
    _seed(dsn)
    cfg_path = write_config(app["tmp"] / "pg.yaml", app["home"], app["root"],
                            extra_sources=f'  fleet_db: {{type: postgres, dsn: "{dsn}", jobs: 2}}\n',
                            tier_sources="fleet_db, system_state")
    cfg = load_config(cfg_path)
    full, _ = run_backup(cfg, "weekly", logical_date="2026-02-01T01:00:00Z")
    rec = full.sources["fleet_db"]
    assert rec["details"]["tables"]["fleet"]["rows"] == 500
    assert rec["details"]["tables"]["events"]["rows"] == 5000
    assert rec["details"]["tables"]["fleet"]["primary_key"] == ["id"]
    # no change: every table file is referenced, only the table of contents (with its timestamp) is new
    inc, _ = run_backup(cfg, "daily", logical_date="2026-02-02T02:00:00Z")
    assert inc.sources["fleet_db"]["stored_files"] <= 1
    with psycopg.connect(dsn) as c:
        c.execute("UPDATE fleet SET battery = 7 WHERE id <= 10")
        c.execute("DELETE FROM events WHERE id > 4990")
    inc2, _ = run_backup(cfg, "daily", logical_date="2026-02-03T02:00:00Z")
    assert inc2.sources["fleet_db"]["details"]["tables"]["events"]["rows"] == 4990
    assert 2 <= inc2.sources["fleet_db"]["stored_files"] < inc2.sources["fleet_db"]["files"] + 1
    with psycopg.connect(dsn) as c:
        c.execute("INSERT INTO fleet (name, battery) VALUES ('late', 1)")
    diff, _ = run_backup(cfg, "monthly", logical_date="2026-02-04T03:00:00Z")
    assert diff.type == "differential" and diff.chain == [full.id, diff.id]
    storage = LocalStorage(app["root"] / "local")
    cat = Catalog(storage, "fmr-test")
    diff_db = pg_db["make"]("diff")
    restore(storage, cat, cat.get(diff.id), app["tmp"] / "rd", sources=["fleet_db"], pg_target=diff_db)
    assert _rows(diff_db, "fleet") == _rows(dsn, "fleet") and len(_rows(diff_db, "fleet")) == 501
    assert _rows(diff_db, "events") == _rows(dsn, "events")
    # full restore of an incremental chain into a scratch database (the state at that time)
    with psycopg.connect(dsn) as c:
        c.execute("DELETE FROM fleet WHERE name = 'late'")
    target_dsn = pg_db["make"]("restored")
    restore(storage, cat, cat.get(inc2.id), app["tmp"] / "r1", sources=["fleet_db"], pg_target=target_dsn)
    assert _rows(target_dsn, "fleet") == _rows(dsn, "fleet")
    assert _rows(target_dsn, "events") == _rows(dsn, "events")
    # partial restore: one table of the FIRST snapshot into another scratch database
    one = pg_db["make"]("one")
    with psycopg.connect(one) as c:
        c.execute("CREATE TABLE fleet (id serial PRIMARY KEY, name text NOT NULL UNIQUE, battery int)")
    restore(storage, cat, cat.get(full.id), app["tmp"] / "r2", sources=["fleet_db"], tables=["fleet"], pg_target=None)
    sql = (app["tmp"] / "r2" / "fleet_db" / "tables.sql").read_text()
    assert "COPY public.fleet" in sql and "COPY public.events" not in sql
    assert (app["tmp"] / "r2" / "fleet_db" / "dump" / "toc.dat").exists()


def test_postgres_password_never_in_manifest_or_errors(app, pg_db):
    dsn = pg_db["dsn"].replace("postgres@", "postgres:s3cr3t-pw@")
    cfg_path = write_config(app["tmp"] / "pg.yaml", app["home"], app["root"],
                            extra_sources=f'  fleet_db: {{type: postgres, dsn: "{dsn}"}}\n', tier_sources="fleet_db")
    snap, _ = run_backup(load_config(cfg_path), "weekly", logical_date="2026-02-01T01:00:00Z")
    raw = (app["root"] / "local" / "snapshots" / f"{snap.id}.json").read_text()
    assert "s3cr3t" not in raw
    bad = write_config(app["tmp"] / "bad.yaml", app["home"], app["root"],
                       extra_sources='  fleet_db: {type: postgres, dsn: "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/nope"}\n',
                       tier_sources="fleet_db")
    import contextlib
    import io

    from backups.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--config", str(bad), "backup", "--tier", "weekly"])
    assert code == 6
    assert "cannot connect to PostgreSQL" in err.getvalue() and "s3cr3t" not in err.getvalue()
