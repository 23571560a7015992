"""Faults and bad input: live writes, SIGKILL mid-backup, flipped bytes, malicious archives, damaged manifests."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time

import pytest
import zstandard

from backups.catalog import Catalog, seal
from backups.cli import main
from backups.demo import fmr
from backups.engine.checker import verify
from backups.engine.restorer import restore
from backups.errors import IntegrityError, RefusedError
from backups.storage import LocalStorage
from tests.helpers import run_backup


def _cli(*args: str) -> tuple[int, str, str]:
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_sqlite_backup_while_the_application_writes(app):
    home = app["home"]
    before = fmr.table_counts(home / "app.db")["telemetry"]
    with fmr.background_writer(home) as written:
        time.sleep(0.3)
        snap, _ = run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
        time.sleep(0.2)
    after = fmr.table_counts(home / "app.db")["telemetry"]
    assert written["rows"] > 0 and after > before
    recorded = snap.sources["app_db"]["details"]["tables"]["telemetry"]["rows"]
    assert before <= recorded <= after
    storage = LocalStorage(app["root"] / "local")
    cat = Catalog(storage, "fmr-test")
    restore(storage, cat, snap, app["tmp"] / "out", sources=["app_db"])
    conn = sqlite3.connect(app["tmp"] / "out" / "app_db" / "app.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM telemetry").fetchone()[0] == recorded


def test_sigkill_mid_backup_leaves_no_snapshot_and_next_run_succeeds(app):
    big = app["home"] / "uploads" / "huge.bin"
    with open(big, "wb") as fh:
        for _ in range(40):
            fh.write(os.urandom(1 << 20))
    code = "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, "--config", str(app["config_path"]), "-q", "backup", "--no-validate", "--tier",
                             "weekly", "--logical-date", "2026-03-01T01:00:00Z"], env=env)
    data = app["root"] / "local" / "data"
    deadline = time.time() + 30
    while time.time() < deadline and not (data.exists() and any(data.rglob("*"))):
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    storage = LocalStorage(app["root"] / "local")
    assert Catalog(storage).snapshots == {}
    rc, out, _ = _cli("--config", str(app["config_path"]), "list", "--json")
    assert rc == 0 and json.loads(out)["snapshots"] == []
    snap, p = run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    assert not p.already_committed and snap.id == "weekly-20260301T010000Z"
    assert verify(storage, Catalog(storage), read_data=True).ok
    restore(storage, Catalog(storage), snap, app["tmp"] / "out", sources=["app_files"])
    assert (app["tmp"] / "out" / "app_files" / "uploads" / "huge.bin").stat().st_size == 40 << 20


def test_verify_read_data_detects_a_flipped_byte_in_any_object(app):
    run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    fmr.mutate(app["home"], seed=9)
    run_backup(app["cfg"], "daily", logical_date="2026-03-02T02:00:00Z")
    storage = LocalStorage(app["root"] / "local")
    cat = Catalog(storage)
    objects = [o for s in cat.ordered() for o in s.objects()]
    assert len(objects) > 10
    for obj in objects:
        path = app["root"] / "local" / obj["key"]
        original = path.read_bytes()
        if not original:
            continue
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        assert verify(storage, cat, read_data=False).ok  # same size: structure check cannot see it
        report = verify(storage, cat, read_data=True)
        assert [p for p in report.problems if obj["key"] in p and "SHA-256" in p], (obj["key"], report.problems)
        path.write_bytes(original)
    code, out, _ = _cli("--config", str(app["config_path"]), "verify", "--all", "--read-data")
    assert code == 0 and "OK" in out
    os.remove(app["root"] / "local" / objects[0]["key"])
    code, out, _ = _cli("--config", str(app["config_path"]), "verify", "--all")
    assert code == 4 and "missing" in out


def test_restore_detects_damaged_archive_and_leaves_nothing(app):
    snap, _ = run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    key = snap.sources["app_files"]["objects"]["archive"]["key"]
    path = app["root"] / "local" / key
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    storage = LocalStorage(app["root"] / "local")
    with pytest.raises(IntegrityError):
        restore(storage, Catalog(storage), snap, app["tmp"] / "out", sources=["app_files"])
    assert not (app["tmp"] / "out" / "app_files").exists()
    assert not [p for p in (app["tmp"] / "out").iterdir() if "partial" in p.name]


def _replace_archive(app, snap, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    """Swap a snapshot's files archive for a crafted one and re-seal the manifest (as an attacker with write access would)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, content in members:
            tf.addfile(ti, io.BytesIO(content) if content is not None else None)
    blob = zstandard.ZstdCompressor().compress(buf.getvalue())
    rec = snap.doc["sources"]["app_files"]["objects"]["archive"]
    (app["root"] / "local" / rec["key"]).write_bytes(blob)
    import hashlib

    rec.update(size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (app["root"] / "local" / "snapshots" / f"{snap.id}.json").write_bytes(seal(snap.doc))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink_escape"])
def test_malicious_archive_members_are_refused(app, kind):
    snap, _ = run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    outside = app["tmp"] / "outside"
    outside.mkdir()
    if kind == "dotdot":
        ti = tarfile.TarInfo("../../outside/evil.txt")
        ti.size = 4
        members = [(ti, b"evil")]
    elif kind == "absolute":
        ti = tarfile.TarInfo(str(outside / "evil.txt"))
        ti.size = 4
        members = [(ti, b"evil")]
    else:
        link = tarfile.TarInfo("config")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        ti = tarfile.TarInfo("config/evil.txt")
        ti.size = 4
        members = [(link, None), (ti, b"evil")]
    _replace_archive(app, snap, members)
    storage = LocalStorage(app["root"] / "local")
    cat = Catalog(storage)
    with pytest.raises((RefusedError, IntegrityError)) as info:
        restore(storage, cat, cat.get(snap.id), app["tmp"] / "out", sources=["app_files"])
    assert kind == "symlink_escape" or isinstance(info.value, RefusedError)
    assert not (outside / "evil.txt").exists()
    assert list(outside.iterdir()) == []
    assert not (app["tmp"] / "out" / "app_files").exists()


def test_symlink_member_then_write_through_it_is_refused(app):
    """The index itself lists the symlink: the restorer must still never write through it."""
    (app["home"] / "config" / "sub").mkdir()
    (app["home"] / "config" / "sub" / "f.txt").write_text("x")
    snap, _ = run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    outside = app["tmp"] / "outside2"
    outside.mkdir()
    storage = LocalStorage(app["root"] / "local")
    # rewrite the index so that config/sub is a symlink to outside, and the archive writes config/sub/f.txt
    link = tarfile.TarInfo("config/sub")
    link.type, link.linkname = tarfile.SYMTYPE, str(outside)
    ti = tarfile.TarInfo("config/sub/f.txt")
    ti.size = 1
    _replace_archive(app, snap, [(link, None), (ti, b"x")])
    cat = Catalog(storage)
    with pytest.raises((RefusedError, IntegrityError)):
        restore(storage, cat, cat.get(snap.id), app["tmp"] / "out", sources=["app_files"])
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupted_or_truncated_manifest_gives_a_clear_error(app, damage):
    snap, _ = run_backup(app["cfg"], "weekly", logical_date="2026-03-01T01:00:00Z")
    path = app["root"] / "local" / "snapshots" / f"{snap.id}.json"
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        path.write_bytes(raw.replace(b'"files": ', b'"files": 9', 1))
    else:
        path.write_bytes(b"\x00\xff not json")
    cfg = str(app["config_path"])
    code, out, err = _cli("--config", cfg, "show", snap.id)
    assert code == 4 and "manifest" in err and snap.id in err and "fix:" in err
    code, out, err = _cli("--config", cfg, "list")
    assert code == 0 and "CORRUPT" in out
    code, out, err = _cli("--config", cfg, "restore", snap.id, "--target", str(app["tmp"] / "out"))
    assert code == 4 and not (app["tmp"] / "out").exists()
    code, out, err = _cli("--config", cfg, "verify", "--all")
    assert code == 4 and "manifest" in out
    # a corrupt manifest is never a parent: the next incremental is promoted to full
    s2, _ = run_backup(app["cfg"], "daily", logical_date="2026-03-02T02:00:00Z")
    assert s2.type == "full"
