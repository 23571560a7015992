"""The backup pipeline's engine half: planning, extraction, commit, replication and back-fill of a snapshot (the
steps of :mod:`backups.commands.backup` call it; :class:`backups.catalog.Snapshot` is a committed snapshot).

* :func:`plan` — deterministic id from tier + logical date (refused more than ``FUTURE_TOLERANCE`` ahead of the
  clock), the parent (incremental: the snapshot of any tier holding the newest data, see
  :meth:`~backups.catalog.manifest.Catalog.latest`; differential: the newest full), promotion to full when there
  is no usable parent, the ``sequence`` that makes this snapshot the newest, and a clock-skew warning when the
  logical date is older than the repository's newest snapshot.
* :func:`extract` — back up one source (:func:`backups.engine.archiver.backup_source`); writes objects and a
  ``part.json`` record on the primary storage, returns a small dict.
* :func:`commit` — assemble the parts into the manifest and write it **last**.
* :func:`replicate` — copy a committed snapshot's objects to another storage, checking every object's SHA-256
  on the way, then write the manifest there last; also back-fills copies a storage is missing.

The sequence (checks, plan, extract, commit, copies, verification, test restore, result document, cleanup) is
declared once, in :data:`backups.commands.backup.BACKUP`, for the CLI and the DAGs.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..catalog.manifest import (
    FUTURE_TOLERANCE,
    Catalog,
    Snapshot,
    manifest_key,
    new_manifest,
    now_iso,
    seal,
    snapshot_id,
)
from ..config import Config
from ..errors import ConfigError, IntegrityError, NotFoundError, ObjectNotFound, RefusedError, SourceError, StorageError
from ..sources import open_source
from ..storage import Resolver, Storage, open_storage
from ..storage.util import HashingReader
from .archiver import load_part
from .progress import Progress

if TYPE_CHECKING:
    from ..repository.locks import HeldLock

log = logging.getLogger(__name__)


@dataclass
class Plan:
    snapshot_id: str
    application: str
    tier: str
    type: str
    requested_type: str
    parent: str | None
    chain: list[str]
    logical_date: str
    sources: list[str]
    storages: list[str]
    promoted_reason: str | None = None
    estimated_bytes: int | None = None
    comment: str = ""
    started_at: str = field(default_factory=now_iso)
    already_committed: bool = False
    #: 1 + the highest sequence on the primary storage at planning time (None: a plan from an older version)
    sequence: int | None = None
    #: problems of the plan itself (clock skew), copied into the manifest's ``warnings``
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(**d)


def parse_logical_date(value: str | datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--logical-date {value!r} is not an ISO 8601 date-time",
                              hint="e.g. 2026-11-29T02:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00, 9999-12-31T23:59-01:00: no UTC date-time exists
        raise ConfigError(f"--logical-date {value!r} is out of range (in UTC it falls before year 1 or after 9999)",
                          hint="e.g. 2026-11-29T02:00:00Z") from None


def check_logical_date(ld: datetime, now: datetime | None = None) -> None:
    """ConfigError (exit 2) when ``ld`` is more than ``FUTURE_TOLERANCE`` ahead of ``now`` (default: the clock): a
    mistyped year would otherwise be the tier's newest snapshot for decades."""
    now = now or datetime.now(UTC)
    if ld > now + FUTURE_TOLERANCE:
        raise ConfigError(f"--logical-date {ld.isoformat()} is in the future (now {now.replace(microsecond=0).isoformat()}; "
                          f"at most {FUTURE_TOLERANCE.total_seconds() / 60:.0f} minutes ahead is accepted)",
                          hint="check the year and the time zone (a date without one is UTC), or leave --logical-date "
                               "out to use now")


def _usable(catalog: Catalog, snap: Snapshot) -> str | None:
    """None when the chain of ``snap`` is complete; otherwise the reason it cannot be a parent."""
    try:
        problems = catalog.missing_objects(snap)
    except IntegrityError as exc:
        return exc.message
    return f"{len(problems)} object(s) missing or damaged ({problems[0]})" if problems else None


