"""The disaster-recovery drill: one implementation for ``backupctl drill`` and the ``dr_drill`` DAG.

A drill restores the newest restorable snapshot of each tier from the copy you would use in a disaster, into
isolation, tests the restored application and measures RTO and RPO against the targets of ``drill:`` in the
config. Steps (each returns a typed, JSON-able result; the DAG maps each to a task):

1. :func:`plan_drill` — per tier: the drill storage (``--storage`` / ``drill.storage`` / the tier's last storage),
   opened **read-only**; the newest snapshot whose chain is complete there (newer ones with a missing object or
   manifest are passed over and reported); located with the restore command's :func:`~.restore.locate`.
2. :func:`isolate` — first :func:`clean_leftovers` (what killed drills left behind), then a fresh scratch
   directory ``<scratch>/<drill id>/`` (mode 0700, one folder per tier: the SQLite database is restored there)
   with its owner in ``.drill-owner.json``, and for PostgreSQL sources a scratch database
   ``drill_<run>_<tier>_<source>`` on ``drill.postgres`` — never a source's live database — with the same owner
   as its ``COMMENT ON DATABASE``.
3. :func:`restore_tier` — archive storages: the thaw wait (only with ``drill.approve_archive``; bounded by
   ``thaw_timeout``); then the restore command's :func:`~.restore.run_restore` (every file's SHA-256 checked while
   written; dumps loaded into the scratch database). :func:`run_drill` holds the storage's shared repository lock
   from here through step 4, so a prune cannot forget the snapshot before it is verified; the DAG's separate
   ``verify_tier`` task takes its own and fails a ``snapshot`` check when the snapshot is gone.
4. :func:`verify_tier` — every restored file re-hashed (:func:`~.restore.verify_restore`); the Great Expectations
   suite on each restored database with its Data Docs; referential integrity (``PRAGMA foreign_key_check``,
   PostgreSQL constraints validated); config files parse (YAML / JSON / TOML by extension); the ``smoke`` checks.
5. :func:`judge` — per tier RTO (plan + isolate + thaw + restore + verify) and RPO (drill start − the snapshot's
   logical date), bytes, files, throughput; pass/fail of every check and of ``rto_minutes`` / ``rpo_hours``.
6. :func:`write_reports` — ``<drill id>.md/.html/.json`` and ``latest.*`` in :func:`drill_dir`, one line appended
   to ``history.jsonl`` (the HTML charts RTO/RPO over that history).
7. :func:`teardown` — always: the scratch directory and every ``drill_<run>_*`` database removed (found by name,
   so it also cleans after a step that failed half-way).

A drill killed with ``kill -9`` never reaches its teardown. Its scratch directory and databases carry their owner
(host, pid, the pid's kernel start time, start time, the Airflow run if any), and :func:`clean_leftovers` — run by
the next drill and by ``backupctl prune`` — removes those whose owner is dead: same host and the pid gone (or
reused by another process). A DAG run's leftovers (its tasks are separate processes) and other hosts' leftovers
are removed only when older than :data:`LEFTOVER_MAX_AGE_DAYS`; so are leftovers without an owner record.

:func:`run_drill` runs them in order with the teardown in ``finally`` (the CLI door). Failures of a tier (no
restorable snapshot, a damaged object, a failed check) are *findings*: the drill goes on with the other tiers and
always writes its report; the verdict says whether it passed.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config, Drill, same_database
from ..engine.progress import mb
from ..errors import BackupError, ConfigError, DrillFailedError, RefusedError
from .base import Result
from .restore import Location, RestoredSource, RestoreRequest, RestoreResult

log = logging.getLogger("backups.commands.drill")

RUNBOOK = "docs/disaster-recovery.md"


def runbook_link() -> str:
    """The runbook as a link for the reports: the file of this checkout when it is there (a ``file://`` URL),
    else the path inside the project."""
    here = Path(__file__).resolve().parents[3] / RUNBOOK
    return here.as_uri() if here.is_file() else RUNBOOK
HISTORY = "history.jsonl"
#: Great Expectations Data Docs (a few MB per database) are kept for this many of the newest drills
KEEP_DATA_DOCS = 12
#: the keys of a history line (the monitoring status reads them; keep them stable)
HISTORY_KEYS = ("id", "at", "passed", "rto_seconds", "rpo_seconds", "report")
CONFIG_EXTENSIONS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".toml": "TOML"}
#: the owner record in a drill's scratch directory (the same JSON is the scratch databases' COMMENT)
OWNER_FILE = ".drill-owner.json"
#: leftovers whose owner cannot be checked from here (another host, a DAG run, no owner record) are removed
#: only when older than this — longer than any drill runs, thaw wait included (48 h by default)
LEFTOVER_MAX_AGE_DAYS = 7
DRILL_ID_RE = re.compile(r"drill-(\d{8}T\d{6}Z)")
DB_NAME_RE = re.compile(r"drill_(\d{8}t\d{6}z)_.+")


# ------------------------------------------------------------------------------------------------ places and ids
def drill_dir(cfg: Any) -> Path:
    """Where drill reports and the history live: next to the monitoring status (``<status dir>/../drill``)."""
    from ..monitoring import status_dir

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


def admin_dsn(cfg: Config, resolver: Any = None) -> str | None:
    """The scratch PostgreSQL server (``drill.postgres``; else ``$BACKUP_PG_SCRATCH_DSN`` / connection
    ``backup_pg_scratch`` as the restore validation uses), or None."""
    from .validate import pg_scratch_dsn

    pg = settings(cfg).postgres
    if pg is None:
        return pg_scratch_dsn(resolver)
    if pg.dsn:
        return pg.dsn
    if resolver is None:
        from ..storage import NoAirflowResolver

        resolver = NoAirflowResolver()
    return resolver.postgres_dsn(pg.conn_id)


def _db_dsn(admin: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(admin, dbname=dbname)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(d: datetime) -> str:
    return d.astimezone(UTC).isoformat(timespec="seconds")


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.strip()


# ------------------------------------------------------------------------------------------------ request
@dataclass
class DrillRequest(Result):
    """What to drill: the storage (None: ``drill.storage``, else each tier's last storage), the tiers (None:
    ``drill.tiers``, else all), who runs it. ``started_at`` / ``drill_id`` default to now."""

    storage: str | None = None
    tiers: list[str] | None = None
    started_at: str | None = None
    drill_id: str | None = None
    door: str = "cli"
    run_id: str = ""


def check_request(cfg: Config, req: DrillRequest) -> DrillRequest:
    d = settings(cfg)
    storage = req.storage or d.storage
    if storage and storage not in cfg.storages:
        raise ConfigError(f"drill: unknown storage {storage!r}", hint=f"choose from: {', '.join(cfg.storages)}")
    tiers = [t for t in (req.tiers or d.tiers or list(cfg.tiers)) if t]
    for t in tiers:
        if t not in cfg.tiers:
            raise ConfigError(f"drill: unknown tier {t!r}", hint=f"choose from: {', '.join(cfg.tiers)}")
        if storage and storage not in cfg.tiers[t].storages:
            raise ConfigError(f"drill: tier {t!r} does not write to storage {storage!r}",
                              hint=f"its storages: {', '.join(cfg.tiers[t].storages)}; drill it from one of them "
                                   "(or leave the storage unset: each tier's last storage)")
    started = datetime.fromisoformat(req.started_at) if req.started_at else _now()
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    started = started.replace(microsecond=0)
    return DrillRequest(storage=storage, tiers=tiers, started_at=_iso(started),
                        drill_id=req.drill_id or drill_id_for(started), door=req.door, run_id=req.run_id or "")


# ------------------------------------------------------------------------------------------------ 1. plan
@dataclass
class TierPlan(Result):
    tier: str
    storage: str
    snapshot_id: str | None = None
    logical_date: str | None = None
    location: dict[str, Any] | None = None
    passed_over: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class DrillPlan(Result):
    drill_id: str
    started_at: str
    door: str
    run_id: str
    storage: str | None
    tiers: list[dict[str, Any]]
    seconds: float

    def tier(self, name: str) -> TierPlan:
        for t in self.tiers:
            if t["tier"] == name:
                return TierPlan.from_dict(t)
        raise ConfigError(f"drill {self.drill_id}: tier {name!r} is not in its plan")

    @property
    def names(self) -> list[str]:
        return [t["tier"] for t in self.tiers]


def _plan_tier(cfg: Config, req: DrillRequest, tier: str, resolver: Any) -> TierPlan:
    from ..catalog import Catalog
    from ..storage import open_storage
    from . import restore as restore_command

    storage = req.storage or cfg.tiers[tier].storages[-1]
    out = TierPlan(tier=tier, storage=storage)
    try:
        st = open_storage(cfg, storage, resolver, read_only=True)
        st.check()
        cat = Catalog(st, cfg.application)
        chosen = None
        now = datetime.now(UTC)
        for snap in sorted(cat.ordered(tier), key=lambda s: s.newness(), reverse=True):  # the newest data first
            if snap.in_future(now):
                out.passed_over.append(f"{snap.id}: dated in the future (a mistyped --logical-date or a host clock "
                                       f"ahead): not the newest data")
                continue
            try:
                missing = cat.missing_objects(snap)
            except BackupError as exc:
                out.passed_over.append(f"{snap.id}: {exc.message}")
                continue
            if missing:
                out.passed_over.append(f"{snap.id}: {len(missing)} object(s) of its chain missing or damaged, e.g. {missing[0]}")
                continue
            chosen = snap
            break
        # damaged manifests of the tier newer than the chosen snapshot (ids sort by their logical date)
        out.passed_over = [f"{sid}: manifest damaged: {msg}" for sid, msg in sorted(cat.broken.items(), reverse=True)
                           if sid.startswith(f"{tier}-") and (chosen is None or sid > chosen.id)] + out.passed_over
        if chosen is None:
            why = f" ({len(out.passed_over)} incomplete: {out.passed_over[0]})" if out.passed_over else ""
            out.error = f"no restorable snapshot of tier {tier} on storage {storage}{why}"
            return out
        target = str(scratch_root(cfg, req.drill_id or "") / tier)
        loc = restore_command.locate(cfg, RestoreRequest(target=target, snapshot=chosen.id, tier=tier, storage=storage),
                                     resolver)
        out.snapshot_id, out.logical_date, out.location = chosen.id, loc.logical_date, loc.to_dict()
    except BackupError as exc:
        out.error = f"tier {tier}: storage {storage}: {exc.message}"
    if out.passed_over:
        log.warning("drill: tier %s: passed over %d newer snapshot(s) whose chain is incomplete on %s: %s", tier,
                    len(out.passed_over), storage, "; ".join(out.passed_over))
    return out


def plan_drill(cfg: Config, req: DrillRequest, resolver: Any = None) -> DrillPlan:
    """Per tier the snapshot to restore (newest with a complete chain on the drill storage), from a storage opened
    read-only. A tier without one is planned with its ``error`` (a finding), not raised. Refuses a scratch
    PostgreSQL server that is a source's live database."""
    t0 = time.monotonic()
    req = check_request(cfg, req)
    tiers = [_plan_tier(cfg, req, t, resolver) for t in req.tiers or []]
    plan = DrillPlan(drill_id=req.drill_id or "", started_at=req.started_at or "", door=req.door, run_id=req.run_id,
                     storage=req.storage, tiers=[t.to_dict() for t in tiers], seconds=round(time.monotonic() - t0, 3))
    if any("postgres" in (t.location or {}).get("kinds", {}).values() for t in tiers):
        guard_scratch_server(cfg, resolver)
    for t in tiers:
        log.info("drill %s: tier %s: %s", plan.drill_id, t.tier, t.error or
                 f"{t.snapshot_id} (logical date {t.logical_date}) from {t.storage}")
    return plan


def guard_scratch_server(cfg: Config, resolver: Any = None) -> None:
    """RefusedError when the scratch server's DSN is the live database of a postgres source."""
    admin = admin_dsn(cfg, resolver)
    if not admin:
        return
    for name, src in cfg.sources.items():
        if src.type != "postgres":
            continue
        try:
            live = src.dsn or (resolver.postgres_dsn(src.conn_id) if resolver is not None else None)
        except BackupError:
            live = None
        if live and same_database(admin, live):
            raise RefusedError(f"drill: the scratch PostgreSQL server is the live database of source {name!r}",
                               hint="point drill.postgres at an admin database (e.g. dbname=postgres) of a server where "
                                    "the drill may create and drop its own drill_* databases")


# ------------------------------------------------------------------------------------------------ 2. isolate
@dataclass
class Scratch(Result):
    drill_id: str
    root: str
    targets: dict[str, str]
    databases: dict[str, dict[str, str]]  #: tier -> source -> scratch database name
    seconds: float


def isolate(cfg: Config, plan: DrillPlan, resolver: Any = None) -> Scratch:
    """A fresh scratch directory and the scratch PostgreSQL databases. What it created is removed again when a
    later part fails (the teardown also finds everything by the drill id)."""
    t0 = time.monotonic()
    root = scratch_root(cfg, plan.drill_id)
    clean_leftovers(cfg, resolver, keep=plan.drill_id)
    if root.exists():  # a retried run of the same drill: start from nothing
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.mkdir(mode=0o700)
    owner = json.dumps(owner_record(plan.drill_id), sort_keys=True)
    _atomic_write(root / OWNER_FILE, owner + "\n")
    targets = {t: str(root / t) for t in plan.names}
    databases: dict[str, dict[str, str]] = {}
    try:
        wanted = {t["tier"]: [s for s, k in (t.get("location") or {}).get("kinds", {}).items() if k == "postgres"]
                  for t in plan.tiers}
        if any(wanted.values()):
            admin = admin_dsn(cfg, resolver)
            if admin:
                import psycopg
                from psycopg import sql

                guard_scratch_server(cfg, resolver)
                with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                    for tier, sources in wanted.items():
                        for s in sources:
                            name = scratch_db_name(plan.drill_id, tier, s)
                            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                            conn.execute(f'CREATE DATABASE "{name}"')
                            databases.setdefault(tier, {})[s] = name
                            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                                sql.Identifier(name), sql.Literal(owner)))
    except Exception:
        teardown(cfg, plan.drill_id, resolver)
        raise
    log.info("drill %s: scratch directory %s%s", plan.drill_id, root,
             "; scratch databases " + ", ".join(n for d in databases.values() for n in d.values()) if databases else "")
    return Scratch(drill_id=plan.drill_id, root=str(root), targets=targets, databases=databases,
                   seconds=round(time.monotonic() - t0, 3))


