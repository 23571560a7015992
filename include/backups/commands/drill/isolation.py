"""Steps 2 and 7, isolation and teardown: the drill's scratch directory and scratch PostgreSQL databases with
their owner record, their removal, and the cleanup of what killed drills left behind (see the package doc)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...errors import BackupError
from ..base import Result
from .common import (
    admin_dsn,
    atomic_write,
    db_prefix,
    iso_utc,
    log,
    scratch_base,
    scratch_db_name,
    scratch_root,
    utc_now,
)
from .plan import DrillPlan, guard_scratch_server

if TYPE_CHECKING:
    from ...storage import Resolver

#: the owner record in a drill's scratch directory (the same JSON is the scratch databases' COMMENT)
OWNER_FILE = ".drill-owner.json"
#: leftovers whose owner cannot be checked from here (another host, a DAG run, no owner record) are removed
#: only when older than this — longer than any drill runs, thaw wait included (48 h by default)
LEFTOVER_MAX_AGE_DAYS = 7
DRILL_ID_RE = re.compile(r"drill-(\d{8}T\d{6}Z)")
DB_NAME_RE = re.compile(r"drill_(\d{8}t\d{6}z)_.+")


# ------------------------------------------------------------------------------------------------ 2. isolate
@dataclass
class Scratch(Result):
    drill_id: str
    root: str
    targets: dict[str, str]
    databases: dict[str, dict[str, str]]  #: tier -> source -> scratch database name
    seconds: float


def isolate(cfg: Config, plan: DrillPlan, resolver: Resolver | None = None) -> Scratch:
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
    atomic_write(root / OWNER_FILE, owner + "\n")
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


# ------------------------------------------------------------------------------------------------ leftovers
def owner_record(drill_id: str) -> dict[str, Any]:
    """Who owns a drill's scratch directory and databases: this host and process (with the pid's kernel start
    time, so a reused pid is not taken for it), when, and the Airflow run when a DAG task runs it."""
    from ...repository.locks import HOST, pid_start, run_identity

    return {"drill_id": drill_id, "host": HOST, "pid": os.getpid(), "pid_start": pid_start(os.getpid()),
            "started_at": iso_utc(utc_now()), "run": run_identity()}


def _id_time(stamp: str) -> datetime | None:
    try:
        return datetime.strptime(stamp.upper(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def owner_state(owner: dict[str, Any] | None, created: datetime | None, now: datetime | None = None) -> tuple[bool, str]:
    """(dead, why) for a leftover with owner record ``owner`` (None: no readable record) created at ``created``.
    Dead: on this host, outside Airflow, and its pid gone or reused; else older than LEFTOVER_MAX_AGE_DAYS."""
    from ...repository.locks import HOST, pid_alive

    now = now or utc_now()
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


def clean_leftovers(cfg: Config, resolver: Resolver | None = None, *, keep: str | None = None, dry_run: bool = False,
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


def _clean_databases(cfg: Config, resolver: Resolver | None, out: Leftovers, keep: str | None, now: datetime | None) -> None:
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
    #: what ``isolate`` had set up (:class:`Scratch` ``.to_dict()``); None when it did not finish
    scratch: dict[str, Any] | None = None


def teardown(cfg: Config, drill_id: str, resolver: Resolver | None = None) -> Teardown:
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


def teardown_findings(down: Teardown | dict[str, Any] | None) -> list[str]:
    """The findings a teardown hands to the report (both doors): what it could not remove, or, ``None``, that it
    did not finish."""
    if down is None:
        return ["teardown did not finish: scratch data may be left behind (see its task log)"]
    problems = down.problems if isinstance(down, Teardown) else down.get("problems", [])
    return [f"teardown: {problem}" for problem in problems]
