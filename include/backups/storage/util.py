"""Small stream helpers shared by storages and the engine: hashing/counting wrappers and a bounded reader."""

from __future__ import annotations

import hashlib
from typing import BinaryIO


class LimitedReader:
    """Read at most ``length`` bytes from ``raw``."""

    def __init__(self, raw: BinaryIO, length: int) -> None:
        self.raw, self.left = raw, length

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.raw.read(n)
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True


class HashingWriter:
    """Pass-through writer that counts bytes and computes SHA-256 of everything written."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class HashingReader:
    """Pass-through reader that counts bytes and computes SHA-256 of everything read."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class ThreadedHashingSink:
    """Hash and write in a background thread, so compression and output hashing overlap (GIL is released by
    hashlib and file writes). ``close()`` waits and re-raises any write error."""

    def __init__(self, raw: BinaryIO, depth: int = 32) -> None:
        import queue
        import threading

        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._err: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="hash-sink", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._err is None:
                try:
                    self.sha.update(item)
                    self.raw.write(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                    self._err = exc

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self._err is not None:
            raise self._err
        self._q.put(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()
        if self._err is not None:
            raise self._err

    def hexdigest(self) -> str:
        return self.sha.hexdigest()
