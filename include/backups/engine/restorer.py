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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from ..catalog.manifest import Catalog, Snapshot
from ..errors import ConfigError, IntegrityError, NotFoundError, RefusedError
from ..sources.files import matches
from ..storage.base import Storage
from ..storage.util import PrefetchReader
from . import tarstream
from .archiver import CHUNK, IndexEntry, iter_index, order_key
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


def _selector(includes: list[str] | None) -> Callable[[str], bool]:
    if not includes:
        return lambda p: True
    dir_globs = [g for g in includes if g.endswith("/**")]
    return lambda p: matches(p, includes) or any(matches(p + "/x", [g]) for g in dir_globs)


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
    """Restore one source. Memory holds only directories and symlinks; files are streamed and merged."""
    if source not in snap.sources:
        raise NotFoundError(f"snapshot {snap.id} has no source {source!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    rec = snap.sources[source]
    chain = {s.id: s for s in catalog.chain_of(snap)}
    idx_obj = rec["objects"]["index"]
    select = _selector(includes)
    # pass 1 over the index: directories and symlinks (few) are kept; files are only counted per archive
    dirs: dict[str, IndexEntry] = {}
    links: dict[str, IndexEntry] = {}
    needed_dirs: set[str] = set()
    per_snap: dict[str, int] = defaultdict(int)
    for path, e in iter_index(storage, idx_obj):
        if e[0] == "d":
            dirs[path] = e
        elif e[0] == "l":
            links[path] = e
        if not select(path):
            continue
        if e[0] == "f":
            per_snap[e[7]] += 1
        parent = path.rpartition("/")[0]
        while parent and parent not in needed_dirs:
            needed_dirs.add(parent)
            parent = parent.rpartition("/")[0]
        if e[0] == "d":
            needed_dirs.add(path)
    wanted_dirs = {p: e for p, e in dirs.items() if p in needed_dirs}
    wanted_links = {p: e for p, e in links.items() if select(p)}
    if includes and not (per_snap or wanted_dirs or wanted_links):
        raise NotFoundError(f"no path of source {source} in {snap.id} matches {includes}", hint="check the globs with `backupctl show`")
    final, partial = _prepare_target(target, source, force)
    progress = progress or Progress.null()
    out = SourceRestore(source, rec["kind"], str(final))
    try:
        real_root = os.path.realpath(partial)
        for path in wanted_dirs:  # canonical order: parents first
            d = partial / path
            d.mkdir(parents=True, exist_ok=True)
            if not os.path.realpath(d).startswith(real_root + os.sep):
                raise RefusedError(f"directory {path!r} resolves outside the restore target; refusing")
        for sid in snap.chain:
            if not per_snap.get(sid):
                continue
            obj = chain[sid].sources[source]["objects"]["archive"]
            if obj is None:
                raise IntegrityError(f"snapshot {sid} should hold {per_snap[sid]} file(s) of {source} but has no archive")
            wanted = ((p, e) for p, e in iter_index(storage, idx_obj) if e[0] == "f" and e[7] == sid and select(p))
            _extract_archive(storage, obj, wanted, set(links), partial, real_root, out, progress)
        for path, e in wanted_links.items():  # symlinks last: nothing is ever written through one
            dest = partial / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(e[6], dest)
            os.utime(dest, ns=(e[2], e[2]), follow_symlinks=False)
        for path in sorted(wanted_dirs, key=lambda p: -p.count("/")):
            e = wanted_dirs[path]
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


SMALL_FILE = 1 << 20


class _Writers:
    """Create and write small files on a writer thread (file creation is the slowest syscall of a restore; the GIL
    is released during it), with at most ~64 MiB of content in flight."""

    def __init__(self, workers: int = 1, max_bytes: int = 64 << 20) -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore-write")
        self.budget = threading.BoundedSemaphore(max_bytes // SMALL_FILE)
        self.futures: list[Any] = []

    @staticmethod
    def _write(dest: str, content: bytes, mode: int, mtime_ns: int, sha: str, error: Exception) -> None:
        if hashlib.sha256(content).hexdigest() != sha:
            raise error
        # O_EXCL: every path is written once into a fresh private directory; anything already there is wrong
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def submit(self, dest: str, content: bytes, mode: int, mtime_ns: int, sha: str, error: Exception) -> None:
        self.budget.acquire()

        def run() -> None:
            try:
                self._write(dest, content, mode, mtime_ns, sha, error)
            finally:
                self.budget.release()

        self.futures.append(self.pool.submit(run))
        if len(self.futures) >= 256:
            self._reap(len(self.futures) // 2)

    def _reap(self, n: int) -> None:
        done, self.futures = self.futures[:n], self.futures[n:]
        for f in done:
            f.result()

    def finish(self) -> None:
        self._reap(len(self.futures))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _extract_archive(storage: Storage, obj: dict[str, Any], wanted: Iterator[tuple[str, IndexEntry]], links: set[str],
                     partial: Path, real_root: str, out: SourceRestore, progress: Progress) -> None:
    """Merge one archive's members with the wanted files it holds (both in canonical order)."""
    safe_dirs: set[str] = {""}
    base = str(partial)

    def ensure_dir(rel: str) -> None:
        if rel in safe_dirs:
            return
        d = os.path.join(base, rel)
        os.makedirs(d, exist_ok=True)
        if not os.path.realpath(d).startswith(real_root + os.sep):
            raise RefusedError(f"archive path {rel!r} resolves outside the restore target; refusing")
        safe_dirs.add(rel)

    def missing(path: str) -> IntegrityError:
        return IntegrityError(f"{path}: not found in archive {obj['key']} where the index says it is",
                              hint="run `backupctl verify --read-data`; restore from another storage")

    def damaged(name: str) -> IntegrityError:
        return IntegrityError(f"{name}: restored content does not match its SHA-256 in the index ({obj['key']})",
                              hint="the stored object is damaged: run `backupctl verify --read-data` and restore from another storage")

    writers = _Writers()
    w = next(wanted, None)
    # Every restored file is checked against its SHA-256 in the (checksum-verified) index, so the archive's own
    # object hash is not recomputed here: that is `verify --read-data`'s job.
    with storage.open_read(obj["key"]) as raw:
        with zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, closefd=False) as zr:
            z = PrefetchReader(zr, CHUNK)
            try:
                for m, data in tarstream.iter_members(z, CHUNK):
                    name = safe_member(m.name)
                    parent = name.rpartition("/")[0]
                    if parent and parent not in safe_dirs:
                        parts = parent.split("/")
                        for i in range(1, len(parts) + 1):
                            if "/".join(parts[:i]) in links:
                                raise RefusedError(f"archive member {m.name!r} goes through a symlink; refusing to restore it")
                    if m.islnk():
                        raise RefusedError(f"archive member {m.name!r} is a hard link; this format never writes them, refusing")
                    if w is None or not m.isfile():
                        continue
                    key = order_key(name)
                    while w is not None and order_key(w[0]) < key:
                        raise missing(w[0])
                    if w is None or w[0] != name:
                        continue
                    path, e = w
                    ensure_dir(parent)
                    dest = os.path.join(base, name)
                    if m.size <= SMALL_FILE:  # hashed, created and written on a writer thread (GIL-free work)
                        content = data.read_all()
                        writers.submit(dest, content, e[3], e[2], e[5], damaged(name))
                        progress.advance(len(content))
                    else:
                        h = hashlib.sha256()
                        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                        with os.fdopen(fd, "wb") as fh:
                            while chunk := data.read(CHUNK):
                                h.update(chunk)
                                fh.write(chunk)
                                progress.advance(len(chunk))
                            os.chmod(fd, e[3])
                        if h.hexdigest() != e[5]:
                            raise damaged(name)
                        os.utime(dest, ns=(e[2], e[2]))
                    out.files += 1
                    out.bytes += e[1]
                    out.verified += 1
                    w = next(wanted, None)
                writers.finish()
            except tarstream.TarFormatError as exc:
                raise IntegrityError(f"{storage.name}: archive {obj['key']} is damaged ({exc})",
                                     hint="restore from another storage; run `backupctl verify --read-data`") from None
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"{storage.name}: archive {obj['key']} cannot be decompressed ({exc})",
                                     hint="restore from another storage; run `backupctl verify --read-data`") from None
            finally:
                z.close()
                writers.close()
    if w is not None:
        raise missing(w[0])
    for _ in wanted:  # drain: the index stream checks its own SHA-256 at the end
        pass


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
    def one(n: str) -> SourceRestore:
        kind = snap.sources[n]["kind"]
        finish = None
        if kind == "sqlite" and tables:
            from .databases import keep_sqlite_tables

            dbname = snap.sources[n]["details"]["database"]

            def finish(p: Path) -> dict[str, Any]:
                return {"tables": keep_sqlite_tables(p / dbname, tables)}
        elif kind == "postgres" and (pg_target or tables):
            from .databases import pg_restore

            def finish(p: Path) -> dict[str, Any]:
                return pg_restore(p / "dump", pg_target, tables)
        r = restore_source(storage, catalog, snap, n, target, includes=includes if kind == "files" else None,
                           force=force, progress=progress, finish=finish)
        log.info("restored %s: %d files, %.1f MB, all SHA-256 verified, into %s", n, r.files, r.bytes / 1e6, r.path)
        return r

    # one source after the other: restoring two at once measured no faster (the GIL and the disk are shared)
    return [one(n) for n in names]
