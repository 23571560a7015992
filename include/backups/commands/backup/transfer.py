"""Writing the snapshot (the DAG's ``backup`` group): :func:`extract_source` (one source into the primary storage),
:func:`commit_snapshot` (the manifest, last) and :func:`replicate_to` (the step ``upload``: the primary's presence
check, a SHA-256 checked copy and the back-fill on every other storage)."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...catalog.manifest import Catalog
from ...config import Config
from ...errors import IntegrityError
from ...storage import Resolver, open_storage
from ..base import mb
from .results import CommitResult, ExtractResult, UploadResult, as_plan
from .scratch import staging_env

if TYPE_CHECKING:
    from ...engine.backup_pipeline import Plan

log = logging.getLogger("backups.commands.backup")

def extract_source(cfg: Config, plan: Plan, source: str, scratch: Path | None, resolver: Resolver | None = None,
                   estimate: int | None = None, *, checksum: bool = False, progress: Any = None) -> ExtractResult:
    """Back up one source into the primary storage (objects + part record); idempotent for a retry. ``scratch``:
    the task's private directory, where dumps are staged (``None``: ``$BACKUP_STAGING`` or the temp dir, as the CLI
    does — its extractions share a process, and the environment); ``progress``: the run's progress (the CLI's bar),
    else a log line every few seconds."""
    from ...engine import backup_pipeline as pipeline
    from ...engine.progress import Progress

    p = as_plan(plan)
    if p.already_committed:
        log.info("%s is already committed: nothing to extract for %s", p.snapshot_id, source)
        return ExtractResult(source=source, skipped="already committed")
    from ...repository import Repository

    primary = open_storage(cfg, p.storages[0], resolver)
    own = progress is None
    prog = Progress(f"{p.snapshot_id} {source}", estimate or None, interval=5.0, tty=False) if own else progress
    log.info("extracting %s (%s) into %s", source, cfg.sources[source].type, primary.describe())
    try:
        # shared repo lock + exclusive lock on id + source: parallel extracts of other sources do not wait
        with Repository(primary, cfg).backup_lock(p.snapshot_id, source, operation="extract"), \
                (staging_env(scratch) if scratch is not None else contextlib.nullcontext()):
            pipeline.clean_staging(cfg, cfg.locks.orphan_grace_hours * 3600)
            out = pipeline.extract(cfg, p, source, primary, resolver=resolver, checksum=checksum, progress=prog)
    finally:
        if own:
            prog.close()
    return ExtractResult(**out)


def commit_snapshot(cfg: Config, plan: Plan, resolver: Resolver | None = None) -> CommitResult:
    """Write the manifest on the primary storage — last, it is the commit marker."""
    from ...engine import backup_pipeline as pipeline
    from ...repository import Repository

    p = as_plan(plan)
    primary = open_storage(cfg, p.storages[0], resolver)
    with Repository(primary, cfg).backup_lock(p.snapshot_id, operation="commit") as held:
        snap = pipeline.commit(cfg, p, primary, locks=held)
    d = snap.doc
    return CommitResult(snapshot_id=snap.id, type=snap.type, parent=snap.parent, chain=snap.chain,
                        storage=primary.name, files=d["totals"]["files"], bytes=d["totals"]["bytes"],
                        stored_bytes=d["totals"]["stored_bytes"], objects=d["totals"]["objects"],
                        duration_seconds=d.get("duration_seconds"), already_committed=bool(p.already_committed))


def replicate_to(cfg: Config, plan: Plan, storage: str, resolver: Resolver | None = None) -> UploadResult:
    """The step ``upload`` for one storage of the run. The primary (where the snapshot was committed): check every
    object of the chain is there. Any other storage: replicate the snapshot from the primary (SHA-256 checked,
    manifest last), then back-fill the snapshots it missed while it was down."""
    from ...engine import backup_pipeline as pipeline

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
    from ...repository import Repository

    with Repository(src, cfg).lock("repo", exclusive=False, operation="replicate"), \
            Repository(dst, cfg).backup_lock(p.snapshot_id, operation="replicate") as held:
        copied = pipeline.replicate(cfg, p.snapshot_id, src, dst, locks=held)
        filled = pipeline.backfill(cfg, src, dst)  # snapshots this storage missed while it was down
    if filled:
        log.info("back-filled %d snapshot(s) %s missed: %s", len(filled), storage, ", ".join(filled))
    seconds = round(time.monotonic() - t0, 3)
    log.info("replicated %s to %s: %s copied in %.1fs", p.snapshot_id, storage, mb(copied), seconds)
    return UploadResult(storage=storage, role="replica", copied_bytes=copied, seconds=seconds, backfilled=filled)