def plan(cfg: Config, tier: str, logical_date: str | datetime | None = None, *, type_override: str | None = None,
         storage: Storage | None = None, resolver: Resolver | None = None, sources: list[str] | None = None,
         storages: list[str] | None = None, comment: str = "", catalog: Catalog | None = None,
         now: datetime | None = None) -> Plan:
    """What one backup of ``tier`` at ``logical_date`` will be: the snapshot id (tier + logical date), the type
    (the tier's or ``type_override``; promoted to full when no usable parent exists, with the reason), the parent
    and chain read from ``storage``'s catalog, the sources and storages. Reads only; ``already_committed`` is set
    when that id is committed already (a re-run then only verifies). A logical date in the future (``now``:
    the clock) is refused; one older than the repository's newest snapshot is warned about (clock skew, or a backfill)."""
    t = cfg.tier(tier)
    ld = parse_logical_date(logical_date)
    sid = snapshot_id(tier, ld)
    requested = type_override or t.type
    if requested not in ("full", "differential", "incremental"):
        raise ConfigError(f"--type {requested!r} is not a backup type", hint="use full, differential or incremental")
    from ..errors import did_you_mean

    storage_names = storages or list(t.storages)
    for s in storage_names:
        if s not in cfg.storages:
            raise ConfigError(f"unknown storage {s!r}", hint=f"{did_you_mean(s, cfg.storages)}use one of: {', '.join(sorted(cfg.storages))}")
    source_names = sources or list(t.sources)
    for s in source_names:
        if s not in cfg.sources:
            raise ConfigError(f"unknown source {s!r}", hint=f"{did_you_mean(s, cfg.sources)}use one of: {', '.join(sorted(cfg.sources))}")
    primary = storage or open_storage(cfg, storage_names[0], resolver)
    catalog = catalog or Catalog(primary, cfg.application)
    existing = catalog.snapshots.get(sid)
    if existing is not None:
        d = existing.doc
        return Plan(sid, cfg.application, tier, d["type"], d["requested_type"], d.get("parent"), list(d["chain"]),
                    d["logical_date"], sorted(d["sources"]), storage_names, d.get("promoted_reason"), None,
                    d.get("comment", ""), d["started_at"], already_committed=True)
    check_logical_date(ld, now)
    warnings = []
    dated = [s for s in catalog.snapshots.values() if s.logical_date > ld]
    if dated:
        newest = max(dated, key=lambda s: (s.logical_date, s.id))
        warnings.append(f"logical date {ld.isoformat()} is older than the repository's newest snapshot {newest.id} "
                        f"({newest.logical_date.isoformat()}): the clock of this host may be behind (or this is a "
                        f"backfill); this snapshot holds the newest data, so it becomes `latest`")
        log.warning("%s: %s", sid, warnings[-1])
    parent: Snapshot | None = None
    reason = None
    typ = requested
    if requested != "full":
        # the parent is the newest DATA (highest sequence), whatever the dates say
        earlier = sorted((s for s in catalog.snapshots.values() if requested == "incremental" or s.type == "full"),
                         key=Snapshot.newness)
        while earlier:
            cand = earlier.pop()
            why = _usable(catalog, cand)
            if why is None:
                parent = cand
                break
            log.warning("snapshot %s cannot be a parent: %s", cand.id, why)
        if parent is None:
            typ = "full"
            want = "full snapshot" if requested == "differential" else "snapshot"
            reason = f"no usable earlier {want} on storage {primary.name}"
            log.warning("%s %s requested, but %s: promoted to full", sid, requested, reason)
    chain = [*parent.chain, sid] if parent is not None else [sid]
    return Plan(sid, cfg.application, tier, typ, requested, parent.id if parent else None, chain, ld.isoformat(),
                source_names, storage_names, reason, None, comment, sequence=catalog.next_sequence(),
                warnings=warnings)


def staging_root() -> str | None:
    """``$BACKUP_STAGING`` (created if missing), where database dumps are staged; None: the system temp dir."""
    path = os.environ.get("BACKUP_STAGING")
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"BACKUP_STAGING={path}: cannot create the staging directory ({exc.strerror})",
                          hint="point BACKUP_STAGING at a writable directory with room for a database dump") from None
    return path


OWNER_FILE = ".backup-owner.json"
#: the staging name of a `backupctl backup` run's own scratch (its test restore): ``backup-backupctl-*``
RUN_STAGING = "backupctl"


