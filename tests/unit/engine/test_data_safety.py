"""Issue 7: type changes across chains, every POSIX name, special files, files that vanish or change during a
backup, a damaged index, leftovers of killed restores. Each snapshot is restored by the engine and compared with
the exact state at its time; type changes and hard links also by the by-hand procedure of docs/format.md."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import zlib
from pathlib import Path

import pytest

from backups.catalog import Catalog
from backups.engine import archiver
from backups.engine.restorer import restore
from backups.errors import IntegrityError, SourceError
from backups.sources.files import FilesSource, glob_escape, matches
from backups.storage import LocalStorage
from tests.helpers import run_backup
from tests.property.tools import APP, SOURCE, backupctl, engine_restore, fingerprint, hand_restore

DATES = [f"2026-02-{d:02d}T01:00:00Z" for d in range(1, 29)]


def _snap(env, tier, i):
    snap, _ = run_backup(env["cfg"], tier, logical_date=DATES[i])
    return snap


def _check_all(env, states, *, by_hand=True):
    for n, (sid, want) in enumerate(states.items()):
        got = fingerprint(engine_restore(env["repo"], sid, env["tmp"] / f"r{n}"))
        assert got == want, sid
        if by_hand:
            out = env["tmp"] / f"h{n}"
            proc = hand_restore(env["repo"], sid, SOURCE, out)
            assert proc.returncode == 0 and proc.stdout == "", proc.stderr
            strip = lambda t: {k: (v[0], v[1], v[2], v[3] if v[0] == "f" else None, v[4]) for k, v in t.items()}  # noqa: E731
            assert strip(fingerprint(out / SOURCE, seconds=True, dir_times=False)) == strip(
                {k: (v[0], v[1], v[2], v[3] // 10**9 if v[0] == "f" else None, v[4]) for k, v in want.items()})


# ------------------------------------------------------------------------------------------------ 2. type changes
def test_type_changes_at_any_depth_across_full_differential_incremental(env):
    r = env["root"]
    (r / "logs" / "current").mkdir(parents=True)
    (r / "logs" / "current" / "app.log").write_text("one\n")
    (r / "logs" / "2026-11-22").mkdir()
    (r / "logs" / "2026-11-22" / "app.log").write_text("two\n")
    (r / "a" / "b" / "c").mkdir(parents=True)
    (r / "a" / "b" / "c" / "deep.txt").write_text("deep\n")
    (r / "f").write_text("file\n")
    os.symlink("f", r / "s")
    states = {}
    states[_snap(env, "full", 0).id] = fingerprint(r)
    # dir -> symlink (the logs/current case), deep dir -> file, file -> dir, symlink -> dir
    shutil.rmtree(r / "logs" / "current")
    os.symlink("2026-11-22", r / "logs" / "current")
    shutil.rmtree(r / "a" / "b")
    (r / "a" / "b").write_text("now a file\n")
    os.unlink(r / "f")
    (r / "f").mkdir()
    (r / "f" / "inside").write_text("in\n")
    os.unlink(r / "s")
    (r / "s").mkdir()
    states[_snap(env, "inc", 1).id] = fingerprint(r)
    states[_snap(env, "inc", 2).id] = fingerprint(r)  # the snapshot after the change (restore refused it before)
    # and back: symlink -> dir, file -> dir (deep), dir -> symlink, dir -> file
    os.unlink(r / "logs" / "current")
    (r / "logs" / "current").mkdir()
    (r / "logs" / "current" / "app.log").write_text("three\n")
    os.unlink(r / "a" / "b")
    (r / "a" / "b" / "c").mkdir(parents=True)
    (r / "a" / "b" / "c" / "deep.txt").write_text("deep again\n")
    shutil.rmtree(r / "f")
    os.symlink("s", r / "f")
    shutil.rmtree(r / "s")
    (r / "s").write_text("s is a file\n")
    states[_snap(env, "diff", 3).id] = fingerprint(r)
    states[_snap(env, "inc", 4).id] = fingerprint(r)
    _check_all(env, states)
    # --include restore of a path that did not change, on a snapshot after the type change
    sid = list(states)[2]
    got = fingerprint(engine_restore(env["repo"], sid, env["tmp"] / "inc", includes=["logs/**"]))
    assert got == {k: v for k, v in states[sid].items() if k.startswith("logs")}
    proc = backupctl("restore", sid, "--target", str(env["tmp"] / "cli"), "--include", "a/**",
                     config=env["tmp"] / "backups.yaml")
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(env["tmp"] / "cli" / SOURCE) == {k: v for k, v in states[sid].items() if k.startswith("a")}


# ------------------------------------------------------------------------------------------------ 3. names
ODD = ["new\nline", "carriage\rreturn", "tab\there", "back\\slash", "star*", "what?", "[brackets]", "-leading-dash",
       os.fsdecode(b"latin1-\xe9\xff"), "x" * 255, "trailing space ", "ünïcødé"]


def test_every_posix_name_round_trips(env):
    r = env["root"]
    for i, name in enumerate(ODD):
        (r / name).write_text(f"{i}\n")
        (r / f"dir-{i}-{name}"[:255]).mkdir()
        (r / f"dir-{i}-{name}"[:255] / name).write_text(f"in {i}\n")
    os.symlink(ODD[0], r / "link\nto-newline")
    # a path longer than 4 KiB in total (255-byte components), created through directory descriptors
    fd = os.open(r, os.O_RDONLY)
    for i in range(18):
        comp = f"{i:02d}" + "L" * 253
        os.mkdir(comp, dir_fd=fd)
        nfd = os.open(comp, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open("deep\nfile", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd), "w") as fh:
        fh.write("deep\n")
    os.close(fd)
    states = {_snap(env, "full", 0).id: fingerprint(r)}
    longest = max(states[next(iter(states))], key=len)
    assert len(longest.encode()) > 4096
    assert any("\n" in p for p in states[next(iter(states))])
    (r / ODD[1]).write_text("changed\n")
    os.unlink(r / ODD[3])
    states[_snap(env, "inc", 1).id] = fingerprint(r)
    _check_all(env, states, by_hand=False)  # the by-hand procedure has documented limits (newlines, PATH_MAX)
    snap = list(states)[-1]
    # globs match them: a directory whose name has a newline, and metacharacters taken literally with \
    got = fingerprint(engine_restore(env["repo"], snap, env["tmp"] / "g1", includes=["dir-0-new\nline/**"]))
    assert set(got) == {"dir-0-new\nline", "dir-0-new\nline/new\nline"}
    got = fingerprint(engine_restore(env["repo"], snap, env["tmp"] / "g2", includes=[glob_escape("star*")]))
    assert set(got) == {"star*"}
    proc = backupctl("restore", snap, "--target", str(env["tmp"] / "g3"), "--include", "back\\\\slash", "--include",
                     "dir-3-*/**", config=env["tmp"] / "backups.yaml")
    assert proc.returncode == 0, proc.stderr
    assert set(fingerprint(env["tmp"] / "g3" / SOURCE)) == {"dir-3-back\\slash", "dir-3-back\\slash/back\\slash"}


def test_globs_cross_newlines_and_escape_metacharacters():
    assert matches("a\nb/c", ["**"]) and matches("a\nb/c", ["a*/**"]) and matches("x/new\nline", ["**/new?line"])
    assert matches("star*", ["star\\*"]) and not matches("starry", ["star\\*"])
    assert matches("back\\slash", ["back\\\\slash"])
    assert matches("[x]", ["[x]"]) and not matches("x", ["[x]"])


def test_names_with_newlines_are_backed_up_not_dropped(env):
    (env["root"] / "a\nb").mkdir()
    (env["root"] / "a\nb" / "c").write_text("c")
    snap = _snap(env, "full", 0)
    assert snap.sources[SOURCE]["files"] == 1


# ------------------------------------------------------------------------------------------------ 4. special files
def test_special_files_are_skipped_with_a_warning(env, caplog):
    r = env["root"]
    (r / "plain").write_text("p")
    os.mkfifo(r / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(r / "sock"))
    try:  # a device node needs CAP_MKNOD (root outside a restricted container)
        os.mknod(r / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        device = True
    except PermissionError:
        device = False
    try:
        snap = _snap(env, "full", 0)
    finally:
        sock.close()
    warnings = snap.sources[SOURCE]["warnings"]
    assert any("fifo: FIFO skipped" in w for w in warnings), warnings
    assert any("sock: socket skipped" in w for w in warnings), warnings
    assert "FIFO skipped" in caplog.text
    assert not device or any("null: character device skipped" in w for w in warnings), warnings
    assert set(fingerprint(engine_restore(env["repo"], snap.id, env["tmp"] / "out"))) == {"plain"}


def test_hard_links_come_back_as_hard_links(env):
    r = env["root"]
    (r / "d").mkdir()
    (r / "d" / "orig").write_text("shared\n")
    os.link(r / "d" / "orig", r / "alias")
    os.link(r / "d" / "orig", r / "d" / "z-second")
    (r / "solo").write_text("solo\n")
    states = {_snap(env, "full", 0).id: fingerprint(r)}
    assert states[next(iter(states))]["alias"][4] == "alias"  # the group is recorded
    with open(r / "alias", "a") as fh:  # content changes through one name: every name sees it
        fh.write("more\n")
    os.link(r / "solo", r / "solo-link")
    states[_snap(env, "inc", 1).id] = fingerprint(r)
    os.unlink(r / "alias")  # the first name goes: the next one carries the content
    states[_snap(env, "inc", 2).id] = fingerprint(r)
    _check_all(env, states)
    snap = list(states)[1]
    out = env["tmp"] / "only-link"
    got = fingerprint(engine_restore(env["repo"], snap, out, includes=["d/z-second"]))
    assert got["d/z-second"][1] == states[snap]["d/z-second"][1]


def test_sparse_files_come_back_sparse(env):
    size = 64 << 20
    with open(env["root"] / "sparse.img", "wb") as fh:
        fh.write(b"head")
        fh.seek(size - 4)
        fh.write(b"tail")
    snap = _snap(env, "full", 0)
    out = engine_restore(env["repo"], snap.id, env["tmp"] / "out") / "sparse.img"
    st = os.stat(out)
    assert st.st_size == size
    assert st.st_blocks * 512 < size // 8, "restored fully allocated"
    assert zlib.crc32(out.read_bytes()) == zlib.crc32((env["root"] / "sparse.img").read_bytes())


# ------------------------------------------------------------------------------------------------ 5. live changes
def test_file_removed_during_backup_is_a_warning(env, monkeypatch):
    r = env["root"]
    for n in ("a.log", "b.log", "c.log"):
        (r / n).write_text(n)
    first = _snap(env, "full", 0)
    real_scan = FilesSource._scan

    def racing_scan(self, unreadable, warnings):
        for e in real_scan(self, unreadable, warnings):
            if e.path == "b.log":
                os.unlink(r / "b.log")  # rotated away between listing and reading
            yield e

    monkeypatch.setattr(FilesSource, "estimate", lambda self: 0)  # only the backup's own scan races (not the pre-check's)
    monkeypatch.setattr(FilesSource, "_scan", racing_scan)
    (r / "b.log").write_text("b changed")  # so the incremental has to read it
    snap = _snap(env, "inc", 1)
    assert any("b.log: file removed before we read it" in w for w in snap.sources[SOURCE]["warnings"])
    assert set(fingerprint(engine_restore(env["repo"], snap.id, env["tmp"] / "out"))) == {"a.log", "c.log"}
    assert first.id in snap.chain


def test_file_changed_while_read_is_recorded_with_a_warning(env, monkeypatch):
    r = env["root"]
    (r / "grow.log").write_bytes(b"x" * 10_000)
    real_read = archiver._read_upto

    def read_while_growing(fh, limit):
        with open(r / "grow.log", "ab") as out:
            out.write(b"more")
        os.utime(r / "grow.log", ns=(1, 1))
        return real_read(fh, limit)

    monkeypatch.setattr(archiver, "_read_upto", read_while_growing)
    snap = _snap(env, "full", 0)
    assert any("grow.log: changed while being read" in w for w in snap.sources[SOURCE]["warnings"])
    # stored as read: a small file is read whole before its header is written, so the appended bytes are in
    assert (engine_restore(env["repo"], snap.id, env["tmp"] / "out") / "grow.log").read_bytes() == b"x" * 10_000 + b"more"


def test_unreadable_hint_is_printed_once_and_does_not_blame_permissions_of_vanished_files(env, monkeypatch):
    def refuse(self):
        raise PermissionError(13, "Permission denied")

    (env["root"] / "secret").write_text("s")
    monkeypatch.setattr("backups.sources.base.Entry.open", refuse)
    with pytest.raises(SourceError) as err:
        _snap(env, "full", 0)
    text = str(err.value)
    assert text.count("fix:") == 1 and "secret (Permission denied)" in text
    assert "read access" in text


# ------------------------------------------------------------------------------------------------ index / leftovers
def test_corrupted_index_is_exit_4_not_a_traceback(env):
    (env["root"] / "a").write_text("a")
    snap = _snap(env, "full", 0)
    key = env["repo"] / snap.sources[SOURCE]["objects"]["index"]["key"]
    import zstandard

    key.write_bytes(zstandard.compress(b'{"p": "a", "t": "f"\n'))
    storage = LocalStorage(env["repo"])
    cat = Catalog(storage, APP)
    with pytest.raises(IntegrityError, match="damaged"):
        restore(storage, cat, cat.get(snap.id), env["tmp"] / "out")
    key.write_bytes(b"not zstd at all")
    proc = backupctl("restore", snap.id, "--target", str(env["tmp"] / "out2"), config=env["tmp"] / "backups.yaml")
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr and "damaged" in proc.stderr


def test_force_rerun_removes_leftovers_of_a_killed_restore(env):
    (env["root"] / "a").write_text("a")
    snap = _snap(env, "full", 0)
    target = env["tmp"] / "out"
    engine_restore(env["repo"], snap.id, target)
    killed = target / f".{SOURCE}.partial-abc123"
    (killed / "half").mkdir(parents=True)
    (killed / "half" / "written").write_text("x")
    unrelated = target / ".other.partial-keep"
    unrelated.mkdir()
    engine_restore_force = restore
    storage = LocalStorage(env["repo"])
    cat = Catalog(storage, APP)
    engine_restore_force(storage, cat, cat.get(snap.id), target, force=True)
    assert sorted(p.name for p in target.iterdir()) == [".other.partial-keep", SOURCE]
    assert Path(target / SOURCE / "a").read_text() == "a"


# ------------------------------------------------------------------------------------------------ 1. no write through a symlink
def test_restore_tree_never_writes_through_a_symlink_planted_in_its_way(tmp_path):
    """The creation layer itself, with a symlink planted where the restore expects a directory or a new file (as a
    racing process could): it refuses, and nothing appears outside."""
    from backups.engine.restorer import _FILE_FLAGS, _Tree
    from backups.errors import RefusedError

    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "a")
    (root / "file").write_text("f")
    tree = _Tree(root)
    try:
        with pytest.raises(RefusedError, match="'a' is a symlink or a file"):
            tree.dir("a/b")
        with pytest.raises(RefusedError, match="'file' is a symlink or a file"):
            tree.dir("file/x")
        pfd, name = tree.parent("c/new")
        os.symlink(outside / "target", name, dir_fd=pfd)
        with pytest.raises(OSError):  # O_EXCL | O_NOFOLLOW: an existing name, symlink or not, is never opened
            os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
    finally:
        tree.close()
    assert list(outside.iterdir()) == []


def test_restore_into_a_planted_symlink_is_refused(env, monkeypatch):
    """A symlink appears inside the partial directory between the directories pass and the files pass."""
    from backups.engine import restorer
    from backups.errors import RefusedError

    (env["root"] / "d").mkdir()
    (env["root"] / "d" / "x").write_text("x")
    snap = _snap(env, "full", 0)
    outside = env["tmp"] / "outside"
    outside.mkdir()
    real = restorer._extract_archive

    def plant(storage, obj, wanted, tree, out, progress, *rest):
        tree.dir("")  # leave every directory, then swap d for a symlink
        partial = Path(f"/proc/self/fd/{tree.root}").resolve()
        shutil.rmtree(partial / "d")
        os.symlink(outside, partial / "d")
        return real(storage, obj, wanted, tree, out, progress, *rest)

    monkeypatch.setattr(restorer, "_extract_archive", plant)
    with pytest.raises(RefusedError, match="'d' is a symlink"):
        engine_restore(env["repo"], snap.id, env["tmp"] / "out")
    assert list(outside.iterdir()) == []
    assert list((env["tmp"] / "out").iterdir()) == []
