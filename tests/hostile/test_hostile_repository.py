"""A hostile repository: whoever can write to a storage must not be able to make a restore write outside its
target. Every case starts from a real snapshot, then crafts its manifest (re-sealed with a valid self-checksum),
its index or its archive (objects re-recorded with their true SHA-256, so only the content is hostile). Each case
must end in one clear error, exit 7, no traceback, a canary tree beside the target unchanged, nothing created
anywhere else, and nothing left in the target."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from backups.catalog.manifest import seal
from backups.errors import RefusedError
from tests.helpers import run_backup
from tests.property.tools import SOURCE, backupctl, engine_restore, files_config, fingerprint

FULL = "full-20260104T010000Z"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One good repository (a full of a small tree) that every case copies."""
    tmp = tmp_path_factory.mktemp("hostile")
    root, repo = tmp / "src", tmp / "repo"
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "d" / "b.txt").write_text("b\n")
    os.symlink("a.txt", root / "link")
    cfg = files_config(tmp, root, repo)
    snap, _ = run_backup(cfg, "full", logical_date="2026-01-04T01:00:00Z")
    assert snap.id == FULL
    return repo


# ------------------------------------------------------------------------------------------------ crafting
def _manifest(repo: Path) -> dict:
    return json.loads((repo / "snapshots" / f"{FULL}.json").read_text())


def _reseal(repo: Path, doc: dict) -> None:
    (repo / "snapshots" / f"{FULL}.json").write_bytes(seal(doc))


def _put(repo: Path, key: str, data: bytes) -> dict:
    (repo / key).write_bytes(data)
    return {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _entry(p: str, t: str = "f", content: bytes = b"x", link: str | None = None) -> dict:
    d = {"p": p, "t": t, "s": len(content) if t == "f" else 0, "m": 1_700_000_000 * 10**9, "mode": 0o644 if t != "d" else 0o755,
         "i": 1, "in": FULL}
    if t == "f":
        d["h"] = hashlib.sha256(content).hexdigest()
    if link is not None:
        d["l"] = link
    return d


def set_index(*entries: dict) -> Callable[[Path], None]:
    def craft(repo: Path) -> None:
        doc = _manifest(repo)
        rec = doc["sources"][SOURCE]
        lines = "".join(json.dumps(e) + "\n" for e in entries).encode()
        rec["objects"]["index"] = _put(repo, rec["objects"]["index"]["key"], zstandard.compress(lines))
        _reseal(repo, doc)

    return craft


def set_archive(members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], index: list[dict] | None = None,
                fmt: int = tarfile.PAX_FORMAT) -> Callable[[Path], None]:
    """An archive with these members; the index (default: just ``a.txt``) says what the restore wants from it."""

    def craft(repo: Path) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for m in members:
                ti, data = m if isinstance(m, tuple) else (m, b"")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data) if data else None)
        if index is not None:
            set_index(*index)(repo)
        doc = _manifest(repo)
        rec = doc["sources"][SOURCE]
        rec["objects"]["archive"] = _put(repo, rec["objects"]["archive"]["key"], zstandard.compress(buf.getvalue()))
        _reseal(repo, doc)

    return craft


def rename_source(*names: str) -> Callable[[Path], None]:
    def craft(repo: Path) -> None:
        doc = _manifest(repo)
        rec = doc["sources"].pop(SOURCE)
        for n in names:
            doc["sources"][n] = rec
        _reseal(repo, doc)

    return craft


def set_object_key(kind: str, key: str) -> Callable[[Path], None]:
    """An object record of the manifest that points at another key (another snapshot's, or outside data/)."""
    def craft(repo: Path) -> None:
        doc = _manifest(repo)
        doc["sources"][SOURCE]["objects"][kind]["key"] = key
        _reseal(repo, doc)

    return craft


def _ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode, ti.mtime = kind, link, 0o644, 1_700_000_000
    return ti