@contextmanager
def owned_staging(source: str) -> Iterator[str]:
    """A private staging folder ``backup-<source>-*`` with an owner file (host, pid, start), removed on exit.
    Staging folders of dead runs are removed by :func:`clean_staging` at the start of the next backup."""
    import json
    import tempfile

    from ..repository.locks import HOST, pid_start

    root = staging_root()
    # made under a name clean_staging ignores, then renamed once its owner file is written: a folder of a live run
    # is never seen without its owner (and aged by mtimes, which a wall clock set ahead makes look decades old)
    tmp = tempfile.mkdtemp(prefix=f".new-backup-{source}-", dir=root)
    path = os.path.join(os.path.dirname(tmp), os.path.basename(tmp).removeprefix(".new-"))
    try:
        with open(os.path.join(tmp, OWNER_FILE), "w") as fh:
            json.dump({"host": HOST, "pid": os.getpid(), "pid_start": pid_start(os.getpid()), "created": time.time()}, fh)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clean_staging(cfg: Config, grace_seconds: float) -> list[str]:
    """Remove staging folders (``backup-<source>-*`` in BACKUP_STAGING or the system temp dir) of dead runs:
    their owner's process is gone (this host), or — another host's, or without an owner file — they are older
    than the grace period (at least 10 minutes without an owner file). Returns what went."""
    import json
    import tempfile

    from ..repository.locks import HOST, pid_alive

    root = staging_root() or tempfile.gettempdir()
    removed: list[str] = []
    prefixes = tuple(f"backup-{name}-" for name in [*cfg.sources, RUN_STAGING])
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(prefixes) or not e.is_dir(follow_symlinks=False):
            continue
        try:
            age = time.time() - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        try:
            with open(os.path.join(e.path, OWNER_FILE)) as fh:
                owner = json.load(fh)
        except (OSError, ValueError):
            owner = None  # an old-style folder (or one whose owner file was never written): aged only
        if owner is not None and owner.get("host") == HOST:  # ours: removed exactly when its process is gone
            dead = not pid_alive(int(owner.get("pid", 0)), owner.get("pid_start"))
            old = False
        else:  # another host's, or without an owner file (old-style, or just being created): by age only
            dead = False
            old = age > (grace_seconds if owner is not None else max(grace_seconds, 600.0))
        if dead or old:
            shutil.rmtree(e.path, ignore_errors=True)
            log.warning("removed the staging folder %s of a dead run (%s)", e.path,
                        "its process is gone" if dead else f"older than {grace_seconds / 3600:.0f}h")
            removed.append(e.path)
    return removed


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC, however it surfaced (an OSError, or SQLite's / a dump tool's "disk is full" in a SourceError)."""
    import errno

    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = getattr(exc, "message", str(exc)).lower()
    return "disk is full" in text or "no space left on device" in text


def clear_uncommitted(storage: Storage, snap_id: str, source: str) -> int:
    """Remove what an earlier, failed attempt of ``snap_id`` left for ``source`` (caller holds the id lock and
    has checked that the snapshot is not committed). Returns the number of objects removed."""
    n = 0
    from ..repository import data_prefix

    for info in list(storage.list(data_prefix(snap_id, source))):
        storage.delete(info.key)
        n += 1
    if n:
        log.warning("%s: removed %d object(s) an earlier attempt of %s left for %s", storage.name, n, snap_id, source)
    return n


def extract(cfg: Config, p: Plan, source: str, storage: Storage, *, resolver: Resolver | None = None, checksum: bool = False,
            progress: Progress | None = None, catalog: Catalog | None = None) -> dict[str, Any]:
    """Back up one source of the plan into ``storage``; returns a small summary (XCom-sized).

    The caller holds the exclusive lock of the snapshot id (or of id + source). An uncommitted leftover of an
    earlier attempt of the same id and source (an Airflow retry) is removed first; a committed snapshot is an
    error (its objects are never rewritten)."""
    from .archiver import backup_source

    if storage.exists(manifest_key(p.snapshot_id)):
        raise RefusedError(f"{storage.name}: snapshot {p.snapshot_id} is already committed; not extracting {source} again",
                           hint="nothing to do: a committed snapshot is never rewritten")
    clear_uncommitted(storage, p.snapshot_id, source)
    reader = open_source(cfg, source, resolver)
    parent_obj = None
    parent_for_source = None
    if p.parent:
        catalog = catalog or Catalog(storage, cfg.application)
        try:
            par = catalog.get(p.parent)
        except NotFoundError:
            raise IntegrityError(f"{storage.name}: the parent {p.parent} of {p.snapshot_id} is gone (removed by a prune "
                                 "since the plan was made?)", hint="re-run the backup: a new plan picks a parent that exists") from None
        if source in par.sources:
            parent_obj = par.sources[source]["objects"]["index"]
            parent_for_source = par.id
    sc = cfg.sources[source]
    t0 = time.monotonic()
    prog = progress or Progress(f"{source}", None)
    try:
        with owned_staging(source) as staging:
            try:
                rec = backup_source(storage, p.snapshot_id, reader, parent_obj, parent_for_source,
                                    on_unreadable=getattr(sc, "on_unreadable", "fail"), checksum=checksum, progress=prog,
                                    staging_root=staging)
            except (OSError, SourceError) as exc:
                if not _disk_full(exc):
                    raise
                free = shutil.disk_usage(staging).free
                raise StorageError(f"no space left on device while staging {source} in {os.path.dirname(staging)} "
                                   f"({free / 1e6:,.1f} MB free)",
                                   hint="free space there, or point BACKUP_STAGING at a disk with room for a database "
                                   "dump, then re-run; nothing was committed") from None
    finally:
        if progress is None:
            prog.close()
    rec_seconds = round(time.monotonic() - t0, 3)
    log.info("%s: %d files (%.1f MB), stored %d (%.1f MB raw, %.1f MB compressed), %d deleted, in %.1fs",
             source, rec["files"], rec["bytes"] / 1e6, rec["stored_files"], rec["stored_bytes"] / 1e6,
             (rec["objects"]["archive"] or {}).get("size", 0) / 1e6, rec["deleted"], rec_seconds)
    for w in rec["warnings"]:
        log.warning("%s: %s", source, w)
    return {"source": source, "files": rec["files"], "bytes": rec["bytes"], "stored_bytes": rec["stored_bytes"],
            "seconds": rec_seconds, "warnings": len(rec["warnings"])}


def commit(cfg: Config, p: Plan, storage: Storage, *, seconds: dict[str, float] | None = None,
           locks: list[HeldLock] | None = None, catalog: Catalog | None = None) -> Snapshot:
    """Assemble the per-source records into the manifest and write it last. Idempotent for a retry.

    The caller holds the snapshot id's exclusive lock; ``locks`` are checked right before the manifest is
    written (a holder whose lock was removed never commits). The parent's chain must still be committed."""
    key = manifest_key(p.snapshot_id)
    if storage.exists(key):
        return Catalog(storage, cfg.application).get(p.snapshot_id)
    sources = {name: load_part(storage, p.snapshot_id, name) for name in p.sources}
    if p.parent:
        catalog = catalog or Catalog(storage, cfg.application)
        missing = [sid for sid in p.chain[:-1] if sid not in catalog.snapshots]
        if missing:
            raise IntegrityError(f"{storage.name}: cannot commit {p.snapshot_id}: its chain needs {', '.join(missing)}, "
                                 "which no longer exist (removed by a prune while this backup ran?)",
                                 hint="re-run the backup: a new plan picks a parent that exists")
    objects = [o for rec in sources.values() for o in rec["objects"].values() if o]
    for obj in objects:  # every object must be there, whole, before the commit marker
        try:
            size = storage.stat(obj["key"]).size
        except ObjectNotFound:
            raise StorageError(f"{storage.name}: {obj['key']} vanished before commit", hint="re-run the backup") from None
        if size != obj["size"]:
            raise StorageError(f"{storage.name}: {obj['key']} has {size} bytes, expected {obj['size']}", hint="re-run the backup")
    finished = now_iso()
    started = datetime.fromisoformat(p.started_at)
    doc = new_manifest(
        id=p.snapshot_id,
        application=p.application,
        tier=p.tier,
        type=p.type,
        requested_type=p.requested_type,
        promoted_reason=p.promoted_reason,
        parent=p.parent,
        chain=p.chain,
        logical_date=p.logical_date,
        started_at=p.started_at,
        finished_at=finished,
        duration_seconds=round((datetime.fromisoformat(finished) - started).total_seconds(), 3),
        host=socket.gethostname(),
        comment=p.comment,
        key_fingerprint=storage.key_fingerprint,
        **({"sequence": p.sequence} if p.sequence is not None else {}),
        warnings=list(p.warnings),
        sources=sources,
        totals={
            "files": sum(r["files"] for r in sources.values()),
            "bytes": sum(r["bytes"] for r in sources.values()),
            "stored_files": sum(r["stored_files"] for r in sources.values()),
            "stored_bytes": sum(o["size"] for o in objects),
            "objects": len(objects),
            "warnings": sum(len(r["warnings"]) for r in sources.values()),
        },
    )
    for held in locks or []:
        held.check()
    storage.put_bytes(key, seal(doc))
    log.info("committed %s (%s) on %s: %d files, %.1f MB stored", p.snapshot_id, p.type, storage.name,
             doc["totals"]["files"], doc["totals"]["stored_bytes"] / 1e6)
    return Snapshot(doc)


