"""The backup command, step by step (no Airflow import): ``backupctl backup`` runs the steps in a row, the ``@task`` adapters in
:mod:`backups.orchestration.dags` pass context values in (logical date, params, run id) and map errors.

Each step resolves what it needs from the config, calls the engine, and returns a small typed result (a
:class:`~backups.commands.base.Result` dataclass); its ``to_dict()`` is the only thing that travels between tasks
(XCom), and ``X.from_dict()`` turns a pulled XCom back into the typed input of a later step. Nothing a step writes on local disk is read by another step:
data moves through the backup storages only, so the DAGs run unchanged on Celery or Kubernetes workers.

Order of a run: check_system_state → prepare_environment (the plan) → extract (one call per source, into the
primary storage) → commit (manifest last, on the primary) → upload (per storage: verify the primary, replicate
to the others) → check_integrity (per storage) / test_restore (the one Great Expectations run) → validate_data
(reports that run) → completion summary → cleanup.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..catalog.manifest import Catalog, manifest_key
from ..config import ARCHIVE_CLASSES, Config, Tier, load_config
from ..errors import (
    BackupError,
    ConfigError,
    IntegrityError,
    SourceError,
    StorageError,
    SystemStateError,
    TransientStorageError,
)
from ..sources import open_source
from ..storage import Resolver, Storage, open_storage
from .base import Result, approval_phrase, mb
from .procedure import CLEANUP, Procedure, RunContext, Skip, Step
from .procedure import run as run_procedure
from .validate import DB_KINDS, compact_results, load_pg_dump, pg_check_server, raise_failed, validate_restored

if TYPE_CHECKING:
    from ..engine.snapshot import Plan

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


# ------------------------------------------------------------------------------------------------ results
@dataclass
class StepResult(Result):
    """A step's result whose optional fields (``OPTIONAL``) are left out of :meth:`to_dict` when unset, so the
    XCom payload holds exactly the keys the step produced."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        return {k: v for k, v in out.items() if not (k in self.OPTIONAL and v is None)}


@dataclass
class SystemState(StepResult):
    """``check_system_state``: estimated bytes per source, free bytes per storage, copy targets that are down."""

    estimates: dict[str, int]
    estimated_bytes: int
    free_bytes: dict[str, int | None]
    unavailable: dict[str, str] = field(default_factory=dict)


@dataclass
class PreparedRun(StepResult):
    """``prepare_environment``: the plan and what the extract tasks are mapped over (XCom: one key per field)."""

    plan: Plan
    data_sources: list[str]
    file_sources: list[str]
    storages: list[str]
    estimates: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "data_sources": list(self.data_sources),
                "file_sources": list(self.file_sources), "storages": list(self.storages),
                "estimates": dict(self.estimates)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreparedRun:
        return cls(plan=as_plan(d["plan"]), data_sources=list(d["data_sources"]), file_sources=list(d["file_sources"]),
                   storages=list(d["storages"]), estimates=dict(d["estimates"]))


@dataclass
class ExtractResult(StepResult):
    """``extract_source``: what one source stored (:func:`backups.engine.snapshot.extract`), or why it was skipped."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("files", "bytes", "stored_bytes", "seconds", "warnings", "skipped")
    source: str
    files: int | None = None
    bytes: int | None = None
    stored_bytes: int | None = None
    seconds: float | None = None
    warnings: int | None = None
    skipped: str | None = None


@dataclass
class CommitResult(StepResult):
    """``commit_snapshot``: the committed snapshot's identity and totals."""

    snapshot_id: str
    type: str
    parent: str | None
    chain: list[str]
    storage: str
    files: int
    bytes: int
    stored_bytes: int
    objects: int
    duration_seconds: float | None
    already_committed: bool


@dataclass
class UploadResult(StepResult):
    """``upload_to``: the primary's presence check (objects, bytes) or a replica's copy (copied_bytes, backfilled)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("objects", "bytes", "copied_bytes", "backfilled")
    storage: str
    role: str
    seconds: float
    objects: int | None = None
    bytes: int | None = None
    copied_bytes: int | None = None
    backfilled: list[str] | None = None


@dataclass
class IntegrityResult(StepResult):
    """``check_integrity``: what was re-hashed on one storage and the problems found (the step raises on any)."""

    storage: str
    ok: bool
    snapshot_id: str
    objects_hashed: int
    bytes_hashed: int
    chain_objects: int
    problems: list[str]
    seconds: float


@dataclass
class ValidationResult(StepResult):
    """``validate_data``: Great Expectations results per database (compact form), or why nothing was validated."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("skipped", "seconds")
    snapshot_id: str
    storage: str
    databases: dict[str, Any]
    skipped: str | None = None
    seconds: float | None = None


@dataclass
class RestoreTestResult(StepResult):
    """``test_restore``: the chain restored from the run's last storage, per-source counts and validation."""

    snapshot_id: str
    storage: str
    chain: list[str]
    sources: dict[str, dict[str, Any]]
    validation: dict[str, Any]
    seconds: float


@dataclass
class CompletionSummary(StepResult):
    """``completion_summary`` / ``complete_run``: the run's summary; ``report`` (result document keys) and, for
    backup_manual, ``requested_by`` and ``approval`` are set by :func:`complete_run`."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("report", "requested_by", "approval", "warnings")
    snapshot_id: str
    application: str
    tier: str
    type: str
    requested_type: str
    promoted_reason: str | None
    parent: str | None
    chain: list[str]
    logical_date: str
    comment: str
    storages: list[str]
    sources: dict[str, dict[str, Any]]
    totals: dict[str, Any]
    durations: dict[str, Any]
    checks: dict[str, Any]
    status: str = "success"
    report: list[str] | None = None
    requested_by: str | None = None
    approval: dict[str, Any] | None = None
    #: the plan's own warnings, as in the manifest (clock skew); the sources' are counted per source
    warnings: list[str] | None = None


@dataclass
class CleanupResult(StepResult):
    """``cleanup``: scratch dirs removed; whether the snapshot was committed and, if not, the objects left for a retry."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("committed", "uncommitted_objects")
    removed: list[str] = field(default_factory=list)
    committed: bool | None = None
    uncommitted_objects: int | None = None


