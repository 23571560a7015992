"""The storage interface: bytes under keys, nothing about snapshots (modelled on restic's backend).

Five data operations — ``open_write`` (a streaming, atomic save), ``open_read`` (a stream, optionally a range),
``stat``, ``list`` (by prefix) and ``delete`` — plus a few declared properties. Keys are ``/``-separated
relative names (``snapshots/daily-20260101T020000Z.json``). Guarantees every implementation must give (the
contract suite in ``tests/unit/storage/contract.py`` checks them):

* a writer makes its object visible only when it is closed without error (temp name then rename, or a
  completed multipart upload); an exception inside the ``with`` block leaves nothing visible;
* objects are **created, never overwritten**: closing a writer whose key already exists raises
  :class:`~backups.errors.ObjectExistsError` and leaves the existing object untouched — unless the existing
  bytes are identical to the new ones, which is a no-op (an idempotent retry). Local disks use ``link(2)``
  (atomic ``EEXIST``), SFTP a plain SFTP ``rename`` (refuses an existing target), S3 ``If-None-Match: *``;
* ``stat``/``list`` report ``mtime`` (seconds since the epoch) where the backend knows it: orphans and temp
  leftovers are aged by it;
* ``list`` never shows an in-progress object;
* a missing key raises :class:`~backups.errors.ObjectNotFound`; a retryable fault raises
  :class:`~backups.errors.TransientStorageError`; anything else :class:`~backups.errors.StorageError`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import ObjectExistsError, StorageError

CHUNK = 1 << 20
_KEY = re.compile(r"^(?!/)(?!.*//)(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9._\-/]+$")
TEMP_MARK = ".tmp-"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    #: storage class for archive-aware backends ("STANDARD", "GLACIER", ...); None when not applicable
    storage_class: str | None = None
    #: last modification, seconds since the epoch (None when the backend cannot tell)
    mtime: float | None = None


def exists_error(storage: str, key: str) -> ObjectExistsError:
    return ObjectExistsError(
        f"{storage}: object {key} already exists with other content; objects are never overwritten",
        hint="another run wrote this key (two runs of one snapshot id?); check `backupctl status` for locks and "
        "re-run: a re-run removes its own uncommitted leftovers under its lock")


def sha256_of(fh: BinaryIO) -> tuple[str, int]:
    """SHA-256 (hex) and length of everything left in the binary file object ``fh``, read in chunks."""
    import hashlib

    h, n = hashlib.sha256(), 0
    while chunk := fh.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def same_content(storage: Storage, key: str, sha256: str, size: int) -> bool:
    """True when the object ``key`` holds exactly ``size`` bytes hashing to ``sha256``."""
    try:
        with storage.open_read(key) as fh:
            digest, n = sha256_of(fh)
    except StorageError:
        return False
    return n == size and digest == sha256


def check_key(key: str) -> str:
    if not _KEY.match(key) or TEMP_MARK in key.rsplit("/", 1)[-1]:
        raise StorageError(f"invalid object key {key!r}", hint="keys are relative names of letters, digits, . _ - and /")
    return key


class Storage(ABC):
    """Abstract storage. Implementations: local, s3, sftp, memory; wrappers: retrying, read-only, fault-injecting."""

    #: the configured storage name (``storages:`` key); used in messages, never a credential
    name: str = "storage"
    #: True when objects may need a restore request before they can be read (S3 GLACIER / DEEP_ARCHIVE)
    archive: bool = False
    #: fingerprint of the client-side encryption key when objects are encrypted at rest (never the key)
    key_fingerprint: str | None = None
    #: True when several threads may use one instance at once (the engine parallelises only then)
    thread_safe: bool = False

    @abstractmethod
    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A writable stream; the object appears atomically when the ``with`` block exits cleanly."""

    @abstractmethod
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> AbstractContextManager[BinaryIO]:
        """A readable stream of the object (or of ``length`` bytes from ``offset``)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size (and class) of one object; :class:`ObjectNotFound` when absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Committed objects whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; deleting an absent key is not an error."""

    # ---- helpers built on the five operations -------------------------------------------------------
    def describe(self) -> str:
        """Where the data lives, for messages and docs (no credentials)."""
        return self.name

    def check(self) -> None:
        """Raise :class:`StorageError` with a clear reason if the storage is unusable."""
        for _ in self.list("snapshots/"):
            break

    def free_bytes(self) -> int | None:
        """Bytes available, when the backend can tell (local disk); None otherwise."""
        return None

    def exists(self, key: str) -> bool:
        from ..errors import ObjectNotFound

        try:
            self.stat(key)
            return True
        except ObjectNotFound:
            return False

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as fh:
            fh.write(data)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def copy_to(self, key: str, other: Storage) -> int:
        """Stream one object to another storage under the same key; returns bytes copied."""
        n = 0
        with self.open_read(key) as src, other.open_write(key) as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                n += len(chunk)
        return n

    def restore_request(self, key: str, days: int = 1) -> bool:
        """Ask an archive backend to make ``key`` readable; True when it is readable now."""
        return True

    def for_thread(self) -> Storage:
        """An instance another thread may use while this one is busy (a lock's heartbeat thread): ``self`` when
        ``thread_safe``, else an independent one (its own connection)."""
        return self

    # ---- leftovers of killed writers --------------------------------------------------------------------
    def temps(self) -> Iterator[ObjectInfo]:
        """In-progress objects left by killed writers (``.tmp-*`` names; keys relative to the root, with mtime).
        Backends whose writes leave nothing visible (memory, S3: an unfinished multipart upload is not an
        object) have none."""
        return iter(())

    def remove_temp(self, key: str) -> None:
        """Remove one leftover reported by :meth:`temps`."""
        raise StorageError(f"{self.name}: no temp objects on this storage")


def resolve_client(method: Any, conn_id: str, **limits: Any) -> Any:
    """``method(conn_id, **limits)`` — a resolver's ``s3_client`` / ``sftp_client_factory`` with the storage's
    timeouts (``timeout=`` seconds, ``max_attempts=``) — or ``method(conn_id)`` for a resolver written before
    those optional keywords existed (the storage then applies what it can itself: SFTP channel timeouts)."""
    import inspect

    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = []  # type: ignore[assignment]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return method(conn_id, **limits)
    names = {p.name for p in params}
    return method(conn_id, **{k: v for k, v in limits.items() if k in names})
