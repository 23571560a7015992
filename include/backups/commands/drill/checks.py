"""Step 4, verification: the checks on a restored tier — re-hash, Great Expectations with Data Docs, referential
integrity (SQLite, PostgreSQL), config files parse, and the ``drill.smoke`` SQL queries and commands."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...errors import BackupError
from ...units import fmt_bytes
from ..base import Result
from ..restore import Location, RestoredSource, RestoreRequest, RestoreResult
from .common import admin_dsn, db_dsn_for, drill_dir, first_line, log, settings
from .isolation import Scratch
from .plan import DrillPlan
from .tier_restore import TierRestore

if TYPE_CHECKING:
    from ...storage import Resolver

CONFIG_EXTENSIONS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".toml": "TOML"}


# ------------------------------------------------------------------------------------------------ 4. verify
@dataclass
class Check(Result):
    name: str
    kind: str
    ok: bool
    detail: str
    seconds: float = 0.0
    source: str | None = None


@dataclass
class TierVerify(Result):
    tier: str
    ok: bool
    checks: list[dict[str, Any]]
    data_docs: dict[str, str]
    verify_seconds: float


def _timed(name: str, kind: str, source: str | None, fn: Any) -> Check:
    t0 = time.monotonic()
    try:
        ok, detail = fn()
    except BackupError as exc:
        ok, detail = False, first_line(exc)
    except (OSError, sqlite3.Error, ValueError) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # psycopg errors and anything a check query raises: the check failed, with why
        ok, detail = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return Check(name=name, kind=kind, ok=bool(ok), detail=detail, seconds=round(time.monotonic() - t0, 3), source=source)


def _sqlite_path(rec: dict[str, Any], restored: dict[str, Any]) -> Path:
    return Path(restored["path"]) / rec["details"]["database"]


def sqlite_integrity(path: Path) -> tuple[bool, str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        quick = conn.execute("PRAGMA quick_check").fetchone()[0]
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        conn.close()
    if quick != "ok":
        return False, f"PRAGMA quick_check: {quick}"
    if fk:
        tables = sorted({f"{r[0]}->{r[2]}" for r in fk})
        return False, f"PRAGMA foreign_key_check: {len(fk)} row(s) reference missing parents ({', '.join(tables[:5])})"
    return True, "PRAGMA quick_check ok; PRAGMA foreign_key_check: no dangling reference"


def postgres_integrity(dsn: str) -> tuple[bool, str]:
    """Every foreign-key and check constraint validated (those loaded NOT VALID are validated now)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT c.conrelid::regclass::text, c.conname, c.convalidated FROM pg_constraint c "
            "JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype IN ('f', 'c') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchall()
        problems = []
        for table, con, valid in rows:
            if valid:
                continue
            try:
                # table: regclass text, quoted by the server where needed; the constraint name quoted here
                conn.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(sql.SQL(table), sql.Identifier(con)))
            except psycopg.Error as exc:
                problems.append(f"{table}.{con}: {str(exc).strip().splitlines()[0]}")
    if problems:
        return False, "constraints violated: " + "; ".join(problems[:5])
    return True, f"{len(rows)} foreign-key/check constraint(s) valid"


def config_files_parse(root: Path) -> tuple[bool, str]:
    import tomllib

    import yaml

    counts: dict[str, int] = {}
    bad: list[str] = []
    for path in sorted(root.rglob("*")):
        kind = CONFIG_EXTENSIONS.get(path.suffix.lower())
        if kind is None or not path.is_file() or path.is_symlink():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if kind == "YAML":
                list(yaml.safe_load_all(text))
            elif kind == "JSON":
                json.loads(text)
            else:
                tomllib.loads(text)
            counts[kind] = counts.get(kind, 0) + 1
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
            bad.append(f"{path.relative_to(root)} ({kind}): {str(exc).splitlines()[0][:160]}")
    if bad:
        return False, f"{len(bad)} config file(s) do not parse: " + "; ".join(bad[:5])
    return True, ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + " file(s) parse" if counts else "no config files"


def _compare(value: Any, chk: Any) -> tuple[bool, str]:
    def num(v: Any) -> float | None:
        if isinstance(v, bool):
            return float(v)
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    if chk.expect is not None:
        a, b = num(value), num(chk.expect)
        ok = (a == b) if a is not None and b is not None and not isinstance(chk.expect, str) else str(value) == str(chk.expect)
        return ok, f"result {value!r}, expected {chk.expect!r}"
    n = num(value)
    ok = n is not None and (chk.min is None or n >= chk.min) and (chk.max is None or n <= chk.max)
    bounds = " and ".join(b for b in (f">= {chk.min:g}" if chk.min is not None else "",
                                      f"<= {chk.max:g}" if chk.max is not None else "") if b)
    return ok, f"result {value!r}, expected {bounds}"


