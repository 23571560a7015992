"""What every step of the drill shares: the ``drill:`` settings, where reports and scratch data live, the drill
id and the names derived from it, the scratch PostgreSQL server, and small helpers (text figures: :mod:`backups.units`)."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ...config import Config, Drill
from ...errors import ConfigError

if TYPE_CHECKING:
    from ...storage import Resolver

log = logging.getLogger("backups.commands.drill")


RUNBOOK = "docs/disaster-recovery.md"


def drill_dir(cfg: Config) -> Path:
    """Where drill reports and the history live: next to the monitoring status (``<status dir>/../drill``)."""
    from ...monitoring import status_dir

    return status_dir(cfg).parent / "drill"


def settings(cfg: Config) -> Drill:
    """The ``drill:`` block, or its defaults when the config has none."""
    return cfg.drill if cfg.drill is not None else Drill()


def drill_id_for(when: datetime) -> str:
    return f"drill-{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def scratch_base(cfg: Config) -> Path:
    d = settings(cfg)
    return Path(d.scratch_dir) if d.scratch_dir else Path(tempfile.gettempdir()) / "fmr-drill"


def scratch_root(cfg: Config, drill_id: str) -> Path:
    if not re.fullmatch(r"drill-\d{8}T\d{6}Z", drill_id):
        raise ConfigError(f"drill: {drill_id!r} is not a drill id (drill-YYYYMMDDTHHMMSSZ)")
    return scratch_base(cfg) / drill_id


def db_prefix(drill_id: str) -> str:
    """``drill_<run>_``: every scratch database of the drill starts with it (the teardown drops them by it)."""
    return "drill_" + drill_id.removeprefix("drill-").lower() + "_"


def scratch_db_name(drill_id: str, tier: str, source: str) -> str:
    name = f"{db_prefix(drill_id)}{tier}_{source}"
    if len(name) > 63:
        import hashlib

        name = db_prefix(drill_id) + hashlib.sha256(f"{tier}/{source}".encode()).hexdigest()[:16]
    return name


def admin_dsn(cfg: Config, resolver: Resolver | None = None) -> str | None:
    """The scratch PostgreSQL server (``drill.postgres``; else ``$BACKUP_PG_SCRATCH_DSN`` / connection
    ``backup_pg_scratch`` as the restore validation uses), or None."""
    from ..validate import pg_scratch_dsn

    pg = settings(cfg).postgres
    if pg is None:
        return pg_scratch_dsn(resolver)
    if pg.dsn:
        return pg.dsn
    if resolver is None:
        from ...storage import NoAirflowResolver

        resolver = NoAirflowResolver()
    return resolver.postgres_dsn(cast(str, pg.conn_id))  # config validation: exactly one of dsn / conn_id


def db_dsn_for(admin: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(admin, dbname=dbname)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(d: datetime) -> str:
    return d.astimezone(UTC).isoformat(timespec="seconds")


def first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.strip()


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
