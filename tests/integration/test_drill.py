"""Disaster-recovery drills (``backupctl drill``, :mod:`backups.commands.drill`) on the sample app, real services.

* a drill on local backups passes and reports RTO/RPO per tier: reports (md/html with the chart/json), latest.*,
  the history line, GX Data Docs; the scratch directory is gone afterwards;
* a corrupted object fails the drill naming the object and the snapshot (CLI exit 10), teardown still ran;
* a missed RPO target fails with the measured figure; a failing smoke query fails with its result;
* a PostgreSQL source is restored into a ``drill_<run>_…`` scratch database, validated, and dropped — also after a
  failed check (``pg_database`` checked); the scratch server may not be the live database.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from backups.catalog import Catalog, data_time
from backups.cli import main
from backups.commands.drill import DrillRequest, db_prefix, drill_dir, run_drill, scratch_base
from backups.config import load_config
from backups.errors import ConfigError, RefusedError
from backups.monitoring import status_dir
from backups.storage import open_storage
from tests.helpers import run_backup, write_config

PG = "postgresql://postgres@127.0.0.1:5432"
SMOKE = """\
  smoke:
    - {name: missions_reference_robots, source: app_db, expect: 0,
       sql: "SELECT count(*) FROM missions m LEFT JOIN robots r ON r.id = m.robot_id WHERE r.id IS NULL"}
    - {name: config_loads, command: [python3, -c, "import json; json.load(open('app_files/config/fleet.json'))"]}
