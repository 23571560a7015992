"""Round trips of every backup type over every local source kind; restore of every snapshot of a chain."""

from __future__ import annotations

import os
import shutil

import pytest

from backups.catalog import Catalog
from backups.demo import fmr
from backups.engine.checker import verify
from backups.engine.restorer import restore
from backups.errors import NotFoundError, RefusedError
from backups.storage import LocalStorage
from tests.helpers import app_tree, db_rows, run_backup


def _state(home):
    return app_tree(home), db_rows(home / "app.db")


def _restore_equals(storage, snap_id, target, expected):
    cat = Catalog(storage, "fmr-test")
    snap = cat.get(snap_id)
    results = restore(storage, cat, snap, target)
    files, rows = expected
    assert app_tree(target / "app_files") == files
    assert db_rows(target / "app_db" / "app.db") == rows
    assert (target / "system_state" / "stdout").read_text() == "fmr-state\n"
    assert sum(r.verified for r in results) == sum(r.files for r in results) > 0


def test_chain_of_all_types_restores_each_state(app):
    cfg, home, tmp = app["cfg"], app["home"], app["tmp"]
    os.symlink("app.yaml", home / "config" / "current.yaml")
    os.chmod(home / "config" / "app.yaml", 0o640)
    states = {}
    snap, p = run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    assert snap.type == "full" and snap.parent is None
    states[snap.id] = _state(home)
    fmr.mutate(home, seed=1)
    inc1, _ = run_backup(cfg, "daily", logical_date="2026-01-05T02:00:00Z")
    assert inc1.type == "incremental" and inc1.parent == snap.id
    states[inc1.id] = _state(home)
    fmr.mutate(home, seed=2)
    inc2, _ = run_backup(cfg, "daily", logical_date="2026-01-06T02:00:00Z")
    assert inc2.parent == inc1.id and inc2.chain == [snap.id, inc1.id, inc2.id]
    states[inc2.id] = _state(home)
    fmr.mutate(home, seed=3)
    diff, _ = run_backup(cfg, "monthly", logical_date="2026-01-07T03:00:00Z")
    assert diff.type == "differential" and diff.parent == snap.id and diff.chain == [snap.id, diff.id]
    states[diff.id] = _state(home)
    # an incremental stores only what changed; a differential everything since the full
    files_inc2 = diff.sources["app_files"]
    assert inc2.sources["app_files"]["stored_files"] < inc2.sources["app_files"]["files"]
    assert files_inc2["stored_files"] >= inc2.sources["app_files"]["stored_files"]
    assert inc2.sources["app_files"]["deleted"] > 0
    storage = LocalStorage(app["root"] / "local")
    for i, (sid, expected) in enumerate(states.items()):
        _restore_equals(storage, sid, tmp / f"restore{i}", expected)
    report = verify(storage, Catalog(storage, "fmr-test"), read_data=True)
    assert report.ok, report.problems


def test_unchanged_database_is_referenced_not_stored(app):
    cfg = app["cfg"]
    full, _ = run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    inc, _ = run_backup(cfg, "daily", logical_date="2026-01-05T02:00:00Z")
    assert inc.sources["app_db"]["stored_files"] == 0
    assert inc.sources["app_db"]["objects"]["archive"] is None
    assert inc.sources["system_state"]["stored_files"] == 0
    assert inc.sources["app_files"]["stored_files"] == 0
    rows = full.sources["app_db"]["details"]["tables"]
    assert rows["robots"]["rows"] > 0 and rows["robots"]["primary_key"] == ["id"]


def test_incremental_without_parent_is_promoted_to_full(app):
    snap, p = run_backup(app["cfg"], "daily", logical_date="2026-01-05T02:00:00Z")
    assert snap.type == "full" and snap.doc["requested_type"] == "incremental"
    assert "no usable earlier snapshot" in snap.doc["promoted_reason"]


def test_differential_without_full_is_promoted(app):
    run_backup(app["cfg"], "daily", logical_date="2026-01-05T02:00:00Z")  # promoted full
    d, _ = run_backup(app["cfg"], "monthly", logical_date="2026-01-06T02:00:00Z")
    assert d.type == "differential" and d.parent == "daily-20260105T020000Z"


def test_broken_parent_chain_promotes_to_full(app):
    cfg = app["cfg"]
    full, _ = run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    os.remove(app["root"] / "local" / full.sources["app_files"]["objects"]["archive"]["key"])
    inc, _ = run_backup(cfg, "daily", logical_date="2026-01-05T02:00:00Z")
    assert inc.type == "full" and inc.parent is None


