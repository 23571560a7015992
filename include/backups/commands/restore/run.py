"""The restore itself and its verification against the snapshot's index (under the repository's shared lock)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...engine.progress import mb
from ...errors import IntegrityError, NotFoundError, StorageError
from ...storage.base import sha256_of
from ..validate import DB_KINDS, compact_results, validate_restored
from .plan import TablePlan, existing_parent
from .request import Location, RestoreRequest, read_only_storage

if TYPE_CHECKING:
    from ...storage import Resolver

log = logging.getLogger("backups.commands.restore")

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
def shared_lock(cfg: Config, storage: str, resolver: Resolver | None = None, *, operation: str) -> Iterator[None]:
    """The repository's shared lock on ``storage`` (opened read-only: lock objects are its one write). A prune
    (exclusive) waits while it is held, so a snapshot cannot be forgotten between a restore and its verification:
    the CLI and the drill hold it across both steps."""
    from ...repository import Repository, repo_scope
    repo = Repository(read_only_storage(cfg, storage, resolver), cfg)
    with repo.lock(repo_scope(), exclusive=False, operation=operation):
        yield


def snapshot_still_there(cfg: Config, storage: Any, snapshot_id: str, *, step: str, since: str) -> tuple[Any, Any]:
    """(catalog, snapshot) of ``snapshot_id`` read afresh from ``storage`` (call it under the shared lock).
    NotFoundError (exit 3) naming the snapshot when it is gone — a prune or ``forget`` that ran since ``since``
    (the DAG runs locate, restore and verification as separate tasks) — so no step works on a snapshot that is no
    longer there, and a verification never passes over data it could not check."""
    from ...catalog import Catalog

    cat = Catalog(storage, cfg.application)
    if snapshot_id not in cat.snapshots and snapshot_id not in cat.broken:
        raise NotFoundError(f"{step}: snapshot {snapshot_id} is no longer on storage {storage.name} (a prune or forget "
                            f"removed it since {since})" + (": the restored data cannot be checked against it"
                                                            if step.startswith("verif") else ""),
                            hint="restore again from a snapshot that exists (`backupctl list`), or from another "
                                 "storage that still holds it; do not use data that was not verified")
    return cat, cat.get(snapshot_id)


def run_restore(cfg: Config, req: RestoreRequest, loc: Location, resolver: Resolver | None = None, pg_dsn: str | None = None, *,
                tty: bool | None = False, plan: TablePlan | None = None, locked: bool = False) -> RestoreResult:
    """Restore the located snapshot's sources into the target through :func:`backups.engine.restorer.restore`,
    holding the repository's shared lock (a prune waits for it) and re-reading the catalog under it. ``locked``:
    the caller already holds that lock (:func:`shared_lock`, e.g. across the restore and its verification)."""
    from ...engine.progress import Progress
    from ...engine.restorer import restore
    st = read_only_storage(cfg, loc.storage, resolver)
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
                               f"({mb(shutil.disk_usage(existing_parent(Path(req.target))).free)} free)",
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
    from ...engine.restorer import selector

    return selector(includes)


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


def walk_tree(root: Path) -> Generator[tuple[list[str], str, int, int, int, str], None, None]:
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
    from ...repository.index import iter_index, order_key

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
        from ...validation import validate_sqlite

        return validate_sqlite(path / rec["details"]["database"], tables, raise_on_failure=False)
    if rec["kind"] == "postgres":
        if pg_dsn:
            from ...validation import validate_postgres

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


def verify_restore(cfg: Config, req: RestoreRequest, loc: Location, restored: RestoreResult, resolver: Resolver | None = None,
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
    st = read_only_storage(cfg, loc.storage, resolver)
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
            from ...engine.databases import sqlite_foreign_key_check

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