"""


def _config(tmp: Path, home: Path, root: Path, drill: str, **kw) -> Path:
    path = write_config(tmp / "drill.yaml", home, root, **kw)
    path.write_text(path.read_text() + f"drill:\n  scratch_dir: {tmp / 'scratch'}\n" + drill)
    return path


@pytest.fixture
def backed_up(app, monkeypatch):
    """The sample app with a weekly full (30 h old) and a daily incremental on top (2 h old)."""
    monkeypatch.setenv("BACKUP_STATUS_DIR", str(app["tmp"] / "status"))
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = app["cfg"]
    weekly, _ = run_backup(cfg, "weekly", logical_date=(now - timedelta(hours=30)).isoformat())
    daily, _ = run_backup(cfg, "daily", logical_date=(now - timedelta(hours=2)).isoformat())
    return {**app, "weekly": weekly.id, "daily": daily.id}


def _scratch_empty(cfg) -> bool:
    base = scratch_base(cfg)
    return not base.exists() or not any(base.iterdir())


def test_drill_passes_and_reports_rto_rpo_per_tier(backed_up, capsys):
    app = backed_up
    path = _config(app["tmp"], app["home"], app["root"], "  tiers: [daily, weekly]\n  rto_minutes: 30\n  rpo_hours: 26\n" + SMOKE)
    code = main(["--config", str(path), "drill", "--json"])
    out = json.loads(capsys.readouterr().out)
    v = out["verdict"]
    assert code == 0, v["findings"]
    assert v["passed"] and v["findings"] == []
    tiers = {t["tier"]: t for t in v["tiers"]}
    assert tiers["daily"]["snapshot_id"] == app["daily"] and tiers["weekly"]["snapshot_id"] == app["weekly"]
    for t in tiers.values():
        assert 0 < t["rto_seconds"] < 1800 and t["passed"] and t["files"] > 10 and t["bytes"] > 0
        assert set(t["steps"]) == {"plan", "isolate", "thaw", "restore", "verify"}
        names = {c["name"]: c for c in t["checks"]}
        assert {"restore", "sha256", "app_db: Great Expectations", "app_db: referential integrity",
                "app_files: config files parse", "missions_reference_robots", "config_loads"} <= set(names)
        assert all(c["ok"] for c in t["checks"])
        assert Path(t["data_docs"]["app_db"]).is_file()  # GX Data Docs index.html
    # the RPO counts from when the data was read (the backup run's start in the manifest), not from the logical
    # dates (30 h and 2 h ago): both backups read today's data a moment ago — the status gives the same age
    cfg = load_config(path)
    for name in ("daily", "weekly"):
        snap = Catalog(open_storage(cfg, "local"), cfg.application).get(app[name])
        assert tiers[name]["data_time"] == data_time(snap).isoformat(timespec="seconds") == snap.doc["started_at"][:19] + "+00:00"
        assert 0 <= tiers[name]["rpo_seconds"] < 600  # seconds: the drill runs right after the backups
    assert tiers["weekly"]["rpo_seconds"] >= tiers["daily"]["rpo_seconds"]
    assert v["rpo_seconds"] == tiers["daily"]["rpo_seconds"]  # the newest restorable data
    assert v["rto_seconds"] == max(t["rto_seconds"] for t in tiers.values())
    # reports next to the monitoring status, the newest at a stable path, and the history line
    d = drill_dir(cfg)
    assert d == status_dir(cfg).parent / "drill" and d.is_dir()
    for ext in ("md", "html", "json"):
        assert (d / f"{v['drill_id']}.{ext}").read_text() == (d / f"latest.{ext}").read_text()
    md = (d / "latest.md").read_text()
    assert "PASSED" in md and "docs/disaster-recovery.md" in md and "datadocs/daily/app_db/index.html" in md
    assert "data:image/png;base64," in (d / "latest.html").read_text()
    hist = [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 1 and {"id", "at", "passed", "rto_seconds", "rpo_seconds", "report"} <= set(hist[0])
    assert hist[0]["id"] == v["drill_id"] and hist[0]["passed"] is True
    assert out["teardown"]["directory_removed"] and _scratch_empty(cfg)


def test_corrupted_object_fails_naming_object_and_snapshot(backed_up, capsys):
    app = backed_up
    obj = app["root"] / "local" / "data" / app["weekly"] / "app_files.tar.zst"
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # same size: only re-hashing finds it
    obj.write_bytes(bytes(raw))
    path = _config(app["tmp"], app["home"], app["root"], "  tiers: [weekly]\n  rpo_hours: 48\n")
    code = main(["--config", str(path), "drill"])
    err = capsys.readouterr().err
    assert code == 10
    assert app["weekly"] in err and "app_files" in err and "FAILED" in err
    v = json.loads((drill_dir(load_config(path)) / "latest.json").read_text())
    assert not v["passed"] and v["tiers"][0]["restored"] is False
    assert any(app["weekly"] in f and "app_files" in f for f in v["findings"])
    assert _scratch_empty(load_config(path))  # teardown ran after the failure


def test_missed_rpo_and_failing_smoke_query_fail_with_their_figures(backed_up):
    app = backed_up
    smoke = ("  smoke:\n    - {name: too_many_robots, source: app_db, sql: \"SELECT count(*) FROM robots\", max: 1}\n")
    path = _config(app["tmp"], app["home"], app["root"], "  tiers: [daily]\n  rpo_hours: 1\n" + smoke)
    cfg = load_config(path)
    # a drill starting 2 h after the backups read the data (its logical date says 2 h earlier still: not counted)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    v = run_drill(cfg, DrillRequest(started_at=start.isoformat())).verdict
    assert not v["passed"]
    rpo = [f for f in v["findings"] if f.startswith("RPO target missed")]
    assert rpo and "data was read 2h 0" in rpo[0] and "(target 1h 00m)" in rpo[0], rpo
    assert 2 * 3600 - 5 <= v["rpo_seconds"] < 2 * 3600 + 600
    smoke_f = [f for f in v["findings"] if "too_many_robots" in f]
    assert smoke_f == ["daily: check too_many_robots failed: result 12, expected <= 1"]
    robots = next(c for c in v["tiers"][0]["checks"] if c["name"] == "too_many_robots")
    assert not robots["ok"]
    assert _scratch_empty(cfg)


def test_a_failed_isolation_is_a_finding_and_the_cli_still_tears_down_and_reports(app, monkeypatch):
    """The CLI door runs the same procedure as the DAG: ``isolate`` refuses, the restore and verification are
    skipped, the teardown still runs and the report (always, after it) names the cause and the teardown's leftover."""
    from backups.commands import drill as drill_command

    monkeypatch.setenv("BACKUP_STATUS_DIR", str(app["tmp"] / "status"))
    path = _config(app["tmp"], app["home"], app["root"], "  tiers: [weekly]\n")
    cfg = load_config(path)
    run_backup(cfg, "weekly")
    real_teardown, calls = drill_command.teardown, []

    def refuse(*_a, **_k):
        raise RefusedError("drill: the scratch server is the live database", hint="point drill.postgres elsewhere")

    def teardown_with_a_leftover(*a, **k):
        down = real_teardown(*a, **k)
        calls.append("teardown")
        down.problems.append("database drill_x_weekly_app_pg: still in use")
        return down

    monkeypatch.setattr(drill_command, "isolate", refuse)
    monkeypatch.setattr(drill_command, "teardown", teardown_with_a_leftover)
    out = run_drill(cfg, DrillRequest())
    v = out.verdict
    assert calls == ["teardown"] and not v["passed"]
    assert v["findings"][:2] == ["isolate failed: no scratch space (drill: the scratch server is the live database)",
                                 "teardown: database drill_x_weekly_app_pg: still in use"], v["findings"]
    assert "weekly: the restore step did not run or did not report (see the task log)" in v["findings"]
    assert out.teardown["problems"] and (drill_dir(cfg) / f"{v['drill_id']}.json").is_file()


