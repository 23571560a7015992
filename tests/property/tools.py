"""Shared tools of the data-safety tests: a one-source config, an exact tree fingerprint, the three ways to restore
(engine API, the real ``backupctl`` CLI, and the by-hand procedure of docs/format.md, followed literally)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "format.md"
APP = "fmr-prop"
SOURCE = "data"

CONFIG = """\
application: {app}
sources:
  {source}: {{type: files, root: {root}, include: {include}, exclude: {exclude}}}
storages:
  local: {{type: local, path: {repo}}}
tiers:
  full: {{type: full, schedule: "0 1 * * 0", sources: [{source}], storages: [local]}}
  diff: {{type: differential, schedule: "0 3 * * *", sources: [{source}], storages: [local]}}
  inc:  {{type: incremental, schedule: "0 2 * * *", sources: [{source}], storages: [local]}}
"""


def files_config(tmp: Path, root: Path, repo: Path, include: list[str] | None = None, exclude: list[str] | None = None) -> Any:
    from backups.config import load_config

    path = tmp / "backups.yaml"
    path.write_text(CONFIG.format(app=APP, source=SOURCE, root=json.dumps(str(root)), repo=json.dumps(str(repo)),
                                  include=json.dumps(include or ["**"]), exclude=json.dumps(exclude or [])))
    return load_config(path)


def file_meta(name: str, dfd: int, st: os.stat_result) -> tuple:
    """(uid, gid, recorded extended attributes and ACLs as sorted (name, value) pairs) of an entry of ``dfd``."""
    path = f"/proc/self/fd/{dfd}/{name}"
    try:
        names = sorted(n for n in os.listxattr(path, follow_symlinks=False)
                       if n.startswith("user.") or n.startswith("system.posix_acl_"))
    except OSError:
        names = []
    return (st.st_uid, st.st_gid, tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def fingerprint(root: Path | str, *, seconds: bool = False, dir_times: bool = True, meta: bool = False) -> dict[str, tuple]:
    """Everything below ``root``: path -> (type, content SHA-256 / link target, mode, mtime_ns, hard-link group).

    Walks with directory descriptors (``os.fwalk``), so paths longer than PATH_MAX work. The hard-link group of a
    file is the first path (in sorted order) of its inode among the files seen, so two trees compare equal only
    when the same names are linked together. ``seconds``: mtimes to the second (what tar restores);
    ``dir_times=False``: directory mtimes left out (a by-hand restore changes them); ``meta``: each tuple also
    ends with (uid, gid, extended attributes and ACLs), see :func:`file_meta`."""
    out: dict[str, tuple] = {}
    groups: dict[int, str] = {}
    files: list[tuple[str, os.stat_result, str]] = []
    extra: dict[str, tuple] = {}
    for dirpath, dirnames, filenames, dfd in os.fwalk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            mtime = st.st_mtime_ns // 10**9 if seconds else st.st_mtime_ns
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(name, dir_fd=dfd), None, mtime if not seconds else None, None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", None, stat.S_IMODE(st.st_mode), mtime if dir_times else None, None)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                with open(fd, "rb") as fh:
                    sha = hashlib.sha256(fh.read()).hexdigest()
                files.append((rel, st, sha))
            else:
                out[rel] = ("special", None, None, None, None)
            if meta:
                extra[rel] = file_meta(name, dfd, st)
    for rel, st, _ in sorted(files, key=lambda t: t[0]):
        if st.st_nlink > 1:
            groups.setdefault(st.st_ino, rel)
    for rel, st, sha in files:
        mtime = st.st_mtime_ns // 10**9 if seconds else st.st_mtime_ns
        out[rel] = ("f", sha, stat.S_IMODE(st.st_mode), mtime, groups.get(st.st_ino) if st.st_nlink > 1 else None)
    if meta:
        out = {k: (*v, *extra[k]) for k, v in out.items()}
    return out


def engine_restore(repo: Path, snap_id: str, target: Path, includes: list[str] | None = None) -> Path:
    from backups.catalog import Catalog
    from backups.engine.restorer import restore
    from backups.storage import LocalStorage

    storage = LocalStorage(repo)
    cat = Catalog(storage, APP)
    restore(storage, cat, cat.get(snap_id), target, includes=includes)
    return target / SOURCE


def backupctl(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, in a child process (exit code, stdout and stderr as a user sees them)."""
    cmd = [sys.executable, "-m", "backups.cli"]
    if config is not None:
        cmd += ["--config", str(config)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'include'}"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=120)


def doc_blocks() -> list[str]:
    text = DOC.read_text()
    section = text.split("## Restoring by hand", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def hand_restore(repo: Path, snap: str, src: str, out: Path) -> subprocess.CompletedProcess[str]:
    """Steps 3 and 4 of docs/format.md "Restoring by hand", literally, with a POSIX sh."""
    manifest = json.loads((repo / "snapshots" / f"{snap}.json").read_text())
    extract, check = doc_blocks()
    assert "<the chain, in order>" in extract
    script = extract.replace("<the chain, in order>", " ".join(manifest["chain"])) + "\n" + check
    env = {"REPO": str(repo), "SNAP": snap, "SRC": src, "OUT": str(out), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["sh", "-e", "-c", script], env=env, capture_output=True, text=True)


def as_format_1(archive: Path, manifest: Path, source: str) -> None:
    """Rewrite one source's archive the way the previous writer made it (format 1: one zstd frame, no frame table,
    no ``frames`` in its record), resealing the manifest."""
    import hashlib
    import io

    import zstandard

    from backups.catalog.manifest import seal

    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive.read_bytes()), read_across_frames=True).read()
    old = zstandard.ZstdCompressor(level=3).compress(tar)
    archive.write_bytes(old)
    doc = json.loads(manifest.read_text())
    rec = doc["sources"][source]["objects"]["archive"]
    del rec["frames"]
    rec.update(size=len(old), sha256=hashlib.sha256(old).hexdigest())
    doc["format_version"] = 1
    manifest.write_bytes(seal(doc))
