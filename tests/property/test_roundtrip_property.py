"""Property: after any history of tree operations interleaved with full / differential / incremental snapshots,
EVERY snapshot restores identical to the tree as it was when it was taken — content, type, mode, mtime, symlink
target, hard-link groups, owners (as root), ``user.*`` extended attributes, POSIX ACLs (access and default) and
empty directories — with the engine's restore, and with the by-hand procedure of docs/format.md (to its
documented precision: whole-second file mtimes, no directory mtimes; histories with a newline in a name are left
to the engine, as the document says).

Examples per run come from the hypothesis profile (tests/conftest.py): ``default`` for make test, ``long`` for a
deeper search: ``.venv/bin/python -m pytest tests/property --hypothesis-profile=long``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.property.tools import SOURCE, backupctl, engine_restore, files_config, fingerprint, hand_restore

NAMES = ["a", "b", "c.txt", "new\nline", "back\\slash", "st*r?", "[x]", "-dash", os.fsdecode(b"bin\xff"), "sp ace",
         "tab\tcr\r", "x" * 200]
FILE_MODES = [0o644, 0o600, 0o755, 0o640, 0o444]
DIR_MODES = [0o755, 0o700, 0o750]
TIERS = ["inc", "diff", "inc", "full"]
AS_ROOT = os.geteuid() == 0
HAS_ACL = shutil.which("setfacl") is not None
OWNERS = [(0, 0), (65534, 65534), (1234, 4321)]  # root, nobody/nogroup (names), ids without a name on this host
XATTR_NAMES = ["user.a", "user.mime_type", "user.é"]
ACLS = ["u:nobody:r--,g::r--,m::rw-", "u:1234:rwx,g:nogroup:r-x,m::r-x", "g::---,m::rwx"]


class History:
    """A live tree that operations change; each op leaves a fresh, strictly increasing mtime on what it touched
    (as a real clock would), so meta change detection sees every change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = 1_750_000_000 * 10**9

    def tick(self, path: Path) -> None:
        self.clock += 1_000_003_007  # just over a second: whole-second mtimes differ too (the by-hand precision)
        os.utime(path, ns=(self.clock, self.clock), follow_symlinks=False)

    def paths(self, kinds: str = "fdl") -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                full = os.path.join(dirpath, n)
                st_ = os.lstat(full)
                k = "l" if stat.S_ISLNK(st_.st_mode) else "d" if stat.S_ISDIR(st_.st_mode) else "f"
                if k in kinds:
                    out.append(os.path.relpath(full, self.root))
        return sorted(out)

    def remove(self, rel: str) -> None:
        p = self.root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()

    def apply(self, data: st.DataObject) -> None:
        dirs = [""] + self.paths("d")
        files = self.paths("f")
        everything = self.paths()
        ops = ["create", "mkdir", "symlink"] + (["modify", "append", "chmod", "hardlink"] if files else []) + (
            ["delete", "rename", "retype", "chmod", "xattr"] if everything else []) + (
            ["chown"] if everything and AS_ROOT else []) + (["acl"] if everything and HAS_ACL else [])
        op = data.draw(st.sampled_from(ops), label="op")
        event(f"op {op}")
        if op in ("create", "mkdir", "symlink", "hardlink"):
            parent = data.draw(st.sampled_from(dirs), label="in")
            new = os.path.join(parent, data.draw(st.sampled_from(NAMES), label="name"))
            self.remove(new)
            p = self.root / new
            if op == "create":
                p.write_bytes(data.draw(st.binary(max_size=300), label="content"))
                os.chmod(p, data.draw(st.sampled_from(FILE_MODES), label="mode"))
            elif op == "mkdir":
                p.mkdir()
                os.chmod(p, data.draw(st.sampled_from(DIR_MODES), label="mode"))
            elif op == "symlink":
                os.symlink(data.draw(st.sampled_from(NAMES + ["../a", "/etc/passwd", "a/b"]), label="to"), p)
            else:
                files = self.paths("f")  # the removal above may have taken the file
                if not files:
                    return
                os.link(self.root / data.draw(st.sampled_from(files), label="from"), p)
                return  # a link changes neither content nor mtime
            self.tick(p)
        elif op in ("modify", "append"):
            p = self.root / data.draw(st.sampled_from(files), label="file")
            blob = data.draw(st.binary(min_size=1, max_size=200), label="content")
            with open(p, "ab" if op == "append" else "r+b") as fh:
                fh.write(blob)
            self.tick(p)
        elif op == "chmod":
            rel = data.draw(st.sampled_from(self.paths("fd")), label="path") if self.paths("fd") else None
            if rel is None:
                return
            p = self.root / rel
            os.chmod(p, data.draw(st.sampled_from(DIR_MODES if p.is_dir() else FILE_MODES), label="mode"))
            self.tick(p)  # ctime-only changes are not detected by meta change detection (as rsync/restic)
        elif op == "chown":  # no tick: an owner change alone must be seen (it is compared, not only the mtime)
            rel = data.draw(st.sampled_from(everything), label="path")
            os.lchown(self.root / rel, *data.draw(st.sampled_from(OWNERS), label="owner"))
        elif op in ("xattr", "acl"):  # no tick either
            fd_paths = self.paths("fd")
            if not fd_paths:
                return
            p = self.root / data.draw(st.sampled_from(fd_paths), label="path")
            if op == "xattr":
                name = data.draw(st.sampled_from(XATTR_NAMES), label="xattr")
                if data.draw(st.booleans(), label="remove") and name in os.listxattr(p):
                    os.removexattr(p, name)
                else:
                    os.setxattr(p, name, data.draw(st.binary(max_size=40), label="value"))
            else:
                default = p.is_dir() and data.draw(st.booleans(), label="default")
                spec = data.draw(st.sampled_from(ACLS + ["-b"]), label="acl")
                args = ["setfacl", "-b"] if spec == "-b" else ["setfacl", *(["-d"] if default else []), "-m", spec]
                subprocess.run([*args, str(p)], check=True, capture_output=True)
            self.remove(data.draw(st.sampled_from(everything), label="path"))
        elif op == "rename":
            src = data.draw(st.sampled_from(everything), label="from")
            parent = data.draw(st.sampled_from([d for d in dirs if d != src and not d.startswith(src + "/")]), label="to-dir")
            dst = os.path.join(parent, data.draw(st.sampled_from(NAMES), label="to-name"))
            if dst == src or dst.startswith(src + "/") or src.startswith(dst + "/"):
                return
            self.remove(dst)
            os.rename(self.root / src, self.root / dst)
        elif op == "retype":  # file <-> directory <-> symlink at the same path, at any depth
            rel = data.draw(st.sampled_from(everything), label="path")
            p = self.root / rel
            was = "l" if p.is_symlink() else "d" if p.is_dir() else "f"
            to = data.draw(st.sampled_from([k for k in "fdl" if k != was]), label="to")
            self.remove(rel)
            if to == "f":
                p.write_bytes(b"retyped")
            elif to == "d":
                p.mkdir()
                (p / "child").write_bytes(b"child")
                self.tick(p / "child")
            else:
                os.symlink("a", p)
            self.tick(p)