# ------------------------------------------------------------------------------------------------ 3. restore
@dataclass
class TierRestore(Result):
    tier: str
    ok: bool
    snapshot_id: str | None = None
    storage: str | None = None
    target: str | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    thaw_seconds: float = 0.0
    restore_seconds: float = 0.0
    error: str | None = None


def restore_tier(cfg: Config, plan: DrillPlan, scratch: Scratch, tier: str, resolver: Any = None, *,
                 poll_seconds: float = 60.0, thaw_timeout: float | None = None,
                 hold: ExitStack | None = None) -> TierRestore:
    """Restore the tier's planned snapshot into its scratch folder (and PostgreSQL dumps into the scratch
    databases). A failure is returned as ``error`` naming the snapshot (and the object), not raised.

    ``hold``: after the thaw wait, the shared lock of the tier's storage is entered into it and stays held when
    this returns — the caller keeps it over :func:`verify_tier` (``locked=True``), so a prune waits until the
    restored data is verified. Without it each restore step takes and releases its own lock."""
    from . import restore as restore_command

    tp = plan.tier(tier)
    out = TierRestore(tier=tier, ok=False, snapshot_id=tp.snapshot_id, storage=tp.storage, target=scratch.targets[tier])
    if tp.error or not tp.location:
        out.error = f"not restored: {tp.error}"
        return out
    loc = Location.from_dict(tp.location)
    try:
        if loc.archive:
            if not settings(cfg).approve_archive:
                out.error = (f"storage {loc.storage} is an archive storage: thawing {loc.objects} object(s) of "
                             f"{loc.snapshot_id} is billed and needs approval (set drill.approve_archive: true)")
                return out
            t0 = time.monotonic()
            restore_command.wait_for_archive(cfg, loc, resolver, poll_seconds=poll_seconds,
                                             timeout_seconds=thaw_timeout)
            out.thaw_seconds = round(time.monotonic() - t0, 3)
        if hold is not None:  # not over the thaw wait (hours): a prune may run then, the chain is re-read below
            hold.enter_context(restore_command.shared_lock(cfg, loc.storage, resolver, operation="drill"))
        t0 = time.monotonic()
        dbs = scratch.databases.get(tier, {})
        admin = admin_dsn(cfg, resolver) if dbs else None
        plain = [s for s in loc.sources if s not in dbs]
        merged: dict[str, RestoredSource] = {}
        steps: list[tuple[list[str], str | None]] = ([(plain, None)] if plain else []) + [
            ([s], _db_dsn(admin, name)) for s, name in dbs.items() if admin]
        for i, (sources, pg_dsn) in enumerate(steps):
            part = Location.from_dict({**loc.to_dict(), "sources": sources,
                                       "kinds": {s: loc.kinds[s] for s in sources}})
            req = RestoreRequest(target=scratch.targets[tier], snapshot=loc.snapshot_id, tier=tier, storage=loc.storage,
                                 sources=sources, force=i > 0)
            if i == 0:
                restore_command.check_prerequisites(cfg, req, Location.from_dict({**loc.to_dict(), "sources": plain or sources}),
                                                    validate=False)
            res = restore_command.run_restore(cfg, req, part, resolver, pg_dsn, locked=hold is not None)
            merged.update(res.sources)
        out.restore_seconds = round(time.monotonic() - t0, 3)
        out.sources = {n: r.to_dict() for n, r in merged.items()}
        out.files = sum(r.files for r in merged.values())
        out.bytes = sum(r.bytes for r in merged.values())
        out.ok = True
    except BackupError as exc:
        out.error = f"restore of snapshot {loc.snapshot_id} (tier {tier}) from storage {loc.storage} failed: {_first_line(exc)}"
        log.error("drill %s: %s", plan.drill_id, out.error)
    return out


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
        ok, detail = False, _first_line(exc)
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

        with psycopg.connect(where, connect_timeout=10) as conn:
            conn.execute("SET TRANSACTION READ ONLY")  # a smoke query only reads
            row = conn.execute(chk.sql).fetchone()
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


