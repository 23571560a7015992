"""Checking what was written (the DAG's ``verify`` group): :func:`check_integrity` on every storage,
:func:`test_restore` (the chain restored, every dump loaded, the one Great Expectations run) and
:func:`validate_data` (reports that run's results)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...catalog.manifest import Catalog
from ...config import Config
from ...errors import IntegrityError
from ...storage import Resolver, Storage, open_storage
from ..base import mb
from ..validate import DB_KINDS, compact_results, load_pg_dump, pg_check_server, raise_failed, validate_restored
from .pre_backup import is_archive
from .results import IntegrityResult, RestoreTestResult, ValidationResult, as_plan

if TYPE_CHECKING:
    from ...engine.backup_pipeline import Plan

log = logging.getLogger("backups.commands.backup")

def check_integrity(cfg: Config, plan: Plan, storage: str, resolver: Resolver | None = None) -> IntegrityResult:
    """What landed on ``storage``: every object of the new snapshot re-read and SHA-256 checked; the rest of
    its chain (manifests, presence and sizes) checked structurally."""
    from ...engine.checker import object_problem, verify

    p = as_plan(plan)
    t0 = time.monotonic()
    st = open_storage(cfg, storage, resolver, read_only=True)
    from ...repository import Repository, repo_scope

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




def _record_integrity(cfg: Config, storage: Storage, snap_id: str, failed: dict[str, list[str]], *,
                      read_data: bool = True) -> None:
    """Add the check to the storage's verification record: it re-hashed only ``snap_id``'s own objects, so it
    records (and may clear) that snapshot only, never another one's open failure. Logged, never fatal."""
    from ...repository import Repository

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
    from ...engine.restorer import restore

    p = as_plan(plan)
    t0 = time.monotonic()
    # the last storage that is readable now (a replica when there is one); an archive class would need a thaw
    from ...repository import Repository, repo_scope

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