def copy_object(src: Storage, dst: Storage, obj: dict[str, Any]) -> int:
    """Stream one object between storages, verifying its SHA-256 against the manifest as it passes."""
    with src.open_read(obj["key"]) as raw:
        hr = HashingReader(raw)
        with dst.open_write(obj["key"]) as out:
            while chunk := hr.read(1 << 20):
                out.write(chunk)
            if hr.hexdigest() != obj["sha256"] or hr.size != obj["size"]:
                raise IntegrityError(f"{src.name}: {obj['key']} does not match its manifest checksum; not copied to {dst.name}",
                                     hint="run `backupctl verify --read-data` on the source storage")
    if dst.stat(obj["key"]).size != obj["size"]:
        raise StorageError(f"{dst.name}: {obj['key']} landed with the wrong size")
    return hr.size


def same_data(ours: Any, theirs: Any, src: str, dst: str) -> None:
    """A snapshot id already on ``dst`` is skipped by a copy only when it holds the same data (every object's key and
    SHA-256): the same id with other data is another deployment sharing the bucket and prefix, or a re-run after the
    primary was lost, and "already copied" there would leave the replica restoring other data than the primary."""
    mine = {o["key"]: o["sha256"] for o in ours.objects()}
    other = {o["key"]: o["sha256"] for o in theirs.objects()}
    if mine != other:
        raise RefusedError(f"storage {dst} already holds a snapshot {ours.id} with other data than {src}'s "
                           f"({len(set(mine.items()) ^ set(other.items()))} object(s) differ); nothing was copied",
                           hint=f"give each deployment its own bucket/prefix or path; if {dst}'s copy is the one to keep, "
                                f"restore from it with `--storage {dst}`")


