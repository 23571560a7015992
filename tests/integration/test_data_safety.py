"""Issue 8's five problems, each reproduced as a new user would meet it (these failed before the fix)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from backups.catalog import Catalog
from backups.cli import main
from backups.config import load_config
from backups.engine.backup_pipeline import OWNER_FILE, clean_staging
from backups.errors import StorageError
from backups.storage import LocalStorage
from tests.helpers import run_backup

from ..helpers import write_config

CODE = "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _spawn(cfg_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", CODE, "--config", str(cfg_path), "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _big(app, mb: int = 40) -> None:
    with open(app["home"] / "uploads" / "huge.bin", "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))


def _with_locks(app, extra: str) -> Path:
    path = write_config(app["tmp"] / "locks.yaml", app["home"], app["root"])
    path.write_text(path.read_text() + extra)
    return path


def test_problem3_two_runs_of_one_id_never_corrupt_it(app):
    """Started 0.6 s apart with a file rewritten in between: the second waits for the id lock, then finds the
    snapshot committed; the snapshot verifies byte for byte and restores."""
    _big(app, 8)
    cfg_path = _with_locks(app, "locks: {wait_seconds: 120}\n")
    # a source that takes 2 s keeps the first run extracting while the second starts (as a big database would)
    cfg_path.write_text(cfg_path.read_text().replace('["echo", "fmr-state"]', '["sh", "-c", "sleep 2; echo fmr-state"]'))
    first = _spawn(cfg_path, "backup", "--no-validate", "--tier", "weekly", "--logical-date", "2026-03-01T01:00:00Z")
    time.sleep(0.6)
    (app["home"] / "config" / "settings.yaml").write_text("rewritten: true\n")
    with open(app["home"] / "uploads" / "huge.bin", "r+b") as fh:
        fh.write(os.urandom(1 << 20))
    second = _spawn(cfg_path, "backup", "--no-validate", "--tier", "weekly", "--logical-date", "2026-03-01T01:00:00Z")
    for proc in (first, second):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()
    rc, out, _ = _cli("--config", str(cfg_path), "verify", "--all", "--read-data")
    assert rc == 0, out
    rc, _, err = _cli("--config", str(cfg_path), "restore", "weekly-20260301T010000Z", "--target", str(app["tmp"] / "r"))
    assert rc == 0, err
    assert list((app["root"] / "local").rglob(".tmp-*")) == [] and list((app["root"] / "local" / "locks").glob("*")) == []


def test_problem1_prune_waits_for_a_running_incremental_and_keeps_its_parent(app):
    """keep_last 1 on the weekly tier, and a prune started while the incremental of 03-09 extracts: the prune must
    wait for the backup's shared lock, then drop the older weekly (03-01) and keep the incremental's parent (the
    newest data, the 03-08 weekly: parents follow the manifests' ``sequence``, see docs/format.md)."""
    cfg_path = _with_locks(app, "locks: {wait_seconds: 120}\n")
    cfg_path.write_text(cfg_path.read_text().replace('storages: [local]}', 'storages: [local], retention: {keep_last: 1}}'))
    cfg = load_config(cfg_path)
    run_backup(cfg, "weekly", logical_date="2026-03-01T01:00:00Z")
    run_backup(cfg, "weekly", logical_date="2026-03-08T01:00:00Z")
    cfg_path.write_text(cfg_path.read_text().replace('["echo", "fmr-state"]', '["sh", "-c", "sleep 2; echo fmr-state"]'))
    inc = _spawn(cfg_path, "backup", "--no-validate", "--tier", "daily", "--logical-date", "2026-03-09T02:00:00Z")
    data = app["root"] / "local" / "data" / "daily-20260309T020000Z"
    deadline = time.time() + 30
    while time.time() < deadline and not data.exists():
        time.sleep(0.02)
    rc, out, err = _cli("--config", str(cfg_path), "prune")  # waits for the backup's shared lock
    _, inc_err = inc.communicate(timeout=180)
    assert inc.returncode == 0, inc_err.decode()
    assert rc == 0, err
    cat = Catalog(LocalStorage(app["root"] / "local"), "fmr-test")
    daily = cat.get("latest", "daily")
    assert daily.parent == "weekly-20260308T010000Z" and daily.parent in cat.snapshots
    assert "weekly-20260301T010000Z" not in cat.snapshots  # the policy's drop happened, after the wait
    rc, out, _ = _cli("--config", str(cfg_path), "verify", "--all")
    assert rc == 0, out
    rc, _, err = _cli("--config", str(cfg_path), "restore", daily.id, "--target", str(app["tmp"] / "r"))
    assert rc == 0, err
    rc, _, err = _cli("--config", str(cfg_path), "prune")  # the next prune still keeps the chain the daily needs
    assert rc == 0 and "weekly-20260308T010000Z" in Catalog(LocalStorage(app["root"] / "local"), "fmr-test").snapshots


def test_problem1_prune_that_cannot_wait_fails_with_exit_9_naming_the_holder(app):
    cfg_path = _with_locks(app, "locks: {wait_seconds: 0}\n")
    _big(app)
    proc = _spawn(cfg_path, "backup", "--no-validate", "--tier", "weekly", "--logical-date", "2026-03-01T01:00:00Z")
    locks = app["root"] / "local" / "locks"
    deadline = time.time() + 30
    while time.time() < deadline and not (locks.exists() and any(locks.iterdir())):
        time.sleep(0.02)
    rc, _, err = _cli("--config", str(cfg_path), "prune")
    proc.communicate(timeout=180)
    # the holder named: one of the backup's locks (its run's, or its extraction's) on this host, with its pid
    assert rc == 9 and re.search(r"lock of (backup|extract) on host", err) and f"pid {proc.pid}" in err, err
    assert "Traceback" not in err


def test_problem2_old_logical_date_objects_are_aged_by_mtime(app):
    """A backfill of a year-old date writes its objects now: prune must not take them as old orphans."""
    storage = LocalStorage(app["root"] / "local")
    storage.put_bytes("data/weekly-20250101T010000Z/app_db.tar.zst", b"being written by a backfill")
    cfg_path = _with_locks(app, "")
    rc, out, _ = _cli("--config", str(cfg_path), "prune", "--json")
    assert rc == 0 and json.loads(out)["storages"][0]["orphans"] == []
    assert storage.exists("data/weekly-20250101T010000Z/app_db.tar.zst")


def test_problem4_staging_folders_of_dead_runs_are_removed(app, monkeypatch, tmp_path):
    staging = tmp_path / "staging"
    monkeypatch.setenv("BACKUP_STAGING", str(staging))
    staging.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from backups.repository.locks import HOST

    for name, owner, age in (("backup-app_db-dead", {"host": HOST, "pid": dead.pid}, 0),
                             ("backup-app_db-live", {"host": HOST, "pid": os.getpid()}, 0),
                             ("backup-app_files-old", None, 3 * 86400),
                             ("backup-other_thing-x", None, 3 * 86400)):
        d = staging / name
        d.mkdir()
        (d / "app.db").write_bytes(b"copy of a database")
        if owner:
            (d / OWNER_FILE).write_text(json.dumps(owner))
        if age:
            os.utime(d, (time.time() - age, time.time() - age))
    removed = clean_staging(app["cfg"], 48 * 3600)
    assert sorted(Path(p).name for p in removed) == ["backup-app_db-dead", "backup-app_files-old"]
    assert sorted(p.name for p in staging.iterdir()) == ["backup-app_db-live", "backup-other_thing-x"]
    # a backup cleans up after itself and leaves no staging folder behind
    run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    assert sorted(p.name for p in staging.iterdir()) == ["backup-app_db-live", "backup-other_thing-x"]
    assert tempfile.gettempdir()  # the system temp dir is the default root


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_problem5_full_disk_is_exit_5_with_free_space_and_nothing_half_written(app):
    mnt = app["tmp"] / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        _big(app, 8)
        cfg_path = write_config(app["tmp"] / "full.yaml", app["home"], mnt)
        rc, _, err = _cli("--config", str(cfg_path), "backup", "--no-validate", "--tier", "weekly", "--logical-date", "2026-03-01T01:00:00Z")
        assert rc == 5, err
        # the system-state pre-check (the DAG's, now also backupctl's) refuses before anything is written
        assert "storage local (local): only" in err and "MB free" in err and "Traceback" not in err
        assert not list((mnt / "local").rglob(".tmp-*")) and not (mnt / "local" / "snapshots").exists()
        assert not list((mnt / "local" / "locks").glob("*"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_problem5_full_staging_disk_is_exit_5_naming_the_staging_folder(app, monkeypatch):
    mnt = app["tmp"] / "staging"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)], check=True)
    try:
        monkeypatch.setenv("BACKUP_STAGING", str(mnt))
        rc, _, err = _cli("--config", str(app["config_path"]), "backup", "--no-validate", "--tier", "weekly")
        assert rc == 5 and f"no space left on device while staging app_db in {mnt}" in err and "MB free" in err, err
        assert list(mnt.iterdir()) == []  # the staging folder went with the failure
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_problem5_full_restore_target_is_exit_5_naming_it(app):
    run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    mnt = app["tmp"] / "target"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], check=True)
    try:
        # the free-space pre-check refuses before anything is written
        rc, _, err = _cli("--config", str(app["config_path"]), "restore", "latest", "--target", str(mnt / "out"))
        assert rc == 5 and "not enough space" in err and f"free at {mnt}" in err and "Traceback" not in err, err
        assert list(mnt.iterdir()) == []
        # a disk that fills while the restore writes (the pre-check passed, or its estimate was low)
        from backups.commands.restore import RestoreRequest, locate, run_restore

        req = RestoreRequest(target=str(mnt / "out"), snapshot="latest")
        with pytest.raises(StorageError) as err:
            run_restore(app["cfg"], req, locate(app["cfg"], req))
        msg = str(err.value)
        assert f"no space left on device while restoring weekly-20260301T010000Z into {mnt}" in msg and "MB free" in msg
        assert not (mnt / "out").exists() or list((mnt / "out").iterdir()) == []  # the partial restore was removed
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_problem5_verify_all_finds_a_deleted_manifest(app):
    run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    run_backup(app["cfg"], "weekly", logical_date="2026-03-08T01:00:00Z")
    (app["root"] / "local" / "snapshots" / "weekly-20260308T010000Z.json").unlink()
    rc, out, _ = _cli("--config", str(app["config_path"]), "verify", "--all")
    assert rc == 4 and "data/weekly-20260308T010000Z/" in out and "no manifest" in out


