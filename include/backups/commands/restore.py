"""The restore command: one implementation for ``backupctl restore`` and the ``restore_snapshot`` DAG.

Steps, each taking typed inputs and returning a typed, JSON-able result (``to_dict()``); errors are only those of
:mod:`backups.errors`:

1. :func:`check_request` — the request (snapshot, target, sources, …) against the configuration.
2. :func:`locate` — the storage to read from: the named one, or the first (config order) that is reachable and
   holds the snapshot with its whole chain; what a thaw of an archive storage needs (objects, bytes).
3. :func:`check_prerequisites` — the target (not ``/``, not in or around a local repository, a directory, empty
   unless ``force``, writable by this user, enough free space) and the PostgreSQL target database (reachable).
4. :func:`wait_for_archive` — archive storages: request the S3 restores and wait (the DAG uses its deferrable
   sensor instead).
5. :func:`plan_tables` — a table-level restore: the foreign keys read from the snapshot, the referenced tables
   added (``include_dependencies``) or the restore refused before anything is written; a PostgreSQL target's
   chosen tables that hold rows refused unless ``force``.
   :func:`run_restore` — :func:`backups.engine.restorer.restore` (every write goes through it: SHA-256 checked,
   a source appears only when complete) under the repository's shared lock.
6. :func:`verify_restore` — under the same shared lock (the CLI holds one lock over 5 and 6; the DAG's separate
   task takes its own and names a snapshot pruned since the restore), the restored tree checked against the
   snapshot's index: every selected file present, a regular file of the right size, no stray file in a ``files``
   source (a stat walk: each file's SHA-256 was already checked on the bytes written); with ``reread``
   (``--reread``) every file also read back and re-hashed. Then the Great Expectations suite on restored
   databases (GX is imported only here, and only when ``validate`` is true and a database was restored).
7. :func:`build_report` / :func:`write_report` — ``RESTORE_REPORT.json`` and ``.md`` in the target directory; the
   same content from both doors except who asked, the approval and timings (:class:`RunInfo`).

:func:`restore_snapshot` runs 1-7 in order (the CLI door). The DAG runs them as separate tasks, passing the
``to_dict()`` results through XCom and rebuilding them with ``from_dict``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config
from ..engine.progress import mb
from ..errors import ConfigError, IntegrityError, NotFoundError, RefusedError, SourceError, StorageError, did_you_mean
from ..storage.base import sha256_of
from .base import approval_phrase
from .validate import DB_KINDS, compact_results, pg_scratch_dsn, validate_restored

log = logging.getLogger("backups.commands.restore")

REPORT_NAME = "RESTORE_REPORT"


# ------------------------------------------------------------------------------------------------ request
@dataclass
class RestoreRequest:
    """What to restore and where. ``pg_target_name`` names the PostgreSQL target for the report (an Airflow
    connection id, or ``command line`` for the CLI's DSN) — the DSN itself never enters a result."""

    target: str
    snapshot: str = "latest"
    tier: str | None = None
    storage: str | None = None
    sources: list[str] | None = None
    includes: list[str] | None = None
    tables: list[str] | None = None
    force: bool = False
    pg_target_name: str | None = None
    include_dependencies: bool = False  #: tables: add the tables they reference (foreign keys), transitively
    no_owner: bool = False  #: files: do not restore owners even as root (tar's ``--no-same-owner``)
    #: verification: read every restored file back and re-hash it (each file's SHA-256 is always checked on the
    #: bytes written; without this the verification checks presence, type and size with a stat only)
    reread: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RestoreRequest:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


def _clean_list(value: Any) -> list[str] | None:
    items = [str(v).strip() for v in (value or []) if str(v).strip()]
    return items or None


def check_request(cfg: Config, req: RestoreRequest) -> RestoreRequest:
    """The request checked against the config and normalised (absolute target, empty lists as None).
    ConfigError / RefusedError name the option and the fix."""
    target = str(req.target or "").strip()
    if not target:
        raise ConfigError("restore: no target directory given (--target / params.target)",
                          hint="give the directory to restore into (an absolute path), e.g. /srv/restore/2026-03-01")
    if not os.path.isabs(target):
        raise ConfigError(f"restore: target {target!r} is not an absolute path",
                          hint="give an absolute directory path, e.g. /srv/restore/2026-03-01")
    if req.storage and req.storage not in cfg.storages:
        raise ConfigError(f"restore: unknown storage {req.storage!r}",
                          hint=f"{did_you_mean(req.storage, cfg.storages)}choose from: {', '.join(cfg.storages)} (or "
                               "leave it empty for the first healthy one)")
    sources = _clean_list(req.sources)
    unknown = [s for s in sources or [] if s not in cfg.sources]
    if unknown:
        raise ConfigError(f"restore: unknown source {unknown[0]!r}",
                          hint=f"{did_you_mean(unknown[0], cfg.sources)}choose from: {', '.join(cfg.sources)} (or leave "
                               "it empty for all)")
    out = RestoreRequest(target=os.path.normpath(target), snapshot=str(req.snapshot or "latest").strip(),
                         tier=req.tier or None, storage=req.storage or None, sources=sources,
                         includes=_clean_list(req.includes), tables=_clean_list(req.tables), force=bool(req.force),
                         pg_target_name=req.pg_target_name or None,
                         include_dependencies=bool(req.include_dependencies), no_owner=bool(req.no_owner),
                         reread=bool(req.reread))
    guard_target(cfg, out.target)
    return out


def guard_target(cfg: Config, target: str) -> None:
    """Refuse — even with ``force`` — the filesystem root, and a target that is a local storage's repository, lies
    inside one or contains one (``force`` replaces what is in the target: it must never reach a repository)."""
    real = Path(os.path.realpath(target))
    if real == Path("/"):
        raise RefusedError("restore: refusing to restore into the filesystem root /, even with --force",
                           hint="give a new or empty dedicated directory, e.g. --target /srv/restore/$(date +%F)")
    for name, sc in cfg.storages.items():
        if sc.type == "local":
            repo = Path(os.path.realpath(sc.path))
            if real == repo or real.is_relative_to(repo):
                where = "is the repository" if real == repo else "is inside the repository"
                raise RefusedError(f"restore: target {target} {where} of storage {name} ({sc.path}); refused even "
                                   "with --force", hint="restore somewhere outside the backup repository")
            if repo.is_relative_to(real):
                raise RefusedError(f"restore: target {target} contains the repository of storage {name} ({sc.path}); "
                                   "refused even with --force",
                                   hint="restore into a directory that holds no backup repository")


# ------------------------------------------------------------------------------------------------ locate
@dataclass
class Location:
    """Where the snapshot is read from, and what the restore of the chosen sources needs."""

    snapshot_id: str
    tier: str
    type: str
    logical_date: str
    chain: list[str]
    storage: str
    storage_type: str
    archive: bool
    objects: int
    chain_bytes: int
    sources: list[str]
    kinds: dict[str, str]
    target: str
    target_state: str
    source_bytes: int = 0  #: the chosen sources' size as backed up (the free-space check)
    skipped_storages: dict[str, str] = field(default_factory=dict)
    #: the snapshot's tables per chosen database source (from its manifest): what ``tables`` may name
    db_tables: dict[str, list[str]] = field(default_factory=dict)
    #: filled by :func:`check_before_approval`: the table plan (foreign keys; None: no tables chosen, or an
    #: archive storage, whose plan needs the thaw), the free space at the target, the bytes a restore needs
    tables: dict[str, Any] | None = None
    free_bytes: int | None = None
    needed_bytes: int | None = None
    checked: list[str] = field(default_factory=list)  #: what was checked before the approval, in words

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Location:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def target_state(target: str) -> str:
    """``missing (will be created)``, ``empty``, ``not empty (N entries)`` or ``not a directory``."""
    p = Path(target)
    if not p.exists():
        return "missing (will be created)"
    if not p.is_dir():
        return "not a directory"
    n = sum(1 for _ in p.iterdir())
    return "empty" if n == 0 else f"not empty ({n} entries)"


def locate(cfg: Config, req: RestoreRequest, resolver: Any = None) -> Location:
    """The storage to restore from (``req.storage``, or the first reachable one holding the whole chain) and the
    snapshot, checked against the request (sources present, tables/includes/PostgreSQL target applicable)."""
    from ..engine.locate import find_snapshot
    from ..engine.thaw import needed_keys

    st, cat, snap, skipped = find_snapshot(cfg, req.snapshot, req.tier, storage=req.storage, resolver=resolver)
    chosen = req.sources or sorted(snap.sources)
    absent = [s for s in chosen if s not in snap.sources]
    if absent:
        raise NotFoundError(f"snapshot {snap.id} has no source {absent[0]!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    kinds = {n: snap.sources[n]["kind"] for n in chosen}
    if req.tables and not any(k in DB_KINDS for k in kinds.values()):
        raise ConfigError("restore: tables apply to sqlite and postgres sources only",
                          hint="add a database source to the sources, or clear the tables")
    if req.includes and "files" not in kinds.values():
        raise ConfigError("restore: include globs apply to files sources only",
                          hint="add a files source to the sources, or clear the include globs")
    if req.pg_target_name and "postgres" not in kinds.values():
        raise ConfigError("restore: a PostgreSQL target is set but no postgres source is restored",
                          hint="clear it, or add the postgres source to the sources")
    chain = cat.chain_of(snap)
    keys = needed_keys(cat, snap)
    db_tables = {n: sorted((snap.sources[n].get("details") or {}).get("tables") or {})
                 for n in chosen if kinds[n] in DB_KINDS}
    loc = Location(snapshot_id=snap.id, tier=snap.tier, type=snap.type, logical_date=snap.doc["logical_date"],
                   chain=list(snap.chain), storage=st.name, storage_type=cfg.storages[st.name].type,
                   archive=bool(st.archive), objects=len(keys),
                   chain_bytes=sum(o["size"] for s in chain for o in s.objects()), sources=chosen, kinds=kinds,
                   source_bytes=sum(int(snap.sources[n].get("bytes") or 0) for n in chosen), target=req.target,
                   target_state=target_state(req.target), skipped_storages=skipped, db_tables=db_tables)
    log.info("restore %s (%s, chain %s) from %s%s into %s (%s): sources %s", snap.id, snap.type, " -> ".join(snap.chain),
             st.name, f" (archive: {len(keys)} object(s) to thaw)" if st.archive else "", req.target,
             loc.target_state, ", ".join(chosen))
    if loc.target_state.startswith("not empty") and not req.force:
        log.warning("the target %s is not empty and force is off: the restore will refuse it", req.target)
    return loc


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


def _pg_key(t: str) -> str:
    return t[len("public."):] if t.startswith("public.") else t


def plan_tables(cfg: Config, req: RestoreRequest, loc: Location, resolver: Any = None,
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

    from ..catalog import Catalog
    from ..engine.backup_pipeline import staging_root
    from ..engine.databases import dependency_closure, pg_dump_schema, pg_target_tables, sqlite_foreign_keys
    from ..engine.restorer import restore_source
    from ..storage import open_storage

    st = open_storage(cfg, loc.storage, resolver, read_only=True)
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
                wanted = list(dict.fromkeys(_pg_key(t) for t in req.tables))
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


def _existing_parent(path: Path) -> Path:
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
    where = _existing_parent(target)
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

    from ..engine.restorer import check_target
    from .target_lock import check_free

    guard_target(cfg, req.target)
    check_free(req.target, run_id)
    if validate and any(k in DB_KINDS for k in loc.kinds.values()) and importlib.util.find_spec("great_expectations") is None:
        raise ConfigError("restore: the restored databases are to be validated, but Great Expectations is not installed",
                          hint="install the validation extra (pip install 'fmr-backups[validation]'), or pass "
                               "--no-validate (every restored file's SHA-256 is still checked)")
    target = Path(req.target)
    check_target(target, req.force)
    check_writable(target, [target / s for s in loc.sources] if req.force else None)
    free = shutil.disk_usage(_existing_parent(target)).free
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
            from ..engine.databases import check_pg_full_target

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
    have = {t for ts in loc.db_tables.values() for t in ts} | {_pg_key(t) for ts in loc.db_tables.values() for t in ts}
    if not any(loc.db_tables.values()):  # an old manifest without table names: the plan checks after the thaw
        return
    unknown = [t for t in req.tables if t not in have and _pg_key(t) not in have]
    if unknown:
        listing = "; ".join(f"{n}: {', '.join(ts)}" for n, ts in loc.db_tables.items())
        raise NotFoundError(f"restore: table(s) {', '.join(unknown)} not in snapshot {loc.snapshot_id} (its tables: "
                            f"{listing})", hint=f"trigger again with tables from that list (CLI: --table), e.g. "
                                                f"{next(iter(t for ts in loc.db_tables.values() for t in ts), '-')}")


def check_before_approval(cfg: Config, req: RestoreRequest, loc: Location, resolver: Any = None,
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


def wait_for_archive(cfg: Config, loc: Location, resolver: Any = None, *, poll_seconds: float = 60.0,
                     timeout_seconds: float | None = None) -> ArchiveWait:
    """Archive storages: request the restores of every object of the chain and wait until all are readable —
    at most ``timeout_seconds`` (default :data:`~backups.engine.thaw.THAW_TIMEOUT_SECONDS`, 48 h; the CLI's
    ``--thaw-timeout``), then StorageError (exit 5) saying how many objects are still frozen."""
    from ..catalog import Catalog
    from ..engine.thaw import THAW_TIMEOUT_SECONDS, needed_keys, wait_readable
    from ..storage import open_storage

    st = open_storage(cfg, loc.storage, resolver, read_only=True)
    if not st.archive:
        return ArchiveWait(storage=loc.storage, archive=False, keys=0)
    cat = Catalog(st, cfg.application)
    keys = needed_keys(cat, cat.get(loc.snapshot_id))
    t0 = time.monotonic()
    wait_readable(st, keys, poll_seconds=poll_seconds,
                  timeout_seconds=THAW_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds)
    return ArchiveWait(storage=loc.storage, archive=True, keys=len(keys),
                       waited_seconds=round(time.monotonic() - t0, 1))


# ------------------------------------------------------------------------------------------------ restore
@dataclass
class RestoredSource:
    kind: str
    path: str
    files: int
    bytes: int
    verified: int
    extra: dict[str, Any] | None = None
    warnings: list[str] | None = None  #: the snapshot chain's warnings for this source, and the restore's own

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("extra", "warnings"):
            if not d[k]:
                d.pop(k)
        return d


@dataclass
class RestoreResult:
    snapshot_id: str
    storage: str
    target: str
    sources: dict[str, RestoredSource]
    seconds: float
    tables: dict[str, Any] | None = None  #: the TablePlan of a table-level restore (with the dependencies added)

    def to_dict(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "storage": self.storage, "target": self.target,
                "sources": {n: r.to_dict() for n, r in self.sources.items()}, "seconds": self.seconds,
                "tables": self.tables}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RestoreResult:
        return cls(snapshot_id=d["snapshot_id"], storage=d["storage"], target=d["target"], seconds=d["seconds"],
                   sources={n: RestoredSource(**r) for n, r in d["sources"].items()}, tables=d.get("tables"))


@contextmanager
def shared_lock(cfg: Config, storage: str, resolver: Any = None, *, operation: str) -> Iterator[None]:
    """The repository's shared lock on ``storage`` (opened read-only: lock objects are its one write). A prune
    (exclusive) waits while it is held, so a snapshot cannot be forgotten between a restore and its verification:
    the CLI and the drill hold it across both steps."""
    from ..repository import Repository, repo_scope
    from ..storage import open_storage

    repo = Repository(open_storage(cfg, storage, resolver, read_only=True), cfg)
    with repo.lock(repo_scope(), exclusive=False, operation=operation):
        yield


def snapshot_still_there(cfg: Config, storage: Any, snapshot_id: str, *, step: str, since: str) -> tuple[Any, Any]:
    """(catalog, snapshot) of ``snapshot_id`` read afresh from ``storage`` (call it under the shared lock).
    NotFoundError (exit 3) naming the snapshot when it is gone — a prune or ``forget`` that ran since ``since``
    (the DAG runs locate, restore and verification as separate tasks) — so no step works on a snapshot that is no
    longer there, and a verification never passes over data it could not check."""
    from ..catalog import Catalog

    cat = Catalog(storage, cfg.application)
    if snapshot_id not in cat.snapshots and snapshot_id not in cat.broken:
        raise NotFoundError(f"{step}: snapshot {snapshot_id} is no longer on storage {storage.name} (a prune or forget "
                            f"removed it since {since})" + (": the restored data cannot be checked against it"
                                                            if step.startswith("verif") else ""),
                            hint="restore again from a snapshot that exists (`backupctl list`), or from another "
                                 "storage that still holds it; do not use data that was not verified")
    return cat, cat.get(snapshot_id)


def run_restore(cfg: Config, req: RestoreRequest, loc: Location, resolver: Any = None, pg_dsn: str | None = None, *,
                tty: bool | None = False, plan: TablePlan | None = None, locked: bool = False) -> RestoreResult:
    """Restore the located snapshot's sources into the target through :func:`backups.engine.restorer.restore`,
    holding the repository's shared lock (a prune waits for it) and re-reading the catalog under it. ``locked``:
    the caller already holds that lock (:func:`shared_lock`, e.g. across the restore and its verification)."""
    from ..engine.progress import Progress
    from ..engine.restorer import restore
    from ..storage import open_storage

    st = open_storage(cfg, loc.storage, resolver, read_only=True)
    t0 = time.monotonic()
    with nullcontext() if locked else shared_lock(cfg, loc.storage, resolver, operation="restore"):
        cat, snap = snapshot_still_there(cfg, st, loc.snapshot_id, step="restore", since="it was located")
        progress = Progress(f"restore {snap.id}", snap.doc["totals"]["bytes"], interval=10.0, tty=tty)
        try:
            results = restore(st, cat, snap, Path(req.target), sources=loc.sources, includes=req.includes,
                              tables=plan.tables() if plan else req.tables, force=req.force, pg_target=pg_dsn,
                              progress=progress, no_owner=bool(req.no_owner))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise StorageError(f"no space left on device while restoring {snap.id} into {req.target} "
                               f"({mb(shutil.disk_usage(_existing_parent(Path(req.target))).free)} free)",
                               hint="free space there or restore into a bigger disk (the snapshot's size: "
                               f"{mb(snap.doc['totals']['bytes'])})") from None
        finally:
            progress.close()
    seconds = round(time.monotonic() - t0, 3)
    out = {r.source: RestoredSource(kind=r.kind, path=r.path, files=r.files, bytes=r.bytes, verified=r.verified,
                                    extra=r.extra or None, warnings=r.warnings or None) for r in results}
    log.info("restored %s from %s into %s in %.1fs: %s", snap.id, st.name, req.target, seconds,
             "; ".join(f"{n}: {r.files} files, {mb(r.bytes)}" for n, r in out.items()))
    return RestoreResult(snapshot_id=snap.id, storage=st.name, target=req.target, sources=out, seconds=seconds,
                         tables=plan.to_dict() if plan else None)


# ------------------------------------------------------------------------------------------------ verify
def include_selector(includes: list[str] | None) -> Callable[[str], bool]:
    """The restorer's selection: a glob matches a path, and ``dir/**`` also selects ``dir`` itself."""
    from ..engine.restorer import _selector

    return _selector(includes)


def sha256_file(root: Path, rel: str) -> tuple[str, int]:
    """(hex SHA-256, size) of the regular file ``rel`` below ``root``, opened through directory descriptors with
    ``O_NOFOLLOW`` (paths longer than PATH_MAX work; a symlink in the way is an OSError, never followed)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        *dirs, name = rel.split("/")
        for part in dirs:
            parent, fd = fd, os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(parent)
        file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as fh:
        return sha256_of(fh)


def regular_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the regular files (not symlinks) below ``root`` (walked by directory descriptors)."""
    for _key, rel, mode, _size, _fd, _name in walk_tree(root):
        if stat.S_ISREG(mode):
            yield rel


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk_tree(root: Path) -> Iterator[tuple[list[str], str, int, int, int, str]]:
    """Every entry below ``root`` as (order key, relative path, ``st_mode``, ``st_size``, descriptor of its
    directory, name), in the index's canonical order (a directory right before its contents, names sorted), so it
    merges with an index stream in one pass and constant memory. Directories are opened one component at a time
    with ``O_NOFOLLOW`` (paths longer than PATH_MAX work; a symlink is reported, never entered). The descriptor is
    valid until the next entry is asked for."""
    top = os.open(root, _DIR_FLAGS)
    stack: list[tuple[int, list[str], str, Iterator[str]]] = []

    def enter(fd: int, key: list[str], prefix: str) -> None:
        with os.scandir(fd) as it:
            names = sorted(e.name for e in it)
        stack.append((fd, key, prefix, iter(names)))

    try:
        enter(top, [], "")
        while stack:
            fd, key, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                if fd != top:
                    os.close(fd)
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:  # removed while walked
                continue
            k = [*key, name]
            yield k, prefix + name, st.st_mode, st.st_size, fd, name
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:  # replaced while walked: what should be below it is then missing
                    continue
                try:
                    enter(sub, k, prefix + name + "/")
                except BaseException:
                    os.close(sub)
                    raise
    finally:
        for fd, *_ in stack:
            if fd != top:
                os.close(fd)
        os.close(top)


def _sha256_at(dir_fd: int, name: str) -> tuple[str, int]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        return sha256_of(fh)


def hash_check(storage: Any, rec: dict[str, Any], root: Path, select: Callable[[str], bool], skip: set[str],
               strict: bool, reread: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Every selected regular file of the index checked on disk: present, a regular file, its size; with
    ``reread`` also read back and re-hashed (SHA-256). ``strict``: no other regular file allowed. ``skip``: only
    present (a database a table-level restore reduced). One pass merging the index stream with a walk of the tree
    (both in canonical order): a stat per entry, constant memory.

    Without ``reread`` nothing is read: each file's SHA-256 was checked against the index on the bytes the restore
    wrote (:mod:`backups.engine.restorer`); this catches what happened to the tree since (a file deleted,
    truncated, added), not a same-size change of content on the disk."""
    from ..repository.index import iter_index, order_key

    checked = nbytes = rehashed = expected = 0
    problems: list[str] = []
    walk = walk_tree(root)
    cur = next(walk, None)
    blocker = ""  # the last walked entry that is not a directory (a path below it cannot be there)

    def passed(entry: tuple[list[str], str, int, int, int, str]) -> None:
        nonlocal blocker
        if strict and stat.S_ISREG(entry[2]):
            problems.append(f"{entry[1]}: not in the snapshot")
        if not stat.S_ISDIR(entry[2]):
            blocker = entry[1] + "/"

    try:
        for path, e in iter_index(storage, rec["objects"]["index"]):
            if e[0] != "f" or not select(path):
                continue
            expected += 1
            key = order_key(path)
            while cur is not None and cur[0] < key:
                passed(cur)
                cur = next(walk, None)
            if cur is None or cur[0] != key:
                problems.append(f"{path}: not a regular file below {root} ({blocker[:-1]!r} is not a directory)"
                                if blocker and path.startswith(blocker) else f"{path}: missing")
                continue
            _, _, mode, size, dir_fd, name = cur
            if not stat.S_ISREG(mode):
                problems.append(f"{path}: not a regular file below {root} (a {_kind(mode)})")
            elif path in skip:
                pass
            elif size != e[1]:
                problems.append(f"{path}: size differs from the snapshot ({size} bytes on disk, {e[1]} in the index)")
            elif reread:
                try:
                    digest, size = _sha256_at(dir_fd, name)
                except OSError as exc:
                    problems.append(f"{path}: cannot be read back ({exc.strerror})")
                else:
                    rehashed += 1
                    if digest != e[5] or size != e[1]:
                        problems.append(f"{path}: content differs from the snapshot (SHA-256 {digest[:12]}…, index "
                                        f"{str(e[5])[:12]}…)")
                    else:
                        checked += 1
                        nbytes += size
            else:
                checked += 1
                nbytes += size
            passed_file = cur
            cur = next(walk, None)
            if not stat.S_ISDIR(passed_file[2]):
                blocker = passed_file[1] + "/"
        while cur is not None:
            passed(cur)
            cur = next(walk, None)
    finally:
        walk.close()
    return {"files_checked": checked, "bytes_checked": nbytes, "files_expected": expected, "files_rehashed": rehashed,
            "check": "reread" if reread else "stat"}, problems


def _kind(mode: int) -> str:
    return "directory" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "special file"


def _validate_db(snap: Any, name: str, path: Path, req: RestoreRequest, pg_dsn: str | None,
                 scratch_dsn: str | None, chosen: list[str] | None = None) -> dict[str, Any] | None:
    rec = snap.sources[name]
    tables = rec["details"].get("tables") or {}
    chosen = chosen or req.tables
    if chosen:
        tables = {t: d for t, d in tables.items() if t in chosen or f"public.{t}" in chosen}
    if rec["kind"] == "sqlite":
        from ..validation import validate_sqlite

        return validate_sqlite(path / rec["details"]["database"], tables, raise_on_failure=False)
    if rec["kind"] == "postgres":
        if pg_dsn:
            from ..validation import validate_postgres

            return validate_postgres(pg_dsn, tables, raise_on_failure=False, label=f"{name} (target database)",
                                     other_tables_allowed=True)
        if not req.tables:
            return validate_restored(snap, {name: path}, scratch_dsn)[name]
        return {"database": name, "success": None, "skipped": "tables chosen without a PostgreSQL target"}
    return None


#: how the content of the restored files was checked, as the report and the run note say it
CHECKED_WHILE_WRITTEN = "SHA-256 checked while written"
REREAD = "SHA-256 checked while written, then re-read and re-hashed"


@dataclass
class Verification:
    """What :func:`verify_restore` checked. ``files`` per source: ``files_checked`` (files found as the snapshot
    has them: present, regular, right size — and, with ``reread``, the right SHA-256), ``bytes_checked``,
    ``files_expected``, ``files_rehashed`` (read back and re-hashed: 0 without ``reread``), ``check``
    (``stat`` or ``reread``) and ``problems``."""

    snapshot_id: str
    target: str
    ok: bool
    files: dict[str, dict[str, Any]]
    validation: dict[str, Any]
    seconds: float
    reread: bool = False  #: every file read back and re-hashed (``--reread``); else presence, type and size only
    content: str = CHECKED_WHILE_WRITTEN  #: how file contents were checked, in words (:data:`REREAD`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verification:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def summary(self) -> str:
        """One line: how many restored files were checked, and how."""
        n = sum(int(f.get("files_checked") or 0) for f in self.files.values())
        if self.reread:
            return f"{n} restored file(s) re-read and re-hashed against the snapshot's index"
        return (f"{n} restored file(s) present with their sizes (each file's SHA-256 checked against the snapshot's "
                "index while written; not re-read)")


def verify_restore(cfg: Config, req: RestoreRequest, loc: Location, restored: RestoreResult, resolver: Any = None,
                   pg_dsn: str | None = None, *, validate: bool = True, scratch_dsn: str | None = None,
                   locked: bool = False) -> Verification:
    """Check the restored tree against the snapshot's index: every selected regular file present with its size
    and type, no stray file in a ``files`` source (a stat walk, nothing read: every file's SHA-256 was checked on
    the bytes written); with ``req.reread`` every file also read back and re-hashed. With ``validate``, run the GX
    suite on the databases (``validation`` then says ``skipped`` per database otherwise). Every problem is
    collected; IntegrityError lists them.

    Runs under the repository's shared lock, so a prune cannot forget the snapshot while it is checked:
    ``locked`` when the caller holds it across the restore and this step (the CLI, the drill); otherwise (the
    DAG's separate ``verify_restored`` task) it takes its own, and a snapshot that a prune removed between the
    tasks is NotFoundError (exit 3) naming it."""
    from ..storage import open_storage

    st = open_storage(cfg, loc.storage, resolver, read_only=True)
    with nullcontext() if locked else shared_lock(cfg, loc.storage, resolver, operation="verify restore"):
        _cat, snap = snapshot_still_there(cfg, st, loc.snapshot_id, step="verification of the restore",
                                          since="it was restored")
        return _verify_restored(cfg, req, st, snap, restored, pg_dsn, validate=validate, scratch_dsn=scratch_dsn)


def _verify_restored(cfg: Config, req: RestoreRequest, st: Any, snap: Any, restored: RestoreResult,
                     pg_dsn: str | None, *, validate: bool, scratch_dsn: str | None) -> Verification:
    t0 = time.monotonic()
    files: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    validation: dict[str, Any] = {}
    for name, r in restored.sources.items():
        rec, root = snap.sources[name], Path(r.path)
        if not root.is_dir():
            problems.append(f"{name}: {root} does not exist on this host (restore, verification and report must run "
                            "on the host that owns the target)")
            continue
        kind = rec["kind"]
        skip = {rec["details"]["database"]} if kind == "sqlite" and req.tables else set()  # reduced: GX checks it
        stats, found = hash_check(st, rec, root, include_selector(req.includes) if kind == "files" else (lambda p: True),
                                  skip, strict=kind == "files", reread=bool(req.reread))
        files[name] = {"kind": kind, **stats, "problems": len(found)}
        problems += [f"{name}/{p}" for p in found]
        if kind == "sqlite" and req.tables:  # a table-level restore: every kept foreign key must resolve
            from ..engine.databases import sqlite_foreign_key_check

            dangling = sqlite_foreign_key_check(root / rec["details"]["database"])
            files[name]["foreign_key_check"] = "ok" if not dangling else dangling[:10]
            problems += [f"{name}: foreign key check: {d}" for d in dangling[:10]]
        if kind not in DB_KINDS:
            continue
        if not validate:
            validation[name] = {"database": name, "success": None, "skipped": "validation turned off"}
            continue
        plan = TablePlan.from_dict(restored.tables)
        res = _validate_db(snap, name, root, req, pg_dsn, scratch_dsn,
                           plan.tables().get(name) if plan else None)
        if res is not None:
            validation[name] = res
            if res.get("success") is False:
                problems += [f"{name}: {f}" for f in res.get("failures", [])]
    seconds = round(time.monotonic() - t0, 3)
    if problems:
        raise IntegrityError(f"verification of the restore of {snap.id} into {req.target} failed: {len(problems)} "
                             "problem(s):\n  - " + "\n  - ".join(problems[:30]),
                             hint="do not use this restore; run `backupctl verify --read-data` on the storage, then "
                                  "restore again (force) or from another storage")
    log.info("restore of %s verified in %.1fs: %d file(s) %s; %s", snap.id, seconds,
             sum(f["files_checked"] for f in files.values()),
             "re-read and re-hashed" if req.reread else "present with their sizes (SHA-256 checked while written)",
             ", ".join(f"{n}: " + ("skipped" if v.get("success") is None else
                                   f"{v['statistics']['successful_expectations']}/{v['statistics']['evaluated_expectations']}"
                                   " expectations met") for n, v in validation.items()) or "no database")
    return Verification(snapshot_id=snap.id, target=req.target, ok=True, files=files,
                        validation=compact_results(validation), seconds=seconds, reread=bool(req.reread),
                        content=REREAD if req.reread else CHECKED_WHILE_WRITTEN)


# ------------------------------------------------------------------------------------------------ report
@dataclass
class RunInfo:
    """Who ran the restore and how: the run-specific part of the report (differs between the two doors)."""

    door: str  # "cli" or the DAG id
    run_id: str
    requested_by: str
    approval: dict[str, Any]
    run_seconds: float | None = None
    archive_wait: dict[str, Any] | None = None


#: report fields that differ from run to run and between the doors (the both-doors test ignores them)
RUN_SPECIFIC = ("dag_id", "run_id", "requested_by", "approval", "archive_wait", "durations", "finished_at")


def approval_from_hitl(detail: dict[str, Any] | None) -> dict[str, Any]:
    """The report's approval block from an Airflow HITL answer (None: the gate was off)."""
    if not detail:
        return {"by": None, "choice": "not required", "note": "require_approval was false"}
    who = detail.get("responded_by_user") or {}
    return {"by": who.get("name") or who.get("id") or "unknown", "at": str(detail.get("responded_at")),
            "choice": (detail.get("chosen_options") or ["?"])[0], "note": (detail.get("params_input") or {}).get("note") or ""}


def cli_run_info(run_seconds: float | None = None, archive_wait: dict[str, Any] | None = None) -> RunInfo:
    """The CLI door: requested by the OS user; there is no approval gate."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return RunInfo(door="cli", run_id=f"cli-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}",
                   requested_by=user, approval={"by": None, "choice": "not required (CLI)", "note": ""},
                   run_seconds=run_seconds, archive_wait=archive_wait)


@dataclass
class RestoreReport:
    doc: dict[str, Any]
    markdown: str

    def to_dict(self) -> dict[str, Any]:
        return {"doc": self.doc, "markdown": self.markdown}


def build_report(req: RestoreRequest, loc: Location, restored: RestoreResult, verified: Verification,
                 run: RunInfo) -> RestoreReport:
    """``RESTORE_REPORT`` as a JSON document and Markdown: the snapshot, where from and to, what was restored,
    checked (how: :attr:`Verification.content`) and validated; who asked and the approval."""
    params = {**req.to_dict(), "sources": loc.sources}
    approved = run.approval
    doc = {"kind": "restore-result", "dag_id": run.door, "run_id": run.run_id, "requested_by": run.requested_by or "unknown",
           "approval": approved, "params": params,
           "snapshot": {k: getattr(loc, k) for k in (
               "snapshot_id", "tier", "type", "logical_date", "chain", "storage", "storage_type", "archive", "objects")},
           "target": restored.target, "archive_wait": run.archive_wait,
           "sources": {n: r.to_dict() for n, r in restored.sources.items()},
           "verification": verified.to_dict(),
           "durations": {"restore_seconds": restored.seconds, "verify_seconds": verified.seconds,
                         "run_seconds": run.run_seconds},
           "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "status": "success"}
    md = [f"# Restore of {loc.snapshot_id}", "",
          f"* into: `{restored.target}`",
          f"* from storage: `{loc.storage}` ({loc.storage_type}" + (", archive" if loc.archive else "") + ")",
          f"* snapshot: {loc.type}, tier {loc.tier}, logical date {loc.logical_date}, chain " + " -> ".join(loc.chain),
          f"* requested by: **{doc['requested_by']}** (run `{run.run_id}`)",
          f"* approval: {approval_phrase(approved)}",
          f"* files: {verified.content}" + ("" if verified.reread else
                                            "; after the restore every file checked present with its size (no re-read)"),
          f"* options: include {', '.join(req.includes or []) or 'all'}, tables {', '.join(req.tables or []) or 'all'}, "
          f"force {req.force}, "
          f"reread {bool(req.reread)}"
          + (f", with dependencies {req.include_dependencies}" if req.tables else "")
          + (f", PostgreSQL target {req.pg_target_name}" if req.pg_target_name else ""), ""]
    plan = TablePlan.from_dict(restored.tables)
    if plan:
        doc["tables"] = plan.to_dict()
        md += ["## Tables and their dependencies (foreign keys)", ""]
        for n, s in plan.sources.items():
            md.append(f"* {n}: restored {', '.join(s['tables'])}; dependencies restored with them: "
                      + (", ".join(s["added"]) or "none needed")
                      + (f"; already in the target database: {', '.join(s['in_target'])}" if s["in_target"] else "")
                      + ("; foreign key check: " + str(verified.files[n]["foreign_key_check"])
                         if "foreign_key_check" in verified.files.get(n, {}) else "")
                      + ("; loaded in one transaction, constraints validated" if s["kind"] == "postgres"
                         and req.pg_target_name else ""))
        md.append("")
    if run.archive_wait and run.archive_wait.get("archive"):
        md += [f"Archived objects: {run.archive_wait.get('keys')} made readable after "
               f"{run.archive_wait.get('waited_seconds')} s.", ""]
    after = "re-read and re-hashed after" if verified.reread else "present, right size after"
    md += [f"| source | kind | files | size | SHA-256 checked while written | {after} | path |",
           "|---|---|---|---|---|---|---|"]
    for n, r in restored.sources.items():
        v = verified.files.get(n, {})
        md.append(f"| {n} | {r.kind} | {r.files} | {mb(r.bytes)} | {r.verified} | "
                  f"{v.get('files_checked', '-')} | `{r.path}` |")
    warned = [(n, w) for n, r in restored.sources.items() for w in r.warnings or []]
    if warned:
        md += ["", "## Warnings (recorded by the snapshot's chain, or met by this restore)", ""]
        md += [f"* {n}: {w}" for n, w in warned]
    md += ["", "## Data validation (Great Expectations)", ""]
    for n, v in verified.validation.items():
        stats = v.get("statistics") or {}
        md.append(f"* {n}: " + (f"skipped ({v.get('skipped')})" if v.get("success") is None else
                                f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    if not verified.validation:
        md.append("* no database source restored")
    md += ["", f"Restore took {restored.seconds} s, verification {verified.seconds} s; the run {run.run_seconds} s.", ""]
    return RestoreReport(doc=doc, markdown="\n".join(md))


def write_report(target: str, report: RestoreReport) -> list[str]:
    """``RESTORE_REPORT.json`` / ``.md`` in the target directory, each written to a temp name then renamed."""
    paths = []
    for ext, text in (("json", json.dumps(report.doc, indent=1, sort_keys=True, default=str) + "\n"),
                      ("md", report.markdown)):
        final = Path(target) / f"{REPORT_NAME}.{ext}"
        tmp = final.with_name(f".{final.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, final)
        paths.append(str(final))
    return paths


# ------------------------------------------------------------------------------------------------ all steps
@dataclass
class RestoreOutcome:
    """Everything one restore produced (the CLI prints it; ``--json`` prints ``to_dict()``)."""

    location: Location
    restored: RestoreResult
    verified: Verification
    report: RestoreReport
    report_paths: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location.to_dict(), "restored": self.restored.to_dict(),
                "verified": self.verified.to_dict(), "report": self.report_paths}


def restore_snapshot(cfg: Config, req: RestoreRequest, resolver: Any = None, *, pg_dsn: str | None = None,
                     validate: bool = True, poll_seconds: float = 60.0, tty: bool | None = None,
                     thaw_timeout: float | None = None) -> RestoreOutcome:
    """Every step in order, as the CLI runs them: check, locate, prerequisites, thaw, table plan (foreign keys),
    restore, verify, report — the table plan, the restore and its verification under one shared repository lock
    (a prune waits until the restore is verified).
    Raises the first step's BackupError; the report is written only after a verified restore."""
    from .target_lock import TargetOwner, claimed

    t0 = time.monotonic()
    run = cli_run_info()
    req = check_request(cfg, req)
    loc = locate(cfg, req, resolver)
    loc = check_before_approval(cfg, req, loc, resolver, pg_dsn, validate=validate, run_id=run.run_id)
    # one restore per target: the claim is held for the whole run (another restore into it is refused at once)
    with claimed(req.target, TargetOwner(door="cli", run_id=run.run_id, user=run.requested_by)):
        wait = wait_for_archive(cfg, loc, resolver, poll_seconds=poll_seconds, timeout_seconds=thaw_timeout)
        with shared_lock(cfg, loc.storage, resolver, operation="restore"):  # one lock over restore and verification
            plan = TablePlan.from_dict(loc.tables) or plan_tables(cfg, req, loc, resolver, pg_dsn)
            restored = run_restore(cfg, req, loc, resolver, pg_dsn, tty=tty, plan=plan, locked=True)
            verified = verify_restore(cfg, req, loc, restored, resolver, pg_dsn, validate=validate,
                                      scratch_dsn=pg_scratch_dsn(resolver) if validate else None, locked=True)
        run.run_seconds, run.archive_wait = round(time.monotonic() - t0, 1), wait.to_dict()
        report = build_report(req, loc, restored, verified, run)
        paths = write_report(req.target, report)
    return RestoreOutcome(location=loc, restored=restored, verified=verified, report=report, report_paths=paths)


__all__ = ["ArchiveWait", "Location", "Prerequisites", "REPORT_NAME", "RUN_SPECIFIC", "RestoreOutcome",
           "RestoreReport", "RestoreRequest", "RestoreResult", "RestoredSource", "RunInfo", "Verification",
           "CHECKED_WHILE_WRITTEN", "REREAD", "approval_from_hitl", "build_report", "check_before_approval",
           "check_prerequisites", "check_writable", "check_request", "cli_run_info",
           "guard_target", "hash_check", "include_selector", "locate", "plan_tables", "TablePlan",
           "regular_files", "restore_snapshot", "run_restore", "sha256_file", "shared_lock", "snapshot_still_there", "target_state",
           "verify_restore", "wait_for_archive", "walk_tree", "write_report"]
