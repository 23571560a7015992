"""What a restore needs, checked before anything is written: the table plan (foreign keys), the target's
prerequisites, everything knowable before the approval (:func:`check_before_approval`), and the archive thaw."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...engine.progress import mb
from ...errors import ConfigError, NotFoundError, RefusedError, SourceError, StorageError
from ..validate import DB_KINDS
from .request import Location, RestoreRequest, guard_target, read_only_storage, target_state

if TYPE_CHECKING:
    from ...storage import Resolver

log = logging.getLogger("backups.commands.restore")

# ------------------------------------------------------------------------------------------------ dependencies
@dataclass
class TablePlan:
    """A table-level restore with its foreign-key dependencies, per database source: ``tables`` the final list,
    ``added`` what the dependencies added, ``references`` the foreign-key graph read from the snapshot, ``in_target``
    the referenced tables a PostgreSQL target already has (they satisfy the references without being restored)."""

    requested: list[str]
    include_dependencies: bool
    sources: dict[str, dict[str, Any]]

    def tables(self) -> dict[str, list[str]]:
        return {n: list(s["tables"]) for n, s in self.sources.items()}

    def added(self) -> dict[str, list[str]]:
        return {n: list(s["added"]) for n, s in self.sources.items() if s["added"]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TablePlan | None:
        return None if not d else cls(**{k: d[k] for k in cls.__dataclass_fields__})


def pg_key(t: str) -> str:
    return t[len("public."):] if t.startswith("public.") else t


def plan_tables(cfg: Config, req: RestoreRequest, loc: Location, resolver: Resolver | None = None,
                pg_dsn: str | None = None) -> TablePlan | None:
    """For a table-level restore (``req.tables``): read each database source's foreign keys from the snapshot —
    SQLite ``PRAGMA foreign_key_list`` on a staged copy of the database, PostgreSQL the dump's schema (its
    ``toc.dat`` staged alone, see :mod:`backups.engine.databases`) — in a private staging directory
    (``$BACKUP_STAGING`` or the system temp dir) that is removed again; nothing is written to the target.

    With ``include_dependencies`` the referenced tables (transitively) are added. Without it a referenced table
    that is not chosen (and, for a PostgreSQL target, does not exist there) refuses the restore (RefusedError,
    exit 7) naming the missing tables and the fix. With a PostgreSQL target, chosen tables that hold rows there
    refuse it unless ``force``. None when no tables were chosen."""
    if not req.tables:
        return None
    import tempfile

    from ...catalog import Catalog
    from ...engine.backup_pipeline import staging_root
    from ...engine.databases import dependency_closure, pg_dump_schema, pg_target_tables, sqlite_foreign_keys
    from ...engine.restorer import restore_source
    st = read_only_storage(cfg, loc.storage, resolver)
    cat = Catalog(st, cfg.application)
    snap = cat.get(loc.snapshot_id)
    plan = TablePlan(requested=list(req.tables), include_dependencies=req.include_dependencies, sources={})
    missing: list[str] = []
    nonempty: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix=".restore-plan-", dir=staging_root()))
    try:
        for name in loc.sources:
            kind = loc.kinds[name]
            if kind == "sqlite":
                db = snap.sources[name]["details"]["database"]
                restore_source(st, cat, snap, name, tmp, includes=[db])
                refs = sqlite_foreign_keys(tmp / name / db)
                wanted = list(dict.fromkeys(req.tables))
            elif kind == "postgres":
                restore_source(st, cat, snap, name, tmp, includes=["dump/toc.dat"])
                refs = pg_dump_schema(tmp / name / "dump").tables
                wanted = list(dict.fromkeys(pg_key(t) for t in req.tables))
            else:
                continue
            unknown = [t for t in wanted if t not in refs]
            if unknown:
                raise NotFoundError(f"restore: table(s) {', '.join(unknown)} not in the backed-up database of source "
                                    f"{name} ({snap.id}); its tables: {', '.join(sorted(refs))}",
                                    hint="trigger again with tables from that list (CLI: --table)")
            deps = dependency_closure(refs, wanted)
            state = pg_target_tables(pg_dsn, wanted + deps) if kind == "postgres" and pg_dsn else {}
            in_target = [t for t in deps if state.get(t) is not None]
            if req.include_dependencies:
                added = deps
            else:
                added = []
                for t in deps:
                    if t not in in_target:
                        by = sorted(w for w in wanted if t in dependency_closure(refs, [w]))
                        missing.append(f"{name}: {t} (referenced by {', '.join(by)})")
            final = sorted(set(wanted) | set(added))
            nonempty += [f"{name}: {t}" for t in final if state.get(t)]
            plan.sources[name] = {"kind": kind, "tables": final, "added": added, "in_target": in_target,
                                  "references": {t: refs[t] for t in final if refs.get(t)}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if missing:
        raise RefusedError("restore: the chosen tables reference tables that are not restored with them (foreign keys); "
                           "nothing was written:\n  - " + "\n  - ".join(missing),
                           hint="trigger again with include_dependencies: true (CLI: --with-dependencies) to restore "
                                "them too, or name them in tables (--table)")
    if nonempty and not req.force:
        raise RefusedError("restore: the PostgreSQL target already holds rows in " + ", ".join(nonempty) +
                           "; nothing was written",
                           hint="restore into an empty or new database, or pass --force (DAG: force) to replace these "
                                "tables in one transaction (constraints are validated; a failure rolls back)")
    for name, s in plan.sources.items():
        log.info("tables of %s: %s%s", name, ", ".join(s["tables"]),
                 f" (dependencies added: {', '.join(s['added'])})" if s["added"] else "")
    return plan


# ------------------------------------------------------------------------------------------------ prerequisites
@dataclass
class Prerequisites:
    target: str
    target_state: str
    free_bytes: int
    needed_bytes: int
    pg_target: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(target: Path, replaced: list[Path] | None = None) -> None:
    """ConfigError (exit 2) when this user cannot create entries in ``target`` — or, when it is missing, in the
    nearest existing directory above it (where it would be created): a read-only mount, a directory owned by
    someone else — or cannot remove a directory of ``replaced`` (what ``force`` replaces: every directory in it
    must be writable). Checked with ``access(2)`` for the real user, so nothing is written."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    fix = ("choose a target this user can write (e.g. a new directory below its home or /srv/restore), or run the "
           "restore as the user that owns it (or fix its permissions / the read-only mount)")
    where = existing_parent(target)
    if where != target and not where.is_dir():
        raise ConfigError(f"restore: {where} is not a directory, so the restore target {target} cannot be created "
                          "below it; nothing was written", hint="give a target path whose existing part is directories")
    if not os.access(where, os.W_OK | os.X_OK):
        what = "the restore target" if where == target else f"the directory the restore target {target} would be created in,"
        raise ConfigError(f"restore: {what} {where} is not writable by user {user}; nothing was written", hint=fix)
    for old in replaced or []:
        if old.is_symlink() or not old.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(old):  # symlinks are not followed: they are removed, not entered
            if not os.access(dirpath, os.W_OK | os.X_OK):
                raise ConfigError(f"restore: --force would replace {old}, but {dirpath} in it is not writable by user "
                                  f"{user}, so it cannot be removed; nothing was written", hint=fix)


