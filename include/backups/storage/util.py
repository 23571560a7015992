"""Small stream helpers shared by storages and the engine: a bounded reader, a hashing reader, a threaded hashing
sink for writes and a prefetching reader."""

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

    def write(self, data: bytes) -> int:
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


class PrefetchReader:
    """Read ``raw`` ahead in a background thread (decompression and network reads release the GIL), so the
    consumer's parsing, hashing and writing overlap with producing the next chunks."""

    def __init__(self, raw: BinaryIO, chunk: int = 1 << 20, depth: int = 8) -> None:
        import queue
        import threading

        self._q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._buf = b""
        self._off = 0
        self._eof = False
        self._stop = threading.Event()

        def run() -> None:
            try:
                while not self._stop.is_set():
                    data = raw.read(chunk)
                    self._q.put(data)
                    if not data:
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                self._q.put(exc)

        self._t = threading.Thread(target=run, name="prefetch", daemon=True)
        self._t.start()

    def _fill(self) -> bool:
        if self._eof:
            return False
        item = self._q.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if not item:
            self._eof = True
            return False
        self._buf, self._off = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        if self._off >= len(self._buf) and not self._fill():
            return b""
        if n is None or n < 0:
            parts = [self._buf[self._off :]]
            self._buf, self._off = b"", 0
            while self._fill():
                parts.append(self._buf)
                self._buf, self._off = b"", 0
            return b"".join(parts)
        end = self._off + n
        data = self._buf[self._off : end] if (self._off or end < len(self._buf)) else self._buf
        self._off = min(end, len(self._buf))
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop the producer (it may be blocked on a full queue) and wait for it."""
        import queue

        self._stop.set()
        while self._t.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._t.join()