def test_drill_config_validation(app):
    base = write_config(app["tmp"] / "v.yaml", app["home"], app["root"]).read_text()
    cases = {
        "drill: {bogus: 1}": "drill.bogus: unknown key",
        "drill: {schedule: 'every day'}": "drill.schedule: 'every day' is not a 5-field cron",
        "drill: {storage: offsite}": "drill.storage: unknown storage 'offsite'",
        "drill: {tiers: [hourly]}": "drill.tiers.0: unknown tier 'hourly'",
        "drill: {smoke: [{name: a, sql: 'SELECT 1', source: app_db}]}": "drill.smoke.0: a 'sql' check needs 'expect'",
        "drill: {smoke: [{name: a, sql: 'SELECT 1', source: nope, expect: 1}]}": "drill.smoke.0.source: unknown source",
        "drill: {smoke: [{name: a, command: [x], expect: 1}]}": "drill.smoke.0: 'expect', 'min' and 'max' apply to 'sql'",
        "drill: {smoke: [{name: a, command: [x], timeout: 5}]}": "drill.smoke.0.timeout: unknown key",
        "drill: {smoke: [{name: a, command: [x]}, {name: a, command: [y]}]}": "drill.smoke: smoke check names must be unique",
        "drill: {postgres: {dsn: 'host=x', conn_id: y}}": "drill.postgres: give exactly one",
    }
    for block, msg in cases.items():
        p = app["tmp"] / "bad.yaml"
        p.write_text(base + block + "\n")
        with pytest.raises(ConfigError) as exc:
            load_config(p)
        assert msg in str(exc.value), (block, str(exc.value))
        assert main(["--config", str(p), "drill"]) == 2
    ok = app["tmp"] / "ok.yaml"
    ok.write_text(base + "drill: {schedule: '0 4 1 * *', tiers: [weekly], rto_minutes: 30, rpo_hours: 26}\n")
    assert load_config(ok).drill.schedule == "0 4 1 * *"
    assert load_config(ok).drill.storage is None and load_config(ok).drill.approve_archive is False


# ------------------------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture
def pg_source():
    name = f"helper_a_drill_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{PG}/{name}"
    with psycopg.connect(dsn) as c:
        c.execute("CREATE TABLE robots (id serial PRIMARY KEY, name text NOT NULL UNIQUE, status text)")
        c.execute("CREATE TABLE missions (id serial PRIMARY KEY, robot_id int NOT NULL REFERENCES robots(id))")
        c.execute("INSERT INTO robots (name, status) SELECT 'r' || g, 'idle' FROM generate_series(1, 50) g")
        c.execute("INSERT INTO missions (robot_id) SELECT 1 + g % 50 FROM generate_series(1, 200) g")
    try:
        yield dsn
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drill_databases() -> list[str]:
    with psycopg.connect(f"{PG}/postgres") as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'drill\\_%'")]


