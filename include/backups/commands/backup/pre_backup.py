"""Before anything is written (the DAG's ``pre_backup`` group): what a run backs up (:func:`selection`, the
backup_manual tier), :func:`check_system_state` (every source readable, every storage reachable with room),
:func:`plan_run` (the plan; the step ``prepare_environment``) and the start message."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...config import ARCHIVE_CLASSES, Config, Tier, load_config
from ...errors import BackupError, ConfigError, SourceError, StorageError, SystemStateError, TransientStorageError
from ...sources import open_source
from ...storage import Resolver, open_storage
from ..base import mb
from .results import PreparedRun, SystemState, as_plan

if TYPE_CHECKING:
    from ...engine.backup_pipeline import Plan

log = logging.getLogger("backups.commands.backup")

#: the synthetic tier of the ``backup_manual`` DAG (snapshot ids ``manual-<timestamp>``; retention: keep all)
MANUAL_TIER = "manual"
#: source kinds extracted by ``backup.extract_data``; every other kind (files) goes to ``backup.extract_config``
DATA_KINDS = ("sqlite", "postgres", "command")


# ------------------------------------------------------------------------------------------------ config
def with_manual_tier(cfg: Config) -> Config:
    """The config plus the synthetic ``manual`` tier (all sources, all storages, keep everything)."""
    if MANUAL_TIER in cfg.tiers:
        raise ConfigError(f"tiers.{MANUAL_TIER}: the tier name {MANUAL_TIER!r} is reserved for the backup_manual DAG",
                          hint="rename the tier (e.g. 'on_demand')")
    tier = Tier(type="full", schedule=None, sources=list(cfg.sources), storages=instant_first(cfg, list(cfg.storages)),
                retention=cfg.manual_retention, description="on-demand backups from the backup_manual DAG")
    return cfg.model_copy(update={"tiers": {**cfg.tiers, MANUAL_TIER: tier}})


def instant_first(cfg: Config, storages: list[str]) -> list[str]:
    """``storages`` in their order, archive storage classes moved last: the first storage is the primary, which a
    backup reads back (see ``tiers.<tier>.storages.0`` in the config validation)."""
    return sorted(storages, key=lambda n: getattr(cfg.storages[n], "storage_class", None) in ARCHIVE_CLASSES)


def runtime_config(tier: str) -> Config:
    """The config as a task sees it (read again on the worker; ``$BACKUP_CONFIG`` or the shipped file)."""
    cfg = load_config()
    return with_manual_tier(cfg) if tier == MANUAL_TIER else cfg


@dataclass
class Selection:
    """What one run backs up: the tier's definition, or the backup_manual form."""

    tier: str
    type: str | None
    sources: list[str]
    storages: list[str]
    comment: str = ""


def selection(cfg: Config, tier: str, params: dict[str, Any] | None = None) -> Selection:
    """What ``tier`` backs up; for the manual tier, the sources/storages/type chosen in ``params`` (the DAG form)."""
    if tier != MANUAL_TIER:
        t = cfg.tiers[tier]
        return Selection(tier, None, list(t.sources), list(t.storages))
    params = params or {}
    chosen: dict[str, list[str]] = {}
    for key, known in (("sources", cfg.sources), ("storages", cfg.storages)):
        names = list(params.get(key) or known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"backup_manual: params.{key}: unknown {key[:-1]} {unknown[0]!r}",
                              hint=f"choose from: {', '.join(known)}")
        chosen[key] = [n for n in known if n in names]  # config order: the first storage is the primary
    chosen["storages"] = instant_first(cfg, chosen["storages"])
    if all(getattr(cfg.storages[n], "storage_class", None) in ARCHIVE_CLASSES for n in chosen["storages"]):
        raise ConfigError(f"backup_manual: params.storages: {', '.join(chosen['storages'])} only has archive storage "
                          "classes: a backup reads what it wrote back from its first storage",
                          hint="choose an instant storage too (local, sftp, or s3 STANDARD / STANDARD_IA); the "
                               "archive storage then gets a checked copy")
    typ = params.get("backup_type") or "full"
    return Selection(MANUAL_TIER, typ, chosen["sources"], chosen["storages"], str(params.get("comment") or ""))



def is_archive(cfg: Config, storage: str) -> bool:
    """An archive storage class (GLACIER, DEEP_ARCHIVE): its objects are not readable without a thaw."""
    return getattr(cfg.storages[storage], "storage_class", None) in ARCHIVE_CLASSES


def _problem(what: str, name: str, kind: str, exc: BackupError) -> str:
    """``source app_db (sqlite): <message>`` without repeating the name, fix hint indented under it."""
    msg = str(exc)
    for lead in (f"{what} {name}: ", f"{name}: "):
        msg = msg.removeprefix(lead)
    return f"{what} {name} ({kind}): " + msg.replace("\n  fix:", "\n    fix:")


def _retryable(kind: str, exc: BackupError) -> bool:
    """Network-side problems may heal (a restarting server); local state (a missing file) will not."""
    if isinstance(exc, TransientStorageError):
        return True
    return kind in ("postgres", "s3", "sftp") and isinstance(exc, SourceError | StorageError)


