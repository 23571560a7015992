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
        root = str(self.root)
        emitted_dirs: set[str] = set()

        def emit_parents(rel: str) -> Iterator[Entry]:
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in emitted_dirs:
                    emitted_dirs.add(d)
                    full = os.path.join(root, d)
                    try:
                        e = Entry.from_stat(d, full, os.lstat(full))
                    except OSError:
                        continue
                    if e is not None and not matches(d, self.exclude):
                        yield e

        stack = [""]
        while stack:
            rel_dir = stack.pop()
            full_dir = os.path.join(root, rel_dir) if rel_dir else root
            try:
                with os.scandir(full_dir) as it:
                    items = sorted(it, key=lambda d: d.name)
            except OSError as exc:
                unreadable.append(f"{rel_dir or '.'}/ ({exc.strerror})")
                continue
            subdirs = []
            for de in items:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError as exc:
                    unreadable.append(f"{rel} ({exc.strerror})")
                    continue
                e = Entry.from_stat(rel, de.path, st)
                if e is None:
                    continue
                if e.type == "d":
                    if not matches(rel, self.exclude):
                        subdirs.append(rel)
                    if self._included(rel) and rel not in emitted_dirs:
                        yield from emit_parents(rel)
                        emitted_dirs.add(rel)
                        yield e
                    continue
                if self._included(rel):
                    yield from emit_parents(rel)
                    yield e
            stack.extend(reversed(subdirs))

    @contextmanager
    def prepare(self, staging: Path) -> Iterator[Prepared]:
        self.check()
        prepared = Prepared(entries=iter(()))
        prepared.entries = self._scan(prepared.unreadable)
        yield prepared


def sort_key(e: Entry) -> str:
    return e.path