def test_postgres_source_restores_into_scratch_database_and_teardown_drops_it(app, pg_source, monkeypatch):
    monkeypatch.setenv("BACKUP_STATUS_DIR", str(app["tmp"] / "status"))
    before = set(_drill_databases())
    smoke = ("  smoke:\n"
             "    - {name: missions_reference_robots, source: fleet_db, expect: 0, sql: \"SELECT count(*) FROM missions m "
             "LEFT JOIN robots r ON r.id = m.robot_id WHERE r.id IS NULL\"}\n"
             "    - {name: robots, source: fleet_db, sql: \"SELECT count(*) FROM robots\", min: 50, max: 50}\n")
    drill = f"  tiers: [weekly]\n  rpo_hours: 2\n  postgres: {{dsn: \"{PG}/postgres\"}}\n" + smoke
    path = _config(app["tmp"], app["home"], app["root"], drill,
                   extra_sources=f'  fleet_db: {{type: postgres, dsn: "{pg_source}"}}\n', tier_sources="fleet_db")
    cfg = load_config(path)
    run_backup(cfg, "weekly", logical_date=(datetime.now(UTC) - timedelta(minutes=5)).isoformat())
    out = run_drill(cfg, DrillRequest())
    v = out.verdict
    assert v["passed"], v["findings"]
    checks = {c["name"]: c for c in v["tiers"][0]["checks"]}
    assert checks["fleet_db: Great Expectations"]["ok"] and "expectations met" in checks["fleet_db: Great Expectations"]["detail"]
    assert checks["fleet_db: constraints"]["ok"] and checks["robots"]["detail"] == "result 50, expected >= 50 and <= 50"
    assert any(n.startswith("drill_") and n.endswith("_weekly_fleet_db") for n in out.teardown["databases_dropped"])
    assert set(_drill_databases()) == before
    # a failing check: the drill fails, and the teardown still drops the scratch database and directory
    with psycopg.connect(pg_source) as c:
        c.execute("INSERT INTO robots (name, status) VALUES ('extra', 'idle')")
    run_backup(cfg, "weekly", logical_date=(datetime.now(UTC) - timedelta(minutes=1)).isoformat())
    v2 = run_drill(cfg, DrillRequest(started_at=(datetime.now(UTC) + timedelta(seconds=2)).isoformat())).verdict
    assert not v2["passed"] and any("robots" in f and "result 51" in f for f in v2["findings"])
    assert set(_drill_databases()) == before and _scratch_empty(cfg)
    # the scratch server may never be a source's live database
    bad = _config(app["tmp"], app["home"], app["root"], f"  postgres: {{dsn: \"{pg_source}\"}}\n",
                  extra_sources=f'  fleet_db: {{type: postgres, dsn: "{pg_source}"}}\n', tier_sources="fleet_db")
    with pytest.raises(ConfigError, match="drill.postgres.dsn: the scratch server DSN points at the live database"):
        load_config(bad)
    from backups.commands.drill import guard_scratch_server

    monkeypatch.setenv("BACKUP_PG_SCRATCH_DSN", pg_source)
    bad.write_text(bad.read_text().replace(f"  postgres: {{dsn: \"{pg_source}\"}}\n", ""))
    with pytest.raises(RefusedError, match="live database of source 'fleet_db'"):
        guard_scratch_server(load_config(bad))


def test_newest_snapshot_with_an_incomplete_chain_is_passed_over(backed_up):
    app = backed_up
    newer, _ = run_backup(app["cfg"], "daily", logical_date=(datetime.now(UTC) - timedelta(hours=1)).isoformat())
    gone = next((app["root"] / "local" / "data" / newer.id).glob("app_files.index.zst"))
    gone.unlink()
    path = _config(app["tmp"], app["home"], app["root"], "  tiers: [daily]\n  rpo_hours: 26\n")
    v = run_drill(load_config(path), DrillRequest()).verdict
    tier = v["tiers"][0]
    assert v["passed"] and tier["snapshot_id"] == app["daily"]  # the older daily, whose chain is complete
    assert len(tier["passed_over"]) == 1 and tier["passed_over"][0].startswith(f"{newer.id}: 1 object(s)")
    assert any(f.startswith("daily: newer snapshot passed over") and newer.id in f for f in v["findings"])


def test_data_docs_of_old_drills_are_pruned_reports_stay(tmp_path):
    from backups.commands.drill import next_drill, prune_data_docs

    ids = [f"drill-2026{m:02d}01T040000Z" for m in range(1, 13)] + ["drill-20270101T040000Z"]
    for i in ids:
        (tmp_path / f"{i}.datadocs" / "daily").mkdir(parents=True)
        (tmp_path / f"{i}.md").write_text("report")
    assert prune_data_docs(tmp_path, ids, keep=12) == ["drill-20260101T040000Z.datadocs"]
    assert (tmp_path / "drill-20260101T040000Z.md").exists() and (tmp_path / "drill-20260201T040000Z.datadocs").is_dir()
    assert next_drill("0 4 1 * *", datetime(2026, 12, 1, 5, tzinfo=UTC)) == "2027-01-01T04:00:00+00:00"
    assert next_drill(None) is None