def check_prerequisites(cfg: Config, req: RestoreRequest, loc: Location, pg_dsn: str | None = None, *,
                        validate: bool = True, run_id: str | None = None) -> Prerequisites:
    """The target (not the root, not in a repository, not claimed by another run than ``run_id``, a directory,
    empty unless ``force``, writable, enough free space for the whole sources), the PostgreSQL target (answers)
    and, when databases are to be validated, Great Expectations (installed; not imported here). Nothing is
    written. ConfigError / RefusedError / SourceError."""
    import importlib.util

    from ...engine.restorer import check_target
    from ..target_lock import check_free

    guard_target(cfg, req.target)
    check_free(req.target, run_id)
    if validate and any(k in DB_KINDS for k in loc.kinds.values()) and importlib.util.find_spec("great_expectations") is None:
        raise ConfigError("restore: the restored databases are to be validated, but Great Expectations is not installed",
                          hint="install the validation extra (pip install 'fmr-backups[validation]'), or pass "
                               "--no-validate (every restored file's SHA-256 is still checked)")
    target = Path(req.target)
    check_target(target, req.force)
    check_writable(target, [target / s for s in loc.sources] if req.force else None)
    free = shutil.disk_usage(existing_parent(target)).free
    needed = 0 if (req.includes or req.tables) else loc.source_bytes  # a selection: its size is not known up front
    if needed > free:
        raise StorageError(f"restore: not enough space: {mb(needed)} to restore but only {mb(free)} free at {target}",
                           hint="free space or restore to a bigger disk (or only some sources / include globs)")
    pg_state = None
    if pg_dsn:
        import psycopg

        try:
            with psycopg.connect(pg_dsn, connect_timeout=10):
                pass
        except psycopg.Error as exc:
            name = req.pg_target_name or "the PostgreSQL target"
            raise SourceError(f"restore: cannot connect to the PostgreSQL target ({name}): "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                              hint="check the target database's host, port, user and that it exists") from None
        pg_state = "reachable"
        if not req.tables:  # a full restore is for an empty database: refused before anything is fetched
            from ...engine.databases import check_pg_full_target

            present = check_pg_full_target(Path(), pg_dsn, force=req.force, name=req.pg_target_name or "the PostgreSQL target",
                                           dump_tables=False)
            pg_state = f"reachable, holds {len(present)} table(s) (force: the dump's are replaced)" if present else "reachable, empty"
    return Prerequisites(target=req.target, target_state=target_state(req.target), free_bytes=free, needed_bytes=needed,
                         pg_target=pg_state)