def verify_tier(cfg: Config, plan: DrillPlan, scratch: Scratch, restored: TierRestore, resolver: Any = None, *,
                docs_dir: Path | None = None, locked: bool = False) -> TierVerify:
    """Every check on one restored tier; failed checks are returned (``ok`` false), never raised.

    The checks run under the shared lock of the tier's storage, so a prune cannot forget the snapshot while it is
    checked: ``locked`` when the caller holds it since the restore (:func:`run_drill`); otherwise (the DAG's
    separate ``verify_tier`` task) it takes its own, and a snapshot that a prune removed since the restore (or a
    lock it cannot get) is a failed ``snapshot`` check naming it."""
    from . import restore as restore_command

    if restored.ok and any(r.get("kind") in ("sqlite", "postgres") for r in restored.sources.values()):
        import great_expectations  # noqa: F401  (10-15 s of imports: tooling, not part of the measured RTO)
    t0 = time.monotonic()
    tier = restored.tier
    if not restored.ok:
        failed = Check(name="restore", kind="restore", ok=False, detail=restored.error or "not restored")
        return TierVerify(tier=tier, ok=False, checks=[failed.to_dict()], data_docs={}, verify_seconds=0.0)
    loc = Location.from_dict(plan.tier(tier).location or {})
    done = Check(name="restore", kind="restore", ok=True,
                 detail=f"{restored.files} file(s), {mb(restored.bytes)} restored, every SHA-256 checked while written",
                 seconds=restored.restore_seconds)
    try:
        with nullcontext() if locked else restore_command.shared_lock(cfg, loc.storage, resolver,
                                                                       operation="drill verification"):
            return _verify_tier(cfg, plan, scratch, restored, loc, done, t0, resolver, docs_dir)
    except BackupError as exc:  # the snapshot gone since the restore, or the lock not taken
        gone = Check(name="snapshot", kind="snapshot", ok=False, detail=_first_line(exc))
        log.error("drill %s: %s: FAIL snapshot: %s", plan.drill_id, tier, gone.detail)
        return TierVerify(tier=tier, ok=False, checks=[done.to_dict(), gone.to_dict()], data_docs={},
                          verify_seconds=round(time.monotonic() - t0, 3))


