"""The source interface: what to back up, as a stream of entries (files, directories, symlinks).

A source never writes to a storage. ``prepare()`` produces the entries — a live file tree for ``files``; a
consistent dump in a private staging directory for ``sqlite`` / ``postgres`` / ``command`` — plus
``details`` (row counts, schema, exit code) that go into the manifest. Each source declares:

* ``change_detection``: ``"meta"`` (size, mtime, inode against the parent, like restic/rsync) or ``"checksum"``
  (content hash; logical dumps are complete each time and stored only when their bytes differ);
* ``capabilities``: e.g. ``{"tables"}`` when a restore can be limited to tables.
"""

from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Entry:
    path: str  #: relative POSIX path inside the source (also the tar member name)
    type: str  #: "f" regular file, "d" directory, "l" symlink
    size: int
    mtime_ns: int
    mode: int  #: permission bits
    ino: int
    link: str | None = None
    fs_path: str = ""  #: absolute path to read the content from

    @classmethod
    def from_stat(cls, rel: str, fs_path: str, st: os.stat_result) -> Entry | None:
        if stat.S_ISREG(st.st_mode):
            kind, link, size = "f", None, st.st_size
        elif stat.S_ISDIR(st.st_mode):
            kind, link, size = "d", None, 0
        elif stat.S_ISLNK(st.st_mode):
            kind, link, size = "l", os.readlink(fs_path), 0
        else:
            return None  # sockets, fifos, devices are not application data
        return cls(rel, kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_ino, link, fs_path)


@dataclass
class Prepared:
    entries: Iterator[Entry]
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: paths that could not be read (filled while ``entries`` is consumed)
    unreadable: list[str] = field(default_factory=list)


class SourceReader(ABC):
    kind: str = "abstract"
    change_detection: str = "meta"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`~backups.errors.SourceError` with the reason when the source cannot be read."""

    @abstractmethod
    def estimate(self) -> int:
        """Rough size in bytes (for the free-space check and progress)."""

    @abstractmethod
    def prepare(self, staging: Path) -> AbstractContextManager[Prepared]:
        """Yield the entries to back up; staging (a private, empty directory) is removed by the caller."""


def walk_staging(root: Path) -> Iterator[Entry]:
    """Files of a staging directory (dump files) in canonical order, relative to ``root``."""

    def walk(rel_dir: str) -> Iterator[Entry]:
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            items = sorted(it, key=lambda d: d.name)
        for de in items:
            rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
            if de.is_dir(follow_symlinks=False):
                yield from walk(rel)
                continue
            e = Entry.from_stat(rel, de.path, de.stat(follow_symlinks=False))
            if e is not None:
                yield e

    yield from walk("")
