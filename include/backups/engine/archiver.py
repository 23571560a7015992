"""Backup of one source into one snapshot: change detection against the parent, streaming tar + zstd upload.

Algorithm (one pass over the source, memory bounded by the index, never by file sizes):

1. Load the parent's index for this source (the complete state at the parent, each entry naming the snapshot
   whose archive holds its bytes — ``in``).
2. ``prepare()`` the source (a live tree, or a dump in private staging) and walk its entries in order.
3. For each entry decide: *unchanged* (``meta``: same type, size, mtime, inode, mode, owner and extended
   attributes; ``checksum``: same SHA-256 and metadata) → copy the parent's entry, keep its ``in``; otherwise
   *stored* → append it to this snapshot's tar stream (compressed by zstd on all cores, hashed as it is written,
   uploaded as it is produced). A directory the source could not read (``on_unreadable: warn``) keeps the
   parent's entries of its whole subtree.
4. Paths of the parent that were not seen are *deleted*.
5. Write the index, the ``sha256sum`` list and the deletions, then the source record (``part.json``).
   The manifest that commits the snapshot is written later, by :mod:`backups.engine.backup_pipeline`.

A file that changes size while it is read is stored as the bytes actually read (small files are read whole
before their tar header is written; a large file that shrinks is re-read whole into a spool and stored again
under the same name, so the last member of that name holds the real bytes) and its entry is flagged ``torn``.

Unreadable files are skipped while streaming and reported together at the end; with ``on_unreadable: fail``
the source fails and nothing is committed (the written objects are orphans, invisible without a manifest).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from ..catalog.manifest import object_key
from ..errors import SourceError
from ..repository.index import IndexEntry, entry_json, iter_index, order_key
from ..sources.base import Entry, Prepared, SourceReader
from ..sources.fsmeta import owner_of, read_xattrs
from ..storage.base import Storage, sha256_of
from ..storage.util import ThreadedHashingSink
from . import tarstream
from .progress import Progress
from .tarheaders import owner_fields as owner_fields  # re-exported: imported from here
from .tarheaders import tarinfo
from .tarheaders import ustar_fast as ustar_fast  # re-exported: imported from here

log = logging.getLogger(__name__)
CHUNK = 1 << 20
BATCH = 256 << 10  #: small members are handed to the compressor in batches of about this many bytes
PARALLEL_HASH_MIN = 4 << 20  #: files at least this large are hashed on a helper thread while being compressed
#: threads compressing an archive's frames of small members, each frame on its own (one zstd context each)
FRAME_WORKERS = max(1, min(4, os.cpu_count() or 1))
#: frames compressed ahead of the writer: memory stays at a few frames (each FRAME_SIZE plus one member < 4 MiB)
FRAMES_AHEAD = 2 * FRAME_WORKERS
ZSTD_LEVEL = 3

def compressor(threads: int = -1) -> zstandard.ZstdCompressor:
    """zstd level 3 on all cores, with 2 MiB jobs: the default 8 MiB jobs cost ~100 MB of buffers."""
    params = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, threads=threads, job_size=2 << 20, window_log=20)
    return zstandard.ZstdCompressor(compression_params=params)


_FRAME_CTX = threading.local()


def _compress_frame(data: bytes) -> bytes:
    """One complete zstd frame of ``data`` (level :data:`ZSTD_LEVEL`, the stream's window), on a pool thread."""
    z = getattr(_FRAME_CTX, "z", None)
    if z is None:
        params = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, window_log=20)
        z = _FRAME_CTX.z = zstandard.ZstdCompressor(compression_params=params)
    return z.compress(data)