def as_plan(plan: Plan | dict[str, Any]) -> Plan:
    """A :class:`~backups.engine.snapshot.Plan` (as is) or its ``to_dict()`` form (an XCom) turned back into one."""
    from ..engine.snapshot import Plan

    return plan if isinstance(plan, Plan) else Plan.from_dict(dict(plan))


# ------------------------------------------------------------------------------------------------ scratch
def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", part)[:120] or "_"


def scratch_root() -> Path:
    """Where tasks keep temporary files on a worker: ``$BACKUP_STAGING`` or the system temp dir."""
    return Path(os.environ.get("BACKUP_STAGING") or tempfile.gettempdir()) / "fmr-backups"


def run_scratch(dag_id: str, run_id: str) -> Path:
    """The scratch directory of one run on this worker (its tasks' private dirs live under it)."""
    return scratch_root() / _safe(dag_id) / _safe(run_id)


@contextlib.contextmanager
def task_scratch(dag_id: str, run_id: str, label: str) -> Iterator[Path]:
    """A private temporary directory for one task try, removed when the task ends (even on failure)."""
    base = run_scratch(dag_id, run_id)
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{_safe(label)}-", dir=base) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def _staging_env(path: Path) -> Iterator[None]:
    """Point the engine's dump staging (``BACKUP_STAGING``) into the task's scratch directory."""
    old = os.environ.get("BACKUP_STAGING")
    os.environ["BACKUP_STAGING"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BACKUP_STAGING", None)
        else:
            os.environ["BACKUP_STAGING"] = old


# ------------------------------------------------------------------------------------------------ pre_backup
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
        except BackupError as exc:
            problems.append((_problem("source", name, kind, exc), _retryable(kind, exc)))
    total = sum(estimates.values())
    free: dict[str, int | None] = {}
    unavailable: dict[str, str] = {}
    from ..repository import Repository
    from ..storage.reach import open_each

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


def prepare_environment(cfg: Config, sel: Selection, logical_date: datetime | str, state: SystemState,
                        resolver: Resolver | None = None, *, now: datetime | None = None) -> PreparedRun:
    """The plan: snapshot id from the logical date, parent and chain, estimated size (XCom: small dicts)."""
    from ..engine import snapshot

    primary = open_storage(cfg, sel.storages[0], resolver)
    p = snapshot.plan(cfg, sel.tier, logical_date, type_override=sel.type, storage=primary, resolver=resolver,
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


# ------------------------------------------------------------------------------------------------ backup
def extract_source(cfg: Config, plan: Plan, source: str, scratch: Path | None, resolver: Resolver | None = None,
                   estimate: int | None = None, *, checksum: bool = False, progress: Any = None) -> ExtractResult:
    """Back up one source into the primary storage (objects + part record); idempotent for a retry. ``scratch``:
    the task's private directory, where dumps are staged (``None``: ``$BACKUP_STAGING`` or the temp dir, as the CLI
    does — its extractions share a process, and the environment); ``progress``: the run's progress (the CLI's bar),
    else a log line every few seconds."""
    from ..engine import snapshot
    from ..engine.progress import Progress

    p = as_plan(plan)
    if p.already_committed:
        log.info("%s is already committed: nothing to extract for %s", p.snapshot_id, source)
        return ExtractResult(source=source, skipped="already committed")
    from ..repository import Repository

    primary = open_storage(cfg, p.storages[0], resolver)
    own = progress is None
    prog = Progress(f"{p.snapshot_id} {source}", estimate or None, interval=5.0, tty=False) if own else progress
    log.info("extracting %s (%s) into %s", source, cfg.sources[source].type, primary.describe())
    try:
        # shared repo lock + exclusive lock on id + source: parallel extracts of other sources do not wait
        with Repository(primary, cfg).backup_lock(p.snapshot_id, source, operation="extract"), \
                (_staging_env(scratch) if scratch is not None else contextlib.nullcontext()):
            snapshot.clean_staging(cfg, cfg.locks.orphan_grace_hours * 3600)
            out = snapshot.extract(cfg, p, source, primary, resolver=resolver, checksum=checksum, progress=prog)
    finally:
        if own:
            prog.close()
    return ExtractResult(**out)


def commit_snapshot(cfg: Config, plan: Plan, resolver: Resolver | None = None) -> CommitResult:
    """Write the manifest on the primary storage — last, it is the commit marker."""
    from ..engine import snapshot
    from ..repository import Repository

    p = as_plan(plan)
    primary = open_storage(cfg, p.storages[0], resolver)
    with Repository(primary, cfg).backup_lock(p.snapshot_id, operation="commit") as held:
        snap = snapshot.commit(cfg, p, primary, locks=held)
    d = snap.doc
    return CommitResult(snapshot_id=snap.id, type=snap.type, parent=snap.parent, chain=snap.chain,
                        storage=primary.name, files=d["totals"]["files"], bytes=d["totals"]["bytes"],
                        stored_bytes=d["totals"]["stored_bytes"], objects=d["totals"]["objects"],
                        duration_seconds=d.get("duration_seconds"), already_committed=bool(p.already_committed))


def upload_to(cfg: Config, plan: Plan, storage: str, resolver: Resolver | None = None) -> UploadResult:
    """Primary: check every object of the chain is there. Other storages: replicate (SHA-256 checked, manifest last)."""
    from ..engine import snapshot

    p = as_plan(plan)
    t0 = time.monotonic()
    primary_name = p.storages[0]
    if storage == primary_name:
        st = open_storage(cfg, storage, resolver, read_only=True)
        cat = Catalog(st, cfg.application)
        snap = cat.get(p.snapshot_id)
        missing = cat.missing_objects(snap)
        if missing:
            raise IntegrityError(f"{storage}: {len(missing)} object(s) of {snap.id}'s chain are missing or short: "
                                 + "; ".join(missing[:10]), hint="re-run the backup (clear the backup group)")
        objects = list(snap.objects())
        log.info("%s is the primary: %s committed there with %d object(s), %s", storage, snap.id, len(objects),
                 mb(sum(o["size"] for o in objects)))
        return UploadResult(storage=storage, role="primary", objects=len(objects),
                            bytes=sum(o["size"] for o in objects), seconds=round(time.monotonic() - t0, 3))
    src = open_storage(cfg, primary_name, resolver, read_only=True)
    dst = open_storage(cfg, storage, resolver)
    dst.check()  # reachable, and its key matches, before anything (a lock) is written there
    log.info("replicating %s from %s to %s", p.snapshot_id, src.describe(), dst.describe())
    from ..repository import Repository

    with Repository(src, cfg).lock("repo", exclusive=False, operation="replicate"), \
            Repository(dst, cfg).backup_lock(p.snapshot_id, operation="replicate") as held:
        copied = snapshot.replicate(cfg, p.snapshot_id, src, dst, locks=held)
        filled = snapshot.backfill(cfg, src, dst)  # snapshots this storage missed while it was down
    if filled:
        log.info("back-filled %d snapshot(s) %s missed: %s", len(filled), storage, ", ".join(filled))
    seconds = round(time.monotonic() - t0, 3)
    log.info("replicated %s to %s: %s copied in %.1fs", p.snapshot_id, storage, mb(copied), seconds)
    return UploadResult(storage=storage, role="replica", copied_bytes=copied, seconds=seconds, backfilled=filled)


# ------------------------------------------------------------------------------------------------ verify
def check_integrity(cfg: Config, plan: Plan, storage: str, resolver: Resolver | None = None) -> IntegrityResult:
    """What landed on ``storage``: every object of the new snapshot re-read and SHA-256 checked; the rest of
    its chain (manifests, presence and sizes) checked structurally."""
    from ..engine.checker import object_problem, verify

    p = as_plan(plan)
    t0 = time.monotonic()
    st = open_storage(cfg, storage, resolver, read_only=True)
    from ..repository import Repository, repo_scope

    # under the shared repository lock: a prune (exclusive) cannot remove a chain object while it is checked
    with Repository(st, cfg).lock(repo_scope(), exclusive=False, operation="integrity"):
        cat = Catalog(st, cfg.application)
        snap = cat.get(p.snapshot_id)
        structure = verify(st, cat, [snap], read_data=False, include_broken=False)
        problems = list(structure.problems)
        hashed = hashed_bytes = 0
        failed = {sid: list(p) for sid, p in structure.failed.items()}
        # an archive storage class (GLACIER) cannot be read without a thaw: its copy was SHA-256 checked as it was
        # written (upload), so here its objects are checked for presence and size only
        frozen = is_archive(cfg, storage)
        for obj in snap.objects():
            problem = object_problem(st, obj, read_data=not frozen)
            if not frozen:
                hashed += 1
                hashed_bytes += obj["size"]
            if problem:
                problems.append(f"{snap.id}: {problem}")
                failed.setdefault(snap.id, []).append(f"{snap.id}: {problem}")
    seconds = round(time.monotonic() - t0, 3)
    _record_integrity(cfg, st, snap.id, failed, read_data=not frozen)
    report = IntegrityResult(storage=storage, ok=not problems, snapshot_id=snap.id, objects_hashed=hashed,
                             bytes_hashed=hashed_bytes, chain_objects=structure.objects, problems=problems[:20],
                             seconds=seconds)
    if problems:
        raise IntegrityError(f"integrity check of {snap.id} on {storage} failed ({len(problems)} problem(s)):\n  - "
                             + "\n  - ".join(problems[:20]),
                             hint="re-run the upload for this storage (clear backup.upload), then check again")
    if frozen:
        log.info("integrity of %s on %s (archive class, not readable without a thaw): every object present with its "
                 "size (their SHA-256 was checked as they were copied), chain of %d object(s) present, in %.1fs",
                 snap.id, storage, structure.objects, seconds)
    else:
        log.info("integrity of %s on %s: %d object(s), %s re-hashed, chain of %d object(s) present, in %.1fs",
                 snap.id, storage, hashed, mb(hashed_bytes), structure.objects, seconds)
    return report


def is_archive(cfg: Config, storage: str) -> bool:
    """An archive storage class (GLACIER, DEEP_ARCHIVE): its objects are not readable without a thaw."""
    return getattr(cfg.storages[storage], "storage_class", None) in ARCHIVE_CLASSES


def _record_integrity(cfg: Config, storage: Storage, snap_id: str, failed: dict[str, list[str]], *,
                      read_data: bool = True) -> None:
    """Add the check to the storage's verification record: it re-hashed only ``snap_id``'s own objects, so it
    records (and may clear) that snapshot only, never another one's open failure. Logged, never fatal."""
    from ..repository import Repository

    try:
        Repository(storage, cfg).record_verification(read_data=read_data, checked=[snap_id], failed=failed, every=False,
                                                     by="backup")
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not fail a good backup
        log.warning("could not write the verification record of %s: %s", storage.name,
                    getattr(exc, "message", None) or exc)


def test_restore(cfg: Config, plan: Plan, scratch: Path, resolver: Resolver | None = None, *, validate: bool = True) -> RestoreTestResult:
    """Restore the whole chain from the last storage of the run that is readable without a thaw (a replica when there
    is one; never an archive class), read-only, into
    this task's scratch dir: every file SHA-256 checked by the restorer; every PostgreSQL dump loaded with
    pg_restore into a scratch database (:func:`~backups.commands.validate.pg_check_server`), dropped afterwards —
    a dump that does not load fails the step (ValidationFailedError, exit 4); then the Great Expectations suite on
    the restored databases — the one GX run of a backup. A failed expectation does not fail the restore test (the
    restore itself worked): :func:`validate_data` reports it from this result. ``validate=False`` (``backupctl
    backup --no-validate``) leaves out Great Expectations only: every dump is still loaded."""
    from ..engine.restorer import restore

    p = as_plan(plan)
    t0 = time.monotonic()
    # the last storage that is readable now (a replica when there is one); an archive class would need a thaw
    from ..repository import Repository, repo_scope

    st = open_storage(cfg, [n for n in p.storages if not is_archive(cfg, n)][-1], resolver, read_only=True)
    # under the shared repository lock: a prune (exclusive) cannot remove a chain object while it is read
    with Repository(st, cfg).lock(repo_scope(), exclusive=False, operation="test-restore"):
        cat = Catalog(st, cfg.application)
        snap = cat.get(p.snapshot_id)
        chain = [s.id for s in cat.chain_of(snap)]
        log.info("test restore of %s (chain %s) from %s", snap.id, " -> ".join(chain), st.describe())
        try:
            results = restore(st, cat, snap, scratch / "restore")
        except IntegrityError as exc:  # the snapshot is committed, but its chain does not restore: say what to do
            raise IntegrityError(f"test restore of {snap.id} from {st.name} failed: {exc.message}",
                                 hint=f"the chain {' -> '.join(chain)} is not restorable from {st.name}: take a full "
                                      f"backup now (`backupctl backup --tier {p.tier} --type full`, or trigger "
                                      "backup_manual), then `backupctl verify --all --read-data` to find every damaged "
                                      "object") from None
    sources: dict[str, dict[str, Any]] = {r.source: {"kind": r.kind, "files": r.files, "bytes": r.bytes, "verified": r.verified} for r in results}
    # every PostgreSQL dump is loaded into a scratch database (drill.postgres or the documented default) and
    # validated there: a dump that does not load fails this step, naming pg_restore's error
    servers = {r.source: pg_check_server(cfg, r.source, resolver) for r in results if r.kind == "postgres"}
    if validate:
        validated = validate_restored(snap, {r.source: Path(r.path) for r in results if r.kind in DB_KINDS}, servers)
    else:
        validated = {}
        for r in results:
            if r.kind in DB_KINDS:
                validated[r.source] = {"database": r.source, "success": None, "skipped": "not validated (--no-validate)"}
            if r.kind == "postgres":  # the dump must still load: that is the proof it restores
                details = snap.sources[r.source]["details"]
                loaded = load_pg_dump(Path(r.path) / "dump", details, servers[r.source],
                                      f"{r.source} ({details.get('database')})", validate=False)
                log.info("test restore of %s: the dump of %s loaded into a scratch database (%d table(s)), not "
                         "validated (--no-validate)", snap.id, r.source, loaded["tables"])
    for name, r in validated.items():
        log.info("validation of %s: %s", name, "skipped" if r.get("success") is None else
                 f"{r['statistics']['successful_expectations']}/{r['statistics']['evaluated_expectations']} met")
    seconds = round(time.monotonic() - t0, 3)
    log.info("test restore of %s OK: %d file(s), %s, all SHA-256 verified, in %.1fs", snap.id,
             sum(s["files"] for s in sources.values()), mb(sum(s["bytes"] for s in sources.values())), seconds)
    return RestoreTestResult(snapshot_id=snap.id, storage=st.name, chain=chain, sources=sources,
                             validation=compact_results(validated), seconds=seconds)


def validate_data(cfg: Config, plan: Plan, restore_test: RestoreTestResult) -> ValidationResult:
    """The data validation of the run: the Great Expectations results of the copy :func:`test_restore` restored
    (every file SHA-256 checked against the manifest first, so they hold for the snapshot on every storage of the
    run). Nothing is restored or validated a second time; fails with every failed check listed."""
    p = as_plan(plan)
    if restore_test.snapshot_id != p.snapshot_id:
        raise IntegrityError(f"validate_data: the restore test is of {restore_test.snapshot_id}, not of {p.snapshot_id}",
                             hint="clear verify.test_restore and verify.validate_data of this run")
    dbs = dict(restore_test.validation)
    if not dbs:
        log.info("%s has no database source: nothing to validate", p.snapshot_id)
        return ValidationResult(snapshot_id=p.snapshot_id, storage=restore_test.storage, databases={},
                                skipped="no database source")
    for name, r in dbs.items():
        stats = r.get("statistics") or {}
        log.info("validation of %s (restored from %s by test_restore): %s", name, restore_test.storage,
                 "skipped — " + str(r.get("skipped")) if r.get("success") is None else
                 f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met")
    raise_failed("data validation", p.snapshot_id, dbs)
    return ValidationResult(snapshot_id=p.snapshot_id, storage=restore_test.storage, databases=dbs,
                            seconds=round(sum(float(r.get("seconds") or 0) for r in dbs.values()), 3))


# ------------------------------------------------------------------------------------------------ post_backup
def completion_summary(cfg: Config, plan: Plan, committed: CommitResult, integrity: list[IntegrityResult],
                       validation: ValidationResult, restore_test: RestoreTestResult,
                       extracts: list[ExtractResult | None], uploads: list[UploadResult | None],
                       run_seconds: float | None, resolver: Resolver | None = None) -> CompletionSummary:
    """id, type, sizes, durations and checks of the run (read from the committed manifest + the tasks' XComs)."""
    p = as_plan(plan)
    st = open_storage(cfg, p.storages[0], resolver, read_only=True)
    snap = Catalog(st, cfg.application).get(p.snapshot_id)
    d = snap.doc
    seconds = {e.source: e.seconds for e in extracts if e}
    sources = {n: {"kind": r["kind"], "files": r["files"], "bytes": r["bytes"], "stored_files": r["stored_files"],
                   "stored_bytes": r["stored_bytes"], "deleted": r["deleted"], "warnings": len(r["warnings"]),
                   "extract_seconds": seconds.get(n)} for n, r in sorted(d["sources"].items())}
    return CompletionSummary(
        snapshot_id=snap.id, application=cfg.application, tier=d["tier"], type=d["type"],
        requested_type=d["requested_type"], promoted_reason=d.get("promoted_reason"), parent=d.get("parent"),
        chain=d["chain"], logical_date=d["logical_date"], comment=d.get("comment", ""),
        storages=list(p.storages), sources=sources, totals=d["totals"],
        durations={"snapshot_seconds": d.get("duration_seconds"), "run_seconds": run_seconds,
                   "upload_seconds": {u.storage: u.seconds for u in uploads if u}},
        checks={
            "integrity": {i.storage: {"ok": i.ok, "objects_hashed": i.objects_hashed,
                                      "bytes_hashed": i.bytes_hashed} for i in integrity if i},
            "validation": validation.databases,
            "restore_test": {"storage": restore_test.storage, "files": sum(
                s["files"] for s in restore_test.sources.values()), "validation": restore_test.validation,
                "sources": {n: {"kind": s["kind"], "files": s["files"]} for n, s in restore_test.sources.items()}},
        },
        status="success",
        warnings=list(d.get("warnings") or []) or None,
    )


def summary_text(s: dict[str, Any]) -> str:
    """The completion summary for humans (task log, CLI)."""
    lines = [f"backup {s['snapshot_id']} completed: {s['type']}"
             + (f" (requested {s['requested_type']}: {s['promoted_reason']})" if s.get("promoted_reason") else "")
             + f", parent {s['parent'] or '-'}, chain of {len(s['chain'])}",
             f"  totals: {s['totals']['files']} files, {mb(s['totals']['bytes'])}, stored {mb(s['totals']['stored_bytes'])}"
             f" in {s['totals']['objects']} object(s); snapshot took {s['durations']['snapshot_seconds']}s"]
    for n, r in s["sources"].items():
        lines.append(f"  source {n} ({r['kind']}): {r['files']} files, {mb(r['bytes'])}, stored {r['stored_files']} "
                     f"({mb(r['stored_bytes'])}), {r['deleted']} deleted, {r['warnings']} warning(s), "
                     f"{r['extract_seconds']}s")
    for name, i in s["checks"]["integrity"].items():
        lines.append(f"  integrity on {name}: {'OK' if i['ok'] else 'FAILED'} ({i['objects_hashed']} objects re-hashed)")
    for name, v in s["checks"]["validation"].items():
        stats = v.get("statistics") or {}
        lines.append(f"  validation of {name}: " + ("skipped" if v.get("success") is None else
                     f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    rt = s["checks"]["restore_test"]
    lines.append(f"  test restore from {rt['storage']}: {rt['files']} files restored and verified")
    return "\n".join(lines)


def manual_report(summary: dict[str, Any], *, dag_id: str, run_id: str, requested_by: str | None,
                  approval: dict[str, Any] | None, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The result document of a backup_manual run: who asked, who approved, what was taken, checks and results."""
    if approval:
        who = approval.get("responded_by_user") or {}
        approved = {"by": who.get("name") or who.get("id") or "unknown", "at": str(approval.get("responded_at")),
                    "choice": (approval.get("chosen_options") or ["?"])[0], "note": (approval.get("params_input") or {}).get("note") or ""}
    else:
        approved = {"by": None, "choice": "not required", "note": "require_approval was false"}
    doc = {"kind": "manual-backup-result", "dag_id": dag_id, "run_id": run_id,
           "requested_by": requested_by or "unknown", "approval": approved, "params": params, **summary}
    s = summary
    md = [f"# Manual backup {s['snapshot_id']}", "",
          f"* requested by: **{doc['requested_by']}** (run `{run_id}`)",
          f"* comment: {s.get('comment') or '-'}",
          f"* approval: {approval_phrase(approved)}",
          f"* type: {s['type']}" + (f" (requested {s['requested_type']}: {s['promoted_reason']})" if s.get("promoted_reason") else "")
          + f", parent {s['parent'] or '-'}, chain {' -> '.join(s['chain'])}",
          f"* storages: {', '.join(s['storages'])}", "",
          "## What was taken", "", "| source | kind | files | size | stored | stored size |", "|---|---|---|---|---|---|"]
    for n, r in s["sources"].items():
        md.append(f"| {n} | {r['kind']} | {r['files']} | {mb(r['bytes'])} | {r['stored_files']} | {mb(r['stored_bytes'])} |")
    md += ["", "## Checks and results", ""]
    for name, i in s["checks"]["integrity"].items():
        md.append(f"* integrity on {name}: {'OK' if i['ok'] else 'FAILED'} ({i['objects_hashed']} objects, "
                  f"{mb(i['bytes_hashed'])} re-hashed)")
    for name, v in s["checks"]["validation"].items():
        stats = v.get("statistics") or {}
        md.append(f"* data validation of {name} (Great Expectations): " + ("skipped" if v.get("success") is None else
                  f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"))
    rt = s["checks"]["restore_test"]
    md.append(f"* test restore from {rt['storage']}: {rt['files']} files restored, all SHA-256 verified")
    md += ["", f"Snapshot took {s['durations']['snapshot_seconds']} s; run took {s['durations']['run_seconds']} s.", ""]
    return doc, "\n".join(md)


def complete_run(cfg: Config, plan: Plan, committed: CommitResult, integrity: list[IntegrityResult],
                 validation: ValidationResult, restore_test: RestoreTestResult, extracts: list[ExtractResult | None],
                 uploads: list[UploadResult | None], *, run_seconds: float | None, dag_id: str, run_id: str,
                 manual: dict[str, Any] | None = None, resolver: Resolver | None = None) -> CompletionSummary:
    """The end of a run: :func:`completion_summary`, logged, and its result document stored next to the snapshot
    on every storage of the run. ``manual`` (requested_by, approval, params) makes it the backup_manual document."""
    p = as_plan(plan)
    summary = completion_summary(cfg, p, committed, integrity, validation, restore_test, extracts, uploads,
                                 run_seconds, resolver)
    text = summary_text(summary.to_dict())
    log.info("%s", text)
    if manual is not None:
        doc, md = manual_report(summary.to_dict(), dag_id=dag_id, run_id=run_id,
                                requested_by=manual.get("requested_by"), approval=manual.get("approval"),
                                params=manual.get("params") or {})
        summary.report = write_report(cfg, p.storages, p.snapshot_id, doc, md, resolver)
        summary.requested_by, summary.approval = doc["requested_by"], doc["approval"]
    else:
        md = f"# Backup {summary.snapshot_id}\n\n```\n{text}\n```\n"
        summary.report = write_report(cfg, p.storages, p.snapshot_id,
                                      {"kind": "backup-result", **summary.to_dict()}, md, resolver)
    return summary


def report_key(snapshot_id: str, ext: str) -> str:
    """reports/<tier>/<snapshot id>.<ext> (the tier is the id's prefix: reports/manual/… for backup_manual)."""
    from ..repository import report_key as key

    return key(snapshot_id, ext)


def write_report(cfg: Config, storages: list[str], snapshot_id: str, doc: dict[str, Any], markdown: str,
                 resolver: Resolver | None = None) -> list[str]:
    """Store the result document (JSON + Markdown) next to the snapshot on every storage of the run that is readable
    without a thaw (on an archive class it could not be read when it is wanted)."""
    keys = []
    for name in storages:
        if is_archive(cfg, name):
            continue
        st = open_storage(cfg, name, resolver)
        for key, data in ((report_key(snapshot_id, "json"), (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode()),
                          (report_key(snapshot_id, "md"), markdown.encode())):
            st.delete(key)  # a report is replaced by a re-run's (objects are never overwritten: delete, then create)
            st.put_bytes(key, data)
        keys.append(f"{name}:{report_key(snapshot_id, 'json')}")
    log.info("result document stored: %s", ", ".join(keys))
    return keys


def cleanup(cfg: Config | None, plan: Plan | None, dag_id: str, run_id: str, resolver: Resolver | None = None,
            *, stale_after_seconds: float = 2 * 86400) -> CleanupResult:
    """Remove this run's scratch on this worker (each task already removed its own) and stale scratch of earlier
    runs of the DAG; report (never delete) uncommitted objects, which a retry of the run reuses."""
    removed: list[str] = []
    here = run_scratch(dag_id, run_id)
    if here.exists():
        shutil.rmtree(here, ignore_errors=True)
        removed.append(str(here))
    parent = here.parent
    if parent.is_dir():
        now = time.time()
        for old in parent.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > stale_after_seconds:
                    shutil.rmtree(old, ignore_errors=True)
                    removed.append(str(old))
            except OSError:
                continue
    out = CleanupResult(removed=removed)
    if cfg is not None and plan is not None:
        p = as_plan(plan)
        try:
            st = open_storage(cfg, p.storages[0], resolver, read_only=True)
            committed = st.exists(manifest_key(p.snapshot_id))
            out.committed = committed
            if not committed:
                from ..repository import data_prefix

                left = list(st.list(data_prefix(p.snapshot_id)))
                out.uncommitted_objects = len(left)
                if left:
                    log.warning("%s was not committed: %d object(s), %s, stay on %s for a retry of this run (a snapshot "
                                "without a manifest does not exist for restores; retention removes such leftovers)",
                                p.snapshot_id, len(left), mb(sum(o.size for o in left)), st.name)
        except BackupError as exc:
            log.warning("cleanup could not inspect the primary storage: %s", exc.message)
    log.info("cleanup: removed %d scratch dir(s)", len(removed))
    return out


# ------------------------------------------------------------------------------------------------ the procedure
# The backup, declared once: the tier DAGs and backup_manual build their tasks from this list
# (orchestration/dags.py), `backupctl backup` runs it in one process (run_backup below). Each function below is
# the step's body for both doors: (run context, results of the earlier steps, fan-out item) -> typed result.
def _plan_of(r: dict[str, Any]) -> Plan:
    return r["prepare_environment"].plan


def _in_run(item: str, chosen: list[str], what: str) -> None:
    if item not in chosen:
        raise Skip(f"{what} {item} is not part of this run")


def _run_check_system_state(ctx: RunContext, r: dict[str, Any], _: Any) -> SystemState:
    return check_system_state(ctx.cfg, ctx.params["selection"], ctx.resolver)


def _run_prepare_environment(ctx: RunContext, r: dict[str, Any], _: Any) -> PreparedRun:
    if "run_lock" in ctx.state:  # the CLI: held until the commit (see run_backup)
        ctx.state["held"].enter_context(ctx.state["run_lock"]())
    prep = prepare_environment(ctx.cfg, ctx.params["selection"], ctx.params["logical_date"],
                               r["check_system_state"], ctx.resolver, now=ctx.params.get("now"))
    if "make_progress" in ctx.state:  # the CLI: one bar for every extraction
        ctx.state["progress"] = ctx.state["make_progress"](prep.plan.estimated_bytes)
    return prep


def _run_notify_start(ctx: RunContext, r: dict[str, Any], _: Any) -> str:
    msg = start_message(_plan_of(r))
    log.info("%s", msg)
    return msg


def _run_extract(ctx: RunContext, r: dict[str, Any], source: str) -> ExtractResult:
    prep = r["prepare_environment"]
    _in_run(source, prep.plan.sources, "source")
    scratch = ctx.state.get("scratch")  # the DAG: the task's private dir; the CLI: None (one process, one env)
    return extract_source(ctx.cfg, prep.plan, source, scratch, ctx.resolver, prep.estimates.get(source),
                          checksum=bool(ctx.params.get("checksum")), progress=ctx.state.get("progress"))


def _run_commit(ctx: RunContext, r: dict[str, Any], _: Any) -> CommitResult:
    out = commit_snapshot(ctx.cfg, _plan_of(r), ctx.resolver)
    if "held" in ctx.state:
        ctx.state["held"].close()  # the CLI's run lock: the rest only reads what is committed
    return out


def _run_upload(ctx: RunContext, r: dict[str, Any], storage: str) -> UploadResult:
    _in_run(storage, _plan_of(r).storages, "storage")
    return upload_to(ctx.cfg, _plan_of(r), storage, ctx.resolver)


def _run_check_integrity(ctx: RunContext, r: dict[str, Any], storage: str) -> IntegrityResult:
    _in_run(storage, _plan_of(r).storages, "storage")
    return check_integrity(ctx.cfg, _plan_of(r), storage, ctx.resolver)


def _run_test_restore(ctx: RunContext, r: dict[str, Any], _: Any) -> RestoreTestResult:
    base = ctx.state.get("scratch_base")  # the CLI: its own temporary directory, gone when the run ends
    with (tempfile.TemporaryDirectory(prefix="restore-", dir=base) if base else task_scratch(ctx.dag_id, ctx.run_id, "restore")) as scratch:
        return test_restore(ctx.cfg, _plan_of(r), Path(scratch), ctx.resolver, validate=ctx.params.get("validate", True))


def _run_validate_data(ctx: RunContext, r: dict[str, Any], _: Any) -> ValidationResult:
    return validate_data(ctx.cfg, _plan_of(r), r["test_restore"])


def _results(r: dict[str, Any], name: str) -> list[Any]:
    """A fan-out step's results in item order (``None`` for skipped items), as the DAG's XCom pull gives them."""
    return list((r.get(name) or {}).values())


def _run_notify_completion(ctx: RunContext, r: dict[str, Any], _: Any) -> CompletionSummary:
    return complete_run(
        ctx.cfg, _plan_of(r), r["commit"], [i for i in _results(r, "check_integrity") if i],
        r["validate_data"], r["test_restore"], _results(r, "extract_data") + _results(r, "extract_config"),
        _results(r, "upload"), run_seconds=ctx.state.get("run_seconds") or _since(ctx.state.get("started")), dag_id=ctx.dag_id, run_id=ctx.run_id,
        manual=ctx.params.get("manual"), resolver=ctx.resolver)


def _since(started: datetime | None) -> float | None:
    from datetime import UTC

    return round((datetime.now(UTC) - started).total_seconds(), 3) if started else None


def _run_cleanup(ctx: RunContext, r: dict[str, Any], _: Any) -> CleanupResult:
    prep = r.get("prepare_environment")
    return cleanup(ctx.cfg, prep.plan if prep else None, ctx.dag_id, ctx.run_id, ctx.resolver)


def _data_sources(ctx: RunContext, r: dict[str, Any]) -> list[str]:
    return list(r["prepare_environment"].data_sources)


def _file_sources(ctx: RunContext, r: dict[str, Any]) -> list[str]:
    return list(r["prepare_environment"].file_sources)


def _storages(ctx: RunContext, r: dict[str, Any]) -> list[str]:
    return list(_plan_of(r).storages)


#: the backup procedure: pre-backup checks → extraction → upload → verification (integrity on every storage, test
#: restore with Great Expectations) → completion (summary, result document) → cleanup. ``group.name`` is the DAG
#: task id; the DAG maps the fan-out steps over the candidates of the tier (every source/storage for backup_manual)
BACKUP = Procedure("backup", (
    Step("check_system_state", "pre_backup", _run_check_system_state, result=SystemState,
         doc="every source readable, every storage reachable with room for the estimate"),
    Step("prepare_environment", "pre_backup", _run_prepare_environment, needs=("check_system_state",),
         result=PreparedRun, doc="the plan: id, type, parent, chain"),
    Step("notify_start", "pre_backup", _run_notify_start, needs=("prepare_environment",), doc="the start message"),
    Step("extract_data", "backup", _run_extract, fan_out="source", items=_data_sources, parallel=2,
         needs=("prepare_environment",), after=("notify_start",), result=ExtractResult,
         doc="each database and command source dumped into the primary storage"),
    Step("extract_config", "backup", _run_extract, fan_out="source", items=_file_sources, parallel=2,
         needs=("prepare_environment",), after=("notify_start",), result=ExtractResult,
         doc="each files source archived into the primary storage"),
    Step("commit", "backup", _run_commit, needs=("prepare_environment",), after=("extract_data", "extract_config"),
         result=CommitResult, doc="the manifest, written last, on the primary"),
    Step("upload", "backup", _run_upload, fan_out="storage", items=_storages, parallel=8,
         needs=("prepare_environment",), result=UploadResult,
         doc="the primary checked, every other storage gets a SHA-256 checked copy"),
    Step("check_integrity", "verify", _run_check_integrity, fan_out="storage", items=_storages, parallel=8,
         needs=("prepare_environment",), after=("upload",), result=IntegrityResult,
         doc="every new object re-hashed on every storage, the chain present"),
    Step("test_restore", "verify", _run_test_restore, needs=("prepare_environment",), after=("upload",),
         result=RestoreTestResult, doc="the chain restored from the last storage, dumps loaded, Great Expectations"),
    Step("validate_data", "verify", _run_validate_data, needs=("prepare_environment", "test_restore"),
         result=ValidationResult, doc="the Great Expectations results, failed on any failure"),
    Step("notify_completion", "post_backup", _run_notify_completion,
         needs=("prepare_environment", "commit", "extract_data", "extract_config", "upload", "check_integrity",
                "test_restore", "validate_data"),
         after=("check_integrity", "validate_data"), result=CompletionSummary, doc="summary and result document"),
    Step("cleanup", "post_backup", _run_cleanup, kind=CLEANUP, needs=("prepare_environment",),
         after=("extract_data", "extract_config", "test_restore", "validate_data", "notify_completion"),
         result=CleanupResult, doc="scratch removed, leftovers reported"),
))


def run_backup(cfg: Config, tier: str, *, logical_date: str | datetime | None = None, type_override: str | None = None,
               sources: list[str] | None = None, storages: list[str] | None = None, checksum: bool = False,
               comment: str = "", resolver: Resolver | None = None, validate: bool = True,
               progress: bool | None = None, now: datetime | None = None) -> dict[str, Any]:
    """``backupctl backup``: the tier DAG's steps (:data:`BACKUP`) in this process — the same checks, locks, test
    restore, result document and cleanup. Returns the completion summary (the document the DAG's
    ``notify_completion`` returns) plus ``id``, ``already_committed``, ``system_state`` and ``steps`` (each step's
    state). Raises the run's failure(s) after the cleanup; SystemStateError before anything is written when the
    system is not ready. ``progress``: a progress bar on a terminal (default: when stderr is one); ``now`` (default:
    the clock) bounds the logical date."""
    from datetime import UTC

    from ..engine.progress import Progress
    from ..engine.snapshot import RUN_STAGING, check_logical_date, owned_staging, parse_logical_date, snapshot_id
    from ..errors import NotFoundError, did_you_mean
    from ..repository import Repository, run_scope

    t = cfg.tier(tier)
    for kind, names, known in (("source", sources, cfg.sources), ("storage", storages, cfg.storages)):
        for name in names or []:
            if name not in known:
                raise NotFoundError(f"no {kind} named {name!r}", hint=f"{did_you_mean(name, known)}use one of: {', '.join(known)}")
    ld = parse_logical_date(logical_date)
    check_logical_date(ld, now)  # before any lock or scratch
    import importlib.util

    if validate and any(cfg.sources[n].type in DB_KINDS for n in (sources or t.sources)) \
            and importlib.util.find_spec("great_expectations") is None:
        raise ConfigError("backup: the test restore validates the databases, but Great Expectations is not installed",
                          hint="install the validation extra (pip install 'fmr-backups[validation]'), or pass "
                               "--no-validate (the test restore still checks every SHA-256 and loads every dump)")
    sel = Selection(tier, type_override, list(sources or t.sources), list(storages or t.storages), comment)
    started = datetime.now(UTC)
    ctx = RunContext(cfg, resolver, dag_id="backupctl", run_id=f"{snapshot_id(tier, ld)}-{started:%Y%m%dT%H%M%S}-{os.getpid()}",
                     params={"selection": sel, "logical_date": ld, "checksum": checksum, "validate": validate,
                             "now": now})
    # one progress for the extractions, with a percentage of the system-state estimate (made by prepare_environment)
    ctx.state["make_progress"] = lambda total: Progress(f"backup {snapshot_id(tier, ld)}", total or None, tty=progress)
    ctx.state["started"] = started
    # from the plan to the commit, the run of one id is exclusive on the primary: a second `backupctl backup` of the
    # same tier and logical date waits, then finds it committed and only verifies it (the DAG: max_active_runs=1)
    # (with the shared repository lock: no prune removes the plan's parent before the commit)

    @contextlib.contextmanager
    def run_lock() -> Iterator[None]:
        repo = Repository(open_storage(cfg, sel.storages[0], resolver), cfg)
        with repo.lock("repo", exclusive=False, operation="backup"), \
                repo.lock(run_scope(snapshot_id(tier, ld)), exclusive=True, operation="backup"):
            yield

    ctx.state["run_lock"] = run_lock
    # the run's scratch (the test restore): in $BACKUP_STAGING or the temp dir, owner-tagged, so a run killed with -9
    # leaves nothing the next backup does not remove (engine.snapshot.clean_staging)
    with owned_staging(RUN_STAGING) as base, contextlib.ExitStack() as held:
        ctx.state["held"], ctx.state["scratch_base"] = held, base
        try:
            outcome = run_procedure(BACKUP, ctx)
        finally:
            if ctx.state.get("progress") is not None:
                ctx.state["progress"].close()
    r = outcome.results
    summary = r["notify_completion"].to_dict()
    return {"id": summary["snapshot_id"], **summary, "already_committed": _plan_of(r).already_committed,
            "system_state": r["check_system_state"].to_dict(), "plan": _plan_of(r).to_dict(), "steps": dict(outcome.states),
            "seconds": dict(outcome.seconds)}
