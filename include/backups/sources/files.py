"""``files`` source: a directory tree filtered by include / exclude globs.

Globs are matched against the path relative to ``root``: ``*`` stays inside one directory, ``**`` crosses
directories (``config/**`` is everything under config/, ``**/*.tmp`` any .tmp file at any depth). Directories
are recorded when they contain an included entry or a glob matches them or their contents (``uploads/**`` keeps
an empty ``uploads/``), so their permissions and times are restored too. Owners, ``user.*`` extended attributes
and POSIX ACLs are recorded with each entry, and the root's own metadata in the source's details.
Unreadable files and directories are collected, not silently skipped: the snapshot fails with the list unless
``on_unreadable: warn`` (then a directory that cannot be read keeps its previous version, whole subtree). Files
that vanish while the backup runs (rotated logs, deleted uploads) and sockets, FIFOs and device nodes are skipped
with a warning in the manifest and the log.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .base import Entry, Prepared, SourceReader, special_kind
from .fsmeta import owner_of, read_xattrs, xattrs_json

log = logging.getLogger(__name__)


@lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob: ``*`` and ``?`` stay inside one directory, ``**`` crosses directories, ``\\x`` matches
    ``x`` literally (``\\*``, ``\\?``, ``\\\\``); every other character, newlines included, matches itself."""
    i, out = 0, []
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def glob_escape(path: str) -> str:
    """A glob that matches exactly ``path`` (its ``*``, ``?`` and ``\\`` taken literally)."""
    return re.sub(r"([*?\\])", r"\\\1", path)


def matches(path: str, patterns: list[str] | tuple[str, ...]) -> bool:
    return any(glob_to_regex(p).match(path) for p in patterns)


def matcher(patterns: list[str] | tuple[str, ...]) -> Callable[[str], bool]:
    """``matches(path, patterns)`` as one compiled alternation (one regex call per path, not one per glob):
    the walk asks it several times for every entry."""
    if not patterns:
        return lambda path: False
    if "**" in patterns:  # matches every path
        return lambda path: True
    one = re.compile("|".join(f"(?:{glob_to_regex(p).pattern})" for p in patterns), re.DOTALL)
    return lambda path: one.match(path) is not None