@contextmanager
def _object_writer(storage: Storage, key: str, compress: bool = True, threads: int = -1,
                   trailer: Callable[[], bytes] | None = None) -> Iterator[tuple[BinaryIO, ThreadedHashingSink]]:
    """A compressing writer for one object; output is hashed and written by a background thread. ``trailer``
    gives bytes appended after the compressed stream is complete (an archive's frame table)."""
    with storage.open_write(key) as raw:
        sink = ThreadedHashingSink(raw)
        try:
            if compress:
                with compressor(threads).stream_writer(sink, closefd=False) as z:  # type: ignore[arg-type]
                    yield z, sink
            else:
                yield sink, sink  # type: ignore[misc]
            if trailer is not None:
                sink.write(trailer())
        except BaseException:
            with suppress(BaseException):
                sink.close()
            raise
        sink.close()


def _record(key: str, hw: ThreadedHashingSink) -> dict[str, Any]:
    return {"key": key, "size": hw.size, "sha256": hw.hexdigest()}


def _same_meta(prev: IndexEntry, e: Entry) -> bool:
    """Owner and extended attributes unchanged (an index written before they were recorded counts as unchanged:
    its entry gets them without storing the bytes again)."""
    return prev.owner is None or (prev.owner == e.owner and prev.xattrs == e.xattrs)


def _entry(e: Entry, size: int, sha: str | None, snap: str, *, link: str | None = None, torn: bool = False) -> IndexEntry:
    return IndexEntry(e.type, size, e.mtime_ns, e.mode, e.ino, sha, link, snap, e.owner, e.xattrs, torn)


