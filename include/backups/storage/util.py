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
