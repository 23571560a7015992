"""The restore's request and where it reads from: :func:`check_request`, :func:`guard_target`, :func:`locate`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...errors import ConfigError, NotFoundError, RefusedError, did_you_mean
from ..validate import DB_KINDS

if TYPE_CHECKING:
    from ...storage import Resolver

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
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


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


def locate(cfg: Config, req: RestoreRequest, resolver: Resolver | None = None) -> Location:
    """The storage to restore from (``req.storage``, or the first reachable one holding the whole chain) and the
    snapshot, checked against the request (sources present, tables/includes/PostgreSQL target applicable)."""
    from ...engine.locate import find_snapshot
    from ...engine.thaw import needed_keys

    st, cat, snap, skipped = find_snapshot(cfg, req.snapshot, req.tier, storage=req.storage, resolver=resolver)
    cache = _OPENED.get()
    if cache is not None:  # the run's later steps read through the storage opened here
        cache.setdefault(st.name, st)
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


# ------------------------------------------------------------------------------------------------ shared storages
#: the storages a run opened, by name (``RunContext.state["storages"]``), while :func:`sharing_storages` is active
_OPENED: ContextVar[dict[str, Any] | None] = ContextVar("restore_opened_storages", default=None)


def read_only_storage(cfg: Config, name: str, resolver: Resolver | None = None) -> Any:
    """The storage ``name`` opened read-only — once per run while the run shares its storages (the CLI: every
    step of one ``backupctl restore`` reads through the same opened storage); else opened afresh (a DAG task)."""
    from ...storage import open_storage

    cache = _OPENED.get()
    if cache is not None and name in cache:
        return cache[name]
    st = open_storage(cfg, name, resolver, read_only=True)
    if cache is not None:
        cache[name] = st
    return st


@contextmanager
def sharing_storages(cache: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """For the block, :func:`read_only_storage` keeps what it opens in ``cache`` (a run context's state)."""
    token = _OPENED.set(cache)
    try:
        yield cache
    finally:
        _OPENED.reset(token)
