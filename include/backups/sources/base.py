"""The source interface: what to back up, as a stream of entries (files, directories, symlinks).

A source never writes to a storage. ``prepare()`` produces the entries — a live file tree for ``files``; a
consistent dump in a private staging directory for ``sqlite`` / ``postgres`` / ``command`` — plus
``details`` (row counts, schema, exit code) that go into the manifest. Each source declares:

* ``change_detection``: ``"meta"`` (size, mtime, inode against the parent, like restic/rsync) or ``"checksum"``
  (content hash; logical dumps are complete each time and stored only when their bytes differ).
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
    fs_path: str = ""  #: path to read the content from: absolute, or a name relative to ``dir_fd``
    dir_fd: int | None = None  #: open directory ``fs_path`` is relative to (valid while the entry is processed)
    nlink: int = 1  #: hard-link count (files with more than one link are stored once, then as hard links)
    dev: int = 0  #: device number (with ``ino``, identifies hard links)
    owner: tuple[int, int, str, str] | None = None  #: uid, gid, user and group name (``files`` sources record it)
    xattrs: tuple[tuple[str, bytes], ...] = ()  #: recorded extended attributes and ACLs (see ``sources.fsmeta``)
    unreadable: bool = False  #: a directory that could not be read: keep its previous version, whole subtree
    #: a file whose extended attributes the consumer reads (the archiver: from the descriptor it reads the bytes
    #: through, or from ``fs_path`` when it needs them first), so that they are read once, not twice
    xattrs_deferred: bool = False

    @classmethod
    def from_stat(cls, rel: str, fs_path: str, st: os.stat_result, dir_fd: int | None = None) -> Entry | None:
        """The entry for a stat result, or None for sockets, FIFOs and device nodes (see :func:`special_kind`)."""
        if stat.S_ISREG(st.st_mode):
            kind, link, size = "f", None, st.st_size
        elif stat.S_ISDIR(st.st_mode):
            kind, link, size = "d", None, 0
        elif stat.S_ISLNK(st.st_mode):
            kind, link, size = "l", os.readlink(fs_path, dir_fd=dir_fd), 0
        else:
            return None
        return cls(rel, kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_ino, link, fs_path, dir_fd,
                   st.st_nlink if kind == "f" else 1, st.st_dev)

    def open(self) -> int:
        """A read-only descriptor of the file's content; never follows a symlink (it may have been swapped in)."""
        return os.open(self.fs_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)


def special_kind(st: os.stat_result) -> str:
    """A readable name for a file type that is not backed up."""
    m = st.st_mode
    return ("FIFO" if stat.S_ISFIFO(m) else "socket" if stat.S_ISSOCK(m) else "character device" if stat.S_ISCHR(m)
            else "block device" if stat.S_ISBLK(m) else "special file")


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
            st = de.stat(follow_symlinks=False)
            e = Entry.from_stat(rel, de.path, st)
            if e is not None:
                e.nlink = 1  # dump files are never hard links of each other
                yield e

    yield from walk("")