def _verify_tier(cfg: Config, plan: DrillPlan, scratch: Scratch, restored: TierRestore, loc: Location, done: Check,
                 t0: float, resolver: Any, docs_dir: Path | None) -> TierVerify:
    from ..storage import open_storage
    from ..validation.datadocs import validate_postgres_with_docs, validate_sqlite_with_docs
    from . import restore as restore_command

    tier = restored.tier
    docs: dict[str, str] = {}
    _cat, snap = restore_command.snapshot_still_there(cfg, open_storage(cfg, loc.storage, resolver, read_only=True),
                                                      loc.snapshot_id, step="drill verification",
                                                      since="the drill restored it")
    checks: list[Check] = [done]
    rres = RestoreResult(snapshot_id=loc.snapshot_id, storage=loc.storage, target=scratch.targets[tier],
                         sources={n: RestoredSource(**r) for n, r in restored.sources.items()}, seconds=restored.restore_seconds)
    req = RestoreRequest(target=scratch.targets[tier], snapshot=loc.snapshot_id, tier=tier, storage=loc.storage)

    def rehash() -> tuple[bool, str]:
        v = restore_command.verify_restore(cfg, req, loc, rres, resolver, validate=False, locked=True)
        return True, v.summary()

    checks.append(_timed("sha256", "sha256", None, rehash))
    dbs = scratch.databases.get(tier, {})
    admin = admin_dsn(cfg, resolver) if dbs else None
    db_where: dict[str, tuple[str, str]] = {}  # source -> (kind, sqlite path or dsn)
    docs_root = (docs_dir or drill_dir(cfg) / f"{plan.drill_id}.datadocs") / tier
    for name in sorted(restored.sources):
        rec = snap.sources[name]
        kind = rec["kind"]
        tables = rec["details"].get("tables") or {}
        if kind == "sqlite":
            path = _sqlite_path(rec, restored.sources[name])
            db_where[name] = ("sqlite", str(path))

            def gx(path: Path = path, tables: dict = tables, name: str = name) -> tuple[bool, str]:
                res = validate_sqlite_with_docs(path, tables, docs_root / name)
                return _gx_outcome(res, docs, name)

            checks.append(_timed(f"{name}: Great Expectations", "gx", name, gx))
            checks.append(_timed(f"{name}: referential integrity", "integrity", name, lambda p=path: sqlite_integrity(p)))
        elif kind == "postgres":
            if name not in dbs or not admin:
                checks.append(Check(name=f"{name}: loaded into a scratch database", kind="gx", ok=False, source=name,
                                    detail="no scratch PostgreSQL server: the dump was restored as files but not loaded "
                                           "(set drill.postgres to an admin connection of a server where the drill may "
                                           "create databases)"))
                continue
            dsn = _db_dsn(admin, dbs[name])
            db_where[name] = ("postgres", dsn)

            def gx_pg(dsn: str = dsn, tables: dict = tables, name: str = name) -> tuple[bool, str]:
                res = validate_postgres_with_docs(dsn, tables, docs_root / name, label=f"{name} ({dbs[name]})")
                return _gx_outcome(res, docs, name)

            checks.append(_timed(f"{name}: Great Expectations", "gx", name, gx_pg))
            checks.append(_timed(f"{name}: constraints", "integrity", name, lambda d=dsn: postgres_integrity(d)))
        elif kind == "files":
            root = Path(restored.sources[name]["path"])
            checks.append(_timed(f"{name}: config files parse", "config", name, lambda r=root: config_files_parse(r)))
    env = {"DRILL_ID": plan.drill_id, "DRILL_TIER": tier, "DRILL_SNAPSHOT": loc.snapshot_id,
           "DRILL_ROOT": scratch.targets[tier]}
    for name, r in restored.sources.items():
        env[f"DRILL_SOURCE_{name.upper()}"] = r["path"]
    for name, (_kind, where) in db_where.items():
        env[f"DRILL_DB_{name.upper()}"] = where
    for chk in settings(cfg).smoke:
        if chk.sql:
            if chk.source not in restored.sources:
                checks.append(Check(name=chk.name, kind="smoke-sql", ok=False, source=chk.source,
                                    detail=f"source {chk.source} is not in snapshot {loc.snapshot_id}"))
                continue
            if chk.source not in db_where:
                checks.append(Check(name=chk.name, kind="smoke-sql", ok=False, source=chk.source,
                                    detail=f"source {chk.source} was not loaded into a database"))
                continue
            kind, where = db_where[chk.source]
            checks.append(_timed(chk.name, "smoke-sql", chk.source, lambda c=chk, k=kind, w=where: run_smoke_sql(c, k, w)))
        else:
            checks.append(_timed(chk.name, "smoke-command", None,
                                 lambda c=chk: run_smoke_command(c, Path(scratch.targets[tier]), env)))
    ok = all(c.ok for c in checks)
    for c in checks:
        (log.info if c.ok else log.error)("drill %s: %s: %s %s: %s", plan.drill_id, tier, "PASS" if c.ok else "FAIL",
                                          c.name, c.detail)
    return TierVerify(tier=tier, ok=ok, checks=[c.to_dict() for c in checks], data_docs=docs,
                      verify_seconds=round(time.monotonic() - t0, 3))


def _gx_outcome(res: dict[str, Any], docs: dict[str, str], name: str) -> tuple[bool, str]:
    if res.get("data_docs"):
        docs[name] = res["data_docs"]
    stats = res.get("statistics") or {}
    head = f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"
    if res.get("success"):
        return True, head + " (row counts equal the manifest's, schema equal, keys unique and not null)"
    return False, head + ": " + "; ".join(res.get("failures", [])[:5])


# ------------------------------------------------------------------------------------------------ 5. judge
@dataclass
class DrillVerdict(Result):
    drill_id: str
    at: str
    finished_at: str
    passed: bool
    door: str
    run_id: str
    application: str
    targets: dict[str, float]
    rto_seconds: float | None
    rpo_seconds: float | None
    tiers: list[dict[str, Any]]
    findings: list[str]
    next_drill: str | None
    schedule: str | None
    runbook: str = RUNBOOK
    reports: dict[str, str] = field(default_factory=dict)


def next_drill(schedule: str | None, after: datetime | None = None) -> str | None:
    if not schedule:
        return None
    from croniter import croniter

    return _iso(croniter(schedule, after or _now()).get_next(datetime))