A = (_ti("a.txt"), b"x")
ABSOLUTE = ("/tmp/fmr-hostile-abs", "/tmp/fmr-hostile-absdir")  # the absolute paths the cases aim at
CANARY = "../../canary"  # from TARGET/<source>/ to the canary directory beside the target's parent

CASES: dict[str, Callable[[Path], None]] = {
    # source names (they become directories of the target)
    "source-dots-then-dotdot": rename_source("...", "../../../canary/x"),
    "source-dotdot": rename_source(".."),
    "source-parent-path": rename_source("../escape"),
    "source-absolute": rename_source("/tmp/fmr-hostile-abs"),
    "source-nested": rename_source("a/b"),
    "source-dot": rename_source("."),
    "source-empty": rename_source(""),
    "source-newline": rename_source("data\n"),
    # object keys of the manifest (a snapshot's objects live under data/<its id>/ only)
    "object-key-dotdot": set_object_key("index", "data/../../../etc/passwd"),
    "object-key-other-snapshot": set_object_key("archive", "data/full-20250101T000000Z/files.tar.zst"),
    # index entries
    "index-symlink-dotdot": set_index(_entry("../../y", "l", link="/etc/passwd")),
    "index-file-through-symlink": set_index(_entry("sub", "l", link=f"../{CANARY}"), _entry("sub/x")),
    "index-dir-through-symlink": set_index(_entry("sub", "l", link=f"../{CANARY}"), _entry("sub/d", "d")),
    "index-file-below-file": set_index(_entry("a.txt"), _entry("a.txt/x")),
    "index-dir-dotdot": set_index(_entry("../../d", "d")),
    "index-dir-inner-dotdot": set_index(_entry("a", "d"), _entry("a/../../d", "d")),
    "index-absolute-file": set_index(_entry("/tmp/fmr-hostile-abs")),
    "index-absolute-dir": set_index(_entry("/tmp/fmr-hostile-absdir", "d")),
    "index-hardlink-outside": set_index(_entry("a.txt"), _entry("h", link=f"{CANARY}/file")),
    "index-hardlink-absolute": set_index(_entry("a.txt"), _entry("h", link="/etc/passwd")),
    "index-duplicate-file": set_index(_entry("a.txt"), _entry("a.txt")),
    "index-duplicate-dir": set_index(_entry("d", "d"), _entry("d", "d")),
    "index-file-then-dir-same-path": set_index(_entry("d", "f"), _entry("d", "d")),
    "index-empty-component": set_index(_entry("d", "d"), _entry("d//x")),
    "index-dot": set_index(_entry(".", "d")),
    "index-nul": set_index(_entry("a\x00b")),
    # archive members (the index is valid: it wants a.txt from this archive)
    "archive-dotdot": set_archive([(_ti("../evil"), b"x"), A], index=[_entry("a.txt")]),
    "archive-absolute": set_archive([(_ti("/tmp/fmr-hostile-abs"), b"x"), A], index=[_entry("a.txt")]),
    "archive-inner-dotdot": set_archive([(_ti("a/../../evil"), b"x"), A], index=[_entry("a.txt")]),
    "archive-gnu-longname-dotdot": set_archive([(_ti("../" + "x" * 120), b"x"), A], index=[_entry("a.txt")],
                                               fmt=tarfile.GNU_FORMAT),
    "archive-hardlink-absolute": set_archive([_ti("a.txt", tarfile.LNKTYPE, "/etc/passwd")], index=[_entry("a.txt")]),
    "archive-hardlink-outside": set_archive([_ti("a.txt", tarfile.LNKTYPE, f"{CANARY}/file")], index=[_entry("a.txt")]),
    "archive-symlink-then-through": set_archive([_ti("sub", tarfile.SYMTYPE, f"../{CANARY}"), (_ti("sub/x"), b"x")],
                                                index=[_entry("sub", "d"), _entry("sub/x")]),
    "archive-duplicate-member": set_archive([A, A], index=[_entry("a.txt")]),
}


