"""The Great Expectations suite for a backed-up database and its runners (SQLite, PostgreSQL).

Algorithm of a validation:

1. List the tables that really exist in the database (sqlite3 / psycopg, no GX) and compare with the tables
   the source reported; a missing or unexpected table is a failure of its own (GX cannot build a batch for a
   table that is not there).
2. Build one GX expectation list per table from the reported details (:func:`suite_for`), each expectation
   tagged with ``meta={"table": <name>}``.
3. In an *ephemeral* GX context (nothing written to disk) add one SQL datasource, one table asset and one
   whole-table batch definition per table, add the table's suite to the context, run a validation
   definition per table and collect the per-expectation results into a JSON-safe dict.
4. Raise :class:`~backups.errors.IntegrityError` listing every failed expectation when asked to.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, SourceError, ValidationFailedError

log = logging.getLogger(__name__)

#: how many characters of an observed value end up in a result (columns lists can be long)
_MAX_OBSERVED = 300
#: Great Expectations' loggers, kept at WARNING: its import alone logs ~200 INFO lines ("Skipping registering
#: function …" from ``great_expectations._docs_decorators``), a validation a few more (ephemeral docs site, metric
#: re-declarations). Our own ``backups.validation.suite`` line per database says what ran.
GX_LOGGER = "great_expectations"


def quiet_gx() -> None:
    """Set Great Expectations' loggers to WARNING: called before GX is imported (its import is the noisy part) and
    again once it is, for the GX modules that set their own level (``data_context.types.base`` sets INFO)."""
    logging.getLogger(GX_LOGGER).setLevel(logging.WARNING)
    for name, lg in list(logging.root.manager.loggerDict.items()):
        if name.startswith(GX_LOGGER + ".") and isinstance(lg, logging.Logger) and 0 < lg.level < logging.WARNING:
            lg.setLevel(logging.WARNING)


def _keys(details: dict[str, Any]) -> list[list[str]]:
    """Primary key first, then every unique constraint (deduplicated, order kept)."""
    keys: list[list[str]] = []
    pk = list(details.get("primary_key") or [])
    if pk:
        keys.append(pk)
    for cols in details.get("unique") or []:
        if list(cols) and list(cols) not in keys:
            keys.append(list(cols))
    return keys


def suite_for(tables_details: dict[str, dict[str, Any]]) -> list[Any]:
    """GX expectations for every table of ``tables_details`` (each tagged ``meta={"table": name}``).

    ``tables_details`` is a manifest's ``details["tables"]``: ``{table: {"rows", "columns": [[name, type,
    notnull, pk], ...], "primary_key": [...], "unique": [[cols], ...]}}``.
    """
    quiet_gx()
    import great_expectations.expectations as gxe

    out: list[Any] = []
    for table in sorted(tables_details):
        d = tables_details[table]
        meta = {"table": table}
        columns = [c[0] for c in d["columns"]]
        notnull = {c[0] for c in d["columns"] if len(c) > 2 and c[2]}
        out.append(gxe.ExpectTableRowCountToEqual(value=int(d["rows"]), meta=meta))
        out.append(gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True, meta=meta))
        keys = _keys(d)
        pk = set(d.get("primary_key") or [])
        for cols in keys:
            if len(cols) == 1:
                out.append(gxe.ExpectColumnValuesToBeUnique(column=cols[0], meta=meta))
            else:
                out.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(cols), meta=meta))
        # key columns must not be null: every primary-key column, and unique columns declared NOT NULL
        not_null = [c for c in columns if c in pk or (c in notnull and any(c in k for k in keys))]
        for col in not_null:
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=meta))
    return out


# ------------------------------------------------------------------------------------------------ helpers
def _json_safe(value: Any) -> Any:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = json.dumps(str(value))
    if len(text) > _MAX_OBSERVED:
        return text[:_MAX_OBSERVED] + "…"
    return json.loads(text)


def gx_context() -> Any:
    quiet_gx()  # keep task logs readable
    import great_expectations as gx

    quiet_gx()
    ctx = gx.get_context(mode="ephemeral")
    try:  # no tqdm bars in task logs
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # pragma: no cover - cosmetic only
        pass
    return ctx


def _describe_kwargs(kwargs: dict[str, Any]) -> str:
    parts = []
    for k, v in kwargs.items():
        if k == "batch_id":
            continue
        parts.append(f"{k}={v!r}")
    return ", ".join(parts)


def _expectation_line(r: dict[str, Any]) -> str:
    what = f"{r['table']}: {r['expectation']}({_describe_kwargs(r['kwargs'])})"
    if r.get("error"):
        return f"{what}: raised {r['error']}"
    bits = []
    if r.get("observed") is not None:
        bits.append(f"observed {r['observed']}")
    if r.get("unexpected_count"):
        bits.append(f"{r['unexpected_count']} unexpected value(s)")
        if r.get("examples"):
            bits.append(f"e.g. {r['examples']}")
    return f"{what}: " + (", ".join(bits) or "failed")


def quote_ident(name: str) -> str:
    """An SQL identifier in double quotes, inner quotes doubled (standard SQL: PostgreSQL and SQLite)."""
    return '"{}"'.format(name.replace('"', '""'))


def table_asset(datasource: Any, prefix: str, table: str) -> Any:
    """A GX asset over one table, whatever its name (capitals, spaces, quotes, unicode, keywords).

    GX lower-cases an unquoted table or schema name and builds ``sqlalchemy.quoted_name(name, quote=False)``, which
    turns quoting off (``FROM robot fleet``; ``"Robots"`` looked up as ``robots``). A table of the default schema
    is given as ``quoted_name(name, quote=True)`` (kept as is, quoted by SQLAlchemy); a table of another schema
    as a query over ``"schema"."name"`` (GX's ``schema_name`` would be lower-cased, and it is deprecated)."""
    from sqlalchemy.sql import quoted_name

    schema, _, name = table.rpartition(".")
    asset_name = f"{prefix}_{''.join(c if c.isalnum() else '_' for c in name)}"[:60]
    if not schema:
        return datasource.add_table_asset(name=asset_name, table_name=quoted_name(name, quote=True))
    return datasource.add_query_asset(name=asset_name, query=f"SELECT * FROM {quote_ident(schema)}.{quote_ident(name)}")


def run_suite(ctx: Any, datasource: Any, tables_details: dict[str, dict[str, Any]], present: set[str],
               label: str) -> list[dict[str, Any]]:
    """Run the suite of every present table; one result dict per expectation."""
    import great_expectations as gx

    expectations = suite_for({t: d for t, d in tables_details.items() if t in present})
    by_table: dict[str, list[Any]] = {}
    for exp in expectations:
        by_table.setdefault(exp.meta["table"], []).append(exp)
    results: list[dict[str, Any]] = []
    for i, table in enumerate(sorted(by_table)):
        batch = table_asset(datasource, f"t{i}", table).add_batch_definition_whole_table(name="all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{label}:{table}", expectations=by_table[table]))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"vd:{label}:{table}", data=batch, suite=suite))
        res = vd.run(result_format="SUMMARY")
        for r in res.results:
            cfg = r.expectation_config
            info = r.exception_info or {}
            error = info.get("exception_message") if info.get("raised_exception") else None
            result = r.result or {}
            results.append({
                "table": table,
                "expectation": cfg.type,
                "kwargs": _json_safe({k: v for k, v in cfg.kwargs.items() if k != "batch_id"}),
                "success": bool(r.success),
                "observed": _json_safe(result.get("observed_value")),
                "unexpected_count": result.get("unexpected_count"),
                "examples": _json_safe(result.get("partial_unexpected_list", [])[:5]) or None,
                "error": error,
            })
    return results


