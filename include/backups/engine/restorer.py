"""Restore a snapshot (its whole chain) into a target directory, verifying every file.

Algorithm (kopia's restore shape: the restorer resolves and streams, the target only receives):

1. Resolve the chain (full → … → the snapshot) from the manifests; every manifest is checksum-verified and its
   source names checked against the configuration's safe-name rule.
2. For each selected source, load the snapshot's index — the complete state — and keep the entries that match
   ``--include`` globs. Each entry names the snapshot whose archive holds its bytes (``in``). Every index path
   is validated as it is read (no absolute path, no ``.``/``..``/empty component, no duplicate, nothing below a
   non-directory, hard links only to such paths): see :func:`~backups.repository.index.iter_index`.
3. Read each needed archive once, oldest first, as a stream (zstd → tar): its zstd frames decompressed in
   parallel, a few ahead of the tar reader (:class:`_ParallelFrames`; an archive without a frame table, format 1,
   is one stream); with ``--include`` globs (a partial restore), only the frames that hold wanted members, found
   with the archive's frame table (:func:`load_frames`, :func:`frame_runs`; docs/format.md) and read with ranged
   reads. Every member name is checked
   (absolute paths, ``..``, duplicates and members below a symlink of the same archive are refused), but only
   members whose names equal a wanted index path are written — members of older archives below a path whose
   type changed since are simply not wanted. Files go to a private ``.<source>.partial-*`` directory, each
   hashed once, on the bytes written, and compared with the index (small files on a small pool of writer
   threads, large ones streamed by the reading thread).
   A large file that shrank while it was backed up (``torn``) may have two members: the one matching the index
   is kept.
4. Every file gets its owner (as root, unless ``no_owner``), mode, extended attributes / ACLs and times
   (:func:`backups.sources.fsmeta.apply`). Hard links are linked once their files are written; symlinks are
   created last; then directory metadata, deepest first, and the source root's own (``details.root``). Every
   entry is created through directory descriptors opened one component at a time with ``O_NOFOLLOW``
   (:class:`_Tree`), so nothing is ever created or written through a symlink, whatever the repository says,
   and paths longer than PATH_MAX work. Only ``user.*`` attributes and ACLs are ever set.
5. Only when every wanted file was found and matched is the partial directory renamed to ``<target>/<source>``.
   Any failure removes it: a restore either completes or leaves nothing that looks complete. ``--force`` also
   removes the partial directories of a killed restore of that source. The warnings the chain's snapshots
   recorded for the source come back with the result (and go into the report)."""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from ..catalog.manifest import Catalog, Snapshot
from ..config import is_safe_name
from ..errors import ConfigError, IntegrityError, NotFoundError, RefusedError
from ..repository.index import IndexEntry, iter_index, order_key
from ..sources import fsmeta
from ..sources.files import matcher
from ..storage.base import Storage
from ..storage.util import PrefetchReader
from . import tarstream
from .archiver import CHUNK
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
    #: the snapshot's warnings for this source (its own and its chain's: torn files, unreadable paths, …) and
    #: what this restore could not do (an extended attribute the target refused)
    warnings: list[str] = field(default_factory=list)


class _Meta:
    """Applies an entry's owner, mode, extended attributes and times to an open descriptor."""

    def __init__(self, chown: bool, warnings: list[str], strip_acls: bool = False) -> None:
        self.chown, self.warnings = chown, warnings
        #: the target's default ACL gives every new entry ACLs the source did not have: remove them
        self.strip_acls = strip_acls

    def __call__(self, fd: int, path: str, e: IndexEntry) -> None:
        fsmeta.apply(fd, e.mode, e.owner, e.xattrs, chown=self.chown, where=path, warnings=self.warnings,
                     strip_acls=self.strip_acls)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))


def safe_member(name: str) -> str:
    """Normalised relative member name, or RefusedError for anything that could escape the target."""
    if not name or name.startswith("/") or "\x00" in name:
        raise RefusedError(f"archive member {name!r} has an absolute or invalid path; refusing to restore it")
    norm = posixpath.normpath(name.rstrip("/"))
    if norm in ("", ".") or norm.startswith("../") or norm == ".." or "/../" in f"/{name}/":
        raise RefusedError(f"archive member {name!r} would escape the restore target; refusing to restore it")
    return norm


_WILD = re.compile(r"(?<!\\)(?:\\\\)*[*?]")  #: an unescaped ``*`` or ``?``


def _dir_of(glob: str) -> str:
    """``dir`` of ``dir/**`` (an escaped ``\\/`` is a ``/`` too)."""
    head = glob[:-3]
    return head[:-1] if (len(head) - len(head.rstrip("\\"))) % 2 else head


