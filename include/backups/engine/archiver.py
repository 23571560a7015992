"""Backup of one source into one snapshot: change detection against the parent, streaming tar + zstd upload.

Algorithm (one pass over the source, memory bounded by the index, never by file sizes):

1. Load the parent's index for this source (the complete state at the parent, each entry naming the snapshot
   whose archive holds its bytes — ``in``).
2. ``prepare()`` the source (a live tree, or a dump in private staging) and walk its entries in order.
3. For each entry decide: *unchanged* (``meta``: same type, size, mtime, inode and mode; ``checksum``: same
   SHA-256 and mode) → copy the parent's entry, keep its ``in``; otherwise *stored* → append it to this
   snapshot's tar stream (compressed by zstd on all cores, hashed as it is written, uploaded as it is produced).
4. Paths of the parent that were not seen are *deleted*.
5. Write the index, the ``sha256sum`` list and the deletions, then the source record (``part.json``).
   The manifest that commits the snapshot is written later, by :mod:`backups.engine.snapshot`.

Unreadable files are skipped while streaming and reported together at the end; with ``on_unreadable: fail``
the source fails and nothing is committed (the written objects are orphans, invisible without a manifest).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from ..catalog.manifest import object_key
from ..errors import IntegrityError, SourceError
from ..sources.base import Entry, SourceReader
from ..storage.base import Storage
from ..storage.util import HashingReader, ThreadedHashingSink
from . import tarstream
from .progress import Progress

log = logging.getLogger(__name__)
CHUNK = 1 << 20
ZSTD_LEVEL = 3

# index entry as a tuple in memory: (type, size, mtime_ns, mode, ino, sha256, link, in)
IndexEntry = tuple[str, int, int, int, int, str | None, str | None, str]


def compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)


# ------------------------------------------------------------------------------------------------ index I/O
def entry_json(path: str, e: IndexEntry) -> str:
    t, size, mtime, mode, ino, sha, link, src = e
    doc: dict[str, Any] = {"p": path, "t": t, "s": size, "m": mtime, "mode": mode, "i": ino, "in": src}
    if sha:
        doc["h"] = sha
    if link is not None:
        doc["l"] = link
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def read_index(storage: Storage, obj: dict[str, Any]) -> dict[str, IndexEntry]:
    """Load an index object, checking its SHA-256 against the manifest record."""
    out: dict[str, IndexEntry] = {}
    with storage.open_read(obj["key"]) as raw:
        hr = HashingReader(raw)
        with zstandard.ZstdDecompressor().stream_reader(hr, closefd=False) as z:
            for line in io.TextIOWrapper(z, encoding="utf-8"):
                d = json.loads(line)
                out[d["p"]] = (d["t"], d["s"], d["m"], d["mode"], d["i"], d.get("h"), d.get("l"), d["in"])
        while hr.read(CHUNK):
            pass
    if hr.hexdigest() != obj["sha256"]:
        raise IntegrityError(f"{storage.name}: index {obj['key']} does not match its SHA-256 in the manifest",
                             hint="run `backupctl verify --read-data`; restore from another storage")
    return out


@contextmanager
def _object_writer(storage: Storage, key: str, compress: bool = True) -> Iterator[tuple[BinaryIO, ThreadedHashingSink]]:
    """A compressing writer for one object; output is hashed and written by a background thread."""
    with storage.open_write(key) as raw:
        sink = ThreadedHashingSink(raw)
        try:
            if compress:
                with compressor().stream_writer(sink, closefd=False) as z:  # type: ignore[arg-type]
                    yield z, sink  # type: ignore[misc]
            else:
                yield sink, sink  # type: ignore[misc]
        except BaseException:
            with suppress(BaseException):
                sink.close()
            raise
        sink.close()


def _record(key: str, hw: ThreadedHashingSink) -> dict[str, Any]:
    return {"key": key, "size": hw.size, "sha256": hw.hexdigest()}


# ------------------------------------------------------------------------------------------------ tar writing
def _tarinfo(e: Entry, size: int) -> bytes:
    return tarstream.header(e.path, e.type, e.mode, e.mtime_ns // 1_000_000_000, size, e.link or "")


def hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _TarStream:
    """Appends members to a zstd-compressed tar object, opened lazily on the first stored member."""

    def __init__(self, stack: ExitStack, storage: Storage, key: str) -> None:
        self.stack, self.storage, self.key = stack, storage, key
        self.out: BinaryIO | None = None
        self.hw: ThreadedHashingSink | None = None
        self.members = 0
        self.raw_bytes = 0

    def _open(self) -> BinaryIO:
        if self.out is None:
            self.out, self.hw = self.stack.enter_context(_object_writer(self.storage, self.key))
        return self.out

    def add_meta(self, e: Entry) -> None:
        self._open().write(_tarinfo(e, 0))
        self.members += 1

    def add_file(self, e: Entry, fh: BinaryIO, size: int, progress: Progress) -> tuple[str, bool]:
        """Stream ``size`` bytes of ``fh``; returns (sha256, changed_while_reading)."""
        out = self._open()
        out.write(_tarinfo(e, size))
        h = hashlib.sha256()
        left, short = size, False
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:  # the file shrank while we read it: pad so the archive stays well-formed
                chunk, short = bytes(min(CHUNK, left)), True
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
            progress.advance(len(chunk))
        if size % 512:
            out.write(tarstream.padding(size))
        self.members += 1
        self.raw_bytes += size
        return h.hexdigest(), short

    def close(self) -> dict[str, Any] | None:
        if self.out is None:
            return None
        self.out.write(tarstream.end_of_archive())
        return None


# ------------------------------------------------------------------------------------------------ main entry
def backup_source(
    storage: Storage,
    snap_id: str,
    reader: SourceReader,
    parent_index: dict[str, IndexEntry],
    parent_id: str | None,
    *,
    on_unreadable: str = "fail",
    checksum: bool = False,
    progress: Progress | None = None,
    staging_root: str | None = None,
) -> dict[str, Any]:
    """Back up one source into ``snap_id`` on ``storage``; returns the source record (also saved as part.json)."""
    progress = progress or Progress.null()
    detection = "checksum" if checksum else reader.change_detection
    index: dict[str, IndexEntry] = {}
    warnings: list[str] = []
    stored = changed_while_reading = 0
    akey = object_key(snap_id, reader.name, "archive")
    with tempfile.TemporaryDirectory(prefix=f"backup-{reader.name}-", dir=staging_root) as staging, ExitStack() as stack:
        prep = stack.enter_context(reader.prepare(Path(staging)))
        tar = _TarStream(stack, storage, akey)
        for e in prep.entries:
            prev = parent_index.get(e.path)
            if prev is not None and prev[0] == e.type and prev[3] == e.mode:
                if e.type == "f" and detection == "meta" and prev[1] == e.size and prev[2] == e.mtime_ns and prev[4] == e.ino:
                    index[e.path] = prev
                    progress.skip(e.size)
                    continue
                if e.type in "dl" and prev[2] == e.mtime_ns and prev[6] == e.link:
                    index[e.path] = (*prev[:4], e.ino, prev[5], prev[6], prev[7])
                    continue
            if e.type != "f":
                tar.add_meta(e)
                index[e.path] = (e.type, 0, e.mtime_ns, e.mode, e.ino, None, e.link, snap_id)
                continue
            try:
                fh = open(e.fs_path, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                prep.unreadable.append(f"{e.path} ({exc.strerror})")
                continue
            with fh:
                size = os.fstat(fh.fileno()).st_size
                if detection == "checksum" and prev is not None and prev[0] == "f" and prev[3] == e.mode and prev[1] == size:
                    sha = _hash_open(fh)
                    if sha == prev[5]:
                        index[e.path] = ("f", size, e.mtime_ns, e.mode, e.ino, sha, None, prev[7])
                        progress.skip(size)
                        continue
                    fh.seek(0)
                sha, short = tar.add_file(e, fh, size, progress)
            if short:
                changed_while_reading += 1
                warnings.append(f"{e.path}: changed while being read; stored as read")
            index[e.path] = ("f", size, e.mtime_ns, e.mode, e.ino, sha, None, snap_id)
            stored += 1
            progress.file_done()
        if prep.unreadable:
            listing = "\n    ".join(prep.unreadable[:50]) + (f"\n    … and {len(prep.unreadable) - 50} more" if len(prep.unreadable) > 50 else "")
            if on_unreadable == "fail":
                raise SourceError(
                    f"source {reader.name}: {len(prep.unreadable)} path(s) could not be read:\n    {listing}",
                    hint=f"fix their permissions, exclude them, or set sources.{reader.name}.on_unreadable: warn")
            warnings.append(f"{len(prep.unreadable)} unreadable path(s) skipped: " + "; ".join(prep.unreadable[:20]))
        members = tar.members
        tar.close()
        details = dict(prep.details)
        warnings.extend(prep.warnings)
    # ExitStack closed: the archive object (if any) is committed on the storage
    archive = _record(akey, tar.hw) if tar.hw is not None else None
    deleted = sorted(set(parent_index) - set(index))
    objects = {"archive": archive, **write_index_objects(storage, snap_id, reader.name, index, deleted)}
    files = [v for v in index.values() if v[0] == "f"]
    record = {
        "kind": reader.kind,
        "parent": parent_id,
        "change_detection": detection,
        "objects": objects,
        "entries": len(index),
        "files": len(files),
        "bytes": sum(v[1] for v in files),
        "stored_members": members,
        "stored_files": stored,
        "stored_bytes": tar.raw_bytes,
        "deleted": len(deleted),
        "warnings": warnings,
        "details": details,
    }
    save_part(storage, snap_id, reader.name, record)
    return record


def _hash_open(fh: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def write_index_objects(storage: Storage, snap_id: str, source: str, index: dict[str, IndexEntry],
                        deleted: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    key = object_key(snap_id, source, "index")
    with _object_writer(storage, key) as (z, hw):
        for path in sorted(index):
            z.write(entry_json(path, index[path]).encode() + b"\n")
    out["index"] = _record(key, hw)
    key = object_key(snap_id, source, "sums")
    with _object_writer(storage, key) as (z, hw):
        for path in sorted(index):
            e = index[path]
            if e[0] == "f":
                z.write(f"{e[5]}  {path}\n".encode("utf-8", "surrogateescape"))
    out["sums"] = _record(key, hw)
    key = object_key(snap_id, source, "deleted")
    with _object_writer(storage, key) as (z, hw):
        for path in deleted:
            z.write(path.encode("utf-8", "surrogateescape") + b"\n")
    out["deleted"] = _record(key, hw)
    return out


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