def judge(cfg: Config, plan: DrillPlan, scratch: Scratch | None, restores: list[TierRestore | None],
          verifies: list[TierVerify | None], *, finished_at: datetime | None = None,
          extra_findings: list[str] | None = None) -> DrillVerdict:
    """Measure per tier (RTO, RPO, bytes, files, throughput, step times) and judge every check and target."""
    d = settings(cfg)
    started = datetime.fromisoformat(plan.started_at)
    by_r = {r.tier: r for r in restores if r is not None}
    by_v = {v.tier: v for v in verifies if v is not None}
    findings = list(extra_findings or [])
    tiers: list[dict[str, Any]] = []
    rto_limit, rpo_limit = d.rto_minutes * 60, d.rpo_hours * 3600
    for tp_d in plan.tiers:
        tp = TierPlan.from_dict(tp_d)
        r, v = by_r.get(tp.tier), by_v.get(tp.tier)
        steps = {"plan": plan.seconds, "isolate": scratch.seconds if scratch else None,
                 "thaw": r.thaw_seconds if r else None, "restore": r.restore_seconds if r else None,
                 "verify": v.verify_seconds if v else None}
        ok_restore = bool(r and r.ok)
        rto = round(sum(x for x in steps.values() if x), 3) if ok_restore and v else None
        rpo = (round((started - datetime.fromisoformat(tp.logical_date)).total_seconds(), 1)
               if tp.logical_date else None)
        checks = v.checks if v else []
        if tp.error:
            findings.append(f"{tp.tier}: {tp.error}")
        elif r is None:
            findings.append(f"{tp.tier}: the restore step did not run or did not report (see the task log)")
        elif not r.ok:
            findings.append(f"{tp.tier}: {r.error}")
        elif v is None:
            findings.append(f"{tp.tier}: the verification step did not run or did not report (see the task log)")
        for c in checks:
            if not c["ok"] and c["kind"] != "restore":
                findings.append(f"{tp.tier}: check {c['name']} failed: {c['detail']}")
        rto_ok = rto is not None and rto <= rto_limit
        if rto is not None and not rto_ok:
            findings.append(f"{tp.tier}: RTO target missed: restore and verification took {_dur(rto)} "
                            f"(target {d.rto_minutes:g} min)")
        for p in tp.passed_over:
            findings.append(f"{tp.tier}: newer snapshot passed over (chain incomplete on {tp.storage}): {p}")
        nbytes = r.bytes if r else 0
        tiers.append({
            "tier": tp.tier, "storage": tp.storage, "snapshot_id": tp.snapshot_id, "logical_date": tp.logical_date,
            "restored": ok_restore, "checks_passed": bool(v and v.ok), "rto_seconds": rto, "rto_ok": rto_ok,
            "rpo_seconds": rpo, "steps": steps, "files": r.files if r else 0, "bytes": nbytes,
            "throughput_mb_s": round(nbytes / 1e6 / r.restore_seconds, 2) if r and r.ok and r.restore_seconds else None,
            "checks": checks, "data_docs": v.data_docs if v else {}, "passed_over": tp.passed_over,
            "error": tp.error or (r.error if r and not r.ok else None),
            "passed": ok_restore and bool(v and v.ok) and rto_ok})
    restorable = [t["rpo_seconds"] for t in tiers if t["restored"] and t["rpo_seconds"] is not None]
    rpo_all = min(restorable) if restorable else None
    rpo_ok = rpo_all is not None and rpo_all <= rpo_limit
    if rpo_all is None:
        findings.append("RPO: no tier could be restored: nothing is recoverable from this storage")
    elif not rpo_ok:
        findings.append(f"RPO target missed: the newest restorable data is {_dur(rpo_all)} old at drill start "
                        f"(target {d.rpo_hours:g} h)")
    rtos = [t["rto_seconds"] for t in tiers if t["rto_seconds"] is not None]
    passed = bool(tiers) and all(t["passed"] for t in tiers) and rpo_ok and not extra_findings
    end = finished_at or _now()
    return DrillVerdict(drill_id=plan.drill_id, at=plan.started_at, finished_at=_iso(end), passed=passed,
                        door=plan.door, run_id=plan.run_id, application=cfg.application,
                        targets={"rto_minutes": d.rto_minutes, "rpo_hours": d.rpo_hours},
                        rto_seconds=max(rtos) if rtos else None, rpo_seconds=rpo_all, tiers=tiers, findings=findings,
                        next_drill=next_drill(d.schedule, end), schedule=d.schedule)


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------------------ 6. report
def read_history(cfg: Config) -> list[dict[str, Any]]:
    """The drill history's records; a damaged line (bad byte, truncated) is skipped and logged, never fatal."""
    from ..monitoring.store import read_jsonl

    return read_jsonl(drill_dir(cfg) / HISTORY)