def _selector(includes: list[str] | None) -> Callable[[str], bool]:
    """``--include`` as a predicate: a path matches a glob, or ``p + "/x"`` matches a glob ``dir/**`` (the
    directory itself is selected). Globs without wildcards (one path each, as a list of chosen files gives; also
    the ``dir`` of a literal ``dir/**``) are a set lookup; the others one compiled alternation each way."""
    if not includes:
        return lambda p: True
    exact = {_unescape(g) for g in includes if not _WILD.search(g)}
    exact |= {_unescape(_dir_of(g)) for g in includes if g.endswith("/**") and not _WILD.search(_dir_of(g))}
    wild = matcher([g for g in includes if _WILD.search(g)])
    wild_dirs = [g for g in includes if g.endswith("/**") and _WILD.search(_dir_of(g))]
    below = matcher(wild_dirs) if wild_dirs else None
    if below is None:
        return lambda p: p in exact or wild(p)
    return lambda p: p in exact or wild(p) or below(p + "/x")


def _unescape(glob: str) -> str:
    return re.sub(r"\\(.)", r"\1", glob, flags=re.DOTALL)


def check_target(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise RefusedError(f"restore target {target} exists and is not a directory", hint="choose a directory path")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise RefusedError(f"restore target {target} is not empty",
                           hint="choose an empty or new directory, or pass --force to replace the restored sources in it")


def _prepare_target(target: Path, source: str, force: bool) -> tuple[Path, Path]:
    if not is_safe_name(source):  # also checked when the manifest is read: this is the last line of defence
        raise RefusedError(f"source name {source!r} is not a safe name; refusing to restore it")
    final = target / source
    if (final.exists() or final.is_symlink()) and not force:
        raise RefusedError(f"restore target {final} already exists", hint="pass --force to replace it")
    target.mkdir(parents=True, exist_ok=True)
    if force:  # leftovers of a killed restore of this source (a failing restore removes its own)
        for leftover in target.iterdir():
            if leftover.name.startswith((f".{source}.partial-", f".{source}.old-")) and not leftover.is_symlink():
                log.info("removing %s, left by an interrupted restore", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{source}.partial-", dir=target))
    return final, partial


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Tree:
    """Creates entries below one root directory through directory descriptors (``openat``): every directory is
    opened one component at a time with ``O_NOFOLLOW``, so nothing is ever created or written through a symlink
    (a symlink or a file in the way is a RefusedError), and paths of any total length work. The open directories
    are the chain from the root to the last one used (entries come in canonical order), so few are open."""

    def __init__(self, root: Path) -> None:
        self.root = os.open(root, _DIR_FLAGS)
        self.stack: list[tuple[str, int]] = [("", self.root)]
        #: directories this tree created (a second ``mkdir`` would only fail with EEXIST: one syscall per directory)
        self.made: set[str] = set()
        #: what to do with the descriptor of a directory left behind (closed later while a writer may still use it)
        self.retire: Callable[[int], None] = os.close

    def dir(self, rel: str, create: bool = True) -> int:
        """The descriptor of directory ``rel`` (``""``: the root), created (mode 0o777 & umask) if missing."""
        stack = self.stack
        top = stack[-1][0]
        if top == rel:
            return stack[-1][1]
        while len(stack) > 1 and not rel.startswith(stack[-1][0] + "/"):
            if stack[-1][0] == rel:
                return stack[-1][1]
            self.retire(stack.pop()[1])
        cur, fd = stack[-1]
        if cur == rel:
            return fd
        for part in (rel[len(cur) + 1 :] if cur else rel).split("/"):
            cur = f"{cur}/{part}" if cur else part
            if create and cur not in self.made:
                with suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
                self.made.add(cur)
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                    raise RefusedError(f"{cur!r} is a symlink or a file in the restore target, not a directory; "
                                       "refusing to write through it") from None
                raise
            stack.append((cur, fd))
        return fd

    def parent(self, rel: str) -> tuple[int, str]:
        """(descriptor of the parent directory, last component) of ``rel``."""
        parent, _, name = rel.rpartition("/")
        return self.dir(parent), name

    def close(self) -> None:
        for _, fd in self.stack:
            os.close(fd)
        self.stack = []


def chain_warnings(catalog: Catalog, snap: Snapshot, source: str) -> list[str]:
    """Every warning recorded for ``source`` by the snapshots of ``snap``'s chain, oldest first, each naming its
    snapshot (a file kept from an older snapshot carries that snapshot's warning about it)."""
    out = []
    for s in catalog.chain_of(snap):
        for w in s.sources.get(source, {}).get("warnings") or []:
            out.append(f"{s.id}: {w}")
    return out


def _has_default_acl(path: Path) -> bool:
    try:
        os.getxattr(path, fsmeta.ACL_DEFAULT)
        return True
    except OSError:
        return False


def restore_source(storage: Storage, catalog: Catalog, snap: Snapshot, source: str, target: Path, *,
                   includes: list[str] | None = None, force: bool = False, progress: Progress | None = None,
                   finish: Callable[[Path], dict[str, Any]] | None = None, no_owner: bool = False) -> SourceRestore:
    """Restore one source. Memory holds directories, symlinks, hard links and at most :data:`KEEP_ENTRIES` wanted
    files (the archives those fit need no pass of their own over the index); other files are streamed and merged.

    Owners are restored when running as root unless ``no_owner`` (like tar's ``--no-same-owner``); modes,
    extended attributes, ACLs and times always; the source root's own metadata when the snapshot recorded it."""
    if source not in snap.sources:
        raise NotFoundError(f"snapshot {snap.id} has no source {source!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    rec = snap.sources[source]
    chain = {s.id: s for s in catalog.chain_of(snap)}
    idx_obj = rec["objects"]["index"]
    select = _selector(includes)
    # pass 1 over the index: directories, symlinks and hard links (few) are kept; files are only counted per archive
    dirs: dict[str, IndexEntry] = {}
    links: dict[str, IndexEntry] = {}
    hardlinks: dict[str, str] = {}  # selected hard link -> the path it links to
    alias: dict[str, str] = {}  # file not selected itself -> the first selected hard link to it, which gets its bytes
    needed_dirs: set[str] = set()
    per_snap: dict[str, int] = defaultdict(int)
    # the wanted files of the archives that fit KEEP_ENTRIES (an incremental's few, a small full's): those archives
    # need no pass of their own over the index; the largest lists are dropped (streamed later) when it is exceeded
    kept: dict[str, list[tuple[str, str, IndexEntry]] | None] = {}
    kept_n = 0
    for path, e in iter_index(storage, idx_obj):
        if e.type == "d":
            dirs[path] = e
        elif e.type == "l":
            links[path] = e
        if not select(path):
            continue
        if e.type == "f":
            if e.link is None:
                per_snap[e.snap] += 1
                if e.snap not in kept:
                    kept[e.snap] = []
                lst = kept[e.snap]
                if lst is not None:
                    lst.append((path, path, e))
                    kept_n += 1
                    if kept_n > KEEP_ENTRIES:
                        big = max((k for k, v in kept.items() if v is not None), key=lambda k: len(kept[k] or ()))
                        kept_n -= len(kept[big] or ())
                        kept[big] = None
            else:
                hardlinks[path] = e.link
                if not select(e.link) and e.link not in alias:
                    alias[e.link] = path
                    per_snap[e.snap] += 1
        parent = path.rpartition("/")[0]
        while parent and parent not in needed_dirs:
            needed_dirs.add(parent)
            parent = parent.rpartition("/")[0]
        if e.type == "d":
            needed_dirs.add(path)
    if alias:  # a file that gets its bytes through a hard link is found by the streamed pass only
        kept = {}
    wanted_dirs = {p: e for p, e in dirs.items() if p in needed_dirs}
    wanted_links = {p: e for p, e in links.items() if select(p)}
    if includes and not (per_snap or wanted_dirs or wanted_links or hardlinks):
        raise NotFoundError(f"no path of source {source} in {snap.id} matches {includes}", hint="check the globs with `backupctl show`")
    for sid in per_snap:
        if sid not in chain:
            raise IntegrityError(f"index of {source} in {snap.id} names snapshot {sid!r}, which is not in its chain",
                                 hint="run `backupctl verify --read-data`; restore from another storage")
    final, partial = _prepare_target(target, source, force)
    progress = progress or Progress.null()
    out = SourceRestore(source, rec["kind"], str(final))
    out.warnings.extend(chain_warnings(catalog, snap, source))
    # directory ACLs are set last, after every entry below exists: only the target's default ACL is inherited
    meta = _Meta(os.geteuid() == 0 and not no_owner, out.warnings, strip_acls=_has_default_acl(partial))
    tree = _Tree(partial)
    try:
        for path in wanted_dirs:  # canonical order: parents first
            tree.dir(path)
        for sid in snap.chain:
            if not per_snap.get(sid):
                continue
            obj = chain[sid].sources.get(source, {}).get("objects", {}).get("archive")
            if obj is None:
                raise IntegrityError(f"snapshot {sid} should hold {per_snap[sid]} file(s) of {source} but has no archive")

            def wanted(sid: str = sid) -> Iterator[tuple[str, str, IndexEntry]]:
                for p, e in iter_index(storage, idx_obj):
                    if e.type == "f" and e.snap == sid and e.link is None:
                        if select(p):
                            yield p, p, e
                        elif p in alias:
                            yield p, alias[p], e

            frames = load_frames(storage, obj)
            listed = kept.get(sid)
            if frames is None or not includes:
                _extract_archive(storage, obj, wanted() if listed is None else iter(listed), tree, out, progress,
                                 meta, frames)
            else:  # a partial restore reads only the frames holding what it restores
                todo = list(wanted()) if listed is None else listed
                _extract_archive(storage, obj, iter(todo), tree, out, progress, meta, frames,
                                 frame_index_runs(frames, todo))
        for path, first in hardlinks.items():  # after every file is written, before any symlink exists
            src = first if select(first) else alias[first]
            try:
                if src == path:
                    st = os.stat(tree.parent(path)[1], dir_fd=tree.parent(path)[0], follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        raise FileNotFoundError
                    continue
                sfd, sname = tree.parent(src)
                sfd = os.dup(sfd)
                try:
                    dfd, dname = tree.parent(path)
                    os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                finally:
                    os.close(sfd)
            except OSError:
                raise IntegrityError(f"hard link {path!r} -> {first!r}: {first!r} is not a file restored from {snap.id}",
                                     hint="run `backupctl verify --read-data`; restore from another storage") from None
            out.files += 1  # the same (verified) content under another name
            out.verified += 1
        for path, e in wanted_links.items():  # symlinks last: nothing is ever written through one
            pfd, name = tree.parent(path)
            try:
                os.symlink(e.link, name, dir_fd=pfd)
            except FileExistsError:
                raise RefusedError(f"symlink {path!r} would replace another entry of the restore; refusing") from None
            if meta.chown and e.owner is not None:
                os.chown(name, *fsmeta.resolve_owner(e.owner), dir_fd=pfd, follow_symlinks=False)
            os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        for path in sorted(wanted_dirs, key=lambda p: -p.count("/")):
            meta(tree.dir(path, create=False), path, wanted_dirs[path])
        root = (rec.get("details") or {}).get("root")
        if isinstance(root, dict):  # the source root's own mode, owner, attributes and time
            try:
                rmeta = IndexEntry("d", 0, int(root["mtime_ns"]), int(root["mode"]) & 0o7777, 0, None, None, snap.id,
                                   fsmeta.owner_from_json(root["owner"]), fsmeta.xattrs_from_json(root["xattrs"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise IntegrityError(f"snapshot {snap.id}: the root record of {source} is damaged ({exc})",
                                     hint="run `backupctl verify`; restore from another storage") from None
            meta(tree.dir(""), ".", rmeta)
        tree.close()
        if finish is not None:  # partial database restores happen before the result becomes visible
            out.extra.update(finish(partial))
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{source}.old-", dir=target))
            os.replace(final, old / "x")
            shutil.rmtree(old)
        os.replace(partial, final)
    except BaseException:
        if tree.stack:
            tree.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


#: files up to this size are read whole and hashed, created and written on a writer thread (the hash and the
#: writes release the GIL, so they overlap the tar parsing); larger ones are streamed by the reading thread
SMALL_FILE = 8 << 20
#: wanted files kept from the first pass over the index (so their archive needs no pass of its own): ~15 MB
KEEP_ENTRIES = 32768
_ZEROS = bytes(CHUNK)


#: writer threads of a restore: creating, writing and closing small files are syscalls that release the GIL, so
#: a few threads keep the disk busy while the main thread parses the tar stream (before: one writer thread)
WRITERS = 2


#: files handed to a writer thread in one task (a task per file cost more than writing a small file)
WRITE_BATCH_FILES = 32
WRITE_BATCH_BYTES = 1 << 20


class _Writers:
    """Create and write files of up to :data:`SMALL_FILE` on a small pool of writer threads (file creation is the
    slowest syscall of a restore; the GIL is released during it and during the hash), in batches of a few files
    per task, with at most ~32 MiB of content in flight. Each file is hashed once, on the bytes about to be
    written, before it is created."""

    def __init__(self, workers: int | None = None, max_bytes: int = 32 << 20) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=workers or WRITERS, thread_name_prefix="restore-write")
        self.budget = _Budget(max(max_bytes, SMALL_FILE))
        self.futures: list[tuple[Any, int]] = []  #: (future of one batch, files in it)
        self.batch: list[tuple[Any, ...]] = []
        self.batch_bytes = 0
        self.submitted = self.reaped = 0  #: files queued (a batch not yet handed over included), files written
        #: (number of writes submitted before, descriptors): closed once those writes are done
        self.closing: list[tuple[int, list[int]]] = []

    @staticmethod
    def _write(dir_fd: int, name: str, content: bytes, path: str, e: IndexEntry, meta: _Meta,
               error: Callable[[], Exception]) -> None:
        if hashlib.sha256(content).hexdigest() != e.sha256:
            raise error()
        # O_EXCL: every path is written once into a fresh private directory; anything already there is wrong
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            _write_all(fd, content)
            meta(fd, path, e)
        finally:
            os.close(fd)

    def submit(self, dir_fd: int, name: str, content: bytes, path: str, e: IndexEntry, meta: _Meta,
               error: Callable[[], Exception]) -> None:
        """Write ``name`` in ``dir_fd`` (which must stay open until then: see :meth:`close_later`); ``error()``
        is raised when the content does not match the index (built only then: one exception per file costs)."""
        self.batch.append((dir_fd, name, content, path, e, meta, error))
        self.batch_bytes += len(content)
        self.submitted += 1
        if len(self.batch) >= WRITE_BATCH_FILES or self.batch_bytes >= WRITE_BATCH_BYTES:
            self._hand_over()

    def _hand_over(self) -> None:
        """Queue the batch as one task (waits while the content in flight would exceed the budget)."""
        if not self.batch:
            return
        batch, n = self.batch, self.batch_bytes
        self.batch, self.batch_bytes = [], 0
        self.budget.acquire(n)

        def run() -> None:
            try:
                for item in batch:
                    self._write(*item)
            finally:
                self.budget.release(n)

        self.futures.append((self.pool.submit(run), len(batch)))
        if len(self.futures) >= 64:
            self._reap(len(self.futures) // 2)

    def close_later(self, fds: list[int]) -> None:
        """Close directory descriptors once every write queued so far is done (writes run in parallel, so this
        waits for them all, not just for a queue position). ``fds`` is emptied when done; whatever is left in it
        after :meth:`close` was never closed."""
        self.closing.append((self.submitted, fds))
        self._close_done()

    def _close_done(self) -> None:
        while self.closing and self.closing[0][0] <= self.reaped:
            fds = self.closing.pop(0)[1]
            while fds:
                os.close(fds.pop())

    def _reap(self, n: int) -> None:
        done, self.futures = self.futures[:n], self.futures[n:]
        for f, files in done:
            f.result()
            self.reaped += files
        self._close_done()

    def finish(self) -> None:
        self._hand_over()
        self._reap(len(self.futures))

    def close(self) -> None:
        self.batch = []
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Budget:
    """Bytes of file content in flight to the writers: :meth:`acquire` waits while more than ``limit`` would be
    (one file alone may always go: a file is at most :data:`SMALL_FILE`)."""

    def __init__(self, limit: int) -> None:
        import threading

        self.limit, self.used = limit, 0
        self.cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self.cond:
            while self.used and self.used + n > self.limit:
                self.cond.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


def _write_all(fd: int, content: bytes) -> None:
    """Write ``content``; all-zero :data:`CHUNK` s of a larger file become holes (sparse files come back sparse)."""
    view = memoryview(content)
    if len(content) < 2 * CHUNK:
        while view:
            view = view[os.write(fd, view):]
        return
    hole = False
    for at in range(0, len(content), CHUNK):
        part = view[at : at + CHUNK]
        # (a memoryview compares item by item: bytes compare with memcmp, sliced only when it may be zeros)
        if len(part) == CHUNK and not content[at] and not content[at + CHUNK - 1] and content[at : at + CHUNK] == _ZEROS:
            os.lseek(fd, CHUNK, os.SEEK_CUR)
            hole = True
            continue
        while part:
            part = part[os.write(fd, part):]
    if hole:
        os.ftruncate(fd, len(content))


def _write_large(dir_fd: int, name: str, data: tarstream.MemberReader, size: int, progress: Progress) -> str:
    """Stream one large member into a new file; all-zero chunks become holes (sparse files come back sparse)."""
    h = hashlib.sha256()
    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        hole = False
        while chunk := data.read(CHUNK):
            h.update(chunk)
            if len(chunk) == CHUNK and chunk == _ZEROS:
                os.lseek(fd, CHUNK, os.SEEK_CUR)
                hole = True
            else:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            progress.advance(len(chunk))
        if hole:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return h.hexdigest()


#: frames decompressed ahead of the tar reader: at most this many in flight (each about FRAME_SIZE of tar bytes,
#: at most WHOLE_FRAME_MAX, or a CHUNK of a streamed frame)
FRAMES_AHEAD = max(4, min(12, 4 * (os.cpu_count() or 1)))
#: threads decompressing frames (zstandard releases the GIL while it decompresses)
DECOMPRESSORS = max(1, min(4, os.cpu_count() or 1))
#: a frame holding more tar bytes than this (a large file), or of unknown size (the archive's last), is streamed
#: chunk by chunk on the reading thread instead of being decompressed whole on the pool: memory stays flat
WHOLE_FRAME_MAX = 4 << 20

_END = object()


def _frame_span(frames: list[tarstream.Frame], i: int) -> int | None:
    """The tar bytes frame ``i`` holds (from the next frame's uncompressed offset), None for the last frame."""
    return frames[i + 1].uoffset - frames[i].uoffset if i + 1 < len(frames) else None


class _ParallelFrames:
    """The tar bytes of some frames of one archive, in order (a file-like ``read``), decompressed ahead of the
    reader on a small thread pool.

    One reading thread reads each run of consecutive frames with one ranged read (a whole restore: one run, the
    whole archive) and hands every frame of known size up to :data:`WHOLE_FRAME_MAX` to the pool; larger frames
    (a large file) it decompresses itself, chunk by chunk. At most :data:`FRAMES_AHEAD` frames or chunks wait for
    the reader (bounded memory: a few frames). Frames start at member boundaries, so the frames put end to end are
    a tar stream; when the last run does not end the archive, an end-of-archive marker is added. A frame whose
    size does not match the frame table, or that does not decompress, is an IntegrityError naming the object."""

    def __init__(self, storage: Storage, key: str, frames: list[tarstream.Frame], runs: list[list[int]]) -> None:
        import queue
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.storage, self.key, self.frames = storage, key, frames
        self.ended = bool(runs) and runs[-1][-1] == len(frames) - 1
        self._q: queue.Queue[Any] = queue.Queue(maxsize=FRAMES_AHEAD)
        self._stop = threading.Event()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=DECOMPRESSORS, thread_name_prefix="restore-zstd")
        self._buf, self._off, self._done = b"", 0, False
        self._t = threading.Thread(target=self._feed, args=(runs,), name="restore-read", daemon=True)
        self._t.start()

    # ---- the reading thread
    def _put(self, item: Any) -> bool:
        # a plain blocking put (no timeout: a timed wait has an absolute deadline, which a wall clock set far ahead,
        # e.g. under faketime, turns into decades); close() drains the queue, so it always returns
        if self._stop.is_set():
            return False
        self._q.put(item)
        return not self._stop.is_set()

    def _feed(self, runs: list[list[int]]) -> None:
        try:
            for run in runs:
                first, last = self.frames[run[0]], self.frames[run[-1]]
                with self.storage.open_read(self.key, first.offset, last.offset + last.length - first.offset) as raw:
                    for i in run:
                        f, span = self.frames[i], _frame_span(self.frames, i)
                        if span is not None and span <= WHOLE_FRAME_MAX and f.length <= WHOLE_FRAME_MAX:
                            comp = self._read_exact(raw, f.length, i)
                            if not self._put(self._pool.submit(self._inflate, comp, span, i)):
                                return
                        elif not self._stream(raw, i, span):
                            return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            self._put(exc)

    def _read_exact(self, raw: Any, n: int, i: int) -> bytes:
        parts, left = [], n
        while left:
            b = raw.read(min(left, CHUNK * 4))
            if not b:
                raise self._bad(i, "ends early")
            parts.append(b)
            left -= len(b)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _stream(self, raw: Any, i: int, span: int | None) -> bool:
        """Decompress a large frame here, chunk by chunk, into the queue (the pool's frames before it are queued)."""
        from ..storage.util import LimitedReader

        limited = LimitedReader(raw, self.frames[i].length)
        n = 0
        with zstandard.ZstdDecompressor().stream_reader(limited, read_size=CHUNK, closefd=False,
                                                        read_across_frames=True) as z:
            while chunk := z.read(CHUNK):
                n += len(chunk)
                if span is not None and n > span:
                    raise self._bad(i, f"holds more than the {span} bytes of its frame table entry")
                if not self._put(chunk):
                    return False
        if limited.left or (span is not None and n != span):
            raise self._bad(i, "does not match its frame table entry")
        return True

    # ---- the pool
    def _inflate(self, comp: bytes, span: int, i: int) -> bytes:
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        try:
            # a row of the frame table may hold several zstd frames (a PostgreSQL table file is stored as its
            # header, data and padding, each its own frame): read across them, never past the row's size
            with dctx.stream_reader(io.BytesIO(comp), read_across_frames=True) as z:
                out = z.read(span + 1)
                while len(out) <= span and (more := z.read(span + 1 - len(out))):
                    out += more
        except zstandard.ZstdError as exc:
            raise self._bad(i, f"cannot be decompressed ({exc})") from None
        if len(out) != span:
            raise self._bad(i, f"holds {len(out)} bytes, its frame table entry {span}")
        return out

    def _bad(self, i: int, what: str) -> IntegrityError:
        return IntegrityError(f"{self.storage.name}: archive {self.key} is damaged: frame {i} (at byte "
                              f"{self.frames[i].offset}) {what}",
                              hint="restore from another storage; run `backupctl verify --read-data`")

    # ---- the tar reader's side
    def _next(self) -> bool:
        if self._done:
            return False
        item = self._q.get()
        if item is _END:
            self._done = True
            if self.ended:
                return False
            item = tarstream.end_of_archive()
        elif isinstance(item, BaseException):
            self._done = True
            raise item
        elif not isinstance(item, bytes):
            item = item.result()
        self._buf, self._off = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        while self._off >= len(self._buf):
            if not self._next():
                return b""
        if n is None or n < 0:
            n = len(self._buf) - self._off
        end = self._off + n
        data = self._buf[self._off : end] if (self._off or end < len(self._buf)) else self._buf
        self._off = min(end, len(self._buf))
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop the reading thread (it may wait on a full queue), cancel queued frames, wait for both."""
        import queue
        import time

        self._stop.set()
        while self._t.is_alive():
            try:
                self._q.get_nowait()  # makes room: a put the reading thread waits in returns, then it sees the stop
            except queue.Empty:
                time.sleep(0.005)
        self._t.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buf = b""


def load_frames(storage: Storage, obj: dict[str, Any]) -> list[tarstream.Frame] | None:
    """The frame table of an archive object (two ranged reads at its end), or None when it has none (an archive
    written before format 2) or it is unusable (then the archive is read whole, as one stream: safe, only slower)."""
    if not isinstance(obj.get("frames"), int) or obj["frames"] < 1 or not isinstance(obj.get("size"), int):
        return None
    size = obj["size"]
    try:
        with storage.open_read(obj["key"], max(0, size - tarstream.tail_length()), tarstream.tail_length()) as fh:
            off, length = tarstream.table_span(fh.read(), size)
        with storage.open_read(obj["key"], off, length) as fh:
            return tarstream.parse_frame_table(fh.read(), size)
    except tarstream.FrameTableError as exc:
        log.warning("%s: archive %s: %s; reading it whole", storage.name, obj["key"], exc)
        return None


def frame_runs(frames: list[tarstream.Frame], wanted: list[tuple[str, str, IndexEntry]]) -> list[tuple[int, int, bool]]:
    """The ranges of the archive (compressed offset, length, whether it reaches the last frame) holding the
    members ``wanted`` names: for each, the frames from the last one starting before it (or at it) to the last
    one starting at it (a torn file's second copy may start the next frame); adjacent frames are merged."""
    return [_run(frames, run[0], run[-1]) for run in frame_index_runs(frames, wanted)]


def frame_index_runs(frames: list[tarstream.Frame], wanted: list[tuple[str, str, IndexEntry]]) -> list[list[int]]:
    """:func:`frame_runs` as lists of consecutive frame numbers."""
    import bisect

    keys = [order_key(f.first) for f in frames]
    need: set[int] = set()
    for path, _, e in wanted:
        k = order_key(path)
        lo = bisect.bisect_left(keys, k)
        first = lo if lo < len(keys) and keys[lo] == k and not e.torn else max(0, lo - 1)
        last = max(first, bisect.bisect_right(keys, k) - 1)
        need.update(range(first, last + 1))
    runs: list[list[int]] = []
    for i in sorted(need):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _run(frames: list[tarstream.Frame], a: int, b: int) -> tuple[int, int, bool]:
    return frames[a].offset, frames[b].offset + frames[b].length - frames[a].offset, b == len(frames) - 1


def _extract_archive(storage: Storage, obj: dict[str, Any], wanted: Iterator[tuple[str, str, IndexEntry]],
                     tree: _Tree, out: SourceRestore, progress: Progress, meta: _Meta,
                     frames: list[tarstream.Frame] | None = None, runs: list[list[int]] | None = None) -> None:
    """Merge one archive's members with the wanted files it holds (both in canonical order).

    ``wanted`` yields (member path, path to write, entry): the two differ only for a file whose bytes go to a
    hard link to it (when ``--include`` selected the link but not the file). A large file that shrank while it
    was backed up (``torn`` in the index) may appear twice: first completed with zeros, then as read; the member
    whose content matches the index is the one kept, and only such a file may appear twice.

    ``frames`` (the archive's frame table, :func:`load_frames`): the frames are decompressed in parallel
    (:class:`_ParallelFrames`), all of them or only the ``runs`` of frame numbers (:func:`frame_index_runs`, a
    partial restore); without a table (format 1) the archive is one stream, decompressed ahead on one thread."""

    def missing(path: str) -> IntegrityError:
        return IntegrityError(f"{path}: not found in archive {obj['key']} where the index says it is",
                              hint="run `backupctl verify --read-data`; restore from another storage")

    def damaged(name: str) -> IntegrityError:
        return IntegrityError(f"{name}: restored content does not match its SHA-256 in the index ({obj['key']})",
                              hint="the stored object is damaged: run `backupctl verify --read-data` and restore from another storage")

    writers = _Writers()
    retired: list[int] = []  # directories the tree left while writes in them may still be queued
    batches: list[list[int]] = []
    tree.retire = retired.append
    w = next(wanted, None)
    # Every restored file is checked against its SHA-256 in the (checksum-verified) index, so the archive's own
    # object hash is not recomputed here: that is `verify --read-data`'s job. Member names are only matched
    # against the (validated) index paths; every member name is still checked so a crafted archive is refused.
    with ExitStack() as stack:
        if frames is None:
            raw = stack.enter_context(storage.open_read(obj["key"]))
            zr = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, closefd=False,
                                                                                read_across_frames=True))
            z: Any = PrefetchReader(zr, CHUNK)
        else:
            z = _ParallelFrames(storage, obj["key"], frames, runs if runs is not None else [list(range(len(frames)))])
        try:
            last_key: list[str] | None = None
            last_sym = None
            superseded: str | None = None  # a torn file's first, zero-completed member: its next copy may follow
            for m, data in tarstream.iter_members(z, CHUNK):
                name = safe_member(m.name)
                if m.islnk():
                    safe_member(m.linkname)
                key = order_key(name)
                if last_key is not None and key <= last_key and not (key == last_key and name == superseded):
                    if key == last_key:
                        raise RefusedError(f"archive {obj['key']} holds {m.name!r} twice; refusing to restore it")
                    raise IntegrityError(f"{storage.name}: archive {obj['key']} is out of order at {m.name!r}",
                                         hint="restore from another storage; run `backupctl verify --read-data`")
                last_key, superseded = key, None
                if last_sym is not None and name.startswith(last_sym):  # descendants follow their ancestor
                    raise RefusedError(f"archive member {m.name!r} goes through a symlink of the same archive; refusing")
                if m.issym():
                    last_sym = name + "/"
                if w is None or not m.isfile():
                    continue
                while w is not None and order_key(w[0]) < key:
                    raise missing(w[0])
                if w is None or w[0] != name:
                    continue
                _, dest, e = w
                pfd, fname = tree.parent(dest)
                try:
                    if e.torn and m.size != e.size:  # the zero-completed copy of a torn file: the next one is it
                        superseded = name
                        continue
                    if m.size <= SMALL_FILE and not e.torn:  # hashed, created, written on a writer thread (GIL-free)
                        content = data.read_all()
                        writers.submit(pfd, fname, content, dest, e, meta, functools.partial(damaged, name))
                        progress.advance(len(content))
                        if retired:
                            batches.append(retired[:])
                            retired.clear()
                            writers.close_later(batches[-1])
                    else:
                        if _write_large(pfd, fname, data, m.size, progress) != e.sha256:
                            if e.torn:  # a zero-completed copy of the same size as what was read: the next one is it
                                os.unlink(fname, dir_fd=pfd)
                                superseded = name
                                continue
                            raise damaged(name)
                        fd = os.open(fname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                        try:
                            meta(fd, dest, e)
                        finally:
                            os.close(fd)
                except FileExistsError:
                    raise RefusedError(f"{dest!r} is written twice by this restore; refusing") from None
                out.files += 1
                out.bytes += e.size
                out.verified += 1
                w = next(wanted, None)
                if e.torn:  # its zero-completed copy, if it matched anyway, may be followed by the copy as read
                    superseded = name
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
            tree.retire = os.close
            for fds in (*batches, retired):  # not closed by the writer (a failure cancelled its tasks)
                for fd in fds:
                    os.close(fd)
    if w is not None:
        raise missing(w[0])
    for _ in wanted:  # drain: the index stream checks its own SHA-256 at the end
        pass


def restore(storage: Storage, catalog: Catalog, snap: Snapshot, target: Path, *, sources: list[str] | None = None,
            includes: list[str] | None = None, tables: list[str] | dict[str, list[str]] | None = None,
            force: bool = False, pg_target: str | None = None, progress: Progress | None = None,
            no_owner: bool = False) -> list[SourceRestore]:
    """Restore ``snap`` (its whole chain, newest version of each path) from ``storage`` into ``target/<source>/``,
    every file SHA-256 checked against the manifest while written. ``sources``/``includes``/``tables`` narrow
    what is restored (``tables`` as a dict: per database source, e.g. with the dependencies a plan added); a
    non-empty target is refused unless ``force``; ``pg_target`` loads PostgreSQL dumps into that database (chosen
    tables holding rows there are replaced only with ``force``). Returns one :class:`SourceRestore` per source."""
    names = sources or sorted(snap.sources)
    for n in names:
        if n not in snap.sources:
            raise NotFoundError(f"snapshot {snap.id} has no source {n!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    if tables and not any(snap.sources[n]["kind"] in ("sqlite", "postgres") for n in names):
        raise ConfigError("--table applies to sqlite and postgres sources only", hint="add --source with a database source")
    target = Path(target)
    check_target(target, force)
    chosen = tables

    def one(n: str) -> SourceRestore:
        kind = snap.sources[n]["kind"]
        finish = None
        tables = chosen.get(n, []) if isinstance(chosen, dict) else chosen
        if kind == "sqlite" and tables:
            from .databases import keep_sqlite_tables

            dbname = snap.sources[n]["details"]["database"]

            def finish(p: Path) -> dict[str, Any]:
                return {"tables": keep_sqlite_tables(p / dbname, tables)}
        elif kind == "postgres" and (pg_target or tables):
            from .databases import pg_restore

            # foreign keys to excluded tables, left out on restore (source option drop_dangling_foreign_keys)
            skip = snap.sources[n]["details"].get("dangling_foreign_keys") or None

            def finish(p: Path) -> dict[str, Any]:
                return pg_restore(p / "dump", pg_target, tables, force=force, skip_foreign_keys=skip)
        r = restore_source(storage, catalog, snap, n, target, includes=includes if kind == "files" else None,
                           force=force, progress=progress, finish=finish, no_owner=no_owner)
        log.info("restored %s: %d files, %.1f MB, all SHA-256 verified, into %s", n, r.files, r.bytes / 1e6, r.path)
        for w in r.warnings:
            log.warning("restored %s with a warning: %s", n, w)
        return r

    # one source after the other: restoring two at once measured no faster (the GIL and the disk are shared)
    return [one(n) for n in names]
