"""In-memory storage for unit tests and dry runs (same contract as the others)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from ..errors import ObjectNotFound
from .base import ObjectInfo, Storage, check_key, exists_error


class MemoryStorage(Storage):
    thread_safe = True
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.objects: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        check_key(key)
        buf = io.BytesIO()
        yield buf
        data = buf.getvalue()
        with self._lock:  # create, never overwrite (identical bytes: an idempotent retry)
            old = self.objects.get(key)
            if old is not None and old != data:
                raise exists_error(self.name, key)
            self.objects[key] = data
            self.mtimes.setdefault(key, time.time())

    @contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        if key not in self.objects:
            raise ObjectNotFound(f"{self.name}: object {key} is missing")
        data = self.objects[key]
        end = len(data) if length is None else offset + length
        yield io.BytesIO(data[offset:end])

    def stat(self, key: str) -> ObjectInfo:
        if key not in self.objects:
            raise ObjectNotFound(f"{self.name}: object {key} is missing")
        return ObjectInfo(key, len(self.objects[key]), mtime=self.mtimes.get(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter([ObjectInfo(k, len(v), mtime=self.mtimes.get(k)) for k, v in sorted(self.objects.items())
                     if k.startswith(prefix)])

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)
            self.mtimes.pop(key, None)