def render_markdown(v: DrillVerdict) -> str:
    t = v.targets
    md = [f"# Disaster-recovery drill {v.drill_id}: {'PASSED' if v.passed else 'FAILED'}", "",
          f"* application: {v.application}; started {v.at}, finished {v.finished_at}; run `{v.run_id or v.door}`",
          f"* targets: RTO {t['rto_minutes']:g} min, RPO {t['rpo_hours']:g} h — measured: RTO {_dur(v.rto_seconds)} "
          f"(slowest tier), RPO {_dur(v.rpo_seconds)} (newest restorable data)",
          f"* next scheduled drill: {v.next_drill or 'none (manual: `backupctl drill` or trigger dr_drill)'}"
          + (f" (`{v.schedule}`)" if v.schedule else ""),
          f"* runbook: [{RUNBOOK}]({runbook_link()})", ""]
    md += ["## Findings", ""] + ([f"* {f}" for f in v.findings] or ["* none: every check passed and both targets were met"])
    md += ["", "## Tiers", "",
           "| tier | storage | snapshot | logical date | RTO | RPO | files | size | MB/s | result |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for x in v.tiers:
        md.append(f"| {x['tier']} | {x['storage']} | {x['snapshot_id'] or '-'} | {x['logical_date'] or '-'} | "
                  f"{_dur(x['rto_seconds'])} | {_dur(x['rpo_seconds'])} | {x['files']} | {mb(x['bytes'])} | "
                  f"{x['throughput_mb_s'] if x['throughput_mb_s'] is not None else '-'} | "
                  f"{'pass' if x['passed'] else 'FAIL'} |")
    md += ["", "## Step timings (seconds)", "", "| tier | plan | isolate | thaw | restore | verify |", "|---|---|---|---|---|---|"]
    for x in v.tiers:
        s = x["steps"]
        md.append(f"| {x['tier']} | " + " | ".join("-" if s.get(k) is None else f"{s[k]:.2f}"
                                                  for k in ("plan", "isolate", "thaw", "restore", "verify")) + " |")
    md += ["", "## Checks", ""]
    for x in v.tiers:
        md += [f"### {x['tier']}", "", "| check | result | detail | s |", "|---|---|---|---|"]
        for c in x["checks"]:
            md.append(f"| {c['name']} | {'pass' if c['ok'] else 'FAIL'} | {str(c['detail']).replace('|', '/')} | {c['seconds']} |")
        for src, path in sorted(x["data_docs"].items()):
            md.append(f"\nGreat Expectations Data Docs for {src}: [{_rel(path, v)}]({_rel(path, v)})")
        md.append("")
    return "\n".join(md) + "\n"


def _rel(path: str, v: DrillVerdict) -> str:
    base = v.reports.get("dir")
    try:
        return os.path.relpath(path, base) if base else path
    except ValueError:
        return path


def history_chart(history: list[dict[str, Any]]) -> str | None:
    """A small PNG (base64) of RTO (minutes) and RPO (hours) over the drill history; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pts = [h for h in history if h.get("at")][-30:]
    if not pts:
        return None
    xs = [datetime.fromisoformat(h["at"]) for h in pts]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 3.2), sharex=True)
    def val(h: dict[str, Any], key: str, unit: float) -> float:  # a drill that restored nothing: a gap, not 0
        return float("nan") if h.get(key) is None else h[key] / unit

    a1.plot(xs, [val(h, "rto_seconds", 60) for h in pts], marker="o", color="#1f77b4")
    a1.set_ylabel("RTO (min)")
    a2.plot(xs, [val(h, "rpo_seconds", 3600) for h in pts], marker="o", color="#ff7f0e")
    a2.set_ylabel("RPO (h)")
    for a, key in ((a1, "rto_minutes"), (a2, "rpo_hours")):
        target = pts[-1].get(key)
        if target:
            a.axhline(target, color="#d62728", linestyle="--", linewidth=1)
        for x, h in zip(xs, pts, strict=True):
            if not h.get("passed"):
                a.axvline(x, color="#d62728", alpha=0.15)
    from datetime import timedelta

    import matplotlib.dates as mdates

    if len(xs) == 1 or xs[0] == xs[-1]:  # one drill: a readable day around it, not years of empty axis
        a2.set_xlim(xs[0] - timedelta(days=1), xs[-1] + timedelta(days=1))
    locator = mdates.AutoDateLocator()
    a2.xaxis.set_major_locator(locator)
    a2.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    a1.set_title("drills: RTO (slowest tier) and RPO (newest restorable data); dashed: targets", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(v: DrillVerdict, history: list[dict[str, Any]]) -> str:
    from html import escape as e

    chart = history_chart(history)
    color = "#1a7f37" if v.passed else "#cf222e"
    rows = "".join(
        f"<tr><td>{e(x['tier'])}</td><td>{e(x['storage'])}</td><td>{e(x['snapshot_id'] or '-')}</td>"
        f"<td>{e(x['logical_date'] or '-')}</td><td>{_dur(x['rto_seconds'])}</td><td>{_dur(x['rpo_seconds'])}</td>"
        f"<td>{x['files']}</td><td>{mb(x['bytes'])}</td><td>{x['throughput_mb_s'] if x['throughput_mb_s'] is not None else '-'}</td>"
        f"<td style='color:{'#1a7f37' if x['passed'] else '#cf222e'}'>{'pass' if x['passed'] else 'FAIL'}</td></tr>"
        for x in v.tiers)
    checks = ""
    for x in v.tiers:
        checks += f"<h3>{e(x['tier'])}</h3><table><tr><th>check</th><th>result</th><th>detail</th><th>s</th></tr>"
        checks += "".join(f"<tr><td>{e(c['name'])}</td><td style='color:{'#1a7f37' if c['ok'] else '#cf222e'}'>"
                          f"{'pass' if c['ok'] else 'FAIL'}</td><td>{e(str(c['detail']))}</td><td>{c['seconds']}</td></tr>"
                          for c in x["checks"])
        checks += "</table>"
        checks += "".join(f"<p>Great Expectations Data Docs for {e(src)}: <a href='{e(_rel(p, v))}'>{e(_rel(p, v))}</a></p>"
                          for src, p in sorted(x["data_docs"].items()))
        s = x["steps"]
        checks += ("<p>steps (s): " + ", ".join(f"{k} {'-' if s.get(k) is None else f'{s[k]:.2f}'}"
                                                for k in ("plan", "isolate", "thaw", "restore", "verify")) + "</p>")
    findings = "".join(f"<li>{e(f)}</li>" for f in v.findings) or "<li>none: every check passed and both targets were met</li>"
    img = (f"<h2>RTO and RPO over the drill history</h2><img alt='RTO and RPO of the last drills' "
           f"src='data:image/png;base64,{chart}'>") if chart else ""
    t = v.targets
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>DR drill {e(v.drill_id)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}}</style></head><body>
<h1>Disaster-recovery drill {e(v.drill_id)}: <span style="color:{color}">{'PASSED' if v.passed else 'FAILED'}</span></h1>
<ul><li>application {e(v.application)}; started {e(v.at)}, finished {e(v.finished_at)}; run {e(v.run_id or v.door)}</li>
<li>targets: RTO {t['rto_minutes']:g} min, RPO {t['rpo_hours']:g} h — measured: RTO {_dur(v.rto_seconds)} (slowest tier),
RPO {_dur(v.rpo_seconds)} (newest restorable data)</li>
<li>next scheduled drill: {e(v.next_drill or 'none (manual)')}</li>
<li>runbook: <a href="{e(runbook_link())}">{RUNBOOK}</a></li></ul>
<h2>Findings</h2><ul>{findings}</ul>
<h2>Tiers</h2><table><tr><th>tier</th><th>storage</th><th>snapshot</th><th>logical date</th><th>RTO</th><th>RPO</th>
<th>files</th><th>size</th><th>MB/s</th><th>result</th></tr>{rows}</table>
{img}
<h2>Checks</h2>{checks}
</body></html>
"""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(cfg: Config, verdict: DrillVerdict) -> DrillVerdict:
    """``<drill id>.md/.html/.json`` and ``latest.*`` (atomic replace) in :func:`drill_dir`, and one line in
    ``history.jsonl`` (a re-run of the same drill id rewrites its reports but adds no second line)."""
    out = drill_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    verdict.reports = {"dir": str(out), **{ext: str(out / f"{verdict.drill_id}.{ext}") for ext in ("md", "html", "json")}}
    earlier = read_history(cfg)
    line = {"id": verdict.drill_id, "at": verdict.at, "passed": verdict.passed, "rto_seconds": verdict.rto_seconds,
            "rpo_seconds": verdict.rpo_seconds, "report": verdict.reports["html"], **verdict.targets,
            "tiers": {t["tier"]: {"rto_seconds": t["rto_seconds"], "rpo_seconds": t["rpo_seconds"], "passed": t["passed"]}
                      for t in verdict.tiers}}
    history = [h for h in earlier if h.get("id") != verdict.drill_id] + [line]
    texts = {"md": render_markdown(verdict), "html": render_html(verdict, history),
             "json": json.dumps(verdict.to_dict(), indent=1, sort_keys=True, default=str) + "\n"}
    for ext, text in texts.items():
        _atomic_write(out / f"{verdict.drill_id}.{ext}", text)
        _atomic_write(out / f"latest.{ext}", text)
    if not any(h.get("id") == verdict.drill_id for h in earlier):
        from ..monitoring.store import append_jsonl  # after a torn last line, on a line of its own

        append_jsonl(out / HISTORY, line)
    prune_data_docs(out, [h["id"] for h in history])
    log.info("drill %s %s: report %s", verdict.drill_id, "PASSED" if verdict.passed else "FAILED", verdict.reports["md"])
    return verdict


def store_reports(cfg: Config, verdict: DrillVerdict, resolver: Any = None) -> list[str]:
    """A copy of the reports in the repository of the first writable, non-archive storage other than the drills'
    storages (and other than the local storage :func:`drill_dir` already lives in): ``reports/drill/<id>.*``.
    Existing objects are never overwritten (a re-run of the same drill id keeps the first copy). Problems are
    logged and returned as ``storage: problem``; they never fail the drill."""
    from ..storage import open_storage

    drilled = {t["storage"] for t in verdict.tiers}
    here = drill_dir(cfg).resolve()
    for name, sc in cfg.storages.items():
        if name in drilled or getattr(sc, "storage_class", "STANDARD") in ("GLACIER", "DEEP_ARCHIVE"):
            continue
        if sc.type == "local" and here.is_relative_to(Path(sc.path).resolve()):
            continue
        stored: list[str] = []
        try:
            st = open_storage(cfg, name, resolver)
            for ext in ("md", "html", "json"):
                key = f"reports/drill/{verdict.drill_id}.{ext}"
                if not st.exists(key):
                    st.put_bytes(key, Path(verdict.reports[ext]).read_bytes())
                stored.append(f"{name}:{key}")
        except (BackupError, OSError) as exc:
            log.warning("drill %s: could not store its reports on storage %s: %s", verdict.drill_id, name, exc)
            return [f"{name}: {_first_line(exc)}"]
        log.info("drill %s: reports also stored on %s", verdict.drill_id, ", ".join(stored))
        return stored
    return []


def prune_data_docs(directory: Path, ids: list[str], keep: int = KEEP_DATA_DOCS) -> list[str]:
    """Remove the Data Docs folders of all but the ``keep`` newest drills (the reports themselves stay)."""
    kept = set(sorted(ids)[-keep:])
    removed = []
    for d in directory.glob("drill-*.datadocs"):
        if d.is_dir() and not d.is_symlink() and d.name.removesuffix(".datadocs") not in kept:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


# ------------------------------------------------------------------------------------------------ leftovers
def owner_record(drill_id: str) -> dict[str, Any]:
    """Who owns a drill's scratch directory and databases: this host and process (with the pid's kernel start
    time, so a reused pid is not taken for it), when, and the Airflow run when a DAG task runs it."""
    from ..repository.locks import HOST, pid_start, run_identity

    return {"drill_id": drill_id, "host": HOST, "pid": os.getpid(), "pid_start": pid_start(os.getpid()),
            "started_at": _iso(_now()), "run": run_identity()}


def _id_time(stamp: str) -> datetime | None:
    try:
        return datetime.strptime(stamp.upper(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def owner_state(owner: dict[str, Any] | None, created: datetime | None, now: datetime | None = None) -> tuple[bool, str]:
    """(dead, why) for a leftover with owner record ``owner`` (None: no readable record) created at ``created``.
    Dead: on this host, outside Airflow, and its pid gone or reused; else older than LEFTOVER_MAX_AGE_DAYS."""
    from ..repository.locks import HOST, pid_alive

    now = now or _now()
    if owner:
        if created is None:  # the drill id in the name is the start; the record's own time only without it
            try:
                created = datetime.fromisoformat(str(owner.get("started_at")))
            except ValueError:
                created = None
            if created is not None and created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
        pid = owner.get("pid")
        if owner.get("host") == HOST and not owner.get("run") and type(pid) is int and 0 < pid <= 1 << 22:
            if pid_alive(pid, owner.get("pid_start")):
                return False, f"its drill (pid {pid} on {HOST}) is still running"
            return True, f"its drill (pid {pid} on {HOST}) is gone"
        who = f"a run of {owner['run']}" if owner.get("run") else f"pid {pid} on host {owner.get('host')}"
    else:
        who = "no owner record"
    if created is None:
        return False, f"{who}, age unknown: kept (remove it by hand when no drill runs)"
    age = now - created
    if age.total_seconds() > LEFTOVER_MAX_AGE_DAYS * 86400:
        return True, f"{who}, {age.days} day(s) old (more than {LEFTOVER_MAX_AGE_DAYS})"
    return False, f"{who}, not checkable from here: kept until {LEFTOVER_MAX_AGE_DAYS} days old"


@dataclass
class Leftovers(Result):
    """What :func:`clean_leftovers` removed (or, ``dry_run``, would remove) and what it kept, with why."""

    dry_run: bool = False
    directories: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def clean_leftovers(cfg: Config, resolver: Any = None, *, keep: str | None = None, dry_run: bool = False,
                    now: datetime | None = None) -> Leftovers:
    """Remove the scratch directories (``<scratch>/drill-*``) and ``drill_*`` databases of drills that died without
    their teardown (see the module doc for when an owner is dead). ``keep``: a drill id never touched (the caller's
    own). Problems (an unreachable scratch server, a directory that cannot be removed) are returned, never raised."""
    out = Leftovers(dry_run=dry_run)
    base = scratch_base(cfg)
    entries: list[Path] = []
    try:
        entries = sorted(base.iterdir()) if base.is_dir() else []
    except OSError as exc:
        out.problems.append(f"{base}: {exc.strerror}")
    for d in entries:
        m = DRILL_ID_RE.fullmatch(d.name)
        if not m or d.name == keep or d.is_symlink() or not d.is_dir():
            continue
        dead, why = owner_state(read_owner(d / OWNER_FILE), _id_time(m.group(1)), now)
        if not dead:
            out.kept.append(f"{d}: {why}")
            continue
        log.warning("drill leftover %s: %s: %s", d, why, "would remove" if dry_run else "removing")
        if not dry_run:
            shutil.rmtree(d, onerror=lambda _f, p, exc: out.problems.append(f"{p}: {exc[1]}"))
        out.directories.append(str(d))
    if any(src.type == "postgres" for src in cfg.sources.values()):  # only they get scratch databases
        _clean_databases(cfg, resolver, out, keep, now)
    for p in out.problems:
        log.warning("drill leftovers: could not clean up: %s", p)
    return out


def read_owner(path: Path) -> dict[str, Any] | None:
    """The owner record at ``path``, or None when it is missing, not a regular file (never followed through a
    symlink, never blocking on a FIFO), over 64 KiB, or not a JSON object."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            raw = fh.read(65537)
        doc = json.loads(raw) if len(raw) <= 65536 else None
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return doc if isinstance(doc, dict) else None


def _clean_databases(cfg: Config, resolver: Any, out: Leftovers, keep: str | None, now: datetime | None) -> None:
    try:
        admin = admin_dsn(cfg, resolver)
        if not admin:
            return
        import psycopg
        from psycopg import sql

        mine = db_prefix(keep) if keep else None
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute("SELECT d.datname, shobj_description(d.oid, 'pg_database') FROM pg_database d "
                                "WHERE d.datname LIKE 'drill\\_%' ORDER BY 1").fetchall()
            for name, comment in rows:
                m = DB_NAME_RE.fullmatch(name)
                if not m or (mine and name.startswith(mine)):
                    continue
                try:
                    owner = json.loads(comment) if comment else None
                except ValueError:
                    owner = None
                dead, why = owner_state(owner if isinstance(owner, dict) else None, _id_time(m.group(1)), now)
                if not dead:
                    out.kept.append(f"database {name}: {why}")
                    continue
                log.warning("drill leftover database %s: %s: %s", name, why, "would drop" if out.dry_run else "dropping")
                if not out.dry_run:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                out.databases.append(name)
    except BackupError as exc:
        out.problems.append(f"scratch server: {exc.message}")
    except Exception as exc:  # psycopg.Error: reported; the directories were still cleaned
        text = str(exc).strip()
        out.problems.append(f"scratch databases: {text.splitlines()[0] if text else type(exc).__name__}")


# ------------------------------------------------------------------------------------------------ 7. teardown
@dataclass
class Teardown(Result):
    drill_id: str
    directory: str
    directory_removed: bool
    databases_dropped: list[str]
    problems: list[str]


def teardown(cfg: Config, drill_id: str, resolver: Any = None) -> Teardown:
    """Remove the drill's scratch directory and every ``drill_<run>_*`` database. Never raises for what is
    already gone; ``problems`` lists what could not be removed."""
    root = scratch_root(cfg, drill_id)
    problems: list[str] = []
    dropped: list[str] = []
    if root.exists():
        shutil.rmtree(root, onerror=lambda _f, p, exc: problems.append(f"{p}: {exc[1]}"))
    removed = not root.exists()
    admin = None
    if any(src.type == "postgres" for src in cfg.sources.values()):  # only they get scratch databases
        try:
            admin = admin_dsn(cfg, resolver)
        except BackupError as exc:
            problems.append(f"scratch server: {exc.message}")
    if admin:
        try:
            import psycopg

            prefix = db_prefix(drill_id)
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE left(datname, %s) = %s",
                                                    (len(prefix), prefix))]
                for n in names:
                    conn.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
                    dropped.append(n)
        except Exception as exc:  # psycopg.Error: reported, the rest of the teardown still ran
            problems.append(f"scratch databases {db_prefix(drill_id)}*: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    (log.warning if problems else log.info)("drill %s teardown: %s removed%s%s", drill_id, root,
                                            f"; dropped {', '.join(dropped)}" if dropped else "",
                                            f"; PROBLEMS: {'; '.join(problems)}" if problems else "")
    return Teardown(drill_id=drill_id, directory=str(root), directory_removed=removed, databases_dropped=dropped,
                    problems=problems)


# ------------------------------------------------------------------------------------------------ all steps
@dataclass
class DrillOutcome(Result):
    verdict: dict[str, Any]
    teardown: dict[str, Any] | None


def run_drill(cfg: Config, req: DrillRequest | None = None, resolver: Any = None, *, poll_seconds: float = 60.0,
              thaw_timeout: float | None = None, raise_on_failure: bool = False) -> DrillOutcome:
    """Every step in order, teardown in ``finally`` (the CLI door). The report is written even when the drill
    fails; ``raise_on_failure`` then raises :class:`~backups.errors.DrillFailedError` with the findings."""
    req = check_request(cfg, req or DrillRequest())
    plan = plan_drill(cfg, req, resolver)
    scratch: Scratch | None = None
    restores: list[TierRestore | None] = []
    verifies: list[TierVerify | None] = []
    extra: list[str] = []
    down: Teardown | None = None
    try:
        try:
            scratch = isolate(cfg, plan, resolver)
            for name in plan.names:
                with ExitStack() as hold:  # the shared lock from the restore through its verification
                    r = restore_tier(cfg, plan, scratch, name, resolver, poll_seconds=poll_seconds,
                                     thaw_timeout=thaw_timeout, hold=hold)
                    restores.append(r)
                    verifies.append(verify_tier(cfg, plan, scratch, r, resolver, locked=r.ok))
        except BackupError as exc:
            extra.append(f"drill aborted: {_first_line(exc)}")
        finally:
            down = teardown(cfg, plan.drill_id, resolver)
            extra += [f"teardown: {p}" for p in down.problems]
        verdict = write_reports(cfg, judge(cfg, plan, scratch, restores, verifies, extra_findings=extra))
        verdict.reports["stored"] = ", ".join(store_reports(cfg, verdict, resolver))
    finally:
        if down is None:  # pragma: no cover - only when teardown itself raised unexpectedly
            teardown(cfg, plan.drill_id, resolver)
    if raise_on_failure and not verdict.passed:
        raise failed_error(verdict)
    return DrillOutcome(verdict=verdict.to_dict(), teardown=down.to_dict() if down else None)


def failed_error(verdict: DrillVerdict | dict[str, Any]) -> DrillFailedError:
    v = verdict if isinstance(verdict, dict) else verdict.to_dict()
    return DrillFailedError(
        f"disaster-recovery drill {v['drill_id']} FAILED: {len(v['findings'])} finding(s):\n  - "
        + "\n  - ".join(v["findings"][:30]) + f"\n  report: {v['reports'].get('md')}",
        hint=f"fix what the findings name (see the report and {RUNBOOK}), then run `backupctl drill` again")


__all__ = ["Check", "DrillOutcome", "DrillPlan", "DrillRequest", "DrillVerdict", "Scratch",
           "Teardown", "TierPlan", "TierRestore", "TierVerify", "check_request", "clean_leftovers", "drill_dir",
           "drill_id_for", "Leftovers", "owner_record", "owner_state",
           "failed_error", "isolate", "judge", "plan_drill", "read_history", "restore_tier", "run_drill", "store_reports", "teardown",
           "verify_tier", "write_reports"]