def run_smoke_sql(chk: Any, kind: str, where: str) -> tuple[bool, str]:
    if kind == "sqlite":
        conn = sqlite3.connect(f"file:{where}?mode=ro", uri=True)
        try:
            row = conn.execute(chk.sql).fetchone()
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(where, connect_timeout=10) as pg_conn:
            pg_conn.execute("SET TRANSACTION READ ONLY")  # a smoke query only reads
            row = pg_conn.execute(chk.sql).fetchone()
    return _compare(None if row is None else row[0], chk)


def run_smoke_command(chk: Any, cwd: Path, env: dict[str, str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(chk.command, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=chk.timeout_seconds, check=False)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {chk.timeout_seconds}s"
    except FileNotFoundError:
        return False, f"command not found: {chk.command[0]}"
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
    return proc.returncode == 0, f"exit {proc.returncode}" + (f": {' | '.join(tail)[:300]}" if tail else "")


def verify_tier(cfg: Config, plan: DrillPlan, scratch: Scratch, restored: TierRestore, resolver: Resolver | None = None, *,
                docs_dir: Path | None = None, locked: bool = False) -> TierVerify:
    """Every check on one restored tier; failed checks are returned (``ok`` false), never raised.

    The checks run under the shared lock of the tier's storage, so a prune cannot forget the snapshot while it is
    checked: ``locked`` when the caller holds it since the restore (:func:`run_drill`); otherwise (the DAG's
    separate ``verify_tier`` task) it takes its own, and a snapshot that a prune removed since the restore (or a
    lock it cannot get) is a failed ``snapshot`` check naming it."""
    from .. import restore as restore_command

    if restored.ok and any(r.get("kind") in ("sqlite", "postgres") for r in restored.sources.values()):
        import great_expectations  # noqa: F401  (10-15 s of imports: tooling, not part of the measured RTO)
    t0 = time.monotonic()
    tier = restored.tier
    if not restored.ok:
        failed = Check(name="restore", kind="restore", ok=False, detail=restored.error or "not restored")
        return TierVerify(tier=tier, ok=False, checks=[failed.to_dict()], data_docs={}, verify_seconds=0.0)
    loc = Location.from_dict(plan.tier(tier).location or {})
    done = Check(name="restore", kind="restore", ok=True,
                 detail=f"{restored.files} file(s), {fmt_bytes(restored.bytes)} restored, every SHA-256 checked while written",
                 seconds=restored.restore_seconds)
    try:
        with nullcontext() if locked else restore_command.shared_lock(cfg, loc.storage, resolver,
                                                                       operation="drill verification"):
            return _verify_tier(cfg, plan, scratch, restored, loc, done, t0, resolver, docs_dir)
    except BackupError as exc:  # the snapshot gone since the restore, or the lock not taken
        gone = Check(name="snapshot", kind="snapshot", ok=False, detail=first_line(exc))
        log.error("drill %s: %s: FAIL snapshot: %s", plan.drill_id, tier, gone.detail)
        return TierVerify(tier=tier, ok=False, checks=[done.to_dict(), gone.to_dict()], data_docs={},
                          verify_seconds=round(time.monotonic() - t0, 3))


def _verify_tier(cfg: Config, plan: DrillPlan, scratch: Scratch, restored: TierRestore, loc: Location, done: Check,
                 t0: float, resolver: Resolver | None, docs_dir: Path | None) -> TierVerify:
    from ...storage import open_storage
    from .. import restore as restore_command

    tier = restored.tier
    docs: dict[str, str] = {}
    _cat, snap = restore_command.snapshot_still_there(cfg, open_storage(cfg, loc.storage, resolver, read_only=True),
                                                      loc.snapshot_id, step="drill verification",
                                                      since="the drill restored it")
    checks: list[Check] = [done, _rehash_check(cfg, scratch, restored, loc, resolver)]
    dbs = scratch.databases.get(tier, {})
    admin = admin_dsn(cfg, resolver) if dbs else None
    docs_root = (docs_dir or drill_dir(cfg) / f"{plan.drill_id}.datadocs") / tier
    db_where: dict[str, tuple[str, str]] = {}  # source -> (kind, sqlite path or dsn)
    for name in sorted(restored.sources):
        checks += _source_checks(name, snap.sources[name], restored.sources[name], dbs, admin, docs_root / name, docs,
                                 db_where)
    env = _smoke_env(plan, scratch, restored, loc, db_where)
    checks += _smoke_checks(cfg, restored, loc, db_where, Path(scratch.targets[tier]), env)
    ok = all(c.ok for c in checks)
    for c in checks:
        (log.info if c.ok else log.error)("drill %s: %s: %s %s: %s", plan.drill_id, tier, "PASS" if c.ok else "FAIL",
                                          c.name, c.detail)
    return TierVerify(tier=tier, ok=ok, checks=[c.to_dict() for c in checks], data_docs=docs,
                      verify_seconds=round(time.monotonic() - t0, 3))


def _rehash_check(cfg: Config, scratch: Scratch, restored: TierRestore, loc: Location, resolver: Resolver | None) -> Check:
    """Every restored file re-hashed against the snapshot's index (the restore command's verification)."""
    from .. import restore as restore_command

    tier = restored.tier
    rres = RestoreResult(snapshot_id=loc.snapshot_id, storage=loc.storage, target=scratch.targets[tier],
                         sources={n: RestoredSource(**r) for n, r in restored.sources.items()}, seconds=restored.restore_seconds)
    req = RestoreRequest(target=scratch.targets[tier], snapshot=loc.snapshot_id, tier=tier, storage=loc.storage)

    def rehash() -> tuple[bool, str]:
        v = restore_command.verify_restore(cfg, req, loc, rres, resolver, validate=False, locked=True)
        return True, v.summary()

    return _timed("sha256", "sha256", None, rehash)


def _source_checks(name: str, rec: dict[str, Any], restored: dict[str, Any], dbs: dict[str, str], admin: str | None,
                   docs_root: Path, docs: dict[str, str], db_where: dict[str, tuple[str, str]]) -> list[Check]:
    """The checks of one restored source by its kind: a database's Great Expectations suite (its Data Docs into
    ``docs``) and referential integrity, a folder's config files. A database is added to ``db_where`` (for the
    smoke checks)."""
    from ...validation.datadocs import validate_postgres_with_docs, validate_sqlite_with_docs

    kind = rec["kind"]
    tables = rec["details"].get("tables") or {}
    if kind == "sqlite":
        path = _sqlite_path(rec, restored)
        db_where[name] = ("sqlite", str(path))

        def gx() -> tuple[bool, str]:
            return _gx_outcome(validate_sqlite_with_docs(path, tables, docs_root), docs, name)

        return [_timed(f"{name}: Great Expectations", "gx", name, gx),
                _timed(f"{name}: referential integrity", "integrity", name, lambda: sqlite_integrity(path))]
    if kind == "postgres":
        if name not in dbs or not admin:
            return [Check(name=f"{name}: loaded into a scratch database", kind="gx", ok=False, source=name,
                          detail="no scratch PostgreSQL server: the dump was restored as files but not loaded "
                                 "(set drill.postgres to an admin connection of a server where the drill may "
                                 "create databases)")]
        dsn = db_dsn_for(admin, dbs[name])
        db_where[name] = ("postgres", dsn)

        def gx_pg() -> tuple[bool, str]:
            res = validate_postgres_with_docs(dsn, tables, docs_root, label=f"{name} ({dbs[name]})")
            return _gx_outcome(res, docs, name)

        return [_timed(f"{name}: Great Expectations", "gx", name, gx_pg),
                _timed(f"{name}: constraints", "integrity", name, lambda: postgres_integrity(dsn))]
    if kind == "files":
        root = Path(restored["path"])
        return [_timed(f"{name}: config files parse", "config", name, lambda: config_files_parse(root))]
    return []


def _smoke_env(plan: DrillPlan, scratch: Scratch, restored: TierRestore, loc: Location,
               db_where: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The environment of a smoke command: the drill, the tier's root, each source's folder and database."""
    tier = restored.tier
    env = {"DRILL_ID": plan.drill_id, "DRILL_TIER": tier, "DRILL_SNAPSHOT": loc.snapshot_id,
           "DRILL_ROOT": scratch.targets[tier]}
    for name, r in restored.sources.items():
        env[f"DRILL_SOURCE_{name.upper()}"] = r["path"]
    for name, (_kind, where) in db_where.items():
        env[f"DRILL_DB_{name.upper()}"] = where
    return env


def _smoke_checks(cfg: Config, restored: TierRestore, loc: Location, db_where: dict[str, tuple[str, str]],
                  cwd: Path, env: dict[str, str]) -> list[Check]:
    """The ``drill.smoke`` checks: SQL queries on a restored database, commands run in the tier's root."""
    checks: list[Check] = []
    for chk in settings(cfg).smoke:
        if not chk.sql:
            checks.append(_timed(chk.name, "smoke-command", None, lambda c=chk: run_smoke_command(c, cwd, env)))
        elif chk.source not in restored.sources:
            checks.append(Check(name=chk.name, kind="smoke-sql", ok=False, source=chk.source,
                                detail=f"source {chk.source} is not in snapshot {loc.snapshot_id}"))
        elif chk.source not in db_where:
            checks.append(Check(name=chk.name, kind="smoke-sql", ok=False, source=chk.source,
                                detail=f"source {chk.source} was not loaded into a database"))
        else:
            kind, where = db_where[chk.source]
            checks.append(_timed(chk.name, "smoke-sql", chk.source,
                                 lambda c=chk, k=kind, w=where: run_smoke_sql(c, k, w)))
    return checks


def _gx_outcome(res: dict[str, Any], docs: dict[str, str], name: str) -> tuple[bool, str]:
    if res.get("data_docs"):
        docs[name] = res["data_docs"]
    stats = res.get("statistics") or {}
    head = f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"
    if res.get("success"):
        return True, head + " (row counts equal the manifest's, schema equal, keys unique and not null)"
    return False, head + ": " + "; ".join(res.get("failures", [])[:5])