def _known_tables(req: RestoreRequest, loc: Location) -> None:
    """NotFoundError when a chosen table is in none of the chosen database sources (from the manifest, so it
    works before an archive's thaw), listing the snapshot's tables."""
    if not req.tables or not loc.db_tables:
        return
    have = {t for ts in loc.db_tables.values() for t in ts} | {pg_key(t) for ts in loc.db_tables.values() for t in ts}
    if not any(loc.db_tables.values()):  # an old manifest without table names: the plan checks after the thaw
        return
    unknown = [t for t in req.tables if t not in have and pg_key(t) not in have]
    if unknown:
        listing = "; ".join(f"{n}: {', '.join(ts)}" for n, ts in loc.db_tables.items())
        raise NotFoundError(f"restore: table(s) {', '.join(unknown)} not in snapshot {loc.snapshot_id} (its tables: "
                            f"{listing})", hint=f"trigger again with tables from that list (CLI: --table), e.g. "
                                                f"{next(iter(t for ts in loc.db_tables.values() for t in ts), '-')}")


def check_before_approval(cfg: Config, req: RestoreRequest, loc: Location, resolver: Resolver | None = None,
                          pg_dsn: str | None = None, *, validate: bool = True, run_id: str | None = None) -> Location:
    """Everything that can be known before a person approves (and before an archive is thawed): the target
    (:func:`check_prerequisites`: state, claim by another run, writable, free space), the chosen tables exist in the
    snapshot, and — on a storage that is readable now — the foreign-key plan (:func:`plan_tables`: a missing
    dependency refuses here, naming ``include_dependencies``). An archive storage's plan needs the thaw: it is
    made after it (the approval text says so). Returns ``loc`` with ``tables``, ``free_bytes``, ``needed_bytes``
    and ``checked`` filled in; raises the first refusal (nothing written)."""
    pre = check_prerequisites(cfg, req, loc, pg_dsn, validate=validate, run_id=run_id)
    loc.free_bytes, loc.needed_bytes = pre.free_bytes, pre.needed_bytes
    loc.checked = [f"target {pre.target_state}, writable, {mb(pre.free_bytes)} free"
                   + (f" for {mb(pre.needed_bytes)}" if pre.needed_bytes else "")]
    if pre.pg_target:
        loc.checked.append(f"PostgreSQL target {pre.pg_target}")
    _known_tables(req, loc)
    if req.tables and not loc.archive:
        plan = plan_tables(cfg, req, loc, resolver, pg_dsn)
        loc.tables = plan.to_dict() if plan else None
        if plan:
            loc.checked += [f"tables of {n}: {', '.join(s['tables'])}"
                            + (f" (dependencies added: {', '.join(s['added'])})" if s["added"] else
                               " (no missing foreign-key dependency)") for n, s in plan.sources.items()]
    elif req.tables:
        loc.checked.append("foreign-key dependencies of the tables: checked after the thaw (archive storage)")
    return loc


# ------------------------------------------------------------------------------------------------ thaw
@dataclass
class ArchiveWait:
    storage: str
    archive: bool
    keys: int
    deferred: bool = False
    waited_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchiveWait:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if d.get(k) is not None})


def wait_for_archive(cfg: Config, loc: Location, resolver: Resolver | None = None, *, poll_seconds: float = 60.0,
                     timeout_seconds: float | None = None) -> ArchiveWait:
    """Archive storages: request the restores of every object of the chain and wait until all are readable —
    at most ``timeout_seconds`` (default :data:`~backups.engine.thaw.THAW_TIMEOUT_SECONDS`, 48 h; the CLI's
    ``--thaw-timeout``), then StorageError (exit 5) saying how many objects are still frozen."""
    from ...catalog import Catalog
    from ...engine.thaw import THAW_TIMEOUT_SECONDS, needed_keys, wait_readable
    st = read_only_storage(cfg, loc.storage, resolver)
    if not st.archive:
        return ArchiveWait(storage=loc.storage, archive=False, keys=0)
    cat = Catalog(st, cfg.application)
    keys = needed_keys(cat, cat.get(loc.snapshot_id))
    t0 = time.monotonic()
    wait_readable(st, keys, poll_seconds=poll_seconds,
                  timeout_seconds=THAW_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds)
    return ArchiveWait(storage=loc.storage, archive=True, keys=len(keys),
                       waited_seconds=round(time.monotonic() - t0, 1))
