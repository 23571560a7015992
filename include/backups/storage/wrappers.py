"""Cross-cutting storage behaviour as wrappers with the same interface (restic retry/dryrun, kopia readonly).

* :class:`ReadOnlyStorage` — refuses writes and deletes; the test-restore and drill paths open storage with it.
* :class:`RetryingStorage` — retries :class:`TransientStorageError` with exponential backoff.
* :class:`FaultInjectingStorage` — for the fault-injection suite only: ``BACKUPS_FAULT=kill:N`` SIGKILLs the
  process at its N-th object write (before the object is created), ``kill-after:N`` right after it was
  created, ``enospc:N`` fails the N-th write with ``ENOSPC``. ``open_storage`` adds it only when the variable
  is set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, BinaryIO, TypeVar

from ..errors import RefusedError, TransientStorageError
from .base import ObjectInfo, Storage

T = TypeVar("T")
log = logging.getLogger(__name__)
LOCKS_PREFIX = "locks/"
#: the verification record (:mod:`backups.repository.verification`); written by verify through a read-only handle
VERIFICATION_PREFIX = "verification/"


class _Wrapper(Storage):
    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.name = inner.name
        self.archive = inner.archive
        self.key_fingerprint = inner.key_fingerprint
        self.thread_safe = inner.thread_safe

    def describe(self) -> str:
        return self.inner.describe()

    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        return self.inner.open_write(key)

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> AbstractContextManager[BinaryIO]:
        return self.inner.open_read(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        self.inner.check()

    def free_bytes(self) -> int | None:
        return self.inner.free_bytes()

    def restore_request(self, key: str, days: int = 1) -> bool:
        return self.inner.restore_request(key, days)

    def temps(self) -> Iterator[ObjectInfo]:
        return self.inner.temps()

    def remove_temp(self, key: str) -> None:
        self.inner.remove_temp(key)

    def for_thread(self) -> Storage:
        if self.thread_safe:
            return self
        import copy

        twin = copy.copy(self)
        twin.inner = self.inner.for_thread()
        return twin

    def unwrap(self) -> Storage:
        inner = self.inner
        while isinstance(inner, _Wrapper):
            inner = inner.inner
        return inner


class ReadOnlyStorage(_Wrapper):
    """Refuses every write and delete of repository data. Lock objects (``locks/``) are one exception: a
    reader (restore, verify, a drill) holds a shared lock so that a prune waits for it (restic does the same).
    The verification record (``verification/``) is the other: a verify records what it found."""

    def _refuse(self, what: str, key: str) -> RefusedError:
        return RefusedError(f"{self.name}: opened read-only, refusing to {what} {key}")

    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        if key.startswith((LOCKS_PREFIX, VERIFICATION_PREFIX)):
            return self.inner.open_write(key)
        raise self._refuse("write", key)

    def delete(self, key: str) -> None:
        if key.startswith((LOCKS_PREFIX, VERIFICATION_PREFIX)):
            return self.inner.delete(key)
        raise self._refuse("delete", key)

    def remove_temp(self, key: str) -> None:
        raise self._refuse("delete", key)

    def check(self) -> None:
        for _ in self.inner.list("snapshots/"):
            break
        check_key = getattr(self.inner, "check_key", None)  # an encrypted storage: the key too (exit 8 when wrong)
        if check_key is not None:
            check_key()


class RetryingStorage(_Wrapper):
    def __init__(self, inner: Storage, attempts: int = 5, base_delay: float = 0.5, max_delay: float = 20.0) -> None:
        super().__init__(inner)
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStorageError as exc:
                if attempt == self.attempts:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                log.warning("%s: %s failed (%s); retry %d/%d in %.1fs", self.name, what, exc.message, attempt, self.attempts - 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def stat(self, key: str) -> ObjectInfo:
        return self._retry(f"stat {key}", lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._retry(f"list {prefix}", lambda: list(self.inner.list(prefix))))

    def delete(self, key: str) -> None:
        self._retry(f"delete {key}", lambda: self.inner.delete(key))


class FaultInjectingStorage(_Wrapper):
    """Injected crash points and full disks at the N-th object write of this process (see the module doc)."""

    def __init__(self, inner: Storage, spec: str) -> None:
        super().__init__(inner)
        mode, _, n = spec.partition(":")
        if mode not in ("kill", "kill-after", "enospc") or not n.isdigit():
            from ..errors import ConfigError

            raise ConfigError(f"BACKUPS_FAULT={spec!r} is not kill:N, kill-after:N or enospc:N")
        self.mode, self.at = mode, int(n)

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        import errno
        import os
        import signal

        global _WRITES
        _WRITES += 1
        hit = _WRITES == self.at
        with self.inner.open_write(key) as fh:
            if hit and self.mode == "enospc":
                yield _Failing(fh, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))  # type: ignore[misc]
            else:
                yield fh
            if hit and self.mode == "kill":
                log.warning("fault injection: SIGKILL before creating %s (write %d)", key, _WRITES)
                os.kill(os.getpid(), signal.SIGKILL)
        if hit and self.mode == "kill-after":
            log.warning("fault injection: SIGKILL after creating %s (write %d)", key, _WRITES)
            os.kill(os.getpid(), signal.SIGKILL)


_WRITES = 0  # object writes of this process, across storages (the N of BACKUPS_FAULT)


class _Failing:
    def __init__(self, raw: BinaryIO, exc: OSError) -> None:
        self.raw, self.exc = raw, exc

    def write(self, data: bytes) -> int:
        raise self.exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
