"""``sqlite`` source: a consistent online copy through SQLite's backup API, while the application writes.

The copy is taken in one step (``pages=-1``) from a read transaction, so it is a point-in-time image even
when other connections keep writing (WAL or rollback journal). Row counts and columns of every table are
read from the copy — exactly what was backed up — and recorded for validation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .base import Prepared, SourceReader, walk_staging


def describe_tables(conn: sqlite3.Connection) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for name in names:
        q = name.replace('"', '""')
        rows = conn.execute(f'SELECT count(*) FROM "{q}"').fetchone()[0]
        cols = [[c[1], c[2], bool(c[3]), bool(c[5])] for c in conn.execute(f'PRAGMA table_info("{q}")')]
        unique = []
        for idx in conn.execute(f'PRAGMA index_list("{q}")'):
            if idx[2]:  # unique
                iq = idx[1].replace('"', '""')
                unique.append([c[2] for c in conn.execute(f'PRAGMA index_info("{iq}")')])
        pk = [c[0] for c in cols if c[3]]
        tables[name] = {"rows": rows, "columns": cols, "primary_key": pk, "unique": unique}
    return tables


class SqliteSource(SourceReader):
    kind = "sqlite"
    change_detection = "checksum"

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = Path(path)

    def _open(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise SourceError(f"source {self.name}: SQLite database {self.path} does not exist",
                              hint=f"fix sources.{self.name}.path")
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            conn.execute("PRAGMA schema_version").fetchone()
            return conn
        except sqlite3.Error as exc:
            raise SourceError(f"source {self.name}: {self.path} is not a readable SQLite database ({exc})",
                              hint="check the path and file permissions") from None

    def check(self) -> None:
        self._open().close()

    def estimate(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    @contextmanager
    def prepare(self, staging: Path) -> Iterator[Prepared]:
        dest = staging / self.path.name
        with closing(self._open()) as src, closing(sqlite3.connect(dest)) as dst:
            try:
                src.backup(dst, pages=-1)
            except sqlite3.Error as exc:
                raise SourceError(f"source {self.name}: online backup of {self.path} failed: {exc}") from None
            tables = describe_tables(dst)
        yield Prepared(entries=walk_staging(staging), details={"database": self.path.name, "tables": tables})
