"""File metadata and changing inputs (issue 16): owners, ``user.*`` extended attributes, POSIX ACLs, the source
root's own mode, empty directories matched by a glob, unreadable directories under ``on_unreadable: warn`` and
files that change size while they are read. Real files, real ``setfacl``/``getfacl``, real GNU tar (the by-hand
procedure of docs/format.md, followed literally); non-root runs through util-linux ``setpriv``."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import zstandard

from backups.catalog import Catalog
from backups.engine import archiver
from backups.engine.restorer import restore
from backups.repository.index import iter_index
from backups.storage import LocalStorage
from tests.helpers import run_backup
from tests.property.tools import APP, SOURCE, backupctl, engine_restore, files_config, hand_restore

DATES = [f"2026-02-{d:02d}T01:00:00Z" for d in range(1, 29)]
NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="owners can only be given away as root")
needs_acl = pytest.mark.skipif(not shutil.which("setfacl"), reason="needs the acl package (setfacl/getfacl)")


def _snap(env, tier, i):
    snap, _ = run_backup(env["cfg"], tier, logical_date=DATES[i])
    return snap


def _acl(path) -> str:
    return subprocess.run(["getfacl", "-cpn", str(path)], capture_output=True, text=True, check=True).stdout


def _meta(path) -> tuple:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, st.st_mode


def _setup_metadata_tree(r):
    (r / "uploads").mkdir()
    f = r / "uploads" / "photo.jpg"
    f.write_bytes(b"jpeg bytes")
    os.chmod(f, 0o640)
    os.setxattr(f, "user.mime_type", b"image/jpeg")
    os.setxattr(f, "user.binary", bytes(range(256)))
    os.setxattr(f, os.fsdecode(b"user.not-utf8-\xff"), b"v")  # names are bytes on Linux
    subprocess.run(["setfacl", "-m", "u:nobody:r--,g::r--,m::rw-", str(f)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:r-x", str(r / "uploads")], check=True)
    if os.geteuid() == 0:
        os.chown(f, NOBODY, NOBODY)
        os.chown(r / "uploads", NOBODY, NOBODY)
        os.lchown(r / "uploads", NOBODY, NOBODY)
    os.symlink("photo.jpg", r / "uploads" / "current")
    return f


@needs_acl
def test_owners_xattrs_and_acls_come_back(env):
    r = env["root"]
    f = _setup_metadata_tree(r)
    os.chmod(r, 0o750)
    snap = _snap(env, "full", 0)
    out = engine_restore(env["repo"], snap.id, env["tmp"] / "out")
    g = out / "uploads" / "photo.jpg"
    assert os.getxattr(g, "user.mime_type") == b"image/jpeg"
    assert os.getxattr(g, "user.binary") == bytes(range(256))
    assert os.getxattr(g, os.fsdecode(b"user.not-utf8-\xff")) == b"v"
    assert _acl(g) == _acl(f)  # group r--, mask rw-: the group is not widened to rw-
    assert _acl(out / "uploads") == _acl(r / "uploads")  # the default ACL too
    assert _meta(g) == _meta(f)
    assert _meta(out / "uploads") == _meta(r / "uploads")
    assert _meta(out) == _meta(r)  # the source root's own mode (not 0700) and owner


@root_only
@needs_acl
def test_no_owner_restores_as_the_restoring_user(env):
    _setup_metadata_tree(env["root"])
    snap = _snap(env, "full", 0)
    storage = LocalStorage(env["repo"])
    cat = Catalog(storage, APP)
    restore(storage, cat, cat.get(snap.id), env["tmp"] / "out", no_owner=True)
    g = env["tmp"] / "out" / SOURCE / "uploads" / "photo.jpg"
    assert os.stat(g).st_uid == 0 and os.stat(g).st_gid == 0
    assert os.getxattr(g, "user.mime_type") == b"image/jpeg"  # only the owner is left out
    proc = backupctl("restore", snap.id, "--target", str(env["tmp"] / "cli"), "--no-owner", config=env["tmp"] / "backups.yaml")
    assert proc.returncode == 0, proc.stderr
    assert os.stat(env["tmp"] / "cli" / SOURCE / "uploads" / "photo.jpg").st_uid == 0


def test_owner_names_win_over_ids_like_tar():
    from backups.sources.fsmeta import owner_of, resolve_owner

    assert resolve_owner((4242, 4343, "nobody", "root")) == (65534, 0)  # this host's ids of the recorded names
    assert resolve_owner((4242, 4343, "no-such-user-fmr", "no-such-group-fmr")) == (4242, 4343)  # unknown: the ids
    assert resolve_owner((4242, 4343, "", "")) == (4242, 4343)
    assert owner_of(0, 0)[2:] == ("root", "root")


@needs_acl
def test_by_hand_restore_keeps_owners_xattrs_and_acls(env):
    r = env["root"]
    f = _setup_metadata_tree(r)
    snap = _snap(env, "full", 0)
    out = env["tmp"] / "hand"
    proc = hand_restore(env["repo"], snap.id, SOURCE, out)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    g = out / SOURCE / "uploads" / "photo.jpg"
    assert os.getxattr(g, "user.mime_type") == b"image/jpeg"
    assert _acl(g) == _acl(f)
    assert _acl(out / SOURCE / "uploads") == _acl(r / "uploads")
    assert _meta(g) == _meta(f)


@needs_acl
def test_tar_header_mode_never_grants_the_group_more_than_the_source(env):
    f = _setup_metadata_tree(env["root"])
    assert os.stat(f).st_mode & 0o070 == 0o060  # the ACL mask shows as the group bits
    snap = _snap(env, "full", 0)
    raw = zstandard.ZstdDecompressor().stream_reader(open(env["repo"] / snap.sources[SOURCE]["objects"]["archive"]["key"], "rb"))
    with tarfile.open(fileobj=raw, mode="r|") as tf:
        modes = {m.name: m.mode for m in tf}
    assert modes["uploads/photo.jpg"] == 0o640  # a reader without ACLs gets group r--, as the ACL's group:: entry


def test_empty_directory_matched_by_an_include_glob_is_kept(tmp_path):
    root, repo = tmp_path / "src", tmp_path / "repo"
    (root / "user_data").mkdir(parents=True)
    (root / "config").mkdir()
    (root / "config" / "app.yaml").write_text("a: 1")
    (root / "other").mkdir()
    os.chmod(root / "user_data", 0o750)
    cfg = files_config(tmp_path, root, repo, include=["user_data/**", "config/**"])
    snap, _ = run_backup(cfg, "full", logical_date=DATES[0])
    out = engine_restore(repo, snap.id, tmp_path / "out")
    assert (out / "user_data").is_dir() and os.stat(out / "user_data").st_mode & 0o777 == 0o750
    assert not (out / "other").exists()
    assert (out / "config" / "app.yaml").read_text() == "a: 1"


def _backupctl_without_dac_override(config, *args):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and util-linux setpriv to drop CAP_DAC_OVERRIDE")
    code = "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code,
           "--config", str(config), *args]
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True, text=True)


def test_unreadable_directory_under_warn_keeps_its_previous_subtree(tmp_path):
    root, repo = tmp_path / "src", tmp_path / "repo"
    (root / "uploads" / "2026" / "deep").mkdir(parents=True)
    (root / "uploads" / "2026" / "a.jpg").write_text("a")
    (root / "uploads" / "2026" / "deep" / "b.jpg").write_text("b")
    (root / "uploads" / "z.txt").write_text("z")
    (root / "zz").write_text("after")
    cfg_path = tmp_path / "backups.yaml"
    files_config(tmp_path, root, repo)
    cfg_path.write_text(cfg_path.read_text().replace("exclude: []}", "exclude: [], on_unreadable: warn}"))
    first = _backupctl_without_dac_override(cfg_path, "backup", "--no-validate", "--tier", "full", "--logical-date", DATES[0])
    assert first.returncode == 0, first.stderr
    os.chmod(root / "uploads" / "2026", 0o000)
    try:
        (root / "zz").write_text("changed")
        inc = _backupctl_without_dac_override(cfg_path, "backup", "--no-validate", "--tier", "inc", "--logical-date", DATES[1])
    finally:
        os.chmod(root / "uploads" / "2026", 0o755)
    assert inc.returncode == 0, inc.stderr
    storage = LocalStorage(repo)
    snap = Catalog(storage, APP).get("latest")
    assert snap.type == "incremental"
    assert any("uploads/2026/" in w for w in snap.sources[SOURCE]["warnings"])
    out = engine_restore(repo, "latest", tmp_path / "out")
    assert (out / "uploads" / "2026" / "a.jpg").read_text() == "a"
    assert (out / "uploads" / "2026" / "deep" / "b.jpg").read_text() == "b"
    assert (out / "zz").read_text() == "changed"
    proc = hand_restore(repo, snap.id, SOURCE, tmp_path / "hand")
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert (tmp_path / "hand" / SOURCE / "uploads" / "2026" / "deep" / "b.jpg").read_text() == "b"
    cli = backupctl("restore", "latest", "--target", str(tmp_path / "cli"), config=cfg_path)
    assert cli.returncode == 0, cli.stderr
    assert "warning:" in cli.stdout and "uploads/2026/" in cli.stdout  # the restore says what was kept from before


def _restore_cli(env, snap_id, name):
    proc = backupctl("restore", snap_id, "--target", str(env["tmp"] / name), config=env["tmp"] / "backups.yaml")
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((env["tmp"] / name / "RESTORE_REPORT.json").read_text())


def test_small_file_that_shrank_while_read_is_stored_as_read_and_flagged(env, monkeypatch):
    r = env["root"]
    (r / "app.log").write_bytes(b"0123456789" * 1000)
    real = archiver._read_upto

    def truncate_first(fh, limit):
        os.truncate(r / "app.log", 1234)
        return real(fh, limit)

    monkeypatch.setattr(archiver, "_read_upto", truncate_first)
    snap = _snap(env, "full", 0)
    entries = dict(iter_index(LocalStorage(env["repo"]), snap.sources[SOURCE]["objects"]["index"]))
    assert entries["app.log"].torn and entries["app.log"].size == 1234
    assert (engine_restore(env["repo"], snap.id, env["tmp"] / "out") / "app.log").read_bytes() == (b"0123456789" * 1000)[:1234]
    proc, report = _restore_cli(env, snap.id, "cli")
    assert "app.log: changed while being read" in proc.stdout
    assert any("app.log: changed while being read" in w for w in report["sources"][SOURCE]["warnings"])
    assert "app.log: changed while being read" in (env["tmp"] / "cli" / "RESTORE_REPORT.md").read_text()
    hand = hand_restore(env["repo"], snap.id, SOURCE, env["tmp"] / "hand")
    assert hand.returncode == 0 and hand.stdout == "", hand.stderr


@pytest.mark.parametrize("new_size", [3 * archiver.CHUNK + 17, 0, 5 << 20])
def test_large_file_that_shrank_while_read_is_stored_as_read_not_zero_padded(env, monkeypatch, new_size):
    r = env["root"]
    big = os.urandom(5 << 20)
    (r / "big.bin").write_bytes(big)
    (r / "after.txt").write_text("after")
    real = archiver._TarStream.add_file

    calls = []

    def shrink_while_reading(self, e, fh, size, progress):
        calls.append(e.path)
        if calls.count("big.bin") == 1 and e.path == "big.bin":
            os.truncate(r / "big.bin", min(new_size, 3 * archiver.CHUNK + 17))
            if new_size == 5 << 20:  # shrinks under the reader, then grows back to the same size before re-read
                orig = fh.readinto

                def readinto(view):
                    n = orig(view)
                    if not n:
                        with open(r / "big.bin", "ab") as g:
                            g.write(b"\x01" * ((5 << 20) - os.path.getsize(r / "big.bin")))
                    return n

                fh = type("F", (), {"readinto": staticmethod(readinto), "seek": fh.seek, "read": fh.read})()
        return real(self, e, fh, size, progress)

    monkeypatch.setattr(archiver._TarStream, "add_file", shrink_while_reading)
    snap = _snap(env, "full", 0)
    now = (r / "big.bin").read_bytes()
    assert len(now) == min(new_size, 3 * archiver.CHUNK + 17) or new_size == 5 << 20
    out = engine_restore(env["repo"], snap.id, env["tmp"] / "out")
    assert (out / "big.bin").read_bytes() == now  # what the file held, never zeros that never existed
    assert (out / "after.txt").read_text() == "after"
    entries = dict(iter_index(LocalStorage(env["repo"]), snap.sources[SOURCE]["objects"]["index"]))
    assert entries["big.bin"].torn and entries["big.bin"].size == len(now)
    hand = hand_restore(env["repo"], snap.id, SOURCE, env["tmp"] / "hand")
    assert hand.returncode == 0 and hand.stdout == "", hand.stderr
    assert (env["tmp"] / "hand" / SOURCE / "big.bin").read_bytes() == now


def test_a_crafted_index_cannot_set_other_attributes_than_user_and_acls(env):
    """Whoever can write the repository must not grant file capabilities (``security.capability``) or set
    ``trusted.*`` attributes through a restore: only ``user.*`` and the ACLs are ever set, the rest is a warning."""
    import base64
    import hashlib

    from backups.catalog.manifest import seal

    (env["root"] / "tool").write_bytes(b"#!/bin/sh\n")
    snap = _snap(env, "full", 0)
    repo = env["repo"]
    path = repo / "snapshots" / f"{snap.id}.json"
    doc = json.loads(path.read_text())
    rec = doc["sources"][SOURCE]
    key = rec["objects"]["index"]["key"]
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((repo / key).read_bytes())).read()
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep (VFS_CAP_REVISION_2)
    for d in lines:
        if d["p"] == "tool":
            d["x"] = {"security.capability": base64.b64encode(cap).decode(), "trusted.evil": "eA==",
                      "user.ok": base64.b64encode(b"fine").decode()}
    data = zstandard.compress("".join(json.dumps(d) + "\n" for d in lines).encode())
    (repo / key).write_bytes(data)
    rec["objects"]["index"] = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    doc.pop("checksum", None)
    path.write_bytes(seal(doc))
    storage = LocalStorage(repo)
    cat = Catalog(storage, APP)
    out = restore(storage, cat, cat.get(snap.id), env["tmp"] / "out")
    tool = env["tmp"] / "out" / SOURCE / "tool"
    assert os.listxattr(tool) == ["user.ok"] and os.getxattr(tool, "user.ok") == b"fine"
    assert any("security.capability not restored" in w for w in out[0].warnings)
    assert any("trusted.evil not restored" in w for w in out[0].warnings)


@needs_acl
def test_target_without_acl_support_never_widens_the_group_and_says_so(env, monkeypatch):
    """A restore onto a filesystem that refuses ACLs (vfat, some network mounts; none is mounted here, so the
    refusal is injected at ``os.setxattr``): the group bits are the ACL's ``group::`` entry (r--), never its
    mask (rw-), and the restore's warnings name the file."""
    import errno

    f = _setup_metadata_tree(env["root"])
    snap = _snap(env, "full", 0)
    real = os.setxattr

    def no_acls(target, name, value, *a, **k):
        if name.startswith("system.posix_acl"):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real(target, name, value, *a, **k)

    monkeypatch.setattr(os, "setxattr", no_acls)
    storage = LocalStorage(env["repo"])
    cat = Catalog(storage, APP)
    out = restore(storage, cat, cat.get(snap.id), env["tmp"] / "out")
    g = env["tmp"] / "out" / SOURCE / "uploads" / "photo.jpg"
    assert os.stat(f).st_mode & 0o777 == 0o660  # the source: group bits show the mask
    assert os.stat(g).st_mode & 0o777 == 0o640  # restored without the ACL: the owning group's own r--
    assert any("uploads/photo.jpg: extended attribute system.posix_acl_access not restored" in w for w in out[0].warnings)
    assert os.getxattr(g, "user.mime_type") == b"image/jpeg"