def test_reports_are_also_stored_on_another_storage_never_overwritten(app, monkeypatch):
    copy = app["tmp"] / "copy"
    path = _config(app["tmp"], app["home"], app["root"], "  storage: local\n  tiers: [weekly]\n  rpo_hours: 26\n",
                   extra_storages=f'  copy: {{type: local, path: "{copy}"}}\n', tier_storages="local, copy")
    cfg = load_config(path)
    run_backup(cfg, "weekly", logical_date=(datetime.now(UTC) - timedelta(hours=1)).isoformat())
    v = run_drill(cfg, DrillRequest()).verdict
    assert v["passed"], v["findings"]
    key = f"reports/drill/{v['drill_id']}.md"
    assert v["reports"]["stored"] == ", ".join(f"copy:reports/drill/{v['drill_id']}.{e}" for e in ("md", "html", "json"))
    assert (copy / key).read_text() == Path(v["reports"]["md"]).read_text()
    from backups.commands.drill import DrillVerdict, store_reports

    again = DrillVerdict.from_dict(v)
    again.reports = {**v["reports"], "md": str(app["tmp"] / "other.md")}
    (app["tmp"] / "other.md").write_text("different")
    store_reports(cfg, again)  # the same drill id again: the stored copy is kept, not overwritten
    assert (copy / key).read_text() == Path(v["reports"]["md"]).read_text()


# ------------------------------------------------------------------------------------------------ locks
def test_a_prune_waits_until_the_drill_has_verified_what_it_restored(app, monkeypatch):
    """A prune that wants the drilled snapshot gone (a newer weekly, ``keep_last: 1``) is started the moment the
    tier's restore returns: it waits for the drill's shared lock until the tier is verified, then forgets it."""
    import threading

    from backups.commands import drill as drill_command
    from backups.commands.prune import prune

    monkeypatch.setenv("BACKUP_STATUS_DIR", str(app["tmp"] / "status"))
    path = _config(app["tmp"], app["home"], app["root"], "  tiers: [weekly]\n  rpo_hours: 2\n")
    path.write_text(path.read_text().replace('weekly:  {type: full, schedule: "0 1 * * 0", ',
                                             'weekly:  {type: full, schedule: "0 1 * * 0", retention: {keep_last: 1}, '))
    cfg = load_config(path)
    now = datetime.now(UTC).replace(microsecond=0)
    drilled, _ = run_backup(cfg, "weekly", logical_date=(now - timedelta(minutes=30)).isoformat())
    real, box = drill_command.restore_tier, {}

    def restore_then_prune(*a, **kw):
        out = real(*a, **kw)
        run_backup(cfg, "weekly", logical_date=(now - timedelta(minutes=10)).isoformat())
        t = threading.Thread(target=lambda: box.setdefault("pruned", prune(cfg)), daemon=True)
        box["thread"] = t
        t.start()
        t.join(3.0)
        box["ran_before_verification"] = not t.is_alive()
        return out

    monkeypatch.setattr(drill_command, "restore_tier", restore_then_prune)
    v = run_drill(cfg, DrillRequest()).verdict
    assert v["passed"], v["findings"]
    checks = {c["name"]: c for c in v["tiers"][0]["checks"]}
    assert v["tiers"][0]["snapshot_id"] == drilled.id and checks["sha256"]["ok"]
    assert box["ran_before_verification"] is False
    box["thread"].join(30)
    assert drilled.id in box["pruned"].storages[0]["forget"]