def replicate(cfg: Config, snap_id: str, src: Storage, dst: Storage, *, locks: list[HeldLock] | None = None) -> int:
    """Copy a committed snapshot (and any missing part of its chain) to ``dst``; manifest last. Returns bytes.

    Objects already on ``dst`` with the right size are kept (an interrupted copy resumes). Each manifest is
    re-sealed for ``dst`` (its ``key_fingerprint`` is ``dst``'s) and written only after every object of that
    snapshot landed with its recorded SHA-256.
    """
    from ..catalog.manifest import unseal

    src_cat = Catalog(src, cfg.application)
    dst_cat = Catalog(dst, cfg.application)
    copied = 0
    for s in src_cat.chain_of(src_cat.get(snap_id)):
        if s.id in dst_cat.snapshots:
            same_data(s, dst_cat.snapshots[s.id], src.name, dst.name)
            continue
        for obj in s.objects():
            try:
                if dst.stat(obj["key"]).size == obj["size"]:
                    continue
                dst.delete(obj["key"])  # an uncommitted, damaged leftover of an interrupted copy (no manifest)
            except ObjectNotFound:
                pass
            copied += copy_object(src, dst, obj)
        doc = unseal(src.get_bytes(manifest_key(s.id)), f"{manifest_key(s.id)} on {src.name}")
        doc["key_fingerprint"] = dst.key_fingerprint
        for held in locks or []:
            held.check()
        dst.put_bytes(manifest_key(s.id), seal(doc))
        log.info("replicated %s from %s to %s", s.id, src.name, dst.name)
    return copied


def backfill(cfg: Config, src: Storage, dst: Storage, *, tier: str | None = None) -> list[str]:
    """Copy the snapshots ``src`` has and ``dst`` lacks, of every tier that lists ``dst`` among its storages
    (a target that was down for a run catches up; other tiers' snapshots stay where their tier puts them)."""
    src_cat = Catalog(src, cfg.application)
    dst_ids = set(Catalog(dst, cfg.application).snapshots)
    done = []
    for s in src_cat.ordered(tier):
        t = cfg.tiers.get(s.tier)
        if t is None or dst.name not in t.storages:
            continue
        if s.id not in dst_ids:
            replicate(cfg, s.id, src, dst)
            done.append(s.id)
            dst_ids.update(s.chain)
    return done