def test_retry_of_same_logical_date_reuses_id(app):
    cfg = app["cfg"]
    a, _ = run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    b, p = run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    assert a.id == b.id and p.already_committed
    assert len(list((app["root"] / "local" / "snapshots").iterdir())) == 1


def test_partial_restore_by_path_source_and_table(app):
    cfg, tmp = app["cfg"], app["tmp"]
    run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    storage = LocalStorage(app["root"] / "local")
    cat = Catalog(storage, "fmr-test")
    snap = cat.get("latest")
    restore(storage, cat, snap, tmp / "part", sources=["app_files"], includes=["config/**"])
    got = {p for p in app_tree(tmp / "part" / "app_files")}
    assert got and all(p.startswith("config") for p in got)
    assert not (tmp / "part" / "app_db").exists()
    restore(storage, cat, snap, tmp / "tbl", sources=["app_db"], tables=["robots"])
    rows = db_rows(tmp / "tbl" / "app_db" / "app.db")
    assert set(rows) == {"robots"} and rows["robots"] == db_rows(app["home"] / "app.db")["robots"]
    with pytest.raises(NotFoundError):
        restore(storage, cat, snap, tmp / "tbl2", sources=["app_db"], tables=["nope"])
    assert not (tmp / "tbl2" / "app_db").exists()


def test_restore_refuses_non_empty_target_unless_forced(app):
    run_backup(app["cfg"], "weekly", logical_date="2026-01-04T01:00:00Z")
    storage = LocalStorage(app["root"] / "local")
    cat = Catalog(storage, "fmr-test")
    target = app["tmp"] / "busy"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(RefusedError):
        restore(storage, cat, cat.get("latest"), target)
    assert (target / "precious.txt").read_text() == "keep me"
    restore(storage, cat, cat.get("latest"), target, force=True)
    restore(storage, cat, cat.get("latest"), target, force=True)  # replaces the restored sources again
    assert (target / "precious.txt").exists() and (target / "app_files" / "config").is_dir()


def test_checksum_mode_detects_same_size_same_mtime_change(app):
    cfg, home = app["cfg"], app["home"]
    run_backup(cfg, "weekly", logical_date="2026-01-04T01:00:00Z")
    f = next((home / "config").glob("*.yaml"))
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[0] = ord("#") if data[0] != ord("#") else ord("!")
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    # same size and mtime: size/mtime/inode detection cannot see it (inode is the same: in-place write)
    meta, _ = run_backup(cfg, "daily", logical_date="2026-01-05T02:00:00Z")
    assert meta.sources["app_files"]["stored_files"] == 0
    chk, _ = run_backup(cfg, "daily", logical_date="2026-01-06T02:00:00Z", checksum=True)
    assert chk.sources["app_files"]["stored_files"] == 1


def _run_without_dac_override(config_path, *extra):
    """Run backupctl in a child whose root lacks CAP_DAC_OVERRIDE, so file modes apply to it (as to a service user)."""
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and util-linux setpriv to drop CAP_DAC_OVERRIDE")
    code = "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code,
           "--config", str(config_path), "backup", "--no-validate", "--tier", "weekly", "--logical-date", "2026-01-04T01:00:00Z", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def test_unreadable_files_fail_the_snapshot_with_their_paths(app):
    secret = app["home"] / "config" / "secret.yaml"
    secret.write_text("x: 1")
    os.chmod(secret, 0o000)
    proc = _run_without_dac_override(app["config_path"])
    assert proc.returncode == 6, proc.stderr
    assert "config/secret.yaml" in proc.stderr and "on_unreadable: warn" in proc.stderr
    snaps = app["root"] / "local" / "snapshots"
    assert not snaps.exists() or not list(snaps.glob("*.json"))


def test_unreadable_files_warn_mode_commits_without_them(app):
    text = app["config_path"].read_text().replace('exclude: ["**/*.tmp"]}', 'exclude: ["**/*.tmp"], on_unreadable: warn}')
    app["config_path"].write_text(text)
    secret = app["home"] / "config" / "secret.yaml"
    secret.write_text("x: 1")
    os.chmod(secret, 0o000)
    proc = _run_without_dac_override(app["config_path"])
    assert proc.returncode == 0, proc.stderr
    storage = LocalStorage(app["root"] / "local")
    snap = Catalog(storage, "fmr-test").get("latest")
    assert any("config/secret.yaml" in w for w in snap.sources["app_files"]["warnings"])