def test_a_separate_drill_verification_names_a_snapshot_pruned_since_the_restore(app, monkeypatch):
    """The DAG's ``verify_tier`` is its own task: it takes its own shared lock, and a snapshot a prune removed
    since ``restore_tier`` is a failed ``snapshot`` check naming it (not a crash, not a pass)."""
    from backups.commands import drill as drill_command
    from backups.commands.prune import prune

    monkeypatch.setenv("BACKUP_STATUS_DIR", str(app["tmp"] / "status"))
    path = _config(app["tmp"], app["home"], app["root"], "  tiers: [weekly]\n")
    path.write_text(path.read_text().replace('weekly:  {type: full, schedule: "0 1 * * 0", ',
                                             'weekly:  {type: full, schedule: "0 1 * * 0", retention: {keep_last: 1}, '))
    cfg = load_config(path)
    now = datetime.now(UTC).replace(microsecond=0)
    drilled, _ = run_backup(cfg, "weekly", logical_date=(now - timedelta(minutes=30)).isoformat())
    plan = drill_command.plan_drill(cfg, DrillRequest())
    scratch = drill_command.isolate(cfg, plan)
    try:
        r = drill_command.restore_tier(cfg, plan, scratch, "weekly")
        assert r.ok, r.error
        run_backup(cfg, "weekly", logical_date=(now - timedelta(minutes=10)).isoformat())
        assert drilled.id in prune(cfg).storages[0]["forget"]
        v = drill_command.verify_tier(cfg, plan, scratch, r)
    finally:
        drill_command.teardown(cfg, plan.drill_id)
    assert not v.ok
    gone = [c for c in v.checks if c["name"] == "snapshot"]
    assert gone and not gone[0]["ok"] and f"snapshot {drilled.id} is no longer on storage local" in gone[0]["detail"]


# ------------------------------------------------------------------------------------------------ leftovers
def _drill_killed_mid_way(path: Path, flag: Path) -> int:
    """``backupctl drill`` in a child process, killed with SIGKILL while its smoke command runs (the tier restored:
    scratch directory and database in place). Returns the dead child's pid."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import subprocess_env

    code = "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"
    child = subprocess.Popen([sys.executable, "-c", code, "--config", str(path), "drill"], env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the drill did not reach its smoke command: {child.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # kill -9 of the drill (and of its smoke command, in its group)
        child.wait(30)
    return child.pid


@pytest.mark.parametrize("cleaner", ["prune", "drill"])
def test_a_drill_killed_with_sigkill_leaves_owned_leftovers_that_the_next_prune_or_drill_removes(
        app, pg_source, monkeypatch, cleaner):
    monkeypatch.setenv("BACKUP_STATUS_DIR", str(app["tmp"] / "status"))
    flag = app["tmp"] / "smoke-started"
    drill = (f"  tiers: [weekly]\n  rpo_hours: 2\n  postgres: {{dsn: \"{PG}/postgres\"}}\n  smoke:\n"
             f"    - {{name: hang, command: [sh, -c, \"touch {flag}; sleep 120\"], timeout_seconds: 300}}\n")
    path = _config(app["tmp"], app["home"], app["root"], drill,
                   extra_sources=f'  fleet_db: {{type: postgres, dsn: "{pg_source}"}}\n', tier_sources="app_db, fleet_db")
    cfg = load_config(path)
    run_backup(cfg, "weekly", logical_date=(datetime.now(UTC) - timedelta(minutes=5)).isoformat())
    before = set(_drill_databases())
    try:
        pid = _drill_killed_mid_way(path, flag)
        # what the killed drill left: its scratch directory (the restored SQLite database) and scratch database,
        # each naming its owner
        dirs = [d for d in scratch_base(cfg).iterdir() if d.name.startswith("drill-")]
        assert len(dirs) == 1 and (dirs[0] / "weekly" / "app_db").is_dir()
        owner = json.loads((dirs[0] / ".drill-owner.json").read_text())
        assert owner["pid"] == pid and owner["host"] and owner["pid_start"] and owner["drill_id"] == dirs[0].name
        left = [n for n in _drill_databases() if n.startswith(db_prefix(dirs[0].name))]  # other runs share the server
        assert len(left) == 1 and left[0].endswith("_weekly_fleet_db")
        with psycopg.connect(f"{PG}/postgres") as c:
            comment = c.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                                (left[0],)).fetchone()[0]
        assert json.loads(comment)["pid"] == pid
        if cleaner == "prune":
            assert main(["--config", str(path), "prune"]) == 0
        else:
            path.write_text(path.read_text().replace("sleep 120", "true"))
            v = run_drill(load_config(path), DrillRequest(started_at=(datetime.now(UTC) + timedelta(seconds=2)).isoformat())).verdict
            assert v["passed"], v["findings"]
        assert not dirs[0].exists() and left[0] not in _drill_databases()
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
            for n in set(_drill_databases()) - before:
                c.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
