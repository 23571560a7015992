"""Restore a snapshot (its whole chain) into a target directory, verifying every file.

Algorithm (kopia's restore shape: the restorer resolves and streams, the target only receives):

1. Resolve the chain (full → … → the snapshot) from the manifests; every manifest is checksum-verified.
2. For each selected source, load the snapshot's index — the complete state — and keep the entries that match
   ``--include`` globs. Each entry names the snapshot whose archive holds its bytes (``in``).
3. Read each needed archive once, oldest first, as a stream (zstd → tar). Every member name is checked before
   anything else: absolute paths, ``..`` and paths through a symlink are refused (RefusedError), whatever the
   index says. Wanted members are written under a private ``.<source>.partial-*`` directory, hashed as they
   are written and compared with the index; the whole object's SHA-256 is compared with the manifest.
4. Symlinks are created last (nothing is ever written through one), then modes and times are applied.
5. Only when every wanted file was found and matched is the partial directory renamed to ``<target>/<source>``.
   Any failure removes it: a restore either completes or leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from ..catalog.manifest import Catalog, Snapshot
from ..errors import ConfigError, IntegrityError, NotFoundError, RefusedError
from ..sources.files import matches
from ..storage.base import Storage
from ..storage.util import HashingReader
from . import tarstream
from .archiver import CHUNK, IndexEntry, read_index
from .progress import Progress

log = logging.getLogger(__name__)


@dataclass
class SourceRestore:
    source: str
    kind: str
    path: str
    files: int = 0
    bytes: int = 0
    verified: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def safe_member(name: str) -> str:
    """Normalised relative member name, or RefusedError for anything that could escape the target."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise RefusedError(f"archive member {name!r} has an absolute or invalid path; refusing to restore it")
    norm = posixpath.normpath(name.rstrip("/"))
    if norm in ("", ".") or norm.startswith("../") or norm == ".." or "/../" in f"/{name}/":
        raise RefusedError(f"archive member {name!r} would escape the restore target; refusing to restore it")
    return norm


def _select(index: dict[str, IndexEntry], includes: list[str] | None) -> dict[str, IndexEntry]:
    if not includes:
        return index
    chosen = {p: e for p, e in index.items() if matches(p, includes) or any(matches(p + "/x", [g]) for g in includes if g.endswith("/**"))}
    # keep the parent directories of what was chosen so their metadata comes back too
    for p in list(chosen):
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d in index:
                chosen.setdefault(d, index[d])
    return chosen