def test_large_file_that_grew_while_read_is_flagged_torn_and_restored_as_read(env, monkeypatch):
    r = env["root"]
    big = os.urandom(5 << 20)
    (r / "grow.bin").write_bytes(big)
    real = archiver._TarStream.add_file

    def grow_while_reading(self, e, fh, size, progress):
        with open(r / "grow.bin", "ab") as g:
            g.write(b"appended")
        return real(self, e, fh, size, progress)

    monkeypatch.setattr(archiver._TarStream, "add_file", grow_while_reading)
    snap = _snap(env, "full", 0)
    entries = dict(iter_index(LocalStorage(env["repo"]), snap.sources[SOURCE]["objects"]["index"]))
    assert entries["grow.bin"].torn and entries["grow.bin"].size == len(big)
    assert any("grow.bin: changed while being read" in w for w in snap.sources[SOURCE]["warnings"])
    assert (engine_restore(env["repo"], snap.id, env["tmp"] / "out") / "grow.bin").read_bytes() == big


def test_unreadable_directory_never_keeps_a_hard_link_to_a_file_that_is_gone(tmp_path):
    """The kept subtree of an unreadable directory holds a hard link to a file outside it; that file is deleted
    before the incremental. Keeping the link would make the snapshot unrestorable (nothing to link it to): it is
    left out with a warning, and ``restore latest`` works."""
    root, repo = tmp_path / "src", tmp_path / "repo"
    (root / "d").mkdir(parents=True)
    (root / "a.bin").write_text("shared")
    os.link(root / "a.bin", root / "d" / "h.bin")
    (root / "d" / "own.txt").write_text("own")
    (root / "keep.bin").write_text("kept")
    os.link(root / "keep.bin", root / "d" / "k.bin")
    cfg_path = tmp_path / "backups.yaml"
    files_config(tmp_path, root, repo)
    cfg_path.write_text(cfg_path.read_text().replace("exclude: []}", "exclude: [], on_unreadable: warn}"))
    assert _backupctl_without_dac_override(cfg_path, "backup", "--no-validate", "--tier", "full", "--logical-date", DATES[0]).returncode == 0
    os.unlink(root / "a.bin")
    os.chmod(root / "d", 0o000)
    try:
        inc = _backupctl_without_dac_override(cfg_path, "backup", "--no-validate", "--tier", "inc", "--logical-date", DATES[1])
    finally:
        os.chmod(root / "d", 0o755)
    assert inc.returncode == 0, inc.stderr
    snap = Catalog(LocalStorage(repo), APP).get("latest")
    out = engine_restore(repo, "latest", tmp_path / "out")
    assert any("d/h.bin: hard link to a.bin" in w for w in snap.sources[SOURCE]["warnings"])
    assert sorted(p.name for p in (out / "d").iterdir()) == ["k.bin", "own.txt"]
    # d/k.bin (first of its group in canonical order) is kept; keep.bin, read now, is stored with its own bytes
    assert (out / "d" / "k.bin").read_text() == "kept" and (out / "keep.bin").read_text() == "kept"
    hand = hand_restore(repo, snap.id, SOURCE, tmp_path / "hand")
    assert hand.returncode == 0 and hand.stdout == "", hand.stderr


@needs_acl
def test_a_default_acl_of_the_restore_target_is_not_inherited(env):
    """Restoring into a directory whose default ACL grants someone access: the restored entries have exactly
    the source's ACLs (none here) and modes, never the target's inherited grant."""
    r = env["root"]
    (r / "sub").mkdir()
    (r / "sub" / "secret.txt").write_text("s")
    os.chmod(r / "sub" / "secret.txt", 0o600)
    os.chmod(r / "sub", 0o700)
    snap = _snap(env, "full", 0)
    target = env["tmp"] / "out"
    target.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rwx,m::rwx", str(target)], check=True)
    out = engine_restore(env["repo"], snap.id, target)
    for p in (out, out / "sub", out / "sub" / "secret.txt"):
        assert "nobody" not in _acl(p), p
        assert _acl(p) == _acl(r / os.path.relpath(p, out)), p
    assert os.stat(out / "sub" / "secret.txt").st_mode & 0o777 == 0o600