def check_system_state(cfg: Config, sel: Selection, resolver: Resolver | None = None) -> SystemState:
    """Every source readable, every storage reachable with room for the estimated size; all problems at once."""
    problems: list[tuple[str, bool]] = []
    estimates: dict[str, int] = {}
    for name in sel.sources:
        kind: str = cfg.sources[name].type  # a source kind here, a storage kind below
        try:
            src = open_source(cfg, name, resolver)
            src.check()
            estimates[name] = int(src.estimate())
            log.info("source %s (%s): readable, about %s", name, kind, mb(estimates[name]))
        except BackupError as err:
            problems.append((_problem("source", name, kind, err), _retryable(kind, err)))
    total = sum(estimates.values())
    free: dict[str, int | None] = {}
    unavailable: dict[str, str] = {}
    from ...repository import Repository
    from ...storage.reach import open_each

    # the one unreachable-storage rule (storage.reach): each storage on its own; the primary is the one this
    # operation needs (it receives the extraction: without it there is no backup at all), a copy target that is
    # down is named and the backup goes ahead (its upload task fails, the run goes red, the next run back-fills)
    for name, st, fault in open_each(cfg, sel.storages, resolver, read_only=False):
        kind = cfg.storages[name].type
        if st is not None:
            try:
                free[name] = st.free_bytes()
                Repository(st, cfg).locks.report()  # stale locks: a warning in this task's log (monitoring)
            except BackupError as error:
                st, fault = None, error
        if fault is not None:
            if name == sel.storages[0]:
                problems.append((_problem("storage", name, kind, fault), _retryable(kind, fault)))
            else:
                unavailable[name] = fault.message
                log.warning("%s — the backup goes ahead on the other storages; upload[%s] will fail and the next run "
                            "back-fills the copy", _problem("storage", name, kind, fault), name)
            continue
        room = free[name]
        if room is not None and room < total:
            problems.append((f"storage {name} ({kind}): only {mb(room)} free, the sources hold about {mb(total)} "
                             "(a full snapshot needs at most that much)", False))
        else:
            log.info("storage %s (%s): reachable, %s free", name, kind, mb(room) if room is not None else "unknown")
    if problems:
        retryable = all(r for _, r in problems)
        lines = "\n  - ".join(p for p, _ in problems)
        raise SystemStateError(
            f"system state check failed for the {sel.tier} backup ({len(problems)} problem(s)):\n  - {lines}",
            hint="retry later (a server may be restarting; a DAG task retries by itself)" if retryable
            else "fix the configuration or the host, then run the backup again (a DAG task: clear it); retrying "
                 "as is would not help",
            retryable=retryable, storage_only=all(p.startswith("storage ") for p, _ in problems))
    log.info("system ready: %d source(s), about %s to read, %d storage(s)", len(estimates), mb(total), len(free))
    return SystemState(estimates=estimates, estimated_bytes=total, free_bytes=free, unavailable=unavailable)


def plan_run(cfg: Config, sel: Selection, logical_date: datetime | str, state: SystemState,
             resolver: Resolver | None = None, *, now: datetime | None = None) -> PreparedRun:
    """The plan: snapshot id from the logical date, parent and chain, estimated size (XCom: small dicts)."""
    from ...engine import backup_pipeline as pipeline

    primary = open_storage(cfg, sel.storages[0], resolver)
    p = pipeline.plan(cfg, sel.tier, logical_date, type_override=sel.type, storage=primary, resolver=resolver,
                      sources=sel.sources, storages=sel.storages, comment=sel.comment, now=now)
    p.estimated_bytes = int(state.estimated_bytes or 0)
    if p.already_committed:
        log.info("snapshot %s is already committed on %s: later steps only verify it", p.snapshot_id, primary.name)
    else:
        log.info("plan: %s (%s%s), parent %s, chain of %d, about %s from %s into %s", p.snapshot_id, p.type,
                 f", requested {p.requested_type}: {p.promoted_reason}" if p.promoted_reason else "",
                 p.parent or "-", len(p.chain), mb(p.estimated_bytes), ", ".join(p.sources), ", ".join(p.storages))
    kinds = {n: cfg.sources[n].type for n in p.sources}
    return PreparedRun(
        plan=p,
        data_sources=[n for n in p.sources if kinds[n] in DATA_KINDS],
        file_sources=[n for n in p.sources if kinds[n] not in DATA_KINDS],
        storages=list(p.storages),
        estimates={n: int((state.estimates or {}).get(n, 0)) for n in p.sources},
    )


def start_message(plan: Plan) -> str:
    """One line announcing the planned run (the start notification)."""
    p = as_plan(plan)
    return (f"backup {p.snapshot_id} starting: {p.type}"
            + (f" (requested {p.requested_type}: {p.promoted_reason})" if p.promoted_reason else "")
            + f", parent {p.parent or '-'}, sources {', '.join(p.sources)}, storages "
            + f"{', '.join(p.storages)}, about {mb(p.estimated_bytes)}"
            + (f", comment: {p.comment}" if p.comment else "")
            + (" — already committed, nothing to extract" if p.already_committed else ""))
