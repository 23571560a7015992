"""The Great Expectations suite of a restored database with its **Data Docs** (static HTML) — for drills.

The suite and its runners live in :mod:`backups.validation.suite` (an ephemeral GX context, nothing written);
this module runs the same suite in an ephemeral context that also has a *Data Docs site* on the local disk:

1. list the tables that exist (sqlite3 / psycopg, no GX) — :func:`~backups.validation.suite.sqlite_tables`,
   :func:`~backups.validation.suite.postgres_tables`;
2. add a filesystem site (``SiteBuilder`` with a ``TupleFilesystemStoreBackend`` at ``site_dir``) to the context;
3. run the suite per table (the validation results land in the context's in-memory results store);
4. ``context.build_data_docs`` renders ``site_dir/index.html`` with one page per table validation and per suite.

GX is imported inside the functions only (10–15 s). The result is the suite's JSON-safe dict plus
``data_docs`` (the path of the site's ``index.html``), or ``data_docs_error`` when rendering failed (the
validation itself still counts).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, SourceError
from . import suite

log = logging.getLogger(__name__)

SITE = "drill"


def _site(ctx: Any, site_dir: Path) -> None:
    ctx.add_data_docs_site(SITE, {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })


def _render(ctx: Any, out: dict[str, Any], site_dir: Path) -> dict[str, Any]:
    try:
        ctx.build_data_docs(site_names=[SITE])
        out["data_docs"] = str(site_dir / "index.html")
    except Exception as exc:  # rendering is a report, not a check: keep the validation's verdict
        log.warning("Great Expectations Data Docs for %s could not be rendered: %s", out.get("database"), exc)
        out["data_docs_error"] = f"{type(exc).__name__}: {exc}"
    return out


def validate_sqlite_with_docs(db_path: str | Path, tables_details: dict[str, dict[str, Any]], site_dir: str | Path
                              ) -> dict[str, Any]:
    """:func:`~backups.validation.suite.validate_sqlite` (never raising on failed expectations) plus Data Docs
    rendered into ``site_dir``."""
    import sqlite3

    started = time.monotonic()
    path, site = Path(db_path).resolve(), Path(site_dir)
    if not path.is_file():
        raise SourceError(f"cannot validate {path}: the database file does not exist", hint="restore the database source first")
    try:
        present = suite.sqlite_tables(path)
    except sqlite3.Error as exc:
        raise IntegrityError(f"{path.name} is not a readable SQLite database ({exc})",
                             hint="the restored database is damaged; run `backupctl verify --read-data`") from None
    ctx = suite.gx_context()
    _site(ctx, site)
    datasource = ctx.data_sources.add_sqlite(name="restored", connection_string=f"sqlite:///{path}")
    results = suite.run_suite(ctx, datasource, tables_details, present & set(tables_details), path.name)
    out = suite.summarize(path.name, tables_details, present, results, started, raise_on_failure=False)
    return _render(ctx, out, site)


def validate_postgres_with_docs(dsn: str, tables_details: dict[str, dict[str, Any]], site_dir: str | Path, *,
                                label: str) -> dict[str, Any]:
    """:func:`~backups.validation.suite.validate_postgres` (never raising on failed expectations) plus Data Docs
    rendered into ``site_dir``."""
    started = time.monotonic()
    site = Path(site_dir)
    try:
        present = suite.postgres_tables(dsn)
    except Exception as exc:  # psycopg.Error; libpq messages never contain the password
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SourceError(f"cannot validate PostgreSQL database {label}: {reason}",
                          hint="check the drill's scratch server (drill.postgres)") from None
    ctx = suite.gx_context()
    _site(ctx, site)
    datasource = ctx.data_sources.add_postgres(name="restored", connection_string=suite.sqlalchemy_url(dsn))
    results = suite.run_suite(ctx, datasource, tables_details, present & set(tables_details), label)
    out = suite.summarize(label, tables_details, present, results, started, raise_on_failure=False)
    return _render(ctx, out, site)


__all__ = ["validate_postgres_with_docs", "validate_sqlite_with_docs"]