def check_target(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise RefusedError(f"restore target {target} exists and is not a directory", hint="choose a directory path")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise RefusedError(f"restore target {target} is not empty",
                           hint="choose an empty or new directory, or pass --force to replace the restored sources in it")


def _prepare_target(target: Path, source: str, force: bool) -> tuple[Path, Path]:
    final = target / source
    if (final.exists() or final.is_symlink()) and not force:
        raise RefusedError(f"restore target {final} already exists", hint="pass --force to replace it")
    target.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{source}.partial-", dir=target))
    return final, partial


def restore_source(storage: Storage, catalog: Catalog, snap: Snapshot, source: str, target: Path, *,
                   includes: list[str] | None = None, force: bool = False, progress: Progress | None = None,
                   finish: Callable[[Path], dict[str, Any]] | None = None) -> SourceRestore:
    if source not in snap.sources:
        raise NotFoundError(f"snapshot {snap.id} has no source {source!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    rec = snap.sources[source]
    chain = {s.id: s for s in catalog.chain_of(snap)}
    index = read_index(storage, rec["objects"]["index"])
    wanted = _select(index, includes)
    if includes and not wanted:
        raise NotFoundError(f"no path of source {source} in {snap.id} matches {includes}", hint="check the globs with `backupctl show`")
    by_snap: dict[str, set[str]] = defaultdict(set)
    for path, e in wanted.items():
        by_snap[e[7]].add(path)
    final, partial = _prepare_target(target, source, force)
    progress = progress or Progress.null()
    out = SourceRestore(source, rec["kind"], str(final))
    try:
        found: set[str] = set()
        real_root = os.path.realpath(partial)
        for sid in snap.chain:
            if sid not in by_snap:
                continue
            need = by_snap[sid]
            obj = chain[sid].sources[source]["objects"]["archive"]
            if obj is None:
                raise IntegrityError(f"snapshot {sid} should hold {len(need)} file(s) of {source} but has no archive")
            _extract_archive(storage, obj, need, wanted, partial, real_root, found, out, progress)
        missing = [p for p in wanted if p not in found and wanted[p][0] != "l"]
        if missing:
            raise IntegrityError(f"{len(missing)} path(s) of {source} were not found in the archives, e.g. {missing[:3]}",
                                 hint="run `backupctl verify --read-data`; restore from another storage")
        for path, e in wanted.items():  # symlinks last: nothing is ever written through one
            if e[0] == "l":
                dest = partial / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(e[6], dest)
                os.utime(dest, ns=(e[2], e[2]), follow_symlinks=False)
        for path in sorted((p for p, e in wanted.items() if e[0] == "d"), key=lambda p: -p.count("/")):
            e = wanted[path]
            os.chmod(partial / path, e[3])
            os.utime(partial / path, ns=(e[2], e[2]))
        if finish is not None:  # partial database restores happen before the result becomes visible
            out.extra.update(finish(partial))
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{source}.old-", dir=target))
            os.replace(final, old / "x")
            shutil.rmtree(old)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _extract_archive(storage: Storage, obj: dict[str, Any], need: set[str], wanted: dict[str, IndexEntry],
                     partial: Path, real_root: str, found: set[str], out: SourceRestore, progress: Progress) -> None:
    links = {p for p, e in wanted.items() if e[0] == "l"}
    safe_dirs: set[str] = {""}  # parent directories created by us and checked to resolve inside the target

    def ensure_dir(rel: str) -> None:
        if rel in safe_dirs:
            return
        d = partial / rel
        d.mkdir(parents=True, exist_ok=True)
        if not os.path.realpath(d).startswith(real_root + os.sep):
            raise RefusedError(f"archive path {rel!r} resolves outside the restore target; refusing")
        safe_dirs.add(rel)

    with storage.open_read(obj["key"]) as raw:
        hr = HashingReader(raw)
        with zstandard.ZstdDecompressor().stream_reader(hr, read_size=CHUNK, closefd=False) as z:
            try:
                for m, data in tarstream.iter_members(z, CHUNK):
                    name = safe_member(m.name)
                    parent, _, _ = name.rpartition("/")
                    if parent and parent not in safe_dirs:
                        parts = parent.split("/")
                        for i in range(1, len(parts) + 1):
                            if "/".join(parts[:i]) in links:
                                raise RefusedError(f"archive member {m.name!r} goes through a symlink; refusing to restore it")
                    if m.islnk():
                        raise RefusedError(f"archive member {m.name!r} is a hard link; this format never writes them, refusing")
                    if name not in need:
                        continue
                    e = wanted[name]
                    if e[0] == "d":
                        ensure_dir(name)
                        found.add(name)
                        continue
                    if e[0] == "l" or not m.isfile():
                        found.add(name)
                        continue
                    ensure_dir(parent)
                    h = hashlib.sha256()
                    fd = os.open(partial / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        while chunk := data.read(CHUNK):
                            h.update(chunk)
                            fh.write(chunk)
                            progress.advance(len(chunk))
                        os.chmod(fd, e[3])
                    if h.hexdigest() != e[5]:
                        raise IntegrityError(f"{name}: restored content does not match its SHA-256 in the index ({obj['key']})",
                                             hint="the stored object is damaged: run `backupctl verify --read-data` and restore from another storage")
                    os.utime(partial / name, ns=(e[2], e[2]))
                    found.add(name)
                    out.files += 1
                    out.bytes += e[1]
                    out.verified += 1
            except tarstream.TarFormatError as exc:
                raise IntegrityError(f"{storage.name}: archive {obj['key']} is damaged ({exc})",
                                     hint="restore from another storage; run `backupctl verify --read-data`") from None
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"{storage.name}: archive {obj['key']} cannot be decompressed ({exc})",
                                     hint="restore from another storage; run `backupctl verify --read-data`") from None
            while z.read(CHUNK):
                pass
        while hr.read(CHUNK):
            pass
    if hr.hexdigest() != obj["sha256"]:
        raise IntegrityError(f"{storage.name}: archive {obj['key']} does not match its SHA-256 in the manifest",
                             hint="restore from another storage; run `backupctl verify --read-data`")


def restore(storage: Storage, catalog: Catalog, snap: Snapshot, target: Path, *, sources: list[str] | None = None,
            includes: list[str] | None = None, tables: list[str] | None = None, force: bool = False,
            pg_target: str | None = None, progress: Progress | None = None) -> list[SourceRestore]:
    names = sources or sorted(snap.sources)
    for n in names:
        if n not in snap.sources:
            raise NotFoundError(f"snapshot {snap.id} has no source {n!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    if tables and not any(snap.sources[n]["kind"] in ("sqlite", "postgres") for n in names):
        raise ConfigError("--table applies to sqlite and postgres sources only", hint="add --source with a database source")
    target = Path(target)
    check_target(target, force)
    results = []
    for n in names:
        kind = snap.sources[n]["kind"]
        finish = None
        if kind == "sqlite" and tables:
            from .databases import keep_sqlite_tables

            dbname = snap.sources[n]["details"]["database"]

            def finish(p: Path, dbname: str = dbname) -> dict[str, Any]:
                return {"tables": keep_sqlite_tables(p / dbname, tables)}
        elif kind == "postgres" and (pg_target or tables):
            from .databases import pg_restore

            def finish(p: Path) -> dict[str, Any]:
                return pg_restore(p / "dump", pg_target, tables)
        r = restore_source(storage, catalog, snap, n, target, includes=includes if kind == "files" else None,
                           force=force, progress=progress, finish=finish)
        results.append(r)
        log.info("restored %s: %d files, %.1f MB, all SHA-256 verified, into %s", n, r.files, r.bytes / 1e6, r.path)
    return results