class _TarStream:
    """Appends members to a zstd-compressed tar object, opened lazily on the first stored member.

    Headers and small members are batched in memory, a frame at a time (:data:`~backups.engine.tarstream.FRAME_SIZE`
    bytes plus one member), and each full frame is compressed on its own on a small pool (:data:`FRAME_WORKERS`
    single-threaded compressors, the GIL released), a few frames ahead, written in order. Small frames are what
    lets a partial restore read little (issue 18), and ending a frame of zstd's multi-threaded stream blocks until
    its workers finish (measured: the compression then no longer overlapped the Python work). A large member
    (:meth:`add_file`, ≥ ``PARALLEL_HASH_MIN``) is streamed through zstd's multi-threaded stream instead, in a
    frame that ends at the next member, as is the archive's last frame."""

    def __init__(self, stack: ExitStack, storage: Storage, key: str) -> None:
        self.stack, self.storage, self.key = stack, storage, key
        self.out: _Counting | None = None
        self.hw: ThreadedHashingSink | None = None
        self.members = 0
        self.raw_bytes = 0
        self._views = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
        self._pool: Any = None
        self.frames: list[tarstream.Frame] = []  #: the frame table (complete after :meth:`close`)
        self._frame = (0, 0, "")  #: (compressed offset, uncompressed offset, first member) of the open frame
        self._z: Any = None
        self._batch = bytearray()
        #: the open frame is still all in ``_batch`` (compressed on the pool when it ends), not in the stream
        self._pooled = True
        self._ahead: deque[tuple[Any, int, str]] = deque()  #: (future of compressed bytes, uoffset, first member)
        self._zpool: Any = None

    def _put(self, name: str, *parts: bytes) -> None:
        """Batch the bytes of member ``name`` (after the frame boundary hook): a pooled frame is compressed whole
        when it ends; a streamed one gets whole batches."""
        self._open(name)
        for p in parts:
            self._batch += p
        if not self._pooled and len(self._batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Hand the batched members to the stream (into the open frame, which is then a streamed one)."""
        self._streamed()
        if self._batch:
            self.out.write(self._batch)  # type: ignore[union-attr]  # set by _open before any batch
            self._batch = bytearray()

    def _streamed(self) -> None:
        """Make the open frame a streamed one: every pooled frame before it is written first (in order)."""
        if self._pooled:
            self._drain(0)
            self._pooled = False
            self._frame = (self.hw.size, *self._frame[1:])  # type: ignore[union-attr]

    def _drain(self, keep: int) -> None:
        """Write the compressed pooled frames, oldest first, until at most ``keep`` are still in flight."""
        while len(self._ahead) > keep:
            fut, uoff, first = self._ahead.popleft()
            comp = fut.result()
            coff = self.hw.size  # type: ignore[union-attr]
            self.hw.write(comp)  # type: ignore[union-attr]
            self.frames.append(tarstream.Frame(coff, len(comp), uoff, first))

    def _open(self, name: str) -> _Counting:
        """The writer, opened on the first member; also the frame boundary hook: called before every member
        (``name``), it ends the current zstd frame once it holds :data:`~backups.engine.tarstream.FRAME_SIZE`
        uncompressed bytes, so every frame starts with a member header and decompresses on its own."""
        if self.out is None:
            z, self.hw = self.stack.enter_context(_object_writer(self.storage, self.key, trailer=self._table))
            self._z = z
            self.out = _Counting(z)
            self._frame = (0, 0, name)
        elif self.out.n + len(self._batch) - self._frame[1] >= tarstream.FRAME_SIZE:
            self._end_frame()
            self._frame = (-1, self.out.n, name)  # compressed offset: set when it is written
            self._pooled = True
        return self.out

    def _end_frame(self) -> None:
        coff, uoff, first = self._frame
        if self._pooled:  # compressed on the pool, written (in order) a few frames later
            data, self._batch = bytes(self._batch), bytearray()
            self.out.n += len(data)  # type: ignore[union-attr]
            self._ahead.append((self._compressors().submit(_compress_frame, data), uoff, first))
            self._drain(FRAMES_AHEAD)
            return
        self.flush()  # the members batched so far belong to the frame that ends here
        self._z.flush(zstandard.FLUSH_FRAME)
        self.frames.append(tarstream.Frame(coff, self.hw.size - coff, uoff, first))  # type: ignore[union-attr]

    def _compressors(self) -> Any:
        if self._zpool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._zpool = ThreadPoolExecutor(max_workers=FRAME_WORKERS, thread_name_prefix="zstd-frame")
            self.stack.callback(self._zpool.shutdown, cancel_futures=True)
        return self._zpool

    def add_meta(self, e: Entry) -> None:
        self._put(e.path, tarinfo(e, 0))
        self.members += 1

    def add_hardlink(self, e: Entry, target: str) -> None:
        self._put(e.path, tarinfo(e, 0, "h", target))
        self.members += 1

    def add_bytes(self, e: Entry, content: bytes, progress: Progress) -> str:
        """Store a member whose bytes are all in memory; returns their SHA-256."""
        self._put(e.path, tarinfo(e, len(content)), content, tarstream.padding(len(content)))
        progress.advance(len(content))
        self.members += 1
        self.raw_bytes += len(content)
        return hashlib.sha256(content).hexdigest()

    def add_spooled(self, e: Entry, fh: BinaryIO, size: int, progress: Progress) -> str:
        """Store ``size`` bytes of a spool that holds exactly them; returns their SHA-256."""
        sha, short = self.add_file(e, fh, size, progress)
        if short:
            raise SourceError(f"{e.path}: the spool of a changing file lost bytes (internal error)")
        return sha

    def add_file(self, e: Entry, fh: BinaryIO, size: int, progress: Progress) -> tuple[str, bool]:
        """Stream ``size`` bytes of ``fh``; returns (sha256, changed_while_reading).

        Reads into reused buffers (no per-chunk allocation or page faults) and hands the same memory to the
        hash and to the compressor. For large files the SHA-256 runs on a helper thread, double-buffered, while
        this thread feeds the compressor (hashlib releases the GIL)."""
        out = self._open(e.path)
        self.flush()  # the frame becomes a streamed one
        out.write(tarinfo(e, size))
        h = hashlib.sha256()
        left, short = size, False
        threaded = size >= PARALLEL_HASH_MIN
        pending = None
        turn = 0
        while left > 0:
            want = min(CHUNK, left)
            view = self._views[turn]
            if threaded and pending is not None and pending[0] == turn:
                pending[1].result()  # this buffer's previous chunk must be hashed before it is reused
                pending = None
            n = fh.readinto(view[:want])  # type: ignore[attr-defined]
            if not n:  # the file shrank while we read it: the member is completed with zeros and superseded (below)
                view[:want] = bytes(want)
                n, short = want, True
            chunk = view[:n]
            if threaded:
                if pending is not None:
                    pending[1].result()
                pending = (turn, self._hasher().submit(h.update, chunk))
                turn ^= 1
            else:
                h.update(chunk)
            out.write(chunk)
            left -= n
            progress.advance(n)
        if pending is not None:
            pending[1].result()
        if size % 512:
            out.write(tarstream.padding(size))
        self.members += 1
        self.raw_bytes += size
        return h.hexdigest(), short

    def add_compressed(self, e: Entry, size: int, zdata: BinaryIO, progress: Progress) -> None:
        """Store a member whose ``size`` bytes were already compressed (zstd frames in ``zdata``, as
        :func:`compressor` makes them: a PostgreSQL table file compressed while pg_dump wrote it). The member
        starts a frame-table row of its own, made of three zstd frames: its header, its bytes, its padding."""
        out = self._open(e.path)
        if out.n + len(self._batch) > self._frame[1]:  # the open row holds members: it ends, this one starts the next
            self._end_frame()
            self._frame = (-1, out.n, e.path)
            self._pooled = True
        self.flush()  # a streamed frame (pooled frames before it written)
        out.write(tarinfo(e, size))
        self._z.flush(zstandard.FLUSH_FRAME)
        while chunk := zdata.read(CHUNK):
            self.hw.write(chunk)  # type: ignore[union-attr]
        out.n += size
        if size % 512:
            out.write(tarstream.padding(size))
        progress.advance(size)
        self.members += 1
        self.raw_bytes += size

    def _hasher(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash")
            self.stack.callback(self._pool.shutdown)
        return self._pool

    def close(self) -> dict[str, Any] | None:
        """Write the end-of-archive blocks (in the last frame), end it and append the frame table."""
        if self.out is None:
            return None
        self.flush()  # the last frame is a streamed one (pooled frames before it written)
        self.out.write(tarstream.end_of_archive())  # the compressor's close ends the last frame
        return None

    def _table(self) -> bytes:
        """The frame table, appended once the compressor has ended the last frame."""
        coff, uoff, first = self._frame
        self.frames.append(tarstream.Frame(coff, self.hw.size - coff, uoff, first))  # type: ignore[union-attr]
        return tarstream.frame_table(self.frames)


class _Counting:
    """Counts the uncompressed bytes written to the compressor (the frame table's uncompressed offsets)."""

    def __init__(self, z: BinaryIO) -> None:
        self.z, self.n = z, 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.n += len(data)
        return self.z.write(data)


# ------------------------------------------------------------------------------------------------ main entry
class _IndexWriters:
    """The three metadata objects of a source, written as the entries stream by (constant memory: lines are
    batched, ``BATCH`` bytes at most per object, and handed to each compressor in one call)."""

    def __init__(self, stack: ExitStack, storage: Storage, snap_id: str, source: str) -> None:
        self.keys = {k: object_key(snap_id, source, k) for k in ("index", "sums", "deleted")}
        self.out = {k: stack.enter_context(_object_writer(storage, key, threads=0)) for k, key in self.keys.items()}
        self.batch = {k: bytearray() for k in self.keys}
        self.entries = self.files = self.bytes = self.deleted = 0

    def _put(self, kind: str, line: bytes) -> None:
        buf = self.batch[kind]
        buf += line
        if len(buf) >= BATCH:
            self.out[kind][0].write(buf)
            self.batch[kind] = bytearray()

    def flush(self) -> None:
        """Hand every batched line to its compressor (before the objects are closed)."""
        for kind, buf in self.batch.items():
            if buf:
                self.out[kind][0].write(buf)
                self.batch[kind] = bytearray()

    def add(self, path: str, e: IndexEntry) -> None:
        self._put("index", entry_json(path, e).encode("utf-8", "surrogateescape") + b"\n")
        self.entries += 1
        if e[0] == "f":
            self.files += 1
            self.bytes += e[1]
            if "\\" in path or "\n" in path or "\r" in path:  # escaped exactly as GNU sha256sum does
                esc = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
                self._put("sums", f"\\{e[5]}  {esc}\n".encode("utf-8", "surrogateescape"))
            else:
                self._put("sums", f"{e[5]}  {path}\n".encode("utf-8", "surrogateescape"))

    def delete(self, path: str) -> None:
        self._put("deleted", path.encode("utf-8", "surrogateescape") + b"\n")
        self.deleted += 1

    def records(self) -> dict[str, Any]:
        return {k: _record(self.keys[k], self.out[k][1]) for k in self.keys}


def backup_source(
    storage: Storage,
    snap_id: str,
    reader: SourceReader,
    parent_obj: dict[str, Any] | None,
    parent_id: str | None,
    *,
    on_unreadable: str = "fail",
    checksum: bool = False,
    progress: Progress | None = None,
    staging_root: str | None = None,
) -> dict[str, Any]:
    """Back up one source into ``snap_id`` on ``storage``; returns the source record (also saved as part.json).

    ``parent_obj`` is the parent's index object record (None for a full): it is streamed and merged with the
    source's entries, both in canonical order, so memory does not grow with the number of files.
    """
    progress = progress or Progress.null()
    detection = "checksum" if checksum else reader.change_detection
    akey = object_key(snap_id, reader.name, "archive")
    parent_iter = iter_index(storage, parent_obj) if parent_obj else iter(())
    with tempfile.TemporaryDirectory(prefix=f"backup-{reader.name}-", dir=staging_root) as staging, ExitStack() as stack:
        prep = stack.enter_context(reader.prepare(Path(staging)))
        tar = _TarStream(stack, storage, akey)
        idx = _IndexWriters(stack, storage, snap_id, reader.name)
        run = _SourceRun(reader.name, snap_id, detection, progress, staging, prep, tar, idx, parent_iter)
        for e in prep.entries:
            run.entry(e)
        run.finish(on_unreadable)
        tar.close()
        idx.flush()
        details = dict(prep.details)
        run.warnings.extend(prep.warnings)
    # ExitStack closed: the archive (if any) and the index objects are committed on the storage
    objects = {"archive": _record(akey, tar.hw) | {"frames": len(tar.frames)} if tar.hw is not None else None,
               **idx.records()}
    record = {
        "kind": reader.kind,
        "parent": parent_id,
        "change_detection": detection,
        "objects": objects,
        "entries": idx.entries,
        "files": idx.files,
        "bytes": idx.bytes,
        "stored_members": tar.members,
        "stored_files": run.stored,
        "stored_bytes": tar.raw_bytes,
        "deleted": idx.deleted,
        "warnings": run.warnings,
        "details": details,
    }
    save_part(storage, snap_id, reader.name, record)
    return record


class _SourceRun:
    """The walk of :func:`backup_source`: each entry of the source, in order, merged with the parent's index
    (``nxt``: the parent's next entry not yet matched), decided unchanged or stored (see the module docstring)."""

    def __init__(self, name: str, snap_id: str, detection: str, progress: Progress, staging: str, prep: Prepared,
                 tar: _TarStream, idx: _IndexWriters, parent_iter: Iterator[tuple[str, IndexEntry]]) -> None:
        self.name, self.snap_id, self.detection, self.progress, self.staging = name, snap_id, detection, progress, staging
        self.prep, self.tar, self.idx, self.parent_iter = prep, tar, idx, parent_iter
        self.nxt = next(parent_iter, None)
        self.last: list[str] | None = None
        self.primaries: dict[tuple[int, int], tuple[str, IndexEntry, bool]] = {}  # (dev, ino) -> first path, entry, stored now
        self.warnings: list[str] = []
        self.stored = 0

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("source %s: %s", self.name, msg)

    def entry(self, e: Entry) -> None:
        """Record one entry of the source: unchanged (the parent's entry), or stored in the archive."""
        prev = self._parent_of(e)
        if e.xattrs_deferred and (prev is not None or e.nlink > 1):  # compared, or in a hard-link header
            _load_xattrs(e, f"/proc/self/fd/{e.dir_fd}/{e.fs_path}", self.prep.unreadable)
        if e.unreadable:  # a directory we could not read: its previous version, whole subtree, is kept
            if prev is not None:
                self._keep_subtree(e, prev)
            return
        if e.type == "f" and e.nlink > 1 and self._hardlink(e, prev):
            return
        if prev is not None and prev.mode == e.mode and _same_meta(prev, e):
            if prev.owner is None:  # recorded before owners were: the entry gets them, the bytes stay where they are
                prev = prev._replace(owner=e.owner, xattrs=e.xattrs)
            if self._unchanged(e, prev):
                return
        if e.type != "f":
            self.tar.add_meta(e)
            self.idx.add(e.path, _entry(e, 0, None, self.snap_id, link=e.link))
            return
        digest = getattr(e, "digest", None)  # a postgres table file read while pg_dump wrote it
        if digest is not None and e.type == "f":
            self._precompressed(e, prev, digest)
            return
        self._file(e, prev)

    def finish(self, on_unreadable: str) -> None:
        """Paths of the parent not seen are deleted; unreadable paths fail the source or become a warning."""
        while self.nxt is not None:
            self.idx.delete(self.nxt[0])
            self.nxt = next(self.parent_iter, None)
        unreadable = self.prep.unreadable
        if unreadable:
            listing = "\n    ".join(unreadable[:50]) + (f"\n    … and {len(unreadable) - 50} more" if len(unreadable) > 50 else "")
            if on_unreadable == "fail":
                raise SourceError(
                    f"source {self.name}: {len(unreadable)} path(s) could not be read:\n    {listing}",
                    hint=f"give the backup user read access to them, exclude them, or set sources.{self.name}.on_unreadable: warn")
            self.warnings.append(f"{len(unreadable)} unreadable path(s) skipped (previous version kept where there was one): "
                                 + "; ".join(unreadable[:20]))

    def _parent_of(self, e: Entry) -> IndexEntry | None:
        """The parent's entry of ``e``'s path (None if none, or of another type); parent paths passed are deleted."""
        key = order_key(e.path)
        if self.last is not None and key <= self.last:
            raise SourceError(f"source {self.name}: entries out of order at {e.path!r} (internal error)")
        self.last = key
        nxt = self.nxt
        while nxt is not None and order_key(nxt[0]) < key:
            self.idx.delete(nxt[0])
            nxt = next(self.parent_iter, None)
        prev: IndexEntry | None = None
        if nxt is not None and nxt[0] == e.path:
            prev = nxt[1]
            nxt = next(self.parent_iter, None)
            if prev.type != e.type:  # a type change is a deletion then a new entry (the by-hand restore needs it)
                self.idx.delete(e.path)
                prev = None
        self.nxt = nxt
        return prev

    def _keep_subtree(self, e: Entry, prev: IndexEntry) -> None:
        """Keep the parent's entries of the unreadable directory ``e`` and of its whole subtree."""
        idx = self.idx
        idx.add(e.path, prev)
        below = e.path + "/"
        linked: set[str] | None = None
        while self.nxt is not None and self.nxt[0].startswith(below):
            cp, ce = self.nxt
            self.nxt = next(self.parent_iter, None)
            if ce.type == "f" and ce.link is not None and not ce.link.startswith(below):
                # a hard link to a file outside: kept only while that file is still a linked file of
                # this snapshot (else the restore could not link it: the snapshot must stay restorable)
                linked = linked if linked is not None else {v[0] for v in self.primaries.values()}
                if ce.link not in linked:
                    idx.delete(cp)
                    self._warn(f"{cp}: hard link to {ce.link}, which is no longer linked to it; not kept from "
                               "the previous snapshot (its directory could not be read)")
                    continue
            idx.add(cp, ce)

    def _hardlink(self, e: Entry, prev: IndexEntry | None) -> bool:
        """Record ``e`` as a hard link to a file stored (or referenced) above; False if it is the first seen."""
        first = self.primaries.get((e.dev, e.ino))
        if first is None:
            return False
        ppath, pe, pstored = first
        ent = pe._replace(ino=e.ino, link=ppath)
        if pstored or prev is None or prev.link != ppath:
            self.tar.add_hardlink(e, ppath)  # the by-hand restore (tar) needs it again when the file changed
        self.idx.add(e.path, ent)
        return True

    def _unchanged(self, e: Entry, prev: IndexEntry) -> bool:
        """Keep the parent's entry of a file unchanged by its metadata, or of an unchanged directory or symlink."""
        if (e.type == "f" and self.detection == "meta" and prev.link is None and prev.size == e.size
                and prev.mtime_ns == e.mtime_ns and prev.ino == e.ino):
            self.idx.add(e.path, prev)
            if e.nlink > 1:
                self.primaries[(e.dev, e.ino)] = (e.path, prev, False)
            self.progress.skip(e.size)
            return True
        if e.type in "dl" and prev.mtime_ns == e.mtime_ns and prev.link == e.link:
            self.idx.add(e.path, prev._replace(ino=e.ino))
            return True
        return False

    def _precompressed(self, e: Entry, prev: IndexEntry | None, digest: Any) -> None:
        """A file whose bytes were compressed and hashed while the source was prepared."""
        if (self.detection == "checksum" and prev is not None and prev.type == "f" and prev.link is None
                and prev.mode == e.mode and prev.size == e.size and _same_meta(prev, e)
                and prev.sha256 == digest.sha256):
            self.idx.add(e.path, _entry(e, e.size, digest.sha256, prev.snap))
            self.progress.skip(e.size)
            return
        self.tar.add_compressed(e, e.size, digest.spool, self.progress)
        self.idx.add(e.path, _entry(e, e.size, digest.sha256, self.snap_id))
        self.stored += 1
        self.progress.file_done()

    def _file(self, e: Entry, prev: IndexEntry | None) -> None:
        """Read a regular file: kept if its checksum is unchanged, else stored (flagged torn if it changed)."""
        try:
            fd = e.open()
        except OSError as exc:
            self._open_failed(e, prev, exc)
            return
        with open(fd, "rb", buffering=0, closefd=True) as fh:
            st = os.fstat(fd)
            size = st.st_size
            self._refresh_meta(e, fd, st)
            if (self.detection == "checksum" and prev is not None and prev.type == "f" and prev.link is None
                    and prev.mode == e.mode and prev.size == size and _same_meta(prev, e)):
                sha = _hash_open(fh)
                if sha == prev.sha256:
                    ent = _entry(e, size, sha, prev.snap)
                    self.idx.add(e.path, ent)
                    if e.nlink > 1:
                        self.primaries[(e.dev, e.ino)] = (e.path, ent, False)
                    self.progress.skip(size)
                    return
                fh.seek(0)
            stored_size, sha, short = self._store(e, fh, size)
            after = os.fstat(fd)
        torn = short or stored_size != size or after.st_mtime_ns != st.st_mtime_ns or after.st_size != size
        if torn:
            self._warn(f"{e.path}: changed while being read ({size} bytes before, {after.st_size} after); "
                       f"stored as read ({stored_size} bytes), flagged torn")
        ent = _entry(e, stored_size, sha, self.snap_id, torn=torn)
        self.idx.add(e.path, ent)
        if e.nlink > 1:
            self.primaries[(e.dev, e.ino)] = (e.path, ent, True)
        self.stored += 1
        self.progress.file_done()

    def _open_failed(self, e: Entry, prev: IndexEntry | None, exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP:  # gone, or replaced by a symlink
            self.warnings.append(f"{e.path}: file removed before we read it")
            log.warning("source %s: %r: file removed before we read it", self.name, e.path)
            if prev is not None:
                self.idx.delete(e.path)
            return
        self.prep.unreadable.append(f"{e.path} ({exc.strerror})")
        if prev is not None:  # keep the last good version rather than losing the file from the snapshot
            self.idx.add(e.path, prev)

    def _refresh_meta(self, e: Entry, fd: int, st: os.stat_result) -> None:
        """The entry's metadata becomes that of what is read (the open descriptor)."""
        e.mtime_ns, e.mode, e.ino = st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_ino
        if e.owner is not None:  # a files source: owner and attributes of what is read, too
            e.owner = owner_of(st.st_uid, st.st_gid)
            if e.xattrs_deferred:
                _load_xattrs(e, fd, self.prep.unreadable)
            else:
                with suppress(OSError):
                    e.xattrs = read_xattrs(fd)

    def _store(self, e: Entry, fh: BinaryIO, size: int) -> tuple[int, str, bool]:
        """Append the file to the archive; returns (bytes stored, their SHA-256, shrank while streamed)."""
        tar, progress = self.tar, self.progress
        if size < PARALLEL_HASH_MIN:  # read whole first: the header carries the size actually read
            content = _read_upto(fh, size + PARALLEL_HASH_MIN)
            return len(content), tar.add_bytes(e, content, progress), False
        sha, short = tar.add_file(e, fh, size, progress)
        stored_size = size
        if short:  # the member above holds zeros past the end: store what the file holds now after it
            fh.seek(0)
            with tempfile.TemporaryFile(dir=self.staging) as spool:
                shutil.copyfileobj(fh, spool, CHUNK)
                stored_size = spool.tell()
                spool.seek(0)
                sha = tar.add_spooled(e, spool, stored_size, progress)
        return stored_size, sha, short


def _load_xattrs(e: Entry, target: int | str, unreadable: list[str]) -> None:
    """Read the deferred extended attributes of ``e`` (a descriptor, or a path never followed); one that cannot
    be read is reported like any unreadable path (the source fails unless ``on_unreadable: warn``)."""
    try:
        e.xattrs = read_xattrs(target)
    except OSError as exc:
        e.xattrs = ()
        unreadable.append(f"{e.path}: extended attributes ({exc.strerror})")
    e.xattrs_deferred = False


def _read_upto(fh: BinaryIO, limit: int) -> bytes:
    """The file's bytes up to its end (or ``limit`` bytes, for a file that keeps growing)."""
    parts, left = [], limit
    while left > 0:
        b = fh.read(min(left, CHUNK))
        if not b:
            break
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def _hash_open(fh: BinaryIO) -> str:
    return sha256_of(fh)[0]


def save_part(storage: Storage, snap_id: str, source: str, record: dict[str, Any]) -> str:
    key = object_key(snap_id, source, "part")
    storage.put_bytes(key, json.dumps(record, sort_keys=True).encode())
    return key


def load_part(storage: Storage, snap_id: str, source: str) -> dict[str, Any]:
    from ..errors import ObjectNotFound

    key = object_key(snap_id, source, "part")
    try:
        return json.loads(storage.get_bytes(key))
    except ObjectNotFound:
        raise SourceError(f"source {source} of snapshot {snap_id} was not extracted on {storage.name} ({key} missing)",
                          hint="re-run the extraction task for that source") from None
