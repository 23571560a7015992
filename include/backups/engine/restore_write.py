"""Writing restored entries: directory descriptors opened one component at a time with ``O_NOFOLLOW``
(:class:`_Tree`), per-entry metadata (:class:`_Meta`), and the writer threads that hash, create and write files
(:class:`_Writers`; :func:`_write_large` for files streamed by the reading thread). Part of
:mod:`backups.engine.restorer`, which documents the algorithm."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..errors import RefusedError
from ..repository.index import IndexEntry
from ..sources import fsmeta
from . import tarstream
from .archiver import CHUNK
from .progress import Progress


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


#: files up to this size are read whole and hashed, created and written on a writer thread (the hash and the
#: writes release the GIL, so they overlap the tar parsing); larger ones are streamed by the reading thread
SMALL_FILE = 8 << 20
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
