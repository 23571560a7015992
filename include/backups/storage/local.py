"""Local-disk storage: one file per key under a root directory, written to a temp name then hard-linked.

The final name is created with ``link(tmp, final)``, which fails atomically with ``EEXIST`` when the key exists:
objects are never overwritten (identical bytes are accepted as an idempotent retry). File systems without
hard links fall back to a check then ``rename`` (not atomic against a concurrent writer of the same key; the
locks serialise those)."""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import ObjectNotFound, StorageError
from .base import TEMP_MARK, ObjectInfo, Storage, check_key, exists_error


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (the directory entry itself)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    thread_safe = True  # every operation works on its own file descriptor
    def __init__(self, root: str | os.PathLike[str], name: str = "local", *, create: bool = True) -> None:
        self.root = Path(root)
        self.name = name
        self._create = create

    def describe(self) -> str:
        return f"{self.name} (local directory {self.root})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fail(self, what: str, key: str, exc: OSError) -> StorageError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = self.free_bytes()
            left = f" ({free / 1e6:,.1f} MB free)" if free is not None else ""
            return StorageError(f"{self.name}: no space left on device while {what} {key}{left}",
                                hint=f"free space under {self.root} (prune old snapshots, or grow the disk), then re-run")
        return StorageError(f"{self.name}: {what} {key} failed: {exc.strerror or exc}", hint=f"check permissions on {self.root}")

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        tmp = path.with_name(f"{TEMP_MARK}{uuid.uuid4().hex}-{path.name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(tmp, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise self._fail("writing", key, exc) from None
        try:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            self._link(tmp, path, key)
            _fsync_dir(path.parent)
        except BaseException as exc:
            try:
                fh.close()  # may raise again (ENOSPC flushing the buffer): the first error is the one to report
            except OSError:
                pass
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self._fail("writing", key, exc) from None
            raise
        tmp.unlink(missing_ok=True)

    def _link(self, tmp: Path, path: Path, key: str) -> None:
        """Give ``tmp`` the final name without ever replacing an existing object."""
        try:
            os.link(tmp, path)
        except FileExistsError:
            if not filecmp.cmp(tmp, path, shallow=False):
                raise exists_error(self.name, key) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if path.exists():  # no hard links on this file system: check, then rename
                if not filecmp.cmp(tmp, path, shallow=False):
                    raise exists_error(self.name, key) from None
                return
            os.rename(tmp, path)

    @contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.name}: object {key} is missing") from None
        except OSError as exc:
            raise self._fail("reading", key, exc) from None
        with fh:
            if offset:
                fh.seek(offset)
            if length is None:
                yield fh
            else:
                from .util import LimitedReader

                yield LimitedReader(fh, length)  # type: ignore[misc]  # a duck-typed BinaryIO (read only)

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.name}: object {key} is missing") from None
        except OSError as exc:
            raise self._fail("stat of", key, exc) from None
        return ObjectInfo(key, st.st_size, mtime=st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.exists():
            if self._create:
                return iter(())
            raise StorageError(f"{self.name}: directory {self.root} does not exist", hint="create it or fix storages.*.path")
        if not self.root.is_dir():
            raise StorageError(f"{self.name}: {self.root} is not a directory", hint="fix storages.*.path")
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        out: list[ObjectInfo] = []
        if not start.is_dir():
            return iter(())
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for fn in filenames:
                if fn.startswith(TEMP_MARK):
                    continue
                key = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                if key.startswith(prefix):
                    try:
                        st = os.stat(os.path.join(dirpath, fn))
                        out.append(ObjectInfo(key, st.st_size, mtime=st.st_mtime))
                    except FileNotFoundError:
                        continue
        out.sort(key=lambda o: o.key)
        return iter(out)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._fail("deleting", key, exc) from None
        # prune empty parents up to the root
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.name}: cannot create {self.root}: {exc.strerror}", hint="fix storages.*.path or permissions") from None
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.name}: {self.root} is not writable", hint="fix permissions or storages.*.path")

    def free_bytes(self) -> int | None:
        p = self.root
        while not p.exists() and p != p.parent:
            p = p.parent
        return shutil.disk_usage(p).free

    def temps(self) -> Iterator[ObjectInfo]:
        """In-progress files left by a killed writer (for cleanup), with their mtime."""
        if not self.root.exists():
            return
        for p in sorted(self.root.rglob(f"{TEMP_MARK}*")):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if p.is_file():
                yield ObjectInfo(p.relative_to(self.root).as_posix(), st.st_size, mtime=st.st_mtime)

    def remove_temp(self, key: str) -> None:
        path = self.root / key
        if TEMP_MARK not in path.name or not path.is_relative_to(self.root) or ".." in Path(key).parts:
            raise StorageError(f"{self.name}: {key} is not a temp object")
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._fail("deleting", key, exc) from None

    def orphan_temps(self) -> Iterator[Path]:
        """In-progress files left by a killed writer (paths; see :meth:`temps`)."""
        for info in self.temps():
            yield self.root / info.key
