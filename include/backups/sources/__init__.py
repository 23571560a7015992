"""Sources: files / sqlite / postgres / command, each declaring how it detects changes and what it can do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Entry, Prepared, SourceReader

if TYPE_CHECKING:
    from ..config import Config
    from ..storage import Resolver


def open_source(cfg: Config, name: str, resolver: Resolver | None = None) -> SourceReader:
    if name not in cfg.sources:
        from ..errors import NotFoundError

        raise NotFoundError(f"no source named {name!r}", hint=f"use one of: {', '.join(sorted(cfg.sources))}")
    sc = cfg.sources[name]
    if sc.type == "files":
        from .files import FilesSource

        return FilesSource(name, sc.root, sc.include, sc.exclude, sc.on_unreadable, sc.checksum)
    if sc.type == "sqlite":
        from .sqlite import SqliteSource

        return SqliteSource(name, sc.path)
    if sc.type == "command":
        from .command import CommandSource

        return CommandSource(name, sc.command, sc.timeout_seconds)
    if sc.type == "postgres":
        from .postgres import PostgresSource

        if sc.conn_id:
            if resolver is None:
                from ..storage import NoAirflowResolver

                resolver = NoAirflowResolver()
            dsn = resolver.postgres_dsn(sc.conn_id)
        else:
            assert sc.dsn  # the config model requires exactly one of dsn / conn_id
            dsn = sc.dsn
        return PostgresSource(name, dsn, sc.jobs, sc.schemas, sc.exclude_tables,
                              drop_dangling_foreign_keys=sc.drop_dangling_foreign_keys)
    raise AssertionError(sc.type)


__all__ = ["Entry", "Prepared", "SourceReader", "open_source"]
