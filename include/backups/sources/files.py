"""``files`` source: a directory tree filtered by include / exclude globs.

Globs are matched against the path relative to ``root``: ``*`` stays inside one directory, ``**`` crosses
directories (``config/**`` is everything under config/, ``**/*.tmp`` any .tmp file at any depth). Directories
are recorded when they contain an included entry, so their permissions and times are restored too.
Unreadable files are collected, not silently skipped: the snapshot fails with the list unless
``on_unreadable: warn``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from ..errors import SourceError
from .base import Entry, Prepared, SourceReader


@lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
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
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(path: str, patterns: list[str] | tuple[str, ...]) -> bool:
    return any(glob_to_regex(p).match(path) for p in patterns)


class FilesSource(SourceReader):
    kind = "files"
    change_detection = "meta"
    capabilities = frozenset({"paths"})

    def __init__(self, name: str, root: str, include: list[str], exclude: list[str], on_unreadable: str = "fail",
                 checksum: bool = False) -> None:
        super().__init__(name)
        self.root = Path(root)
        self.include = tuple(include) or ("**",)
        self.exclude = tuple(exclude)
        self.on_unreadable = on_unreadable
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
        for e in self._scan([]):
            total += e.size
        return total

    def _included(self, rel: str) -> bool:
        return matches(rel, self.include) and not matches(rel, self.exclude)

    def _scan(self, unreadable: list[str]) -> Iterator[Entry]:
        """Included entries in canonical order (by path components; a directory right before its contents).

        A directory is emitted when it matches the include globs itself, or just before the first included
        entry below it (so its permissions and times come back on restore)."""
        pending: list[Entry] = []  # ancestors not emitted yet

        def walk(rel_dir: str) -> Iterator[Entry]:
            full_dir = os.path.join(self.root, rel_dir) if rel_dir else str(self.root)
            try:
                with os.scandir(full_dir) as it:
                    items = sorted(it, key=lambda d: d.name)
            except OSError as exc:
                unreadable.append(f"{rel_dir or '.'}/ ({exc.strerror})")
                return
            for de in items:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                try:
                    e = Entry.from_stat(rel, de.path, de.stat(follow_symlinks=False))
                except OSError as exc:
                    unreadable.append(f"{rel} ({exc.strerror})")
                    continue
                if e is None or matches(rel, self.exclude):
                    continue
                if e.type == "d":
                    if self._included(rel):
                        yield from pending
                        pending.clear()
                        yield e
                        yield from walk(rel)
                    else:
                        pending.append(e)
                        yield from walk(rel)
                        if pending and pending[-1] is e:
                            pending.pop()
                elif self._included(rel):
                    yield from pending
                    pending.clear()
                    yield e

        yield from walk("")

    @contextmanager
    def prepare(self, staging: Path) -> Iterator[Prepared]:
        self.check()
        prepared = Prepared(entries=iter(()))
        prepared.entries = self._scan(prepared.unreadable)
        yield prepared


def sort_key(e: Entry) -> str:
    return e.path