def summarize(label: str, tables_details: dict[str, Any], present: set[str], results: list[dict[str, Any]],
            started: float, raise_on_failure: bool) -> dict[str, Any]:
    expected = set(tables_details)
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    failures = [f"table {t}: missing from the restored database (the source reported {tables_details[t]['rows']} rows)"
                for t in missing]
    failures += [f"table {t}: present in the restored database but not reported by the source" for t in unexpected]
    failures += [_expectation_line(r) for r in results if not r["success"]]
    evaluated = len(results) + len(missing) + len(unexpected)
    successful = sum(1 for r in results if r["success"])
    out = {
        "database": label,
        "success": not failures,
        "statistics": {
            "evaluated_expectations": evaluated,
            "successful_expectations": successful,
            "unsuccessful_expectations": evaluated - successful,
            "success_percent": round(100.0 * successful / evaluated, 2) if evaluated else 100.0,
        },
        "tables": {t: {"rows": tables_details[t]["rows"]} for t in sorted(expected)},
        "missing_tables": missing,
        "unexpected_tables": unexpected,
        "results": results,
        "failures": failures,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("GX validation of %s: %d/%d expectations met in %.2fs", label, successful, evaluated, out["seconds"])
    if failures and raise_on_failure:
        raise validation_error(out)
    return out


def validation_error(result: dict[str, Any]) -> ValidationFailedError:
    """The error for a failed validation result (an IntegrityError; ``.result`` keeps the dict)."""
    lines = "\n  - ".join(result["failures"][:30])
    more = f"\n  … and {len(result['failures']) - 30} more" if len(result["failures"]) > 30 else ""
    return ValidationFailedError(
        f"data validation of {result['database']} failed: {len(result['failures'])} check(s) failed:\n  - {lines}{more}",
        hint="the backed-up database does not match what the source reported; do not rely on this snapshot "
             "(re-run the backup, then `backupctl verify --read-data`)",
        result=result,
    )


# ------------------------------------------------------------------------------------------------ runners
def sqlite_tables(db_path: str | Path) -> set[str]:
    from ..engine.databases import sqlite_ro_params

    # read-only (immutable when no WAL is pending): no -wal/-shm side file is left next to a restored database
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?{sqlite_ro_params(Path(db_path))}", uri=True)
    try:
        return {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
    finally:
        conn.close()


def sqlite_readonly_url(path: Path) -> str:
    """A SQLAlchemy URL opening ``path`` read-only (immutable when no WAL is pending: no -wal/-shm file is
    created). The path is percent-encoded twice: SQLAlchemy decodes the URL once, SQLite the ``file:`` URI again."""
    from urllib.parse import quote

    from ..engine.databases import sqlite_ro_params

    return f"sqlite:///file:{quote(quote(str(path), safe='/'), safe='/')}?{sqlite_ro_params(path)}&uri=true"


def validate_sqlite(db_path: str | Path, tables_details: dict[str, dict[str, Any]], *,
                    raise_on_failure: bool = True) -> dict[str, Any]:
    """Validate a SQLite file against the tables its source reported; JSON-safe result dict."""
    started = time.monotonic()
    path = Path(db_path).resolve()
    if not path.is_file():
        raise SourceError(f"cannot validate {path}: the database file does not exist",
                          hint="restore the database source first")
    try:
        present = sqlite_tables(path)
    except sqlite3.Error as exc:
        raise IntegrityError(f"{path.name} is not a readable SQLite database ({exc})",
                             hint="the restored database is damaged; run `backupctl verify --read-data`") from None
    ctx = gx_context()
    datasource = ctx.data_sources.add_sqlite(name="restored", connection_string=sqlite_readonly_url(path))
    results = run_suite(ctx, datasource, tables_details, present & set(tables_details), path.name)
    return summarize(path.name, tables_details, present, results, started, raise_on_failure)


def sqlalchemy_url(dsn: str) -> str:
    """A ``postgresql+psycopg://`` SQLAlchemy URL from a libpq DSN (URI or ``key=value`` form)."""
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    port = params.pop("port", None)
    url = URL.create("postgresql+psycopg", username=params.pop("user", None), password=params.pop("password", None),
                     host=params.pop("host", None), port=int(port) if port else None,
                     database=params.pop("dbname", None), query=params)
    return url.render_as_string(hide_password=False)


def postgres_tables(dsn: str) -> set[str]:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')").fetchall()
    return {name if schema == "public" else f"{schema}.{name}" for schema, name in rows}


def validate_postgres(dsn: str, tables_details: dict[str, dict[str, Any]], *, raise_on_failure: bool = True,
                      label: str | None = None, other_tables_allowed: bool = False) -> dict[str, Any]:
    """Validate a PostgreSQL database (e.g. a scratch copy loaded from a dump) against the reported tables.
    ``other_tables_allowed``: tables the source did not report are not failures (a restore into an existing
    database: ``--force`` keeps the tables that are not in the dump, a table-level restore touches only its own)."""
    started = time.monotonic()
    try:
        present = postgres_tables(dsn)
    except Exception as exc:  # psycopg.Error; libpq messages never contain the password
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SourceError(f"cannot validate PostgreSQL database: {reason}",
                          hint="check the scratch database connection") from None
    from psycopg.conninfo import conninfo_to_dict

    name = label or str(conninfo_to_dict(dsn).get("dbname") or "postgres")
    ctx = gx_context()
    datasource = ctx.data_sources.add_postgres(name="restored", connection_string=sqlalchemy_url(dsn))
    results = run_suite(ctx, datasource, tables_details, present & set(tables_details), name)
    if other_tables_allowed:
        present &= set(tables_details)
    return summarize(name, tables_details, present, results, started, raise_on_failure)