def _world(tmp: Path, *, skip_lock_dirs: bool = False) -> dict[str, tuple]:
    """Everything under the test's directory except the target (the canary tree included); with
    ``skip_lock_dirs``, without the repository directory and its locks/ (a lock's coming and going)."""
    return {k: v for k, v in fingerprint(tmp).items() if not k.startswith("t/target")
            and not (skip_lock_dirs and k in ("repo", "repo/locks"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_repository_is_refused(case, pristine, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(pristine, repo, symlinks=True)
    CASES[case](repo)
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "file").write_text("canary\n")
    (canary / "sub").mkdir()
    target = tmp_path / "t" / "target"
    target.mkdir(parents=True)
    before = _world(tmp_path)
    absolute = {p: os.path.lexists(p) and os.lstat(p).st_mtime_ns for p in ABSOLUTE}
    with pytest.raises(RefusedError) as err:
        engine_restore(repo, FULL, target)
    assert "refus" in err.value.message
    assert _world(tmp_path) == before
    assert list(target.iterdir()) == []
    assert {p: os.path.lexists(p) and os.lstat(p).st_mtime_ns for p in ABSOLUTE} == absolute


CLI_CASES = ["source-dots-then-dotdot", "index-file-through-symlink", "index-symlink-dotdot", "archive-dotdot",
             "archive-hardlink-outside", "index-duplicate-file"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_hostile_repository_cli_exit_7(case, pristine, tmp_path):
    """The real `backupctl restore`: exit 7, one message naming the path, no traceback."""
    repo = tmp_path / "repo"
    shutil.copytree(pristine, repo, symlinks=True)
    CASES[case](repo)
    cfg = tmp_path / "backups.yaml"
    cfg.write_text((pristine.parent / "backups.yaml").read_text().replace(str(pristine), str(repo)))
    (tmp_path / "canary").mkdir()
    (tmp_path / "canary" / "file").write_text("canary\n")
    target = tmp_path / "t" / "target"
    target.mkdir(parents=True)
    before = _world(tmp_path)
    proc = backupctl("restore", FULL, "--target", str(target), config=cfg)
    assert proc.returncode == 7, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1 and "refus" in proc.stderr
    # the restore's shared lock comes and goes under repo/locks/: the repository directory's mtime may change; so
    # does the restore's claim on its target (a file next to it, commands/target_lock.py): t/'s mtime, nothing left
    after = _world(tmp_path, skip_lock_dirs=True)
    assert sorted(p.name for p in target.parent.iterdir()) == ["target"]
    assert {k: v for k, v in after.items() if k != "t"} == {
        k: v for k, v in before.items() if k not in ("repo", "repo/locks", "t")}
    assert list(target.iterdir()) == []


def test_a_resealed_manifest_cannot_drive_the_terminal(tmp_path):
    """Anyone who can write to a plain storage can rewrite a manifest and recompute its checksum. Before: its
    comment, warnings, promoted_reason and host went to the terminal as they were (`show`, `status`)."""
    from tests.helpers import make_app, subprocess_env

    app = make_app(tmp_path, scale=0.05, seed=2)
    snap, _ = run_backup(app["cfg"], "weekly", logical_date="2026-01-04T01:00:00Z")
    path = app["root"] / "local" / "snapshots" / f"{snap.id}.json"
    doc = json.loads(path.read_text())
    doc.pop("checksum")
    doc.update(comment="c\x1b[2J", warnings=["w\x1b]0;t\x07"], promoted_reason="p\x1b[1m\u202e", host="h\x1b[5m")
    path.chmod(0o644)
    path.write_bytes(seal(doc))
    for args in (["show", snap.id], ["show", snap.id, "--json"], ["list"], ["status"]):
        p = subprocess.run([sys.executable, "-m", "backups.cli", "--config", str(app["config_path"]), *args],
                           capture_output=True, text=True, env=subprocess_env(), timeout=120)
        assert p.returncode in (0, 1, 2), p.stderr
        assert "\x1b" not in p.stdout + p.stderr and "\u202e" not in p.stdout + p.stderr, args