def _run_history(data: st.DataObject, tmp: Path, snapshots: int, ops_between: int) -> tuple[Path, dict[str, dict]]:
    root, repo = tmp / "src", tmp / "repo"
    root.mkdir()
    cfg = files_config(tmp, root, repo)
    from tests.helpers import run_backup

    h = History(root)
    states: dict[str, dict] = {}
    for i in range(snapshots):
        for _ in range(data.draw(st.integers(1 if i else 0, ops_between), label="ops")):
            h.apply(data)
        tier = "full" if i == 0 else data.draw(st.sampled_from(TIERS), label="tier")
        snap, _ = run_backup(cfg, tier, logical_date=f"2026-03-{i + 1:02d}T01:00:00Z")
        states[snap.id] = fingerprint(root, meta=True)
        event(f"snapshot type {snap.type}")
    event(f"entries in the last state: {min(len(states[snap.id]), 10)}{'+' if len(states[snap.id]) >= 10 else ''}")
    return repo, states


def _coarse(fp: dict[str, tuple]) -> dict[str, tuple]:
    """What the by-hand procedure restores: file mtimes to the second, no directory or symlink mtimes."""
    return {k: (v[0], v[1], v[2], v[3] // 10**9 if v[0] == "f" else None, *v[4:]) for k, v in fp.items()}  # as fingerprint(seconds=True, dir_times=False)


def _without_stale_dir_attributes(got: dict, want: dict, earlier: list[dict]) -> dict:
    """The by-hand result with the one documented difference taken out (docs/format.md, "Restoring by hand"): tar
    extracts the chain's archives one over the other and never removes an attribute or ACL an existing directory
    already has — an extra attribute is accepted on a directory only when an earlier snapshot of the chain gave that
    directory exactly that attribute and value."""
    out = dict(got)
    for path, g in got.items():
        w = want.get(path)
        if g[0] != "d" or w is None or g == w or g[:-1] != w[:-1]:
            continue
        kept = dict(w[-1])
        extra = {n: v for n, v in g[-1] if kept.get(n) != v}
        if all(any(e.get(path) is not None and (n, v) in e[path][-1] for e in earlier) for n, v in extra.items()):
            out[path] = w
    return out


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_every_snapshot_of_any_history_restores_exactly(data):
    with tempfile.TemporaryDirectory(prefix="prop-") as t:
        tmp = Path(t)
        long = settings().max_examples >= 1000  # the "long" profile also draws longer histories
        repo, states = _run_history(data, tmp, snapshots=data.draw(st.integers(2, 6 if long else 4), label="snapshots"),
                                    ops_between=10 if long else 6)
        for n, (sid, want) in enumerate(states.items()):
            got = fingerprint(engine_restore(repo, sid, tmp / f"r{n}"), meta=True)
            assert got == want, sid
        if not any("\n" in p for s in states.values() for p in s):  # the document's stated limit
            sid = data.draw(st.sampled_from(sorted(states)), label="by-hand snapshot")
            event("by-hand restore checked")
            out = tmp / "hand"
            proc = hand_restore(repo, sid, SOURCE, out)
            assert proc.returncode == 0 and proc.stdout == "", proc.stderr
            got, want = fingerprint(out / SOURCE, seconds=True, dir_times=False, meta=True), _coarse(states[sid])
            chain = json.loads((repo / "snapshots" / f"{sid}.json").read_text())["chain"]
            assert _without_stale_dir_attributes(got, want, [states[c] for c in chain[:-1]]) == want


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_backupctl_restore_cli_of_any_history(data):
    """The same property through the real CLI (a child process: a few examples)."""
    with tempfile.TemporaryDirectory(prefix="prop-cli-") as t:
        tmp = Path(t)
        repo, states = _run_history(data, tmp, snapshots=3, ops_between=5)
        sid = data.draw(st.sampled_from(sorted(states)), label="snapshot")
        proc = backupctl("restore", sid, "--target", str(tmp / "out"), config=tmp / "backups.yaml")
        assert proc.returncode == 0, proc.stderr
        assert fingerprint(tmp / "out" / SOURCE, meta=True) == states[sid]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_include_globs_keep_matched_directories_even_empty(data):
    """With ``include: [<dir>/**, …]`` a restore holds exactly: the entries the globs match, every directory a glob
    matches or whose contents it matches (``user_data/**`` keeps an empty ``user_data/``), and the ancestors of
    those — with their modes."""
    from backups.sources.files import matches
    from tests.helpers import run_backup

    with tempfile.TemporaryDirectory(prefix="prop-glob-") as t:
        tmp = Path(t)
        root = tmp / "src"
        root.mkdir()
        dirs = data.draw(st.lists(st.sampled_from(["a", "a/b", "a/b/c", "d", "d/e", "f", "a/x"]), unique=True), label="dirs")
        for d in sorted(dirs):
            (root / d).mkdir(parents=True, exist_ok=True)
            os.chmod(root / d, data.draw(st.sampled_from(DIR_MODES), label="mode"))
        for d in [""] + sorted(dirs):
            if data.draw(st.booleans(), label=f"file in {d or '.'}"):
                (root / d / "f.txt").write_text(d)
        present = sorted(os.path.relpath(os.path.join(p, n), root) for p, ds, _ in os.walk(root) for n in ds)
        globs = [f"{g}/**" for g in data.draw(st.lists(st.sampled_from(present or ["a"]), min_size=1, max_size=2), label="globs")]
        cfg = files_config(tmp, root, tmp / "repo", include=globs)
        snap, _ = run_backup(cfg, "full", logical_date="2026-03-01T01:00:00Z")
        got = fingerprint(engine_restore(tmp / "repo", snap.id, tmp / "out"))
        want = fingerprint(root)
        keep = {p for p, v in want.items() if matches(p, globs) or (v[0] == "d" and matches(p + "/", globs))}
        keep |= {"/".join(p.split("/")[:i]) for p in keep for i in range(1, p.count("/") + 1)}
        assert set(got) == keep
        assert {p: v[:3] for p, v in got.items()} == {p: want[p][:3] for p in keep}