class FilesSource(SourceReader):
    kind = "files"
    change_detection = "meta"

    def __init__(self, name: str, root: str, include: list[str], exclude: list[str], on_unreadable: str = "fail",
                 checksum: bool = False) -> None:
        super().__init__(name)
        self.root = Path(root)
        self.include = tuple(include) or ("**",)
        self.exclude = tuple(exclude)
        self.on_unreadable = on_unreadable
        self._inc, self._exc = matcher(self.include), matcher(self.exclude)
        if checksum:
            self.change_detection = "checksum"

    def check(self) -> None:
        if not self.root.is_dir():
            raise SourceError(f"source {self.name}: root directory {self.root} does not exist",
                              hint=f"create it or fix sources.{self.name}.root")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise SourceError(f"source {self.name}: root directory {self.root} is not readable",
                              hint="run the backup as a user that can read it")

    def estimate(self) -> int:
        total = 0
        for e in self._scan([], []):
            total += e.size
        return total

    def _included(self, rel: str) -> bool:
        return self._inc(rel) and not self._exc(rel)

    def _scan(self, unreadable: list[str], warnings: list[str]) -> Iterator[Entry]:
        """Included entries in canonical order (by path components; a directory right before its contents).

        A directory is emitted when it matches the include globs itself, or just before the first included
        entry below it (so its permissions and times come back on restore). The tree is walked with directory
        descriptors (``openat``), so paths of any total length work and no symlink is ever followed; an entry's
        ``dir_fd`` stays open until the consumer asks for the next entry. Entries that vanish while the tree is
        walked and sockets, FIFOs and device nodes are reported in ``warnings``."""
        walker = _TreeWalk(self, unreadable, warnings)
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                items = _listing(root)
            except OSError as exc:  # nothing of the source could be kept or recorded: never a snapshot of nothing
                raise SourceError(f"source {self.name}: root directory {self.root} cannot be listed ({exc.strerror})",
                                  hint="run the backup as a user that can read it") from None
            yield from walker.walk(root, "", items)
        finally:
            os.close(root)

    def root_meta(self) -> dict[str, Any]:
        """The source root's own mode, mtime, owner and extended attributes (restored on the restored root)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            return {"mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns,
                    "owner": list(owner_of(st.st_uid, st.st_gid)), "xattrs": xattrs_json(read_xattrs(fd))}
        finally:
            os.close(fd)

    @contextmanager
    def prepare(self, staging: Path) -> Iterator[Prepared]:
        self.check()
        prepared = Prepared(entries=iter(()), details={"root": self.root_meta()})
        prepared.entries = self._scan(prepared.unreadable, prepared.warnings)
        yield prepared


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _listing(dfd: int) -> list[os.DirEntry[str]]:
    with os.scandir(dfd) as it:
        return sorted(it, key=lambda d: d.name)


class _TreeWalk:
    """One walk of a files source's tree (see :meth:`FilesSource._scan`); ``pending`` holds the ancestors not
    emitted yet (a directory is emitted just before the first included entry below it)."""

    def __init__(self, source: FilesSource, unreadable: list[str], warnings: list[str]) -> None:
        self.source, self.unreadable, self.warnings = source, unreadable, warnings
        self.pending: list[Entry] = []

    def _vanished(self, rel: str) -> None:
        self.warnings.append(f"{rel}: file removed before we read it")
        log.warning("source %s: %r: file removed before we read it", self.source.name, rel)

    def _xattrs_of(self, target: int | str, rel: str) -> tuple[tuple[str, bytes], ...]:
        try:
            return read_xattrs(target)
        except OSError as exc:
            self.unreadable.append(f"{rel}: extended attributes ({exc.strerror})")
            return ()

    def _emit(self, e: Entry) -> Iterator[Entry]:
        """``e``, after its ancestors not emitted yet."""
        yield from self.pending
        self.pending.clear()
        yield e

    def walk(self, dfd: int, rel_dir: str, items: list[os.DirEntry[str]]) -> Iterator[Entry]:
        """The included entries of the directory ``dfd`` (listed as ``items``) and below it."""
        src, pending = self.source, self.pending
        for de in items:
            rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
            try:
                st = de.stat(follow_symlinks=False)
                e = Entry.from_stat(rel, de.name, st, dfd)
            except FileNotFoundError:
                self._vanished(rel)
                continue
            except OSError as exc:
                self.unreadable.append(f"{rel} ({exc.strerror})")
                continue
            if src._exc(rel):
                continue
            if e is None:
                if src._included(rel):
                    msg = f"{rel}: {special_kind(st)} skipped (sockets, FIFOs and device nodes are not backed up)"
                    self.warnings.append(msg)
                    log.warning("source %s: %s", src.name, msg)
                continue
            e.owner = owner_of(st.st_uid, st.st_gid)
            if e.type == "d":
                yield from self._directory(dfd, de.name, rel, e)
            elif src._included(rel):
                if e.type == "f":  # read by the archiver, once (see Entry.xattrs_deferred)
                    e.xattrs_deferred = True
                yield from pending
                pending.clear()
                yield e

    def _directory(self, dfd: int, name: str, rel: str, e: Entry) -> Iterator[Entry]:
        """The directory entry ``e`` (when kept) and the included entries below it."""
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            self._vanished(rel)
            return
        except OSError as exc:  # kept from the previous snapshot, whole subtree (see the archiver)
            self.unreadable.append(f"{rel}/ ({exc.strerror})")
            e.unreadable = True
            yield from self._emit(e)
            return
        try:
            try:
                sub_items = _listing(sub)
            except OSError as exc:
                self.unreadable.append(f"{rel}/ ({exc.strerror})")
                e.unreadable = True
                yield from self._emit(e)
                return
            e.xattrs = self._xattrs_of(sub, rel)
            # a directory is kept when a glob matches it, or its contents (``uploads/**``), even empty
            if self.source._included(rel) or self.source._included(rel + "/"):
                yield from self._emit(e)
                yield from self.walk(sub, rel, sub_items)
            else:
                pending = self.pending
                pending.append(e)
                yield from self.walk(sub, rel, sub_items)
                if pending and pending[-1] is e:
                    pending.pop()
        finally:
            os.close(sub)