@pytest.mark.parametrize("command", [["list"], ["status"], ["verify"], ["show", "latest"],
                                     ["restore", "latest", "--target", "OUT"]])
def test_problem5_missing_or_wrong_key_is_exit_8_in_every_command(app, monkeypatch, command):
    key = "11" * 32
    cfg_path = write_config(app["tmp"] / "enc.yaml", app["home"], app["root"])
    cfg_path.write_text(cfg_path.read_text().replace('path: "' + str(app["root"]) + '/local"}',
                                                     'path: "' + str(app["root"]) + '/local", encryption: {key_env: FMR_KEY}}'))
    monkeypatch.setenv("FMR_KEY", key)
    run_backup(load_config(cfg_path), "weekly", logical_date="2026-03-01T01:00:00Z")
    args = [a.replace("OUT", str(app["tmp"] / "out")) for a in command]
    monkeypatch.setenv("FMR_KEY", "22" * 32)
    rc, _, err = _cli("--config", str(cfg_path), *args)
    assert rc == 8, err
    assert "22" * 32 not in err and "Traceback" not in err
    monkeypatch.delenv("FMR_KEY")
    rc, _, err = _cli("--config", str(cfg_path), *args)
    assert rc == 8 and "FMR_KEY is not set" in err, err


def test_problem5_unknown_postgres_table_is_not_found_like_sqlite(app, pg_db):
    import psycopg

    with psycopg.connect(pg_db["dsn"]) as c:
        c.execute("CREATE TABLE fleet (id serial PRIMARY KEY, name text)")
        c.execute("INSERT INTO fleet (name) SELECT 'r' || g FROM generate_series(1, 50) g")
    cfg_path = write_config(app["tmp"] / "pg.yaml", app["home"], app["root"],
                            extra_sources=f'  fleet_db: {{type: postgres, dsn: "{pg_db["dsn"]}"}}\n',
                            tier_sources="fleet_db, app_db")
    run_backup(load_config(cfg_path), "weekly", logical_date="2026-02-01T01:00:00Z")
    target = pg_db["make"]("target")
    rc, out, err = _cli("--config", str(cfg_path), "restore", "latest", "--source", "fleet_db", "--table", "no_such_table",
                        "--pg-target", target, "--target", str(app["tmp"] / "r1"))
    # checked against the snapshot's own table list before anything is thawed or written (the error lists them)
    assert rc == 3 and "no_such_table" in err and "not in snapshot" in err and "its tables: fleet_db: fleet" in err, err
    with psycopg.connect(target) as c:  # nothing was loaded
        assert c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    rc, _, err = _cli("--config", str(cfg_path), "restore", "latest", "--source", "app_db", "--table", "no_such_table",
                      "--target", str(app["tmp"] / "r2"))
    assert rc == 3 and "no_such_table" in err and "not in snapshot" in err, err
