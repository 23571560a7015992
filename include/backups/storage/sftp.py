"""SFTP storage: one file per key under a base directory on an SSH server (paramiko ``SFTPClient``).

* Writes stream to ``<dir>/.tmp-<uuid>-<name>`` in the object's directory, the size is checked, then a plain
  SFTP ``rename`` gives it the final name: no partial file ever has a final name, and ``list`` skips temp names
  (a killed upload leaves an invisible orphan for the cleanup step, see :meth:`temps`). Plain SFTP rename
  (unlike OpenSSH's ``posix-rename``) refuses an existing target — OpenSSH's server does it with
  ``link(2)`` + ``unlink(2)``, atomically — so objects are never overwritten (identical bytes are accepted).
* Reads stream with paramiko's ``prefetch`` in bounded windows (8 MiB), so an object is never held in memory.
* Connections come from a factory (``resolver.sftp_client_factory(conn_id)``: host-key checking is the
  factory's job). A dropped connection is detected (the SSH transport is no longer active), dropped, and
  reported as :class:`TransientStorageError`; the next call reconnects, so ``RetryingStorage`` retries work.
* Timeouts (``timeout_seconds``, default 60): the factory gets them for the TCP connect, the SSH banner and
  the authentication (``resolver.sftp_client_factory(conn_id, timeout=...)``), and every session's channel
  gets ``settimeout``: no SFTP request (open, read, write, stat, close) waits longer for its answer. A timeout
  is transient (the session is dropped). At interpreter exit every session still open is closed first, so a
  file finalised late (a generator abandoned by an exception) cannot wait on a transport thread that is gone.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import posixpath
import stat as stat_mod
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import BackupError, ObjectNotFound, StorageError, TransientStorageError
from .base import TEMP_MARK, ObjectInfo, Storage, check_key, exists_error, resolve_client, same_content

if TYPE_CHECKING:
    from ..config import SftpStorage as SftpStorageConfig
    from . import Resolver

WINDOW = 8 << 20
TIMEOUT = 60.0  #: seconds, the default of ``storages.*.timeout_seconds``
_SESSIONS: weakref.WeakSet[SftpStorage] = weakref.WeakSet()  #: storages with a session open (closed at exit)


@atexit.register
def _close_all() -> None:
    """Close every SFTP session before the interpreter finalises (its transport threads die then)."""
    for store in list(_SESSIONS):
        store.close()


class SftpStorage(Storage):
    def __init__(self, connect: Callable[[], Any], path: str, name: str = "sftp", conn_id: str | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.connect, self.base, self.name, self.conn_id = connect, posixpath.normpath(path or "."), name, conn_id
        self.timeout = timeout
        self._sftp: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, sc: SftpStorageConfig, name: str, resolver: Resolver) -> SftpStorage:
        timeout = float(getattr(sc, "timeout_seconds", TIMEOUT))
        return cls(resolve_client(resolver.sftp_client_factory, sc.conn_id, timeout=timeout), sc.path, name=name,
                   conn_id=sc.conn_id, timeout=timeout)

    def for_thread(self) -> SftpStorage:
        """A second instance with its own SSH session: one paramiko SFTP session must not be shared."""
        return SftpStorage(self.connect, self.base, name=self.name, conn_id=self.conn_id, timeout=self.timeout)

    def describe(self) -> str:
        return f"{self.name} (sftp {self.base}" + (f" via connection {self.conn_id})" if self.conn_id else ")")

    # ---- connection and errors ------------------------------------------------------------------------
    def _client(self) -> Any:
        with self._lock:
            if self._sftp is not None and _alive(self._sftp):
                return self._sftp
            self.close()
            try:
                sftp = self.connect()
            except BackupError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                raise self._connect_error(exc) from None
            self._sftp = sftp
            try:
                sftp.get_channel().settimeout(self.timeout)  # every request's answer, close included
            except Exception as exc:  # noqa: BLE001 - a client without a channel: never use it unbounded
                self.close()
                raise StorageError(f"{self.name}: cannot set the SFTP timeout ({type(exc).__name__}: {exc})") from None
            _SESSIONS.add(self)
            return self._sftp

    def _connect_error(self, exc: Exception) -> StorageError:
        kind, conn = type(exc).__name__, f"connection {self.conn_id!r}" if self.conn_id else "the SFTP connection"
        text = f"{self.name}: cannot connect ({kind}: {exc})"
        if kind == "BadHostKeyException" or "known_hosts" in str(exc) or "host key" in str(exc).lower():
            return StorageError(f"{self.name}: SSH host key refused ({kind}: {exc})",
                                hint=f"if the server's key is legitimately new or changed, pin it in the 'host_key' extra of "
                                f"{conn} (ssh-keyscan -p PORT HOST); never disable host key checking in production")
        if kind in {"AuthenticationException", "PasswordRequiredException"}:
            return StorageError(text, hint=f"check the login and key_file/private_key of {conn}")
        if isinstance(exc, OSError | EOFError) or kind in {"SSHException", "NoValidConnectionsError"}:
            return TransientStorageError(text, hint=f"check that the server in {conn} is up and reachable")
        return StorageError(text)

    def _fail(self, what: str, key: str, exc: Exception) -> StorageError:
        if isinstance(exc, BackupError):
            return exc  # type: ignore[return-value]
        if self._sftp is not None and not _alive(self._sftp):
            self.close()
            return TransientStorageError(f"{self.name}: connection lost while {what} {key} ({type(exc).__name__}: {exc})")
        if getattr(exc, "errno", None) == errno.ENOENT:
            return ObjectNotFound(f"{self.name}: object {key} is missing")
        if isinstance(exc, TimeoutError):  # socket.timeout: no answer within timeout_seconds
            self.close()
            return TransientStorageError(f"{self.name}: {what} {key} timed out (no answer within {self.timeout:g} s)",
                                         hint="check the server and the network; raise storages.*.timeout_seconds "
                                         "for a slow link")
        if type(exc).__name__ in {"SSHException", "ChannelException", "EOFError"}:
            self.close()
            return TransientStorageError(f"{self.name}: {what} {key} failed ({type(exc).__name__}: {exc})")
        return StorageError(f"{self.name}: {what} {key} failed: {exc}",
                            hint=f"check permissions and free space under {self.base} on the server")

    def _path(self, key: str) -> str:
        return posixpath.join(self.base, check_key(key))

    def close(self) -> None:
        sftp, self._sftp = self._sftp, None
        _SESSIONS.discard(self)
        if sftp is not None:
            try:
                transport = sftp.get_channel().get_transport()
                sftp.close()
                transport.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail in many ways
                pass

    def _makedirs(self, sftp: Any, path: str) -> None:
        todo = []
        while path not in ("", "/", "."):
            try:
                if stat_mod.S_ISDIR(sftp.stat(path).st_mode):
                    break
            except OSError as exc:
                if getattr(exc, "errno", None) != errno.ENOENT:
                    raise
            todo.append(path)
            path = posixpath.dirname(path)
        for p in reversed(todo):
            try:
                sftp.mkdir(p)
            except OSError:
                if not stat_mod.S_ISDIR(sftp.stat(p).st_mode):  # a concurrent writer may have created it
                    raise

    # ---- the five operations --------------------------------------------------------------------------
    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        tmp = posixpath.join(posixpath.dirname(path), f"{TEMP_MARK}{uuid.uuid4().hex}-{posixpath.basename(path)}")
        sftp = self._client()
        try:
            self._makedirs(sftp, posixpath.dirname(path))
            fh = sftp.open(tmp, "wb")
            fh.set_pipelined(True)
        except Exception as exc:
            raise self._fail("writing", key, exc) from None
        writer = _File(self, key, fh)
        try:
            yield writer  # type: ignore[misc]
        except BaseException:
            self._discard(sftp, fh, tmp)
            raise
        try:
            fh.close()
            if sftp.stat(tmp).st_size != writer.size:  # errors of pipelined writes surface here
                raise OSError(f"size mismatch after upload ({writer.size} bytes sent)")
        except Exception as exc:
            self._discard(sftp, fh, tmp)
            raise self._fail("writing", key, exc) from None
        try:
            sftp.rename(tmp, path)  # plain SFTP rename: fails when the target exists
        except Exception as exc:
            self._discard(sftp, fh, tmp)
            if not _alive(sftp):
                raise self._fail("writing", key, exc) from None
            try:
                sftp.stat(path)
            except Exception:  # noqa: BLE001 - the target does not exist: the rename failed for another reason
                raise self._fail("writing", key, exc) from None
            if not same_content(self, key, writer.sha.hexdigest(), writer.size):
                raise exists_error(self.name, key) from None

    @staticmethod
    def _discard(sftp: Any, fh: Any, tmp: str) -> None:
        try:
            fh.close()
            sftp.remove(tmp)
        except Exception:  # noqa: BLE001 - connection gone: the orphan stays invisible (see orphan_temps)
            pass

    @contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        sftp = self._client()
        try:
            fh = sftp.open(self._path(key), "rb")
            size = fh.stat().st_size
            fh.seek(offset)
        except Exception as exc:
            raise self._fail("reading", key, exc) from None
        end = size if length is None else min(size, offset + length)
        with fh:
            yield _File(self, key, fh, offset, end)  # type: ignore[misc]

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._client().stat(self._path(key))
        except Exception as exc:
            raise self._fail("stat of", key, exc) from None
        if stat_mod.S_ISDIR(st.st_mode or 0):
            raise ObjectNotFound(f"{self.name}: object {key} is missing (a directory has that name)")
        return ObjectInfo(key, st.st_size or 0, mtime=st.st_mtime)

    def _walk(self, start: str, temps: bool) -> Iterator[tuple[str, int, float | None]]:
        sftp = self._client()
        try:
            entries = sftp.listdir_attr(start)
        except OSError as exc:
            if getattr(exc, "errno", None) == errno.ENOENT and _alive(sftp):
                return
            raise
        for e in sorted(entries, key=lambda e: e.filename):
            full = posixpath.join(start, e.filename)
            if stat_mod.S_ISDIR(e.st_mode or 0):
                yield from self._walk(full, temps)
            elif e.filename.startswith(TEMP_MARK) == temps:
                yield posixpath.relpath(full, self.base), e.st_size or 0, e.st_mtime

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            found = [ObjectInfo(k, n, mtime=m) for k, n, m in self._walk(posixpath.join(self.base, base), False)
                     if k.startswith(prefix)]
        except Exception as exc:
            raise self._fail("listing", prefix or "/", exc) from None
        return iter(sorted(found, key=lambda o: o.key))

    def delete(self, key: str) -> None:
        path = self._path(key)
        sftp = self._client()
        try:
            sftp.remove(path)
        except Exception as exc:
            err = self._fail("deleting", key, exc)
            if not isinstance(err, ObjectNotFound):
                raise err from None
        parent = posixpath.dirname(path)
        while parent != self.base and parent.startswith(self.base + "/"):
            try:
                sftp.rmdir(parent)  # fails (and stops) when not empty
            except OSError:
                break
            parent = posixpath.dirname(parent)

    def check(self) -> None:
        try:
            self._makedirs(self._client(), self.base)
        except Exception as exc:
            raise self._fail("creating base directory", self.base, exc) from None

    def temps(self) -> Iterator[ObjectInfo]:
        """In-progress files left by killed writers (keys relative to the base, with mtime), for cleanup."""
        try:
            found = list(self._walk(self.base, True))
        except Exception as exc:
            raise self._fail("listing", "/", exc) from None
        return iter([ObjectInfo(k, n, mtime=m) for k, n, m in found])

    def remove_temp(self, key: str) -> None:
        if TEMP_MARK not in posixpath.basename(key) or ".." in key.split("/") or key.startswith("/"):
            raise StorageError(f"{self.name}: {key} is not a temp object")
        try:
            self._client().remove(posixpath.join(self.base, key))
        except Exception as exc:
            err = self._fail("deleting", key, exc)
            if not isinstance(err, ObjectNotFound):
                raise err from None

    def orphan_temps(self) -> Iterator[str]:
        """Paths (relative to the base) of in-progress files left by killed writers (see :meth:`temps`)."""
        yield from (o.key for o in self.temps())


def _alive(sftp: Any) -> bool:
    try:
        channel = sftp.get_channel()
        return bool(channel is not None and not channel.closed and channel.get_transport().is_active())
    except Exception:  # noqa: BLE001
        return False


class _File:
    """Wraps an ``SFTPFile``: maps its errors, counts written bytes, prefetches reads window by window."""

    def __init__(self, store: SftpStorage, key: str, fh: Any, pos: int = 0, end: int = 0) -> None:
        self.store, self.key, self.fh, self.pos, self.end = store, key, fh, pos, end
        self.window_end = pos
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        try:
            self.fh.write(data)
        except Exception as exc:
            raise self.store._fail("writing", self.key, exc) from None
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def read(self, n: int = -1) -> bytes:
        want = self.end - self.pos if n is None or n < 0 else min(n, self.end - self.pos)
        parts = []
        try:
            while want > 0:
                if self.pos >= self.window_end:
                    self.window_end = min(self.end, self.pos + WINDOW)
                    self.fh.prefetch(self.window_end, max_concurrent_requests=64)
                data = self.fh.read(min(want, self.window_end - self.pos))
                if not data:
                    break
                parts.append(data)
                self.pos += len(data)
                want -= len(data)
        except Exception as exc:
            raise self.store._fail("reading", self.key, exc) from None
        return b"".join(parts)

    def flush(self) -> None:
        pass

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True
